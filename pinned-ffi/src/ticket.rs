//! [`Ticket`]: the caller's side of a job given to `submit`. Wait for it,
//! poll it, `.await` it, give up on it, or let it run on its own
//! ([`detach`](Ticket::detach)).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::job::HoldsSlot;
use crate::shared::Shared;
use crate::slot::{DoneFlag, Slot};
use crate::spin::{spin_with, Partner, Waiter};
use crate::waits::{self, Waiting};

/// Where a ticket's outcome lands: in the slot itself, or boxed for a
/// result past [`BOX_PAST`] bytes, so that the owner's and the waiter's
/// stacks move a pointer instead of the value (a debug build moves a
/// result a dozen times on its way; see `PinnedWorker::MAX_RESULT`).
///
/// Either way the slot lives in the job's own allocation, which the ticket
/// shares with the queue's message (see [`HoldsSlot`]).
enum Carrier<R> {
    Inline(Arc<dyn HoldsSlot<R>>),
    Boxed(Arc<dyn HoldsSlot<Box<R>>>),
}

/// Results larger than this travel boxed.
pub(crate) const BOX_PAST: usize = 1024;

impl<R> Carrier<R> {
    fn is_done(&self) -> bool {
        self.done_flag().is_set()
    }

    /// The slot's done word, reached once for a spin on it.
    fn done_flag(&self) -> DoneFlag<'_> {
        match self {
            Carrier::Inline(s) => s.slot().done_flag(),
            Carrier::Boxed(s) => s.slot().done_flag(),
        }
    }

    fn cancel(&self) -> Option<bool> {
        match self {
            Carrier::Inline(s) => s.slot().cancel(),
            Carrier::Boxed(s) => s.slot().cancel(),
        }
    }

    fn worker(&self) -> u64 {
        match self {
            Carrier::Inline(s) => s.slot().worker,
            Carrier::Boxed(s) => s.slot().worker,
        }
    }

    fn wait_until(&self, spin: Duration, deadline: Option<Instant>, owner: impl FnOnce() -> Partner) -> bool {
        match self {
            Carrier::Inline(s) => s.slot().wait_until(spin, deadline, owner),
            Carrier::Boxed(s) => s.slot().wait_until(spin, deadline, owner),
        }
    }

    fn register(&self, waker: &Waker) -> bool {
        match self {
            Carrier::Inline(s) => s.slot().register(waker),
            Carrier::Boxed(s) => s.slot().register(waker),
        }
    }

    /// The outcome, once done was seen.
    fn take(&self) -> Result<R, Error> {
        match self {
            Carrier::Inline(s) => s.slot().take(),
            Carrier::Boxed(s) => s.slot().take().map(|b| *b),
        }
    }
}

/// The caller's side of a job given to [`submit`](crate::PinnedWorker::submit):
/// wait for it, poll it, or `.await` it (any executor; no runtime needed).
///
/// Dropping a ticket (or a future awaiting it) before the job started
/// cancels the job: it will never run.
///
/// Polled on a worker's owner thread (a job blocking on it with a nested
/// `block_on`), a ticket counts as that owner waiting on the ticket's
/// worker until it resolves or the job returns; a poll that would close a
/// cycle of owners waiting on each other resolves to
/// [`Error::Reentrant`] (the job is cancelled if it had not started), even
/// if the job meant to poll only once.
///
/// Awaited, its first poll spins briefly (the worker's
/// [`spin`](crate::Builder::spin), at most [`Ticket::POLL_SPIN`]) before it
/// registers the waker: a job that completes within a hand-off's time is
/// then returned without parking and waking the executor's thread, which
/// costs tens of µs on a VM.
///
/// ```
/// use pinned_ffi::PinnedWorker;
/// let worker = PinnedWorker::builder().spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
/// let ticket = worker.submit(|n: &mut u64| { *n += 1; *n })?;
/// assert_eq!(ticket.wait()?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A ticket crosses threads only where its result may:
///
/// ```compile_fail
/// fn send<T: Send>() {}
/// send::<pinned_ffi::Ticket<std::rc::Rc<u8>>>();
/// ```
#[must_use = "dropping a ticket cancels its job if it has not started: \
              `.wait()` or `.await` it, or `.detach()` it to let the job run on its own"]
pub struct Ticket<R> {
    slot: Option<Carrier<R>>,
    /// The worker, to free the job's place in its queue if the job is
    /// given up while still queued.
    worker: Arc<Shared>,
    /// While awaited from an owner thread: that owner's wait on the job's
    /// worker, for the deadlock detector.
    waiting: Option<Waiting>,
    spin: Duration,
    polled: bool,
    /// Send and Sync only where the slot is (R: Send): the carrier's trait
    /// objects are Send and Sync whatever R is.
    _result: PhantomData<Slot<R>>,
}

