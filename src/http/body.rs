//! The request body as the router sees it: it must keep arriving at a
//! minimum rate, or it ends with an error and the request is answered 408.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Set when a request's body was cut off for arriving too slowly; the
/// request middleware then answers 408 whatever the handler made of it.
#[derive(Debug, Clone, Default)]
pub struct BodyTimedOut(pub Arc<AtomicBool>);

impl BodyTimedOut {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly")]
pub struct TooSlow;

/// A body that must arrive within `grace` plus one second per `rate` bytes
/// received so far (a slow-upload client cannot hold a request open).
pub struct MinRate<B> {
    inner: B,
    started: Instant,
    received: u64,
    grace: Duration,
    rate: u64,
    timer: Option<Pin<Box<Sleep>>>,
    flag: BodyTimedOut,
}

impl<B> MinRate<B> {
    pub fn new(inner: B, grace: Duration, rate: u64, flag: BodyTimedOut) -> Self {
        Self {
            inner,
            started: Instant::now(), // clock: I/O deadline, real time
            received: 0,
            grace,
            rate: rate.max(1),
            timer: None,
            flag,
        }
    }

    fn deadline(&self) -> Instant {
        self.started + self.grace + Duration::from_secs(self.received / self.rate)
    }
}

impl<B> Body for MinRate<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                    let deadline = self.deadline();
                    if let Some(t) = self.timer.as_mut() {
                        t.as_mut().reset(deadline);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = self.deadline();
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.flag.0.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(TooSlow))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
