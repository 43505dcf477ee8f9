//! A view's body sent in pieces small enough for h2 to coalesce: a push
//! answers every stream of a connection at once, and those answers should
//! leave in one write, not one write each.
//!
//! h2 sends a DATA frame at least [`COPY_LIMIT`] bytes long by itself (it
//! chains the payload after its write buffer and writes the two out before
//! it takes the next frame), while shorter frames are copied into its 16
//! KiB write buffer. So a body is sent as frames just under that size; the
//! API's connections do not write vectored (see
//! `ServerSettings::vectored_writes`), which is what sets the limit at
//! 1 KiB rather than 256 bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use remora_server::{boxed, Body};

/// h2's copy limit for connections that do not write vectored.
const COPY_LIMIT: usize = 1024;
/// The largest piece sent.
const PIECE: usize = COPY_LIMIT - 1;

/// `bytes` as a body of pieces under h2's copy limit. The pieces are
/// slices of `bytes`: nothing is copied here.
pub fn in_pieces(bytes: Bytes) -> Body {
    boxed(Pieces { rest: bytes })
}

struct Pieces {
    rest: Bytes,
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(PIECE);
        Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn pieces_are_under_the_limit_and_make_the_whole() {
        let whole: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut body = Pieces {
            rest: Bytes::from(whole.clone()),
        };
        assert_eq!(body.size_hint().exact(), Some(5000));
        let mut joined = Vec::new();
        let mut pieces = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(!data.is_empty() && data.len() < COPY_LIMIT);
            joined.extend_from_slice(&data);
            pieces += 1;
        }
        assert_eq!(joined, whole);
        assert_eq!(pieces, 5000usize.div_ceil(PIECE));
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once() {
        let body = Pieces { rest: Bytes::new() };
        assert!(body.is_end_stream());
        assert!(in_pieces(Bytes::new())
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
    }
}
