//! Bodies that count what passes through them, so that a request's metrics
//! and access-log line carry its sizes and final gRPC status, recorded once
//! the response body has ended (or was dropped by a client that went away).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderValue;
use hyper::body::{Body, Frame, SizeHint};

use crate::upstream::{BoxError, EndpointBody};

/// The caller's request body, counted as it is forwarded.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        CountedBody { inner, count }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            self.count.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once when a response is over: with the bytes sent and the gRPC
/// status seen in the trailers (or the headers, for trailers-only responses).
pub trait Finish: Send + Sync + 'static {
    fn finish(self: Box<Self>, response_bytes: u64, grpc_status: Option<&HeaderValue>);
}

#[derive(Debug)]
enum Inner {
    Upstream(EndpointBody),
    Local(Option<Bytes>),
}

/// What the waypoint sends back: the upstream's body, or a local reply.
pub struct ResponseBody {
    inner: Inner,
    bytes: u64,
    grpc_status: Option<HeaderValue>,
    finish: Option<Box<dyn Finish>>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    pub fn upstream(body: EndpointBody) -> Self {
        ResponseBody {
            inner: Inner::Upstream(body),
            bytes: 0,
            grpc_status: None,
            finish: None,
        }
    }

    pub fn local(body: impl Into<Bytes>) -> Self {
        let b: Bytes = body.into();
        ResponseBody {
            inner: Inner::Local((!b.is_empty()).then_some(b)),
            bytes: 0,
            grpc_status: None,
            finish: None,
        }
    }

    pub fn empty() -> Self {
        Self::local(Bytes::new())
    }

    /// Records through `finish` when the body ends; `grpc_status` is the
    /// status already known from the response headers.
    pub fn on_finish(&mut self, finish: Box<dyn Finish>, grpc_status: Option<HeaderValue>) {
        self.finish = Some(finish);
        self.grpc_status = grpc_status;
    }

    fn done(&mut self) {
        if let Some(f) = self.finish.take() {
            f.finish(self.bytes, self.grpc_status.as_ref());
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.done();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match &mut this.inner {
            Inner::Local(b) => b.take().map(|b| Ok(Frame::data(b))),
            Inner::Upstream(body) => ready!(Pin::new(body).poll_frame(cx)),
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                } else if let Some(t) = f.trailers_ref()
                    && let Some(s) = t.get("grpc-status")
                {
                    this.grpc_status = Some(s.clone());
                }
            }
            Some(Err(_)) | None => this.done(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Local(b) => b.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}
