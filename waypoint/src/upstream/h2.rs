//! HTTP/2 to an endpoint, on the h2 crate directly. A request whose body is
//! already here (a unary gRPC call, a small POST) leaves as HEADERS and DATA
//! in one write: hyper's client sends the body from a task of its own that
//! runs only after HEADERS went out, so every such request cost a second
//! TLS record and a second wake-up on both sides. A body still arriving is
//! piped as it comes, within the stream's flow-control window.
//!
//! Many clients (hyper's, so tonic's) write a request's HEADERS and its
//! first DATA separately, so the body is often a few tens of microseconds
//! behind the head. The head then waits for the first body frame, at most
//! [`FIRST_DATA_WAIT`]: sent alone, it would cost the endpoint's ztunnel and
//! the endpoint a wake-up each for a request they cannot answer yet, ahead
//! of the data they need. A stream whose client waits for the server first
//! loses at most that much, once.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use mesh_core::hbone::send_within_window;
use tokio::sync::oneshot;

use super::{BoxError, UpstreamBody};
use crate::stream_io::StreamIo;

/// One HTTP/2 connection to an endpoint, inside an HBONE stream.
#[derive(Debug, Clone)]
pub struct Connection {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// The client side's HTTP/2 settings: hyper's defaults, which the waypoint
/// used before.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;
const MAX_HEADER_LIST: u32 = 16 << 10;
const MAX_SEND_BUFFER: usize = 1 << 20;

/// How long a request head waits for its first body frame before it is
/// sent alone (the timer's resolution makes it 1-2 ms).
pub const FIRST_DATA_WAIT: Duration = Duration::from_millis(1);

impl Connection {
    /// Speaks HTTP/2 over `io`; the connection runs in a task of its own
    /// until either side closes it.
    pub async fn handshake(io: StreamIo) -> Result<Connection, h2::Error> {
        let (sender, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false)
            .handshake(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
            flag.store(true, Ordering::Release);
        });
        Ok(Connection { sender, closed })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends one request and waits for the response head.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, h2::Error> {
        let (parts, mut body) = req.into_parts();
        let first = if body.is_end_stream() {
            First::Ended
        } else {
            first_frame(&mut body).await
        };
        let mut sender = self.sender.clone().ready().await?;
        let eos = matches!(first, First::Ended);
        let (response, mut stream) = sender.send_request(Request::from_parts(parts, ()), eos)?;
        let (cancel, cancelled) = oneshot::channel();
        let sent = match first {
            First::Ended => Sent::All,
            First::Frame(frame) => {
                match send_at_once(Some(frame), body.is_end_stream(), &mut stream) {
                    Sent::All => Sent::All,
                    Sent::Partly => send_ready_frames(&mut body, &mut stream),
                }
            }
            First::NotYet => Sent::Partly,
        };
        if sent == Sent::Partly {
            tokio::spawn(pipe(body, stream, cancelled));
        }
        let response = response.await?;
        Ok(response.map(|recv| ResponseBody {
            recv,
            data_done: false,
            done: false,
            _cancel: cancel,
        }))
    }
}

/// What a request body had to offer before its head was sent.
enum First {
    /// The body ended (or was empty): the head ends the stream.
    Ended,
    /// Its first frame, to go right behind the head.
    Frame(Result<Frame<Bytes>, BoxError>),
    /// Nothing within [`FIRST_DATA_WAIT`]: the head goes alone.
    NotYet,
}

/// Waits up to [`FIRST_DATA_WAIT`] for the body's first frame.
async fn first_frame(body: &mut UpstreamBody) -> First {
    let first = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
    match tokio::time::timeout(FIRST_DATA_WAIT, first).await {
        Ok(None) => First::Ended,
        Ok(Some(frame)) => First::Frame(frame),
        Err(_) => First::NotYet,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    All,
    Partly,
}

/// What is left to do with a body frame once the ways it can end the
/// stream (the body's end, its failure, trailers) are handled.
enum Step {
    /// Data to send, and whether the body ends with it.
    Data(Bytes, bool),
    Done,
}

/// Ends the stream as `frame` says, or hands back its data: the caller knows
/// whether it may send without waiting for capacity.
fn step(
    frame: Option<Result<Frame<Bytes>, BoxError>>,
    body_ended: bool,
    stream: &mut SendStream<Bytes>,
) -> Step {
    match frame {
        None => {
            let _ = stream.send_data(Bytes::new(), true);
            Step::Done
        }
        Some(Err(error)) => {
            tracing::debug!(%error, "request body failed; resetting the upstream stream");
            stream.send_reset(h2::Reason::CANCEL);
            Step::Done
        }
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => Step::Data(data, body_ended),
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                }
                Step::Done
            }
        },
    }
}

/// Sends one body frame without waiting for capacity (h2 queues it behind
/// what the stream already holds); `All` once the stream has ended.
fn send_at_once(
    frame: Option<Result<Frame<Bytes>, BoxError>>,
    body_ended: bool,
    stream: &mut SendStream<Bytes>,
) -> Sent {
    match step(frame, body_ended, stream) {
        Step::Done => Sent::All,
        Step::Data(data, eos) => {
            if stream.send_data(data, eos).is_err() || eos {
                Sent::All
            } else {
                Sent::Partly
            }
        }
    }
}

/// Sends every body frame that is already here, without waiting: h2 queues
/// them behind the HEADERS, so they leave together. Bounded by what the
/// caller already sent (its own flow-control window).
fn send_ready_frames(body: &mut UpstreamBody, stream: &mut SendStream<Bytes>) -> Sent {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(&mut cx) else {
            return Sent::Partly;
        };
        if send_at_once(frame, body.is_end_stream(), stream) == Sent::All {
            return Sent::All;
        }
    }
}

/// Sends the rest of a body as it arrives, waiting for send capacity so that
/// a slow endpoint bounds what is buffered. Ends with the body, or resets
/// the stream when the body fails, the endpoint resets, or the request was
/// given up (its response or response body dropped).
async fn pipe(
    mut body: UpstreamBody,
    mut stream: SendStream<Bytes>,
    mut cancelled: oneshot::Receiver<()>,
) {
    enum Next {
        Frame(Option<Result<Frame<Bytes>, BoxError>>),
        Reset,
        Cancelled,
    }
    loop {
        let next = poll_fn(|cx| {
            if Pin::new(&mut cancelled).poll(cx).is_ready() {
                return Poll::Ready(Next::Cancelled);
            }
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(Next::Reset);
            }
            Pin::new(&mut body).poll_frame(cx).map(Next::Frame)
        })
        .await;
        let frame = match next {
            Next::Reset => return,
            Next::Cancelled => {
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Next::Frame(frame) => frame,
        };
        match step(frame, body.is_end_stream(), &mut stream) {
            Step::Done => return,
            Step::Data(data, eos) => {
                if send_within_window(&mut stream, data, eos).await.is_err() || eos {
                    return;
                }
            }
        }
    }
}

/// An endpoint's HTTP/2 response body: DATA, then trailers if any. Flow
/// control credit is given back as the data is taken. Dropping it before the
/// end gives up the request (its body stops being sent).
#[derive(Debug)]
pub struct ResponseBody {
    recv: RecvStream,
    data_done: bool,
    done: bool,
    _cancel: oneshot::Sender<()>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let trailers = ready!(this.recv.poll_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
