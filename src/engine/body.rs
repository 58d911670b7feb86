//! A request body that stamps its admission when it is first read, i.e. when its bytes go out on a
//! connection that is ready: a server counts a request from when it arrives, and the time spent
//! connecting or waiting for a pooled connection must not move that instant (the openai transport's
//! `StampedWhenSent` does the same for httpx).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Called once, as the body is first read.
pub type Stamp = Box<dyn FnOnce() + Send + Sync>;

/// One chunk of bytes, and what to do when it is sent.
pub struct StampedBody {
    data: Option<Bytes>,
    len: u64,
    stamp: Option<Stamp>,
}

impl StampedBody {
    pub fn new(data: Bytes, stamp: Option<Stamp>) -> Self {
        Self { len: data.len() as u64, data: Some(data), stamp }
    }
}

impl Body for StampedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(stamp) = this.stamp.take() {
            stamp();
        }
        Poll::Ready(this.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}
