//! Jobs as the owner sees them: the type-erased closure and its slot
//! ([`Job`]), in one allocation shared with its ticket, by pointer into
//! the caller's stack (a blocking call through the queue) or posted in a
//! mailbox lane, and the messages that carry them.

use std::any::Any;
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Instant;

use crate::error::Error;
use crate::lane::{self, Action, Handled, Lane};
use crate::mailbox::Posted;
#[cfg(feature = "tracing")]
use crate::shared::Shared;
use crate::slot::{Dequeued, Publish, Slot};
use crate::unwind::{catch_panic, drop_caught, AbortOnUnwind};

/// What lives on the owner thread: the user's state and the owner-bound
/// values handed out as [`Bound`](crate::Bound) handles. The owner tears it
/// down with [`teardown`](Self::teardown); the field order keeps the same
/// order (values before the state that made them) for any other drop.
pub(crate) struct OwnerState<S> {
    pub(crate) bound: HashMap<u64, Box<dyn Any>>,
    pub(crate) state: S,
}

impl<S> OwnerState<S> {
    pub(crate) fn new(state: S) -> Self {
        OwnerState {
            bound: HashMap::new(),
            state,
        }
    }

    /// Drops the owner-bound values (buffers, sessions) before the state
    /// that made them (the context), as an SDK requires; each destructor
    /// under a catch. Returns the panics contained.
    pub(crate) fn teardown(self) -> u32 {
        let OwnerState { state, bound } = self;
        let mut contained = 0;
        for (_, value) in bound {
            contained += drop_caught(value);
        }
        contained + drop_caught(state)
    }

    /// Drops one owner-bound value under a catch; the panics contained.
    pub(crate) fn release(&mut self, id: u64) -> u32 {
        self.bound.remove(&id).map_or(0, drop_caught)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    Done,
    Cancelled,
    Panicked,
}

/// How handling a job went, for the owner: the outcome and the panics
/// contained besides the job's own (a destructor of its captures, of a
/// panic payload or of a result nobody claimed; a waker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handling {
    pub(crate) outcome: RunOutcome,
    pub(crate) contained: u32,
}

/// A job handled but not yet published (see [`Slot::fill`]): the owner
/// publishes it once it no longer holds a reference into the job.
#[must_use = "the caller waits until the outcome is published"]
pub(crate) struct Finished {
    outcome: RunOutcome,
    contained: u32,
    publish: Option<Publish>,
}

impl Finished {
    /// Publishes the outcome (the job may be freed from then on).
    ///
    /// # Safety
    /// As [`Publish::publish`]: the job is alive and nothing borrowed from
    /// it is.
    unsafe fn publish(self) -> Handling {
        // SAFETY: by the contract.
        let wakes = self.publish.map_or(0, |p| unsafe { p.publish() });
        Handling {
            outcome: self.outcome,
            contained: self.contained + wakes,
        }
    }
}

