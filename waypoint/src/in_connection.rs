//! Runs an HTTP/2 client connection's requests inside the connection's own
//! task. hyper hands each request to an executor; the default one spawns a
//! task per request, so a response went from the request's task to the
//! connection's task (a wake-up and a switch) before it could be written.
//! Here the connection and its requests are one task: a response queued by a
//! request is written in the same poll. A request that panics ends only
//! itself (its stream is reset), as a task of its own would.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;

type Request = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Requests handed over by hyper and not yet picked up by the connection.
#[derive(Default)]
struct Handed {
    requests: Mutex<Vec<Request>>,
    connection: AtomicWaker,
}

/// hyper's executor for one connection: queues, never spawns.
#[derive(Clone, Default)]
pub struct Executor {
    handed: Arc<Handed>,
}

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, request: F) {
        let request = AssertUnwindSafe(request).catch_unwind().map(|result| {
            if result.is_err() {
                tracing::error!("a request's handling panicked; its stream was reset");
            }
        });
        self.handed
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::pin(request));
        self.handed.connection.wake();
    }
}

/// A connection future and the requests its executor was handed, polled
/// together. Ends when the connection does.
pub struct Connection<C> {
    pub conn: Pin<Box<C>>,
    executor: Executor,
    requests: FuturesUnordered<Request>,
}

impl<C> Connection<C> {
    pub fn new(conn: C, executor: Executor) -> Self {
        Connection {
            conn: Box::pin(conn),
            executor,
            requests: FuturesUnordered::new(),
        }
    }

    /// Moves what hyper handed over into the set being polled.
    fn pick_up(&mut self) -> bool {
        let handed = std::mem::take(
            &mut *self
                .executor
                .handed
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let any = !handed.is_empty();
        self.requests.extend(handed);
        any
    }
}

impl<C: Future> Future for Connection<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        this.executor.handed.connection.register(cx.waker());
        loop {
            if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            this.pick_up();
            if this.requests.is_empty() {
                return Poll::Pending;
            }
            // FuturesUnordered polls only the requests that were woken, and
            // yields (waking this task) rather than loop forever.
            while let Poll::Ready(Some(())) = this.requests.poll_next_unpin(cx) {}
            // What the requests queued (responses, data) goes out now, not
            // after another trip through the scheduler.
            if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            if !this.pick_up() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in connection: hands `n` requests to the executor on its first
    /// poll, then ends once every one of them has run.
    struct Fake {
        executor: Executor,
        n: usize,
        ran: Arc<AtomicUsize>,
        started: bool,
    }

    impl Future for Fake {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            if !self.started {
                self.started = true;
                for i in 0..self.n {
                    let ran = self.ran.clone();
                    let waker = cx.waker().clone();
                    self.executor.execute(async move {
                        tokio::task::yield_now().await;
                        if i == 1 {
                            panic!("request 1 fails");
                        }
                        ran.fetch_add(1, Ordering::SeqCst);
                        waker.wake();
                    });
                }
            }
            let ran = self.ran.load(Ordering::SeqCst);
            if ran == self.n - 1 {
                Poll::Ready(ran)
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn requests_run_in_the_connections_task_and_a_panic_ends_only_its_own() {
        let executor = Executor::default();
        let ran = Arc::new(AtomicUsize::new(0));
        let fake = Fake {
            executor: executor.clone(),
            n: 4,
            ran: ran.clone(),
            started: false,
        };
        let done = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            Connection::new(fake, executor),
        )
        .await
        .expect("the connection ends once its requests ran");
        assert_eq!(done, 3);
    }
}
