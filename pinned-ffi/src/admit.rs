//! Async submission: [`PinnedWorker::submit_async`] waits for room in the
//! queue without blocking the executor's thread, and
//! [`PinnedWorker::call`] submits and awaits the result in one step. Any
//! executor: nothing here needs a runtime.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Error, TrySubmitError};
use crate::room::Waiter;
use crate::ticket::Ticket;
use crate::waits;
use crate::worker::{PinnedWorker, Wait};

/// Waits for a place in a worker's queue, then queues the job: the future
/// behind [`PinnedWorker::submit_async`]. Dropped at any point, it leaves
/// nothing behind: before the job is queued, its place in line is given
/// up (a wake meant for it passes to the next in line) and the job is
/// dropped unrun; once queued, it has already returned the ticket.
pub(crate) struct Admit<'w, S, F, R> {
    worker: &'w PinnedWorker<S>,
    f: Option<F>,
    waiter: Option<Waiter>,
    _result: PhantomData<fn() -> R>,
}

impl<'w, S: 'static, F, R> Admit<'w, S, F, R>
where
    F: FnOnce(&mut S) -> R + Send + 'static,
    R: Send + 'static,
{
    pub(crate) fn new(worker: &'w PinnedWorker<S>, f: F) -> Self {
        Admit {
            worker,
            f: Some(f),
            waiter: None,
            _result: PhantomData,
        }
    }

    /// The job back, if it was not queued.
    pub(crate) fn into_job(mut self) -> Option<F> {
        self.f.take()
    }

    fn leave_line(&mut self) {
        if let Some(w) = self.waiter.take() {
            let _ = self.worker.shared.room.leave(&w);
        }
    }
}

impl<S: 'static, F, R> Future for Admit<'_, S, F, R>
where
    F: FnOnce(&mut S) -> R + Send + 'static,
    R: Send + 'static,
{
    /// Never `Full`: that is waited out.
    type Output = Result<Ticket<R>, TrySubmitError<F>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let f = this.f.take().expect("Admit polled after completion");
        let f = match this.worker.submit_with(f, Wait::No) {
            Err(TrySubmitError::Full(f)) => f,
            done => {
                this.leave_line();
                return Poll::Ready(done);
            }
        };
        // Polled on an owner thread whose wait could never end (its own
        // worker's queue, or one whose owner waits on it): refuse.
        if waits::poll_would_deadlock(this.worker.id()) {
            this.leave_line();
            return Poll::Ready(Err(TrySubmitError::Refused(f, Error::Reentrant)));
        }
        let room = &this.worker.shared.room;
        let w = this.waiter.get_or_insert_with(|| room.waiter());
        room.wait_in_line(w, cx.waker());
        // A place freed before we were in line woke no one: look again.
        match this.worker.submit_with(f, Wait::No) {
            Err(TrySubmitError::Full(f)) => {
                this.f = Some(f);
                Poll::Pending
            }
            done => {
                this.leave_line();
                Poll::Ready(done)
            }
        }
    }
}

impl<S, F, R> Drop for Admit<'_, S, F, R> {
    fn drop(&mut self) {
        if let Some(w) = self.waiter.take() {
            let _ = self.worker.shared.room.leave(&w);
        }
    }
}

// The job is never pinned: it is moved in and out by value.
impl<S, F, R> Unpin for Admit<'_, S, F, R> {}

impl<S: 'static> PinnedWorker<S> {
    /// Queues `f` and returns its [`Ticket`], waiting for room in the
    /// queue without blocking the thread: the async form of
    /// [`submit`](Self::submit), for any executor.
    ///
    /// **Cancel-safe.** Dropped while waiting for room, the future gives up
    /// its place in line (the next waiter is woken in its stead) and drops
    /// `f` unrun; nothing was queued. Once it has returned the ticket, the
    /// ticket's own rule holds: dropping it cancels a job that has not
    /// started, and frees its place in the queue.
    ///
    /// ```
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # let worker = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(1u64))?;
    /// rt.block_on(async {
    ///     let ticket = worker.submit_async(|n| *n + 1).await?;
    ///     assert_eq!(ticket.await?, 2);
    ///     Ok::<_, pinned_ffi::Error>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`submit`](Self::submit); [`Error::Reentrant`] when polled on an
    /// owner thread that the wait for room would deadlock.
    pub async fn submit_async<R, F>(&self, f: F) -> Result<Ticket<R>, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        Admit::new(self, f).await.map_err(|e| match e {
            TrySubmitError::Refused(_, e) => e,
            TrySubmitError::Full(_) => Error::Reentrant, // never: waited out
        })
    }

    /// Runs `f` on the owner and awaits its result: [`submit_async`](Self::submit_async)
    /// and the ticket in one step. The async counterpart of
    /// [`run`](Self::run), which would block the executor's thread for the
    /// whole round trip.
    ///
    /// **Cancel-safe.** Dropped before the job started, the job never runs
    /// (it is withdrawn from the line or the queue, and its place freed);
    /// dropped while it runs, it runs to the end and its result is dropped
    /// on the owner.
    ///
    /// ```
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # let worker = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(20u64))?;
    /// let answer = rt.block_on(worker.call(|n| *n * 2 + 2))?;
    /// assert_eq!(answer, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`submit_async`](Self::submit_async) and [`Ticket::wait`].
    pub async fn call<R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit_async(f).await?.await
    }
}