/// A type-erased job: the closure, how to call it, and its slot. Methods
/// take `&self` because a borrowed job lives on its caller's stack while
/// the owner uses it; `f` is touched by one side at a time (see `JobImpl`).
pub(crate) trait Job<S>: Send {
    /// Runs it unless cancelled and stores its outcome, calling `tally`
    /// with the outcome first. The caller publishes the result once this
    /// `&self` is gone: a borrowed job may be freed the moment it is.
    fn run(&self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> Finished;
    /// Stores `error` as its outcome without running it (nothing to
    /// publish if it was already run or rejected).
    fn reject(&self, error: Error) -> Finished;
    fn enqueued(&self) -> Option<Instant>;
    /// The owner took it off the queue: who frees its place.
    fn dequeue(&self) -> Dequeued;
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

/// The slot of a ticket's job: it lives in the job's own allocation, which
/// the queue's message and the [`Ticket`](crate::Ticket) share (one `Arc`),
/// so a submission allocates once, and the ticket's holder, usually the
/// last to let go, frees it on its own thread.
pub(crate) struct TicketSlot<R>(pub(crate) Slot<R>);

impl<R> SlotHolder<R> for TicketSlot<R> {
    const CANCELLABLE: bool = true;
    fn slot(&self) -> &Slot<R> {
        &self.0
    }
}

/// A ticket's job as the ticket sees it: its slot only (the closure is the
/// owner's business).
pub(crate) trait HoldsSlot<R>: Send + Sync {
    fn slot(&self) -> &Slot<R>;
}

impl<S, F: Send, R: Send> HoldsSlot<R> for JobImpl<S, F, R, TicketSlot<R>> {
    fn slot(&self) -> &Slot<R> {
        &self.slot.0
    }
}

/// A ticket's job, shared by its queue message and its ticket.
pub(crate) type SharedJob<S, F, R> = Arc<JobImpl<S, F, R, TicketSlot<R>>>;

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
// SAFETY: only a ticket's job is shared, by its queue message and its
// ticket. The ticket sees it as `dyn HoldsSlot`, which reaches the slot
// alone (Sync for R: Send); `f` is reached only through `Job::run`,
// `Job::reject` and `take_f`, which only the message's holder calls (the
// owner, or the submitter before sending and after a refusal), one thread
// at a time; `call`, `enqueued` and the label are read-only.
unsafe impl<S, F: Send, R: Send> Sync for JobImpl<S, F, R, TicketSlot<R>> {}

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
    fn run(&self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> Finished {
        let slot = self.slot.slot();
        // SAFETY: the owner holds the job now; nobody else touches `f`.
        let f = unsafe { self.take_f() };
        if P::CANCELLABLE && !slot.start() {
            // The caller gave up: nobody waits, nothing to publish.
            let contained = drop_caught(f);
            tally(RunOutcome::Cancelled);
            return Finished {
                outcome: RunOutcome::Cancelled,
                contained,
                publish: None,
            };
        }
        let Some(f) = f else {
            // Unreachable: a job is handled once. Answer rather than panic.
            return Finished {
                outcome: RunOutcome::Panicked,
                contained: 0,
                publish: Some(slot.fill(Err(Error::Panicked("job handled twice".into())))),
            };
        };
        let call = self.call;
        // The closure is consumed (and so dropped) inside the call, under
        // the catch, before the outcome is published: `run` relies on this.
        // A panic's payload goes to the caller inside the `Panic` (which
        // drops it under a catch if nobody takes it).
        let ran = catch_panic(|| crate::waits::in_job(|| call(f, owner)));
        crate::waits::end_job();
        let (result, outcome) = match ran {
            Ok(r) => (Ok(r), RunOutcome::Done),
            Err(panic) => (Err(Error::Panicked(panic)), RunOutcome::Panicked),
        };
        tally(outcome);
        Finished {
            outcome,
            contained: 0,
            publish: Some(slot.fill(result)),
        }
    }

    fn reject(&self, error: Error) -> Finished {
        // SAFETY: the rejecting side holds the job; nobody else touches `f`.
        let (contained, publish) = match unsafe { self.take_f() } {
            Some(f) => (drop_caught(f), Some(self.slot.slot().fill(Err(error)))),
            None => (0, None),
        };
        Finished {
            outcome: RunOutcome::Cancelled,
            contained,
            publish,
        }
    }

    fn enqueued(&self) -> Option<Instant> {
        self.enqueued
    }

    fn dequeue(&self) -> Dequeued {
        if P::CANCELLABLE {
            self.slot.slot().dequeue()
        } else {
            Dequeued::Held // a blocking caller never gives up
        }
    }

    #[cfg(feature = "tracing")]
    fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
}

impl<S, F, R, P: SlotHolder<R>> Drop for JobImpl<S, F, R, P> {
    fn drop(&mut self) {
        // A job dropped without running or being rejected still gets an
        // outcome. A backstop: every path takes `f` first (a message runs
        // or rejects its job, also when dropped; a refused submission
        // takes its closure back), and nobody waits on a slot whose job
        // is being dropped.
        if let Some(f) = self.f.get_mut().take() {
            drop_caught(f);
            let publish = self.slot.slot().fill(Err(Error::Shutdown));
            // SAFETY: the slot is alive (held by this job) and nothing
            // borrowed from it is left.
            let _ = unsafe { publish.publish() };
        }
    }
}

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
        // SAFETY: the caller keeps the job alive until its outcome is
        // published, and that happens only through this message
        // (run/reject/drop).
        unsafe { self.0 .0.as_ref() }
    }

