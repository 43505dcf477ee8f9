//! A request body that can be sent again. The first try streams the
//! caller's body through unchanged while keeping a copy of up to
//! [`MAX_REPLAY_BYTES`]; a retry replays the copy and then goes on reading
//! the caller. Bodies larger than that are not kept, and not retried.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::{Body, BoxError};

pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

struct Shared {
    inner: Body,
    chunks: Vec<Bytes>,
    buffered: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// Past the cap, or the caller's body failed: no further copies.
    capped: bool,
    /// Only the newest copy may read on; an older try is abandoned.
    generation: u64,
}

pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    /// How many kept chunks this copy has sent.
    position: usize,
    trailers_sent: bool,
    size_hint: SizeHint,
}

#[derive(Debug, thiserror::Error)]
#[error("this try's request body was taken over by a retry")]
struct Superseded;

impl ReplayBody {
    pub fn new(inner: Body) -> Self {
        let size_hint = inner.size_hint();
        let capped = size_hint.lower() > MAX_REPLAY_BYTES as u64;
        let shared = Shared {
            inner,
            chunks: Vec::new(),
            buffered: 0,
            trailers: None,
            ended: false,
            capped,
            generation: 0,
        };
        Self {
            shared: Arc::new(Mutex::new(shared)),
            generation: 0,
            position: 0,
            trailers_sent: false,
            size_hint,
        }
    }

    /// Whether a copy can still be made.
    pub fn can_replay(&self) -> bool {
        !self.shared.lock().unwrap_or_else(|e| e.into_inner()).capped
    }

    /// A copy for the next try, or `None` when the body was too large to keep.
    pub fn try_clone(&self) -> Option<Self> {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if shared.capped {
            return None;
        }
        shared.generation += 1;
        Some(Self {
            shared: self.shared.clone(),
            generation: shared.generation,
            position: 0,
            trailers_sent: false,
            size_hint: self.size_hint,
        })
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        if shared.generation != this.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if let Some(chunk) = shared.chunks.get(this.position) {
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if shared.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut shared.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                this.trailers_sent = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                shared.capped = true;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if !shared.capped {
                    if shared.buffered + data.len() > MAX_REPLAY_BYTES {
                        shared.capped = true;
                        shared.chunks = Vec::new();
                        shared.buffered = 0;
                    } else {
                        shared.buffered += data.len();
                        shared.chunks.push(data.clone());
                        this.position += 1;
                    }
                }
                Frame::data(data)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    shared.ended = true;
                    this.trailers_sent = true;
                    shared.trailers = Some(trailers.clone());
                    Frame::trailers(trailers)
                }
                Err(other) => other,
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if self.position < shared.chunks.len() {
            return false;
        }
        if shared.ended {
            return self.trailers_sent || shared.trailers.is_none();
        }
        shared.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};

    fn chunked(parts: Vec<&'static [u8]>) -> Body {
        let frames = parts
            .into_iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p))));
        super::super::boxed(StreamBody::new(stream::iter(frames)))
    }

    async fn read_all(body: ReplayBody) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_copy_replays_what_the_first_try_sent() {
        let first = ReplayBody::new(chunked(vec![b"hello ", b"world"]));
        let second = first.try_clone().unwrap();
        // The first try is superseded as soon as a copy exists.
        assert!(first.collect().await.is_err());
        assert_eq!(read_all(second).await, b"hello world");
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_send_gets_the_whole_body() {
        let mut first = ReplayBody::new(chunked(vec![b"a", b"b", b"c"]));
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "a");
        let second = first.try_clone().unwrap();
        assert_eq!(read_all(second).await, b"abc");
    }

    #[tokio::test]
    async fn a_body_past_the_cap_cannot_be_copied() {
        static BIG: [u8; MAX_REPLAY_BYTES] = [7; MAX_REPLAY_BYTES];
        let first = ReplayBody::new(chunked(vec![&BIG, b"!"]));
        let copy_before = first.try_clone().unwrap();
        let all = read_all(copy_before).await;
        assert_eq!(all.len(), MAX_REPLAY_BYTES + 1);
        assert!(first.try_clone().is_none());
    }

    #[tokio::test]
    async fn a_known_large_length_is_capped_up_front() {
        let big = super::super::full(vec![0u8; MAX_REPLAY_BYTES + 1]);
        assert!(ReplayBody::new(big).try_clone().is_none());
    }
}
