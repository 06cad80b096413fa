//! [`PinnedWorker<S>`]: one dedicated OS thread that owns a thread-affine
//! state `S` (a C context, an SDK session, anything `!Send`) for its whole
//! life and runs every job that touches it.
//!
//! Callers anywhere hand it closures over `&mut S`: [`run`](PinnedWorker::run)
//! blocks and may borrow from the caller's stack; [`submit`](PinnedWorker::submit)
//! returns a [`Ticket`](crate::Ticket) to wait on or `.await`. The queue is bounded
//! (backpressure), panics are caught per job, and every accepted job gets
//! exactly one outcome.
//!
//! A running job cannot be interrupted: a C call cannot be cancelled. What
//! can be cancelled is a job that has not started yet.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use std::task::Waker;

use crossbeam_channel::{self as channel, Receiver, Sender};
use crossbeam_utils::CachePadded;

use crate::error::Error;
use crate::job::{call_owner, BorrowedJob, Job, JobImpl, JobPtr, Msg, OwnerState};
use crate::lane::Lane;
use crate::mailbox::Mailboxes;
use crate::metrics::MetricsSnapshot;
use crate::shared::{InFlight, Shared};
use crate::slot::{Slot, ThreadWaker};
use crate::ticket::BOX_PAST;
use crate::unwind::AbortOnUnwind;
use crate::waits;

/// How sparsely jobs are timed for the latency histograms, with timings on
/// (the default).
///
/// - **Queue wait and run time:** each calling thread's first job, then one
///   in this many of its jobs (its 1st, 33rd, 65th, ...), are stamped at
///   submission, so every caller is seen, short-lived ones included.
/// - **Run time, besides:** the owner times one in this many of all the
///   jobs it takes, whoever sent them.
///
/// A [`Summary`](crate::Summary)'s `count` says how many samples it holds.
///
/// ```
/// use pinned_ffi::{PinnedWorker, TIMED_ONE_JOB_IN};
/// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
/// // Ten threads with one job each: every one of them is sampled.
/// std::thread::scope(|s| {
///     for _ in 0..10 {
///         s.spawn(|| w.run(|_| ()).unwrap());
///     }
/// });
/// let m = w.metrics();
/// assert_eq!(m.queue_wait.count, 10);
/// assert!(m.run_time.count >= 10 && TIMED_ONE_JOB_IN > 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const TIMED_ONE_JOB_IN: u32 = 32;

/// Owner threads started by this process so far (spawns and re-inits,
/// and threads made owners by [`Builder::on_this_thread`](crate::Builder::on_this_thread)).
/// A rate far above the number of pools means something creates owners
/// per request; [`ThreadWatch`](crate::ThreadWatch) watches it.
///
/// ```
/// let before = pinned_ffi::owners_started();
/// let _w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::io::Error>(()))?;
/// assert!(pinned_ffi::owners_started() > before);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn owners_started() -> u64 {
    // ORDERING: a statistic.
    crate::shared::OWNERS_STARTED.load(Ordering::Relaxed)
}

/// How `enqueue` may wait for room in the queue.
#[derive(Clone, Copy)]
pub(crate) enum Wait {
    Block,
    No,
    Until(Instant),
}

/// Why `enqueue` refused a message (the message comes back with it).
pub(crate) enum Refused {
    Full,
    Err(Error),
}

/// A handle to one owner thread and its state `S`. `Send + Sync` whatever
/// `S` is: share it by reference or `Arc`. Dropping it closes the worker
/// (see [`close`](Self::close)).
///
/// ```
/// use pinned_ffi::PinnedWorker;
/// // The state is created on the owner thread and never leaves it (an
/// // `Rc` is `!Send`, as an SDK context usually is).
/// let worker = PinnedWorker::spawn(|| Ok::<_, std::io::Error>(std::rc::Rc::new(vec![1u8, 2, 3])))?;
/// let sum = worker.run(|v| v.iter().map(|b| u32::from(*b)).sum::<u32>())?;
/// assert_eq!(sum, 6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PinnedWorker<S> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: Sender<Msg<S>>,
    /// The queue's other end, for a close whose deadline passed: it answers
    /// what is still queued itself rather than wait for the owner.
    pub(crate) rx: Receiver<Msg<S>>,
    pub(crate) releases: Sender<u64>,
    pub(crate) mailboxes: Arc<Mailboxes<Lane<OwnerState<S>>>>,
    pub(crate) _state: PhantomData<fn() -> S>,
}

