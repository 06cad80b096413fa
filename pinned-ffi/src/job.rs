//! Jobs as the owner sees them: the type-erased closure and its slot
//! ([`Job`]), by box (tickets), by pointer into the caller's stack (a
//! blocking call through the queue) or posted in a mailbox lane, and the
//! messages that carry them.

use std::any::Any;
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{panic_message, Error};
use crate::lane::{self, Action, Handled, Lane};
use crate::mailbox::Posted;
#[cfg(feature = "tracing")]
use crate::shared::Shared;
use crate::slot::Slot;

/// What lives on the owner thread: the user's state and the owner-bound
/// values handed out as [`Bound`] handles.
pub(crate) struct OwnerState<S> {
    pub(crate) state: S,
    pub(crate) bound: HashMap<u64, Box<dyn Any>>,
}

impl<S> OwnerState<S> {
    pub(crate) fn new(state: S) -> Self {
        OwnerState {
            state,
            bound: HashMap::new(),
        }
    }
}

impl<S> Drop for OwnerState<S> {
    fn drop(&mut self) {
        // Owner-bound values (buffers, sessions) go before the state that
        // made them (the context), as an SDK requires.
        self.bound.clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    Done,
    Cancelled,
    Panicked,
}

/// A type-erased job: the closure, how to call it, and its slot. Methods
/// take `&self` because a borrowed job lives on its caller's stack while
/// the owner uses it; `f` is touched by one side at a time (see `JobImpl`).
pub(crate) trait Job<S>: Send {
    /// Runs it unless cancelled, calls `tally` with the outcome just before
    /// the caller can see it, and returns it; after this returns the job is
    /// not touched.
    fn run(&self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> RunOutcome;
    /// Completes it with `error` without running it.
    fn reject(&self, error: Error);
    fn enqueued(&self) -> Option<Instant>;
    #[cfg(feature = "tracing")]
    fn label(&self) -> Option<&str>;
}

/// Where a job's slot lives: shared (`Arc`, for tickets) or inline (for
/// `run`, on the caller's stack).
pub(crate) trait SlotHolder<R> {
    /// Whether the caller may cancel (only ticket holders can give up).
    const CANCELLABLE: bool;
    fn slot(&self) -> &Slot<R>;
}

impl<R> SlotHolder<R> for Arc<Slot<R>> {
    const CANCELLABLE: bool = true;
    fn slot(&self) -> &Slot<R> {
        self
    }
}

impl<R> SlotHolder<R> for Slot<R> {
    // `run` waits to the end: no cancel, so no claim needed before running,
    // which spares an atomic RMW on the line the caller is spinning on.
    const CANCELLABLE: bool = false;
    fn slot(&self) -> &Slot<R> {
        self
    }
}

/// `repr(C)` keeps what both sides touch on every job (the slot's state and
/// result, the closure) first, on the first cache line.
#[repr(C)]
pub(crate) struct JobImpl<S, F, R, P: SlotHolder<R>> {
    pub(crate) slot: P,
    /// Taken exactly once, by whichever side runs, rejects or drops the job.
    pub(crate) f: UnsafeCell<Option<F>>,
    pub(crate) call: fn(F, &mut OwnerState<S>) -> R,
    pub(crate) enqueued: Option<Instant>,
    /// The submitting thread's label (see `with_label`).
    #[cfg(feature = "tracing")]
    pub(crate) label: Option<Arc<str>>,
}

// SAFETY: `f` is only accessed by the side that holds the job (the owner
// while running or rejecting it, the creator before sending or after it got
// it back), never by two threads at once; F: Send lets it move.
unsafe impl<S, F: Send, R, P: SlotHolder<R> + Send> Send for JobImpl<S, F, R, P> {}

impl<S, F, R, P: SlotHolder<R>> JobImpl<S, F, R, P> {
    pub(crate) fn new(
        f: F,
        call: fn(F, &mut OwnerState<S>) -> R,
        slot: P,
        enqueued: Option<Instant>,
    ) -> Self {
        JobImpl {
            f: UnsafeCell::new(Some(f)),
            call,
            slot,
            enqueued,
            #[cfg(feature = "tracing")]
            label: crate::labels::current(),
        }
    }

