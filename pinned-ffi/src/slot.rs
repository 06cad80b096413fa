//! The one-shot completion slot between a caller and the owner thread
//! (the caller's side of a submitted job, [`Ticket`](crate::Ticket), is in
//! `ticket.rs`).
//!
//! The hot path is lock-free: the owner publishes the result with one
//! atomic RMW, and a caller that is still spinning sees it without any
//! system call. Only a caller that has spun out registers a waker (under a
//! mutex) and parks, and only then does the owner pay a wake-up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use crate::spin::{self, spin_with, CpuHint, Partner, Waiter};
use crate::sync::{self, AtomicU8, Mutex, Thread, UnsafeCell};

use crate::error::Error;

const RUNNING: u8 = 1;
const DONE: u8 = 2;
const CANCELLED: u8 = 4;
const WAITER: u8 = 8;
/// Set by the completer after it has woken a registered waiter; from then
/// on it never touches the slot again, so a slot on the waiter's stack may
/// go away.
const FINISHED: u8 = 16;
/// The job holds a place in its worker's queue (see [`Room`](crate::room::Room)):
/// cleared by the owner when it takes the job, or by a cancel that wins
/// while the job is still queued. Whoever clears it frees the place.
const QUEUED: u8 = 32;

/// What the owner found when it took a queued job (see [`Slot::dequeue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dequeued {
    /// It held a place: the owner frees it.
    Held,
    /// Its caller gave up while it was queued, and freed the place then.
    Abandoned,
}

/// Where one job's outcome lands. `repr(C)`: the state and the result,
/// touched on every hand-off, come first; the waker, needed only by a
/// parked waiter, last.
#[repr(C)]
pub(crate) struct Slot<R> {
    state: AtomicU8,
    result: UnsafeCell<Option<Result<R, Error>>>,
    /// The worker that runs the job, for re-entrancy checks.
    pub(crate) worker: u64,
    waker: Mutex<Option<Waker>>,
    /// Where the waiter was when it registered: a hint for the owner's
    /// next idle wait.
    waiter_cpu: CpuHint,
}

// SAFETY: `result` is written only by the completing side before it sets
// DONE (release) and read only by the waiting side after it saw DONE
// (acquire), so it is never accessed from two threads at once; R crosses
// threads, hence R: Send.
unsafe impl<R: Send> Sync for Slot<R> {}
// SAFETY: as above; the slot moves an R between threads.
unsafe impl<R: Send> Send for Slot<R> {}

/// Whether a slot is done, read without its type (see [`Slot::done_flag`]).
#[derive(Clone, Copy)]
pub(crate) struct DoneFlag<'a>(&'a AtomicU8);

impl DoneFlag<'_> {
    #[inline]
    pub(crate) fn is_set(self) -> bool {
        // ORDERING: Acquire pairs with the AcqRel RMW that sets DONE in
        // `Publish::publish`.
        self.0.load(Ordering::Acquire) & DONE != 0
    }
}

impl<R> Slot<R> {
    pub(crate) fn new(worker: u64) -> Self {
        Slot {
            state: AtomicU8::new(0),
            result: UnsafeCell::new(None),
            waker: Mutex::new(None),
            worker,
            waiter_cpu: CpuHint::new(),
        }
    }

    /// A slot for a job that will hold a place in the queue.
    pub(crate) fn queued(worker: u64) -> Self {
        let slot = Slot::new(worker);
        // ORDERING: not shared yet.
        slot.state.store(QUEUED, Ordering::Relaxed);
        slot
    }

