//! The one-shot completion slot between a caller and the owner thread, and
//! [`Ticket`], the caller's side of a submitted job.
//!
//! The hot path is lock-free: the owner publishes the result with one
//! atomic RMW, and a caller that is still spinning sees it without any
//! system call. Only a caller that has spun out registers a waker (under a
//! mutex) and parks, and only then does the owner pay a wake-up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::spin::spin_until_done;
use crate::sync::{self, AtomicU8, Mutex, Thread, UnsafeCell};

use crate::error::Error;
use crate::waits::{self, Waiting};

const RUNNING: u8 = 1;
const DONE: u8 = 2;
const CANCELLED: u8 = 4;
const WAITER: u8 = 8;
/// Set by the completer after it has woken a registered waiter; from then
/// on it never touches the slot again, so a slot on the waiter's stack may
/// go away.
const FINISHED: u8 = 16;

/// Where one job's outcome lands. `repr(C)`: the state and the result,
/// touched on every hand-off, come first; the waker, needed only by a
/// parked waiter, last.
#[repr(C)]
pub(crate) struct Slot<R> {
    state: AtomicU8,
    result: UnsafeCell<Option<Result<R, Error>>>,
    /// The worker that runs the job, for re-entrancy checks.
    worker: u64,
    waker: Mutex<Option<Waker>>,
}

// SAFETY: `result` is written only by the completing side before it sets
// DONE (release) and read only by the waiting side after it saw DONE
// (acquire), so it is never accessed from two threads at once; R crosses
// threads, hence R: Send.
unsafe impl<R: Send> Sync for Slot<R> {}
// SAFETY: as above; the slot moves an R between threads.
unsafe impl<R: Send> Send for Slot<R> {}

impl<R> Slot<R> {
    pub(crate) fn new(worker: u64) -> Self {
        Slot {
            state: AtomicU8::new(0),
            result: UnsafeCell::new(None),
            waker: Mutex::new(None),
            worker,
        }
    }

    /// Owner: claims the job for running. `false` if the caller cancelled
    /// it first (it must then not run).
    pub(crate) fn start(&self) -> bool {
        // ORDERING: AcqRel pairs with `cancel` so exactly one of start and
        // cancel wins; the job's data was published by the channel.
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & (CANCELLED | DONE) == 0).then_some(s | RUNNING)
            })
            .is_ok()
    }

    /// Caller: gives up on the job. `true` if it had not started, so it
    /// never will; `false` if it was running or done.
    pub(crate) fn cancel(&self) -> bool {
        // ORDERING: see `start`.
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & (RUNNING | DONE | CANCELLED) == 0).then_some(s | CANCELLED)
            })
            .is_ok()
    }

    /// Completing side, first half: stores the outcome where the waiter
    /// will read it (not yet visible), and returns the second half.
    /// Called at most once per slot (the job owns the right to complete).
    ///
    /// The split exists because the slot may live on the waiter's stack:
    /// once the waiter sees DONE it may return and free it, so whoever
    /// completes must hold no reference into the slot (nor into anything
    /// around it, such as the job) when DONE is set. [`Publish`] holds raw
    /// pointers only, and its release is its last access.
    pub(crate) fn fill(&self, outcome: Result<R, Error>) -> Publish {
        // SAFETY: the waiter reads `result` only after seeing DONE, which is
        // set by `Publish::publish`, after this write; no one else writes it.
        self.result.with_mut(|r| unsafe { *r = Some(outcome) });
        Publish {
            state: &self.state,
            waker: &self.waker,
        }
    }

    fn is_done(&self) -> bool {
        // ORDERING: Acquire pairs with the Release in `complete`.
        self.state.load(Ordering::Acquire) & DONE != 0
    }

    /// Takes the outcome once DONE has been seen.
    fn take(&self) -> Result<R, Error> {
        debug_assert!(self.is_done());
        // SAFETY: DONE was observed with Acquire, so the completing side has
        // finished writing and will not touch `result` again; the waiter is
        // the only reader (Ticket is not Clone, `run` waits once).
        self.result
            .with_mut(|r| unsafe { (*r).take() })
            .expect("slot completed without an outcome")
    }

    /// Registers `waker` to be woken on completion. `true` if already done
    /// (then nothing will wake it).
    fn register(&self, waker: &Waker) -> bool {
        {
            let mut guard = self.waker.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *guard {
                Some(w) if w.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            }
        }
        // ORDERING: the waker is stored before WAITER is set (the mutex and
        // this AcqRel RMW order it), so a completer that sees WAITER finds
        // it; if DONE is already set we see it here.
        self.state.fetch_or(WAITER, Ordering::AcqRel) & DONE != 0
    }

    /// Blocks until done or `deadline`: spins for up to `spin`, then parks.
    /// Returns whether it is done. When it returns `true` the completer has
    /// finished with the slot.
    pub(crate) fn wait_until(&self, spin: Duration, deadline: Option<Instant>) -> bool {
        if spin_until_done(|| self.is_done(), spin, deadline) {
            return true;
        }
        let waker = Waker::from(Arc::new(ThreadWaker(sync::current())));
        if self.register(&waker) {
            return true; // done before we registered: the completer never saw WAITER
        }
        loop {
            if self.is_done() {
                // The completer saw WAITER and is waking us; wait until it
                // has let go of the slot (a few instructions).
                // ORDERING: Acquire pairs with the Release of FINISHED.
                while self.state.load(Ordering::Acquire) & FINISHED == 0 {
                    sync::spin_loop();
                }
                return true;
            }
            match deadline {
                None => sync::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    sync::park_timeout(d - now);
                }
            }
        }
    }

    /// Waits for the outcome (no deadline). On return the completer no
    /// longer touches the slot, so it may live on the waiter's stack.
    pub(crate) fn wait(&self, spin: Duration) -> Result<R, Error> {
        self.wait_until(spin, None);
        self.take()
    }
}