impl<R> std::fmt::Debug for Ticket<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("done", &self.is_done()).finish()
    }
}

impl<R> Ticket<R> {
    pub(crate) fn new(slot: Arc<dyn HoldsSlot<R>>, spin: Duration, worker: Arc<Shared>) -> Self {
        Ticket {
            slot: Some(Carrier::Inline(slot)),
            worker,
            waiting: None,
            spin,
            polled: false,
            _result: PhantomData,
        }
    }

    /// A ticket whose result travels boxed (see [`BOX_PAST`]).
    pub(crate) fn boxed(slot: Arc<dyn HoldsSlot<Box<R>>>, spin: Duration, worker: Arc<Shared>) -> Self {
        Ticket {
            slot: Some(Carrier::Boxed(slot)),
            worker,
            waiting: None,
            spin,
            polled: false,
            _result: PhantomData,
        }
    }

    /// The longest a ticket's first poll spins on the executor's thread.
    pub const POLL_SPIN: Duration = Duration::from_micros(3);

    fn slot(&self) -> &Carrier<R> {
        self.slot
            .as_ref()
            .expect("ticket used after its outcome was taken")
    }

    /// Whether the outcome is ready (`wait` would not block).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let t = w.submit(|n| *n)?;
    /// while !t.is_done() { std::thread::yield_now(); }
    /// assert_eq!(t.wait()?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_done(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.is_done())
    }

    /// Records a blocking wait on this ticket's worker (see
    /// [`waits`](crate::waits)); when that wait could never end, cancels
    /// the job if it has not started and gives [`Error::Reentrant`].
    fn begin_wait(&self) -> Result<Waiting, Error> {
        waits::begin(self.slot().worker()).inspect_err(|_| {
            cancel(self.slot(), &self.worker);
        })
    }

    /// Blocks until the job's outcome is ready.
    ///
    /// # Errors
    /// The job's error ([`Error::Panicked`], [`Error::Shutdown`], ...);
    /// [`Error::Reentrant`] when the wait could never end: called from the
    /// owner thread of the worker that would run it, or closing a cycle of
    /// owners waiting on each other (see [`Error::Reentrant`]); the job is
    /// cancelled if it had not started.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// assert_eq!(w.submit(|n| *n + 2)?.wait()?, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(mut self) -> Result<R, Error> {
        let _waiting = if self.is_done() {
            None
        } else {
            Some(self.begin_wait()?)
        };
        let slot = self.slot.take().expect("ticket already spent");
        slot.wait_until(self.spin, None, || self.worker.owner_cpu.get());
        slot.take()
    }

    /// Like [`wait`](Self::wait) with a time limit. On time-out the job is
    /// cancelled if it has not started (it will never run):
    /// `Error::TimedOut { started: false }`; if it had started it runs to
    /// completion and its result is discarded: `TimedOut { started: true }`.
    /// An outcome that arrives as the time runs out (a result, or a
    /// refusal such as `Broken`) is returned as it is.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pinned_ffi::{Error, PinnedWorker};
    /// let w = PinnedWorker::builder().spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let slow = w.submit(|_| std::thread::sleep(Duration::from_millis(100)))?;
    /// let queued = w.submit(|_| unreachable!("cancelled before it started"))?;
    /// assert_eq!(queued.wait_timeout(Duration::from_millis(1)), Err(Error::TimedOut { started: false }));
    /// slow.wait()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`wait`](Self::wait), plus [`Error::TimedOut`].
    pub fn wait_timeout(self, timeout: Duration) -> Result<R, Error> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.wait_deadline(deadline),
            None => self.wait(), // a deadline past the clock's range never comes
        }
    }

    /// Like [`wait_timeout`](Self::wait_timeout) with a deadline.
    ///
    /// # Errors
    /// As [`wait_timeout`](Self::wait_timeout).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    /// assert_eq!(w.submit(|n| *n)?.wait_deadline(deadline)?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_deadline(mut self, deadline: Instant) -> Result<R, Error> {
        let _waiting = if self.is_done() {
            None
        } else {
            Some(self.begin_wait()?)
        };
        let slot = self.slot.take().expect("ticket already spent");
        if slot.wait_until(self.spin, Some(deadline), || self.worker.owner_cpu.get()) {
            return slot.take();
        }
        give_up(&slot, &self.worker)
    }

    /// Gives up on the job now: `TimedOut { started: false }` if it had
    /// not started (it never will, and its place in the queue is free);
    /// its outcome if that came as the time ran out (a refusal is never
    /// reported as a start); `TimedOut { started: true }` while it runs.
    pub(crate) fn give_up(mut self) -> Result<R, Error> {
        match self.slot.take() {
            Some(slot) => give_up(&slot, &self.worker),
            None => Err(Error::TimedOut { started: true }),
        }
    }

    /// Lets the job run without anyone waiting for it: fire and forget.
    /// Unlike dropping the ticket, which cancels a job that has not
    /// started, a detached job runs (unless the worker shuts down first).
    /// Its outcome goes to the worker's metrics: `completed`, or
    /// `panicked` for a panic (contained on the owner like any job's); its
    /// result is dropped on the owner thread, or here when the job was
    /// already done (a result that must die on the owner belongs in a
    /// [`Bound`](crate::Bound)).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// w.submit(|n| *n += 1)?.detach(); // runs; nobody waits
    /// w.submit(|_| panic!("counted, not lost"))?.detach();
    /// assert_eq!(w.run(|n| *n)?, 1); // jobs from one thread run in order
    /// let m = w.metrics();
    /// assert_eq!((m.completed, m.panicked), (2, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn detach(mut self) {
        // The job keeps its own hold on the slot; ours goes without a cancel.
        drop(self.slot.take());
    }

    /// The outcome if it is ready, else the ticket back.
    ///
    /// # Errors
    /// `Err(ticket)` when the job has not finished yet.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let mut t = w.submit(|n| *n + 1)?;
    /// let value = loop {
    ///     match t.try_get() {
    ///         Ok(outcome) => break outcome?,
    ///         Err(again) => t = again,
    ///     }
    /// };
    /// assert_eq!(value, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    /// If the outcome was already taken (the ticket was awaited to the
    /// end), as [`wait`](Self::wait) does.
    pub fn try_get(mut self) -> Result<Result<R, Error>, Ticket<R>> {
        assert!(self.slot.is_some(), "ticket used after its outcome was taken");
        if self.is_done() {
            Ok(self.slot.take().expect("checked above").take())
        } else {
            Err(self)
        }
    }
}