    /// Owner: the job was taken off the queue. Says who frees its place.
    pub(crate) fn dequeue(&self) -> Dequeued {
        // ORDERING: AcqRel on the state word orders this with `cancel`:
        // exactly one of the two clears QUEUED.
        let prev = self.state.fetch_and(!QUEUED, Ordering::AcqRel);
        if prev & QUEUED == 0 && prev & CANCELLED != 0 {
            Dequeued::Abandoned
        } else {
            Dequeued::Held
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

    /// Caller: gives up on the job. `Some` if it had not started, so it
    /// never will, with whether it was still in the queue (its place is
    /// then the caller's to free); `None` if it was running or done.
    pub(crate) fn cancel(&self) -> Option<bool> {
        // ORDERING: see `start` and `dequeue`.
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & (RUNNING | DONE | CANCELLED) == 0).then_some((s | CANCELLED) & !QUEUED)
            })
            .ok()
            .map(|prev| prev & QUEUED != 0)
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
            waiter_cpu: &self.waiter_cpu,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done_flag().is_set()
    }

    /// The word [`is_done`](Self::is_done) reads, for a spin that looks at
    /// it every round without reaching the slot through its job again.
    pub(crate) fn done_flag(&self) -> DoneFlag<'_> {
        DoneFlag(&self.state)
    }

    /// Takes the outcome once DONE has been seen.
    pub(crate) fn take(&self) -> Result<R, Error> {
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
    pub(crate) fn register(&self, waker: &Waker) -> bool {
        // Carried by the RMW below to a completer that sees WAITER.
        self.waiter_cpu.note_here();
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

    /// Blocks until done or `deadline`: spins for up to `spin` (giving way
    /// early when the owner was last seen on this CPU: `owner`, asked only
    /// once the first spins fail), then parks. Returns whether it is done.
    /// When it returns `true` the completer has finished with the slot.
    pub(crate) fn wait_until(
        &self,
        spin: Duration,
        deadline: Option<Instant>,
        owner: impl FnOnce() -> Partner,
    ) -> bool {
        if spin_with(|| self.is_done(), spin, deadline, None, owner, Waiter::Caller).is_ok() {
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
    pub(crate) fn wait(&self, spin: Duration, owner: impl FnOnce() -> Partner) -> Result<R, Error> {
        self.wait_until(spin, None, owner);
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
    waiter_cpu: *const CpuHint,
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
            spin::note_poster(Partner::UNKNOWN); // the waiter spun: not here
            return 0; // that RMW was the last touch: the slot may be gone
        }
        // SAFETY: alive until FINISHED, as the waker below (a waiter on its
        // stack waits for FINISHED; a ticket's slot is held by the job's
        // `Arc` until after this call). Noted before the WAITER our RMW read.
        spin::note_poster(unsafe { &*self.waiter_cpu }.get());
        // SAFETY: a registered waiter waits for FINISHED before it returns
        // (a ticket's slot is held by the job's `Arc`), so the slot stays
        // alive until the store below.
        let waker = unsafe { &*self.waker }
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // ORDERING: Release: our last touch of the slot (the unlock above)
        // happens before the waiter sees FINISHED.
        state.fetch_or(FINISHED, Ordering::Release);
        match waker {
            Some(waker) => match crate::unwind::catch(move || crate::waits::waking(move || waker.wake())) {
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

/// Wakes a parked thread.
pub(crate) struct ThreadWaker(pub(crate) Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

#[cfg(all(test, not(pinned_loom)))]
mod tests {
    use super::*;

    /// Completes `s` with `v` on a fresh thread (as an owner would) and
    /// returns the partner that thread noted for its next idle wait.
    fn completed_elsewhere(s: &Arc<Slot<u64>>, v: u64) -> Partner {
        let completer = Arc::clone(s);
        std::thread::spawn(move || {
            spin::note_poster(Partner(7)); // an older note, to be replaced
                                           // SAFETY: the only completer; the Arc keeps the slot alive.
            let _ = unsafe { completer.fill(Ok(v)).publish() };
            spin::parked_poster()
        })
        .join()
        .unwrap()
    }

    #[test]
    #[cfg_attr(miri, ignore)] // Miri has no CPUs to note
    fn a_completer_notes_where_a_registered_waiter_waits() {
        let s = Arc::new(Slot::<u64>::new(0));
        assert!(!s.register(Waker::noop()), "not done yet");
        let registered_on = s.waiter_cpu.get();
        assert_ne!(registered_on, Partner::UNKNOWN);
        assert_eq!(completed_elsewhere(&s, 5), registered_on);
        assert_eq!(s.take(), Ok(5));

        // A waiter that never registered (it caught the answer spinning)
        // leaves nothing for the owner to act on.
        let s = Arc::new(Slot::<u64>::new(0));
        assert_eq!(completed_elsewhere(&s, 6), Partner::UNKNOWN);
        assert_eq!(s.take(), Ok(6));
    }
}

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
            assert_eq!(s.wait(Duration::ZERO, || Partner::UNKNOWN), Ok(7));
            owner.join().unwrap();
        });
    }

    #[test]
    fn loom_exactly_one_of_cancel_and_dequeue_frees_the_place() {
        loom::model(|| {
            let s = Arc::new(Slot::<u64>::queued(0));
            let owner = {
                let s = Arc::clone(&s);
                loom::thread::spawn(move || s.dequeue())
            };
            let cancelled = s.cancel();
            let dequeued = owner.join().unwrap();
            assert_eq!(cancelled.map(|_| ()), Some(()), "nothing had started");
            let frees = usize::from(cancelled == Some(true)) + usize::from(dequeued == Dequeued::Held);
            assert_eq!(frees, 1, "{cancelled:?} {dequeued:?}");
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
            let cancelled = s.cancel().is_some();
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
            assert_eq!(s.wait(Duration::ZERO, || Partner::UNKNOWN), Ok(3));
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