/// The second half of completing a slot (see [`Slot::fill`]): sets DONE
/// and wakes a registered waiter. Raw pointers, so that nothing borrowed
/// from the slot is alive when the waiter may free it.
#[must_use = "the waiter sees nothing until the outcome is published"]
pub(crate) struct Publish {
    state: *const AtomicU8,
    waker: *const Mutex<Option<Waker>>,
}

impl Publish {
    /// Makes the outcome visible and wakes the waiter. Returns how many
    /// panics a waker's `wake` raised (they are caught: a waker is user
    /// code, and this runs on the owner thread).
    ///
    /// # Safety
    /// The slot this came from is alive: its waiter has not seen DONE
    /// (nobody but this publishes it) and, when it registered as a waiter,
    /// does not return before FINISHED. Call it once, holding no reference
    /// into the slot or the job around it.
    pub(crate) unsafe fn publish(self) -> u32 {
        // SAFETY: alive by the contract until DONE is set. The reference
        // covers only an atomic (interior-mutable bytes), the same pattern
        // as `Arc::drop`'s last decrement.
        let state = unsafe { &*self.state };
        // ORDERING: Release publishes `result`; Acquire sees the WAITER bit
        // and the waker stored before it.
        let prev = state.fetch_or(DONE, Ordering::AcqRel);
        if prev & WAITER == 0 {
            return 0; // that RMW was the last touch: the slot may be gone
        }
        // SAFETY: a registered waiter waits for FINISHED before it returns,
        // so the slot stays alive until the store below.
        let waker = unsafe { &*self.waker }
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // ORDERING: Release: our last touch of the slot (the unlock above)
        // happens before the waiter sees FINISHED.
        state.fetch_or(FINISHED, Ordering::Release);
        match waker {
            Some(waker) => match crate::unwind::catch(move || waker.wake()) {
                Ok(()) => 0,
                Err(caught) => caught.panics(),
            },
            None => 0,
        }
    }
}

// SAFETY: the pointers are only dereferenced under `publish`'s contract;
// the atomic and the mutex they point to are Sync.
unsafe impl Send for Publish {}

/// Where a ticket's outcome lands: in the slot itself, or boxed for a
/// result past [`BOX_PAST`] bytes, so that the owner's and the waiter's
/// stacks move a pointer instead of the value (a debug build moves a
/// result a dozen times on its way; see `PinnedWorker::MAX_RESULT`).
enum Carrier<R> {
    Inline(Arc<Slot<R>>),
    Boxed(Arc<Slot<Box<R>>>),
}

/// Results larger than this travel boxed.
pub(crate) const BOX_PAST: usize = 1024;

impl<R> Carrier<R> {
    fn is_done(&self) -> bool {
        match self {
            Carrier::Inline(s) => s.is_done(),
            Carrier::Boxed(s) => s.is_done(),
        }
    }

    fn cancel(&self) -> bool {
        match self {
            Carrier::Inline(s) => s.cancel(),
            Carrier::Boxed(s) => s.cancel(),
        }
    }

    fn worker(&self) -> u64 {
        match self {
            Carrier::Inline(s) => s.worker,
            Carrier::Boxed(s) => s.worker,
        }
    }

    fn wait_until(&self, spin: Duration, deadline: Option<Instant>) -> bool {
        match self {
            Carrier::Inline(s) => s.wait_until(spin, deadline),
            Carrier::Boxed(s) => s.wait_until(spin, deadline),
        }
    }

    fn register(&self, waker: &Waker) -> bool {
        match self {
            Carrier::Inline(s) => s.register(waker),
            Carrier::Boxed(s) => s.register(waker),
        }
    }