impl<R> Drop for Ticket<R> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            cancel(&slot, &self.worker);
        }
    }
}

/// Gives up on the job: `true` if it had not started (it never will). A
/// job still in the queue frees its place there at once.
/// The outcome of a wait that ran out of time (see [`Ticket::give_up`]).
fn give_up<R>(slot: &Carrier<R>, worker: &Shared) -> Result<R, Error> {
    if cancel(slot, worker) {
        return Err(Error::TimedOut { started: false });
    }
    // Not cancelled: running, or done (it ran, or the owner refused it)
    // since the wait gave up. A done job's outcome is the truth.
    if slot.is_done() {
        return slot.take();
    }
    Err(Error::TimedOut { started: true })
}

fn cancel<R>(slot: &Carrier<R>, worker: &Shared) -> bool {
    match slot.cancel() {
        Some(queued) => {
            if queued {
                // A waker's panic here is the caller's executor's; it is
                // contained like the owner's.
                let _ = worker.room.abandon();
            }
            true
        }
        None => false,
    }
}

impl<R> Future for Ticket<R> {
    type Output = Result<R, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let spin = if this.polled {
            Duration::ZERO
        } else {
            this.spin.min(Self::POLL_SPIN)
        };
        this.polled = true;
        let slot = this.slot.as_ref().expect("Ticket polled after completion");
        if !slot.is_done() {
            // Polled on an owner thread (by a nested `block_on`, say): that
            // owner now waits on the job's worker until the ticket resolves
            // or its own job ends.
            // Record it, and refuse a wait that could never end (on its own
            // worker, or closing a cycle of owners).
            let me = waits::polling_waiter();
            if me.is_some() && this.waiting.as_ref().and_then(Waiting::waiter) != me {
                match waits::begin_polled(slot.worker()) {
                    Ok(w) => this.waiting = Some(w),
                    Err(e) => {
                        cancel(slot, &this.worker);
                        this.slot = None;
                        this.waiting = None;
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
        let owner = || this.worker.owner_cpu.get();
        let done = slot.done_flag();
        if spin_with(|| done.is_set(), spin, None, None, owner, Waiter::Caller).is_ok()
            || slot.register(cx.waker())
        {
            let slot = this.slot.take().expect("checked above");
            this.waiting = None;
            return Poll::Ready(slot.take());
        }
        Poll::Pending
    }
}

// A Ticket holds no R until it is taken, and never gives out references
// into the slot, so moving it is fine.
impl<R> Unpin for Ticket<R> {}