    /// # Safety
    /// The caller must be the only one accessing `f` (see the Send impl).
    pub(crate) unsafe fn take_f(&self) -> Option<F> {
        // SAFETY: exclusive by the caller's contract.
        unsafe { (*self.f.get()).take() }
    }
}

impl<S, F: Send, R: Send, P: SlotHolder<R> + Send> Job<S> for JobImpl<S, F, R, P> {
    fn run(&self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> RunOutcome {
        let slot = self.slot.slot();
        // SAFETY: the owner holds the job now; nobody else touches `f`.
        let f = unsafe { self.take_f() };
        if P::CANCELLABLE && !slot.start() {
            drop(f);
            tally(RunOutcome::Cancelled);
            return RunOutcome::Cancelled;
        }
        let f = f.expect("job runs once");
        let call = self.call;
        // The closure is consumed (and so dropped) inside the call, before
        // `complete` signals the caller: `run` relies on this.
        let outcome = match panic::catch_unwind(AssertUnwindSafe(|| call(f, owner))) {
            Ok(r) => (Ok(r), RunOutcome::Done),
            Err(payload) => {
                let msg = panic_message(&*payload);
                drop(payload);
                (Err(Error::Panicked(msg)), RunOutcome::Panicked)
            }
        };
        tally(outcome.1);
        // Last touch of a borrowed job: it may be gone right after.
        slot.complete(outcome.0);
        outcome.1
    }

    fn reject(&self, error: Error) {
        // SAFETY: the rejecting side holds the job; nobody else touches `f`.
        if let Some(f) = unsafe { self.take_f() } {
            drop(f);
            self.slot.slot().complete(Err(error));
        }
    }

    fn enqueued(&self) -> Option<Instant> {
        self.enqueued
    }

    #[cfg(feature = "tracing")]
    fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
}

impl<S, F, R, P: SlotHolder<R>> Drop for JobImpl<S, F, R, P> {
    fn drop(&mut self) {
        // A job dropped without running or being rejected (its channel was
        // torn down) still gets an outcome.
        if let Some(f) = self.f.get_mut().take() {
            drop(f);
            self.slot.slot().complete(Err(Error::Shutdown));
        }
    }
}

/// Keeps a value on cache lines of its own (128 bytes: adjacent-line
/// prefetch pairs lines on x86).
#[repr(align(128))]
pub(crate) struct CacheAligned<T>(pub(crate) T);

/// A job on its caller's stack (from `run`), sent by pointer: no allocation.
/// The caller waits until the job is completed, so the pointer stays valid
/// while this exists; dropping it unrun rejects the job.
pub(crate) struct BorrowedJob<S>(pub(crate) JobPtr<S>);

/// The pointer itself.
pub(crate) struct JobPtr<S>(pub(crate) NonNull<dyn Job<S>>);

impl<S> Clone for JobPtr<S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for JobPtr<S> {}

// SAFETY: the pointee is a `Job<S>`, which is Send; the pointer is only
// dereferenced by whoever holds the job (see BorrowedJob), one thread at a
// time.
unsafe impl<S> Send for JobPtr<S> {}

impl<S> BorrowedJob<S> {
    pub(crate) fn job(&self) -> &dyn Job<S> {
        // SAFETY: the caller keeps the job alive until it is completed, and
        // completion happens only through this message (run/reject/drop).
        unsafe { self.0 .0.as_ref() }
    }

    pub(crate) fn run(self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> RunOutcome {
        let outcome = self.job().run(owner, tally);
        std::mem::forget(self); // completed: the job may already be gone
        outcome
    }

    pub(crate) fn reject(self, error: Error) {
        self.job().reject(error);
        std::mem::forget(self);
    }
}

impl<S> Drop for BorrowedJob<S> {
    fn drop(&mut self) {
        self.job().reject(Error::Shutdown);
    }
}

/// A job posted to a caller's mailbox: run in place in its lane (see
/// [`lane`](crate::lane)). Dropping it unrun rejects it.
pub(crate) struct PostedJob<S>(pub(crate) Posted<Lane<OwnerState<S>>>);

impl<S> PostedJob<S> {
    pub(crate) fn run(self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> RunOutcome {
        let outcome = |h: Handled| match h {
            Handled::Done => RunOutcome::Done,
            Handled::Panicked => RunOutcome::Panicked,
            Handled::Rejected => unreachable!("a run is not a rejection"),
        };
        let handled = lane::handle(&self.0, Action::Run(owner), |h| tally(outcome(h)));
        std::mem::forget(self); // answered
        outcome(handled)
    }

    pub(crate) fn reject(self, error: Error) {
        lane::handle(&self.0, Action::Reject(error), |_| ());
        std::mem::forget(self);
    }

    pub(crate) fn lane(&self) -> &Lane<OwnerState<S>> {
        self.0.mailbox().lane()
    }
}

impl<S> Drop for PostedJob<S> {
    fn drop(&mut self) {
        lane::handle(&self.0, Action::Reject(Error::Shutdown), |_| ());
    }
}

pub(crate) fn call_state<S, R, F: FnOnce(&mut S) -> R>(f: F, owner: &mut OwnerState<S>) -> R {
    f(&mut owner.state)
}

pub(crate) fn call_owner<S, R, G: FnOnce(&mut OwnerState<S>) -> R>(g: G, owner: &mut OwnerState<S>) -> R {
    g(owner)
}

pub(crate) enum Msg<S> {
    Job(Box<dyn Job<S>>),
    Borrowed(BorrowedJob<S>),
    Posted(PostedJob<S>),
    Stop,
}

impl<S> Msg<S> {
    pub(crate) fn run(self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> RunOutcome {
        match self {
            Msg::Job(job) => job.run(owner, tally),
            Msg::Borrowed(job) => job.run(owner, tally),
            Msg::Posted(job) => job.run(owner, tally),
            Msg::Stop => unreachable!("Stop is not a job"),
        }
    }

    pub(crate) fn reject(self, error: Error) {
        match self {
            Msg::Job(job) => job.reject(error),
            Msg::Borrowed(job) => job.reject(error),
            Msg::Posted(job) => job.reject(error),
            Msg::Stop => {}
        }
    }

    pub(crate) fn enqueued(&self) -> Option<Instant> {
        match self {
            Msg::Job(job) => job.enqueued(),
            Msg::Borrowed(job) => job.job().enqueued(),
            Msg::Posted(job) => job.lane().enqueued(),
            Msg::Stop => None,
        }
    }

    /// The span a job runs in: pool, worker index, caller label.
    #[cfg(feature = "tracing")]
    pub(crate) fn span(&self, shared: &Shared) -> tracing::Span {
        let posted;
        let label = match self {
            Msg::Job(job) => job.label(),
            Msg::Borrowed(job) => job.job().label(),
            Msg::Posted(job) => {
                posted = job.lane().label();
                posted.as_deref()
            }
            Msg::Stop => None,
        };
        let (pool, index) = match &shared.config.pool {
            Some((name, index)) => (name.as_str(), *index as i64),
            None => ("", -1),
        };
        tracing::info_span!("pinned_ffi::job", worker = %shared.name, pool, index, label = label.unwrap_or(""))
    }
}