    /// The outcome, once done was seen.
    fn take(&self) -> Result<R, Error> {
        match self {
            Carrier::Inline(s) => s.take(),
            Carrier::Boxed(s) => s.take().map(|b| *b),
        }
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
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
#[must_use = "dropping a ticket cancels its job if it has not started"]
pub struct Ticket<R> {
    slot: Option<Carrier<R>>,
    /// While awaited from an owner thread: that owner's wait on the job's
    /// worker, for the deadlock detector.
    waiting: Option<Waiting>,
    spin: Duration,
    polled: bool,
}

impl<R> std::fmt::Debug for Ticket<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("done", &self.is_done()).finish()
    }
}

impl<R> Ticket<R> {
    pub(crate) fn new(slot: Arc<Slot<R>>, spin: Duration) -> Self {
        Ticket {
            slot: Some(Carrier::Inline(slot)),
            waiting: None,
            spin,
            polled: false,
        }
    }

    /// A ticket whose result travels boxed (see [`BOX_PAST`]).
    pub(crate) fn boxed(slot: Arc<Slot<Box<R>>>, spin: Duration) -> Self {
        Ticket {
            slot: Some(Carrier::Boxed(slot)),
            waiting: None,
            spin,
            polled: false,
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
            self.slot().cancel();
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
        slot.wait_until(self.spin, None);
        slot.take()
    }

    /// Like [`wait`](Self::wait) with a time limit. On time-out the job is
    /// cancelled if it has not started (it will never run):
    /// `Error::TimedOut { started: false }`; if it had started it runs to
    /// completion and its result is discarded: `TimedOut { started: true }`.
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
        if slot.wait_until(self.spin, Some(deadline)) {
            return slot.take();
        }
        let started = !slot.cancel();
        Err(Error::TimedOut { started })
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
            slot.cancel();
        }
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
            let me = waits::current();
            if me.is_some() && this.waiting.as_ref().and_then(Waiting::waiter) != me {
                match waits::begin_polled(slot.worker()) {
                    Ok(w) => this.waiting = Some(w),
                    Err(e) => {
                        slot.cancel();
                        this.slot = None;
                        this.waiting = None;
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
        if spin_until_done(|| slot.is_done(), spin, None) || slot.register(cx.waker()) {
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

/// Model checks of the slot's protocol under every interleaving loom finds.
#[cfg(all(test, pinned_loom))]
mod loom_tests {
    use super::*;

    fn slot() -> Arc<Slot<u64>> {
        Arc::new(Slot::new(0))
    }

    #[test]
    fn loom_a_parked_waiter_always_gets_the_result() {
        loom::model(|| {
            let s = slot();
            let owner = {
                let s = Arc::clone(&s);
                loom::thread::spawn(move || {
                    assert!(s.start());
                    // SAFETY: the slot is alive (an Arc), completed once.
                    let _ = unsafe { s.fill(Ok(7)).publish() };
                })
            };
            // No spinning: go straight to register-and-park, the racy path.
            assert_eq!(s.wait(Duration::ZERO), Ok(7));
            owner.join().unwrap();
        });
    }

    #[test]
    fn loom_cancel_and_start_exclude_each_other() {
        loom::model(|| {
            let s = slot();
            let owner = {
                let s = Arc::clone(&s);
                loom::thread::spawn(move || {
                    if s.start() {
                        // SAFETY: as above.
                        let _ = unsafe { s.fill(Ok(1)).publish() };
                        true
                    } else {
                        false
                    }
                })
            };
            let cancelled = s.cancel();
            let ran = owner.join().unwrap();
            assert_ne!(cancelled, ran, "exactly one of cancel and start wins");
            if ran {
                assert!(s.is_done());
                assert_eq!(s.take(), Ok(1));
            }
        });
    }

    #[test]
    fn loom_a_slot_on_the_waiters_stack_is_released_before_wait_returns() {
        // `run` keeps the slot on its stack: once `wait` returns, that
        // memory is reused. Model the reuse by overwriting the state and
        // the waker; if the completer still touched the slot afterwards (a
        // late FINISHED, or taking the waker), the marks would be gone.
        const REUSED: u8 = 0x40;
        loom::model(|| {
            let s = slot();
            let owner = {
                let s = Arc::clone(&s);
                // SAFETY: as above.
                loom::thread::spawn(move || {
                    let _ = unsafe { s.fill(Ok(3)).publish() };
                })
            };
            assert_eq!(s.wait(Duration::ZERO), Ok(3));
            s.state.store(REUSED, Ordering::Release);
            *s.waker.lock().unwrap() = Some(Waker::noop().clone());
            owner.join().unwrap();
            assert_eq!(
                s.state.load(Ordering::Acquire),
                REUSED,
                "completer wrote after wait returned"
            );
            assert!(
                s.waker.lock().unwrap().is_some(),
                "completer took the waker after wait returned"
            );
        });
    }
}