    /// Consumes the message: from here on it is handled exactly once, and
    /// its drop (which would reject it) can never run a second time.
    fn into_ptr(self) -> JobPtr<S> {
        let ptr = self.0;
        std::mem::forget(self);
        ptr
    }

    fn run(self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> Handling {
        let ptr = self.into_ptr();
        // SAFETY: as in `job`; the reference ends with this statement.
        let finished = unsafe { ptr.0.as_ref() }.run(owner, tally);
        // SAFETY: the job is alive until this publishes, and no reference
        // into it is left (the one above ended).
        unsafe { finished.publish() }
    }

    fn reject(self, error: Error) -> u32 {
        reject_borrowed(self.into_ptr(), error)
    }
}

/// Rejects a borrowed job and publishes the outcome; the panics contained.
fn reject_borrowed<S>(ptr: JobPtr<S>, error: Error) -> u32 {
    let region = AbortOnUnwind::new("rejecting a job that borrows its caller's stack");
    // SAFETY: as in `BorrowedJob::job`; the reference ends with this
    // statement.
    let finished = unsafe { ptr.0.as_ref() }.reject(error);
    // SAFETY: as in `BorrowedJob::run`.
    let contained = unsafe { finished.publish() }.contained;
    region.disarm();
    contained
}

impl<S> Drop for BorrowedJob<S> {
    fn drop(&mut self) {
        reject_borrowed(self.0, Error::Shutdown);
    }
}

/// A job posted to a caller's mailbox: run in place in its lane (see
/// [`lane`](crate::lane)). Dropping it unrun rejects it.
pub(crate) struct PostedJob<S>(pub(crate) Posted<Lane<OwnerState<S>>>);

impl<S> PostedJob<S> {
    /// Consumes the message: handled exactly once from here on.
    fn into_posted(self) -> Posted<Lane<OwnerState<S>>> {
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the post moves
        // out exactly once.
        unsafe { std::ptr::read(&this.0) }
    }

    fn run(self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> Handling {
        let posted = self.into_posted();
        let outcome = |h: Handled| match h {
            Handled::Done => RunOutcome::Done,
            Handled::Panicked => RunOutcome::Panicked,
            Handled::Rejected => RunOutcome::Cancelled,
        };
        let (handled, contained) = lane::handle(&posted, Action::Run(owner), |h| tally(outcome(h)));
        Handling {
            outcome: outcome(handled),
            contained,
        }
    }

    fn reject(self, error: Error) -> u32 {
        let posted = self.into_posted();
        lane::handle(&posted, Action::Reject(error), |_| ()).1
    }

    pub(crate) fn lane(&self) -> &Lane<OwnerState<S>> {
        self.0.mailbox().lane()
    }
}

impl<S> Drop for PostedJob<S> {
    fn drop(&mut self) {
        let _ = lane::handle(&self.0, Action::Reject(Error::Shutdown), |_| ());
    }
}

pub(crate) fn call_state<S, R, F: FnOnce(&mut S) -> R>(f: F, owner: &mut OwnerState<S>) -> R {
    f(&mut owner.state)
}

/// `call_state` for a large result, boxed as soon as it is made.
pub(crate) fn call_state_boxed<S, R, F: FnOnce(&mut S) -> R>(f: F, owner: &mut OwnerState<S>) -> Box<R> {
    Box::new(f(&mut owner.state))
}

pub(crate) fn call_owner<S, R, G: FnOnce(&mut OwnerState<S>) -> R>(g: G, owner: &mut OwnerState<S>) -> R {
    g(owner)
}

/// A ticket's job in the queue: the job's allocation, shared with its
/// ticket. Dropping it unhandled (the channel torn down) rejects the job,
/// so a ticket still waiting gets an outcome.
pub(crate) struct QueuedJob<S>(pub(crate) Arc<dyn Job<S> + Sync>);

impl<S> QueuedJob<S> {
    /// Consumes the message: handled exactly once from here on.
    fn into_job(self) -> Arc<dyn Job<S> + Sync> {
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the `Arc` moves
        // out exactly once.
        unsafe { std::ptr::read(&this.0) }
    }