impl<S> std::fmt::Debug for PinnedWorker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedWorker")
            .field("name", &self.shared.name)
            .field("id", &self.shared.id)
            .finish()
    }
}

impl<S: 'static> PinnedWorker<S> {
    /// The error a new job would get now, if any (closed, stopped, broken).
    pub(crate) fn refuses(&self) -> Result<(), Error> {
        // ORDERING: SeqCst, as in `enter`; see `Owner::taking` for posts.
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(self.shared.refusal());
        }
        match self.shared.broken_now() {
            Some(reason) => Err(Error::Broken(reason)),
            None => Ok(()),
        }
    }

    /// Admits one producer: counts it in flight and checks that the worker
    /// takes work. The guard ends the flight when dropped.
    pub(crate) fn enter(&self) -> Result<InFlight<'_>, Error> {
        // ORDERING: SeqCst on `inflight` and `closed`, here and in `close`,
        // so either close sees this producer in flight and waits for it, or
        // this sees `closed`: no job slips in after the owner's last look.
        self.shared.inflight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(&self.shared);
        crate::sync::seqcst_handshake();
        self.refuses()?;
        Ok(guard)
    }

    /// Admits `msg` to the queue: takes a place in it (waiting as `wait`
    /// allows), then sends. The channel is unbounded; its bound is the
    /// worker's [`Room`](crate::room::Room), so a job whose caller gave up
    /// holds no place.
    pub(crate) fn enqueue(&self, msg: Msg<S>, wait: Wait) -> Result<(), (Msg<S>, Refused)> {
        let _flight = match self.enter() {
            Ok(g) => g,
            Err(e) => return Err((msg, Refused::Err(e))),
        };
        if !self.shared.room.try_take() {
            if let Wait::No = wait {
                return Err((msg, Refused::Full));
            }
            // Waiting for room that could never come (from the worker's own
            // owner thread, whose loop is what makes room, or from an owner
            // this worker's owner waits on) is refused; other waits are
            // recorded while they last.
            let _waiting = match waits::begin(self.shared.id) {
                Ok(w) => w,
                Err(e) => return Err((msg, Refused::Err(e))),
            };
            if let Err(why) = self.wait_for_room(wait) {
                return Err((msg, why));
            }
        }
        // A place is held, and the channel never fills.
        crate::sync::channel_send();
        match self.tx.send(msg) {
            Ok(()) => {
                self.shared.bell.ring_after_send();
                Ok(())
            }
            Err(channel::SendError(m)) => {
                let _ = self.shared.room.give_back();
                Err((m, Refused::Err(self.shared.refusal())))
            }
        }
    }

    /// Parks in line until a place is this caller's (`Ok`), the deadline
    /// passes (`Full`) or the worker refuses work (it closed: the closer
    /// wakes the line).
    fn wait_for_room(&self, wait: Wait) -> Result<(), Refused> {
        let room = &self.shared.room;
        let me = room.waiter();
        let waker = Waker::from(Arc::new(ThreadWaker(crate::sync::current())));
        let deadline = match wait {
            Wait::Until(d) => Some(d),
            Wait::Block | Wait::No => None,
        };
        let outcome = loop {
            room.wait_in_line(&me, &waker);
            if let Err(e) = self.refuses() {
                break Err(Refused::Err(e));
            }
            if room.try_take() {
                break Ok(());
            }
            match deadline {
                None => crate::sync::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Err(Refused::Full);
                    }
                    crate::sync::park_timeout(d - now);
                }
            }
        };
        let _ = room.leave(&me);
        outcome
    }

    /// When to stamp a job for the latency histograms: a calling thread's
    /// first job, then every [`TIMED_ONE_JOB_IN`]-th, so every caller is
    /// seen yet the clock is read on few hand-offs (a read costs tens of ns
    /// on a VM, as much as the hand-off itself).
    pub(crate) fn stamp(&self) -> Option<Instant> {
        thread_local! {
            static N: Cell<u32> = const { Cell::new(0) };
        }
        if !self.shared.config.timings {
            return None;
        }
        // Jobs sent before this one: 0 for the first.
        let n = N.with(|n| {
            let v = n.get();
            n.set(v.wrapping_add(1));
            v
        });
        n.is_multiple_of(TIMED_ONE_JOB_IN).then(Instant::now)
    }

    /// Runs `f` on the owner thread and waits for its result. `f` may
    /// borrow from the caller (no `'static` needed).
    ///
    /// It **blocks the calling thread** for the whole round trip: called
    /// inside an async task it holds the runtime's thread (and every task
    /// queued behind it) until the owner is done. In async code use
    /// [`call`](Self::call) (or [`call_deadline`](Self::call_deadline)),
    /// which awaits instead.
    ///
    /// ```
    /// # let worker = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(7u64))?;
    /// let mut buf = vec![0u64; 4];
    /// worker.run(|seed| buf.iter_mut().for_each(|b| *b = *seed))?; // fills the caller's buffer
    /// assert_eq!(buf, [7; 4]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Panicked`] if `f` panicked; [`Error::Reentrant`] when the
    /// wait could never end (from this worker's own owner thread, or
    /// closing a cycle of owners); [`Error::JobTooLarge`] and
    /// [`Error::ResultTooLarge`] past [`MAX_JOB`](Self::MAX_JOB) and
    /// [`MAX_RESULT`](Self::MAX_RESULT); [`Error::Closed`],
    /// [`Error::Stopped`], [`Error::Broken`], [`Error::OwnerDied`] when
    /// refused.
    pub fn run<'a, R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'a,
        R: Send + 'a,
    {
        self.check_sizes::<F, R>()?;
        self.run_owner(move |o: &mut OwnerState<S>| f(&mut o.state))
    }

    /// Runs `g` on the owner thread and waits: through this thread's
    /// mailbox when nothing is queued (so the job cannot overtake one this
    /// thread queued before), through the queue otherwise.
    pub(crate) fn run_owner<'a, G, R>(&self, g: G) -> Result<R, Error>
    where
        G: FnOnce(&mut OwnerState<S>) -> R + Send + 'a,
        R: Send + 'a,
    {
        let _waiting = waits::begin(self.shared.id)?;
        if std::mem::size_of::<R>() > BOX_PAST {
            // A large result travels boxed: the hand-off's layers move a
            // pointer, not the value (see `MAX_RESULT`).
            return self
                .run_direct(move |o: &mut OwnerState<S>| Box::new(g(o)))
                .map(|b| *b);
        }
        self.run_direct(g)
    }

    /// `run_owner` once the checks are done and the result is small.
    fn run_direct<'a, G, R>(&self, g: G) -> Result<R, Error>
    where
        G: FnOnce(&mut OwnerState<S>) -> R + Send + 'a,
        R: Send + 'a,
    {
        if self.queue_is_empty() {
            // Posts are not counted in flight (two locked RMWs on a line
            // every caller writes); `Owner::taking` covers a close instead.
            self.refuses()?;
            let shared = &self.shared;
            // SAFETY: the key is this worker's id, used with this registry
            // only.
            let mine = unsafe {
                self.mailboxes
                    .mine(shared.id, || Lane::new(crate::sync::current()))
            };
            if let Some(mailbox) = mine {
                // SAFETY: the mailbox stays valid until this thread exits or
                // the registry (held by `self`) is dropped: neither happens
                // during this call.
                let mailbox = unsafe { mailbox.as_ref() };
                let stamp = self.stamp();
                // SAFETY: this thread's own mailbox for this worker, and no
                // post is outstanding: every call waits for its answer and
                // the owner thread never posts to its own worker (`begin`
                // refused that above). The owner keeps `Owner`'s word: it takes posts
                // until it exits, and its exit path (`drain_rejecting`)
                // closes, fences and scans once more.
                return unsafe { Lane::call(mailbox, g, stamp, shared.config.spin, &**shared) };
            }
        }
        self.run_queued(g)
    }

    /// `run_owner` through the queue: the job stays on this stack and the
    /// queue carries a pointer to it.
    pub(crate) fn run_queued<'a, G, R>(&self, g: G) -> Result<R, Error>
    where
        G: FnOnce(&mut OwnerState<S>) -> R + Send + 'a,
        R: Send + 'a,
    {
        // Aligned to its own cache lines: the owner writes the slot while
        // this thread spins, and must not share a line with our stack.
        let job = CachePadded::new(JobImpl::new(
            g,
            call_owner::<S, R, G>,
            Slot::new(self.shared.id),
            self.stamp(),
        ));
        let ptr: NonNull<dyn Job<S> + 'a> = NonNull::from(&*job);
        // SAFETY: only the lifetime is erased; the type is unchanged. The
        // job lives on this stack frame and may borrow the caller's stack
        // for 'a, so the owner must be done with it before we return; it is:
        // - if enqueue refuses, the message comes back and its drop rejects
        //   the job right here;
        // - otherwise we wait below until the slot is complete, which the
        //   owner (or the channel's teardown, via BorrowedJob's drop) does
        //   as its last touch of the job, after the closure was consumed
        //   (called by value) or dropped; `wait` also waits for the owner
        //   to let go of the slot when it had to wake us. We never stop
        //   waiting early (no time-out, no cancel) and nothing in between
        //   can unwind.
        // This is std::thread::scope's argument: the borrow ends before the
        // scope does.
        let ptr =
            JobPtr::<S>(unsafe { std::mem::transmute::<NonNull<dyn Job<S> + 'a>, NonNull<dyn Job<S>>>(ptr) });
        // From the send on, the owner may hold the job: nothing may unwind
        // out of this frame before the wait below returns (the guard aborts
        // instead, so the argument above cannot be broken by an edit).
        let region =
            AbortOnUnwind::new("a caller waiting for the owner to finish a job that borrows its stack");
        let outcome = match self.enqueue(Msg::Borrowed(BorrowedJob(ptr)), Wait::Block) {
            Ok(()) => job
                .slot
                .wait(self.shared.config.spin, || self.shared.owner_cpu.get()),
            Err((msg, why)) => {
                drop(msg); // rejects the job here: it never reached the owner
                Err(match why {
                    Refused::Err(e) => e,
                    Refused::Full => Error::Reentrant,
                })
            }
        };
        region.disarm();
        outcome
    }

    /// This worker's id (unique in the process), as the deadlock detector
    /// knows it.
    pub(crate) fn id(&self) -> u64 {
        self.shared.id
    }

    /// The owner thread's name.
    ///
    /// ```
    /// let w = pinned_ffi::PinnedWorker::builder().name("hsm-0").spawn(|| Ok::<_, std::io::Error>(()))?;
    /// assert_eq!(w.name(), "hsm-0");
    /// assert_eq!(w.run(|_| std::thread::current().name().map(String::from))?.as_deref(), Some("hsm-0"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether the worker takes no more jobs (closed or stopped).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// assert!(!w.is_closed());
    /// w.close()?;
    /// assert!(w.is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Jobs waiting in the queue now, each holding one of its
    /// [`capacity`](crate::Builder::capacity) places. A job whose caller
    /// gave up (a dropped ticket, a deadline) is not counted: its place is
    /// free at once, though the owner skips it only when it gets there.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// assert_eq!(w.queue_len(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queue_len(&self) -> usize {
        self.shared.room.used()
    }

    /// Whether no job holds a place in the queue.
    pub(crate) fn queue_is_empty(&self) -> bool {
        self.shared.room.used() == 0
    }

    /// The Linux thread id (`gettid`) of the current owner thread; it
    /// changes when the state is re-initialised on a fresh thread.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// assert_eq!(w.owner_tid(), w.run(|_| pinned_ffi::threads::current_tid())?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn owner_tid(&self) -> u64 {
        self.shared.owner_tid.load(Ordering::Relaxed)
    }

    /// A snapshot of the worker's counters and latency histograms.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// w.run(|n| *n)?;
    /// assert_eq!(w.metrics().completed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metrics(&self) -> MetricsSnapshot {
        let s = &self.shared;
        let mut m = MetricsSnapshot::read(&s.name, &s.counters, s.room.used(), &s.queue_wait, &s.run_time);
        // ORDERING: statistics.
        let by_closer = s.rejected_by_closer.load(Ordering::Relaxed);
        m.rejected += by_closer;
        m.failed += by_closer;
        m.contained_panics += s.contained_by_closer.load(Ordering::Relaxed);
        m.contained_panics += s.health.contained.load(Ordering::Relaxed);
        m.hangs = s.health.hangs.load(Ordering::Relaxed);
        m.healthy = self.is_healthy();
        m
    }

    /// Whether no job has run past the worker's
    /// [`hang_limit`](crate::Builder::hang_limit) (always `true` without
    /// one). Unhealthy from the moment the running job passes the limit
    /// until it ends; a [`Pool`](crate::Pool) routes new work around an
    /// unhealthy worker.
    ///
    /// ```
    /// let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::io::Error>(()))?;
    /// assert!(w.is_healthy()); // no hang limit: always healthy
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_healthy(&self) -> bool {
        self.shared.health.is_healthy(&self.shared)
    }

    /// How long the hung job has run; `None` while healthy.
    pub(crate) fn hung_for(&self) -> Option<std::time::Duration> {
        self.shared.health.hung_for(&self.shared)
    }
}
