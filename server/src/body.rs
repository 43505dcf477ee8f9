//! The one body type that flows through both binaries, and its makers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body: a proxied stream, a replayed request, or bytes in hand.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose errors can be boxed.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// A body that fails once it has made no progress for `limit`: a
    /// caller that stops sending halfway through its request, or an
    /// endpoint that stops halfway through its response, frees what it
    /// holds instead of holding it for ever. The timer exists only once
    /// the body has had to wait.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        limit: Duration,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, limit: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            limit,
            timer: None,
        }
    }
}

/// The error of a body that made no progress for its limit.
#[derive(Debug, thiserror::Error)]
#[error("the body made no progress for {0:?}")]
pub struct BodyStalled(pub Duration);

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = this.timer {
                    timer.as_mut().reset(Instant::now() + *this.limit);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = *this.limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled(limit).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_fails_after_its_limit() {
        let (mut sender, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let mut body = IdleTimeout::new(body, Duration::from_secs(5));
        sender.send_data(Bytes::from_static(b"a")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyStalled>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_limit() {
        let (mut sender, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let mut body = IdleTimeout::new(body, Duration::from_secs(5));
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                sender.send_data(Bytes::from_static(b"a")).await.unwrap();
            }
        });
        for _ in 0..3 {
            assert!(body.frame().await.unwrap().is_ok());
        }
        assert!(body.frame().await.is_none());
        feeder.await.unwrap();
    }
}