    fn run(self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> Handling {
        let job = self.into_job();
        let finished = job.run(owner, tally);
        // SAFETY: the slot lives in the job, which our `Arc` keeps alive,
        // and the `&self` of `run` has ended.
        let mut handling = unsafe { finished.publish() };
        // Ours may be the last hold (its ticket is gone): that drops a
        // result nobody claimed, under the catch.
        handling.contained += drop_caught(job);
        handling
    }

    fn reject(self, error: Error) -> u32 {
        let job = self.into_job();
        let finished = job.reject(error);
        // SAFETY: as in `run`.
        let contained = unsafe { finished.publish() }.contained;
        contained + drop_caught(job)
    }

    fn dequeue(&self) -> Dequeued {
        self.0.dequeue()
    }
}

impl<S> Drop for QueuedJob<S> {
    fn drop(&mut self) {
        let finished = self.0.reject(Error::Shutdown);
        // SAFETY: as in `run`: our `Arc` keeps the job alive, and the
        // reference `reject` took has ended.
        let _ = unsafe { finished.publish() };
    }
}

pub(crate) enum Msg<S> {
    Job(QueuedJob<S>),
    Borrowed(BorrowedJob<S>),
    Posted(PostedJob<S>),
    Stop,
}

impl<S> Msg<S> {
    /// Runs the job (unless cancelled) and publishes its outcome. Never
    /// unwinds: user code runs under catches, and the rest under a guard
    /// that aborts, since a borrowed or posted job's caller may still be
    /// waiting on memory this thread writes.
    pub(crate) fn run(self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> Handling {
        let region = AbortOnUnwind::new("the owner handling a job");
        let handling = match self {
            Msg::Job(job) => job.run(owner, tally),
            Msg::Borrowed(job) => job.run(owner, tally),
            Msg::Posted(job) => job.run(owner, tally),
            Msg::Stop => Handling {
                outcome: RunOutcome::Cancelled,
                contained: 0,
            },
        };
        region.disarm();
        handling
    }

    /// Answers the job with `error` without running it; the panics
    /// contained (its captures' destructors). Never unwinds (see `run`).
    pub(crate) fn reject(self, error: Error) -> u32 {
        let region = AbortOnUnwind::new("the owner rejecting a job");
        let contained = match self {
            Msg::Job(job) => job.reject(error),
            Msg::Borrowed(job) => job.reject(error),
            Msg::Posted(job) => job.reject(error),
            Msg::Stop => 0,
        };
        region.disarm();
        contained
    }

    /// Taken off the queue: who frees its place there (`None`: it held
    /// none, as a posted job or `Stop`).
    pub(crate) fn dequeue(&self) -> Option<Dequeued> {
        match self {
            Msg::Job(job) => Some(job.dequeue()),
            Msg::Borrowed(_) => Some(Dequeued::Held),
            Msg::Posted(_) | Msg::Stop => None,
        }
    }

    pub(crate) fn enqueued(&self) -> Option<Instant> {
        match self {
            Msg::Job(job) => job.0.enqueued(),
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
            Msg::Job(job) => job.0.label(),
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

#[cfg(all(test, not(pinned_loom)))]
#[path = "job_tests.rs"]
mod tests;
