//! [`PinnedWorker<S>`]: one dedicated OS thread that owns a thread-affine
//! state `S` (a C context, an SDK session, anything `!Send`) for its whole
//! life and runs every job that touches it.
//!
//! Callers anywhere hand it closures over `&mut S`: [`run`](PinnedWorker::run)
//! blocks and may borrow from the caller's stack; [`submit`](PinnedWorker::submit)
//! returns a [`Ticket`] to wait on or `.await`. The queue is bounded
//! (backpressure), panics are caught per job, and every accepted job gets
//! exactly one outcome.
//!
//! A running job cannot be interrupted: a C call cannot be cancelled. What
//! can be cancelled is a job that has not started yet.

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{self as channel, Receiver, Sender, TryRecvError};

use crate::doorbell::{Doorbell, Look};
use crate::error::{panic_message, Error, SpawnError, TrySubmitError};
use crate::lane::{self, Action, Handled, Lane, Owner};
use crate::mailbox::{Mailboxes, Posted, Scanner};
use crate::metrics::{Counters, Histogram, MetricsSnapshot, Padded};
use crate::slot::{Slot, Ticket};
use crate::spin::{spin_until_done, Engaged};

static NEXT_WORKER_ID: AtomicU64 = AtomicU64::new(1);

/// With timings on (the default), one job in this many per calling thread
/// is timed for the queue-wait and run-time histograms.
pub const TIMED_ONE_JOB_IN: u32 = 32;
static OWNERS_STARTED: AtomicU64 = AtomicU64::new(0);

/// Owner threads started by this process so far (spawns and re-inits).
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
    OWNERS_STARTED.load(Ordering::Relaxed)
}

thread_local! {
    /// The id of the worker whose owner thread this is (0: none).
    static OWNER_OF: Cell<u64> = const { Cell::new(0) };
}

/// The worker whose owner thread the caller is on, if any.
#[inline]
pub(crate) fn owner_of_current_thread() -> Option<u64> {
    let id = OWNER_OF.with(Cell::get);
    (id != 0).then_some(id)
}

/// What the owner does after a job panics. The panicking job's caller always
/// gets [`Error::Panicked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PanicPolicy {
    /// Keep the state and go on (the default).
    #[default]
    Keep,
    /// Drop the state on its owner thread, end that thread (and its
    /// `__thread` storage), and run `init` again on a fresh owner thread.
    Reinit,
    /// Stop the worker: later jobs get [`Error::Stopped`].
    Stop,
}

/// The circuit breaker: after `max_panics` panics within `window`, callers
/// fail fast with [`Error::Broken`] for `cooldown`; then the state is
/// re-initialised on a fresh owner thread, and the breaker closes once that
/// succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Panics that trip it.
    pub max_panics: u32,
    /// Within this long.
    pub window: Duration,
    /// How long it stays open before a re-init is tried.
    pub cooldown: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            max_panics: 5,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(1),
        }
    }
}

/// Configures and starts a [`PinnedWorker`].
///
/// ```
/// use std::time::Duration;
/// use pinned_ffi::{PanicPolicy, PinnedWorker};
/// let w = PinnedWorker::builder()
///     .name("gpu-0")
///     .capacity(256)
///     .panic_policy(PanicPolicy::Reinit)
///     .spin(Duration::from_micros(20))
///     .spawn(|| Ok::<_, std::io::Error>(Vec::<u8>::new()))?;
/// assert_eq!(w.run(|v| { v.push(1); v.len() })?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    name: Option<String>,
    stack_size: Option<usize>,
    capacity: usize,
    panic_policy: PanicPolicy,
    breaker: Option<Breaker>,
    cpus: Option<Vec<usize>>,
    spin: Duration,
    owner_spin: Duration,
    timings: bool,
    /// Set by `PoolBuilder`: the pool's name and this worker's index.
    pool: Option<(String, usize)>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: None,
            stack_size: None,
            capacity: 1024,
            panic_policy: PanicPolicy::Keep,
            breaker: Some(Breaker::default()),
            cpus: None,
            spin: Duration::from_micros(50),
            owner_spin: Duration::from_micros(50),
            timings: true,
            pool: None,
        }
    }
}

impl Builder {
    /// The owner thread's name (default `pinned-<id>`; a pool names its
    /// workers `<pool>-<index>`). Linux shows the first 15 bytes.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// The owner thread's stack size in bytes.
    ///
    /// ```
    /// let w = pinned_ffi::PinnedWorker::builder().stack_size(256 * 1024).spawn(|| Ok::<_, std::io::Error>(()))?;
    /// w.run(|_| ())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }
    /// Queue capacity (default 1024, at least 1): `submit` blocks and
    /// `try_submit` gives the job back when this many are waiting.
    pub fn capacity(mut self, jobs: usize) -> Self {
        self.capacity = jobs.max(1);
        self
    }
    /// What to do after a job panics (default [`PanicPolicy::Keep`]).
    pub fn panic_policy(mut self, policy: PanicPolicy) -> Self {
        self.panic_policy = policy;
        self
    }
    /// The circuit breaker (default: 5 panics in 10 s, 1 s cooldown);
    /// `None` disables it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pinned_ffi::{Breaker, PinnedWorker};
    /// let b = Breaker { max_panics: 3, window: Duration::from_secs(1), cooldown: Duration::from_millis(100) };
    /// let w = PinnedWorker::builder().breaker(Some(b)).spawn(|| Ok::<_, std::io::Error>(()))?;
    /// # drop(w);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn breaker(mut self, breaker: Option<Breaker>) -> Self {
        self.breaker = breaker;
        self
    }
    /// Pins the owner thread to these CPUs (Linux `sched_setaffinity`).
    ///
    /// ```
    /// let w = pinned_ffi::PinnedWorker::builder().cpus([0]).spawn(|| Ok::<_, std::io::Error>(()))?;
    /// assert_eq!(w.run(|_| pinned_ffi::threads::current_affinity())??, vec![0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cpus(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        self.cpus = Some(cpus.into_iter().collect());
        self
    }
    /// How long a waiting caller spins before it parks (default 50 µs).
    /// Spinning turns a hand-off into a cache-line transfer instead of a
    /// futex wake (tens of µs on a VM); zero always parks. While the
    /// threads taking part in hand-offs outnumber the cores, spinners
    /// yield the core on every round after the first few. An awaited
    /// [`Ticket`] spins at most [`Ticket::POLL_SPIN`] of it.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }
    /// How long an idle owner spins for the next job before it parks
    /// (default 50 µs). After that an idle worker costs no CPU.
    pub fn owner_spin(mut self, spin: Duration) -> Self {
        self.owner_spin = spin;
        self
    }
    /// Whether to time jobs for the queue-wait and run-time histograms
    /// (default on). One job in [`TIMED_ONE_JOB_IN`] per calling thread is
    /// timed, with three clock reads; the others pay nothing.
    ///
    /// ```
    /// let w = pinned_ffi::PinnedWorker::builder().timings(false).spawn(|| Ok::<_, std::io::Error>(()))?;
    /// w.run(|_| ())?;
    /// assert_eq!(w.metrics().run_time.count, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn timings(mut self, on: bool) -> Self {
        self.timings = on;
        self
    }

    /// Marks the worker as `index` of the pool `name` (thread name and
    /// tracing fields).
    pub(crate) fn in_pool(mut self, name: &str, index: usize) -> Self {
        self.pool = Some((name.to_owned(), index));
        self.name(format!("{name}-{index}"))
    }

    /// Starts the owner thread and runs `init` on it. Returns once `init`
    /// has finished: with the worker, or with `init`'s error and the thread
    /// joined. `init` is kept to re-initialise the state on a fresh thread
    /// (see [`PanicPolicy::Reinit`] and [`Breaker`]).
    ///
    /// # Errors
    /// [`SpawnError::Init`] with `init`'s error, [`SpawnError::InitPanicked`],
    /// or [`SpawnError::Os`] when the thread or CPU set is refused.
    pub fn spawn<S, E, F>(self, init: F) -> Result<PinnedWorker<S>, SpawnError<E>>
    where
        S: 'static,
        E: std::fmt::Display + Send + 'static,
        F: FnMut() -> Result<S, E> + Send + 'static,
    {
        let id = NEXT_WORKER_ID.fetch_add(1, Ordering::Relaxed);
        let name = self.name.clone().unwrap_or_else(|| format!("pinned-{id}"));
        let (tx, rx) = channel::bounded(self.capacity);
        let (release_tx, release_rx) = channel::unbounded();
        let mailboxes = Mailboxes::new();
        let owner_mailboxes = Arc::clone(&mailboxes);
        let shared = Arc::new(Shared {
            id,
            name,
            config: self,
            epoch: Instant::now(),
            closed: AtomicBool::new(false),
            inflight: Padded(AtomicUsize::new(0)),
            broken: AtomicBool::new(false),
            broken_until: AtomicU64::new(0),
            broken_reason: Mutex::new(String::new()),
            stopped: AtomicBool::new(false),
            aborting: AtomicBool::new(false),
            counters: Counters::default(),
            queue_wait: Histogram::new(),
            run_time: Histogram::new(),
            threads: Mutex::new(Vec::new()),
            exited: Mutex::new(false),
            exit_cv: Condvar::new(),
            next_bound: AtomicU64::new(1),
            owner_tid: AtomicU64::new(0),
            bell: Doorbell::new(),
        });

        let (ready_tx, ready_rx) = channel::bounded::<Result<(), SpawnError<E>>>(1);
        let mut init = init;
        let thread_shared = Arc::clone(&shared);
        let handle = shared.thread_builder().spawn(move || {
            let shared = thread_shared;
            if let Err(e) = shared.enter_owner_thread() {
                let _ = ready_tx.send(Err(SpawnError::Os(e)));
                return;
            }
            let first = match panic::catch_unwind(AssertUnwindSafe(&mut init)) {
                Ok(Ok(state)) => state,
                Ok(Err(e)) => {
                    let _ = ready_tx.send(Err(SpawnError::Init(e)));
                    return;
                }
                Err(payload) => {
                    let _ = ready_tx.send(Err(SpawnError::InitPanicked(panic_message(&*payload))));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            drop(ready_tx);
            let core = Core {
                shared,
                rx,
                releases: release_rx,
                mailboxes: Scanner::new(owner_mailboxes),
                init: Box::new(move || init().map_err(|e| e.to_string())),
                panics: VecDeque::new(),
                engaged: None,
            };
            owner_loop(core, Some(OwnerState::new(first)), None);
        })?;

        match ready_rx.recv() {
            Ok(Ok(())) => {
                shared
                    .threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(handle);
                Ok(PinnedWorker {
                    shared,
                    tx,
                    releases: release_tx,
                    mailboxes,
                    _state: PhantomData,
                })
            }
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => {
                let _ = handle.join();
                Err(SpawnError::InitPanicked("owner thread ended during init".into()))
            }
        }
    }
}

/// The part of a worker shared by its handle and its owner thread(s).
struct Shared {
    id: u64,
    name: String,
    config: Builder,
    epoch: Instant,
    closed: AtomicBool,
    /// Written by every caller: a cache line of its own.
    inflight: Padded<AtomicUsize>,
    broken: AtomicBool,
    broken_until: AtomicU64,
    broken_reason: Mutex<String>,
    stopped: AtomicBool,
    aborting: AtomicBool,
    counters: Counters,
    queue_wait: Histogram,
    run_time: Histogram,
    /// Owner threads not yet joined: the current one and any it replaced.
    threads: Mutex<Vec<JoinHandle<()>>>,
    exited: Mutex<bool>,
    exit_cv: Condvar,
    next_bound: AtomicU64,
    owner_tid: AtomicU64,
    /// How producers signal work and wake a parking owner.
    bell: Doorbell,
}

impl Shared {
    fn thread_builder(&self) -> thread::Builder {
        let mut b = thread::Builder::new().name(self.name.clone());
        if let Some(size) = self.config.stack_size {
            b = b.stack_size(size);
        }
        b
    }

    /// Runs first on every owner thread: marks it, applies the CPU set.
    fn enter_owner_thread(&self) -> std::io::Result<()> {
        OWNER_OF.with(|o| o.set(self.id));
        // ORDERING: a statistic.
        OWNERS_STARTED.fetch_add(1, Ordering::Relaxed);
        // ORDERING: informational.
        self.owner_tid
            .store(crate::threads::current_tid(), Ordering::Relaxed);
        self.bell.set_owner(crate::sync::current());
        match &self.config.cpus {
            Some(cpus) => crate::threads::set_current_affinity(cpus),
            None => Ok(()),
        }
    }

    fn nanos_now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn trip(&self, reason: String, cooldown: Duration) {
        *self.broken_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        let until = self
            .nanos_now()
            .saturating_add(u64::try_from(cooldown.as_nanos()).unwrap_or(u64::MAX));
        // ORDERING: the reason is published by the mutex; these two only
        // steer a fast-fail check, which the owner re-checks.
        self.broken_until.store(until, Ordering::Relaxed);
        self.broken.store(true, Ordering::Release);
    }

    fn heal(&self) {
        // ORDERING: see `trip`.
        self.broken.store(false, Ordering::Release);
    }

    /// `Some(reason)` while callers should fail fast.
    #[inline]
    fn broken_now(&self) -> Option<String> {
        // ORDERING: see `trip`.
        if !self.broken.load(Ordering::Acquire) {
            return None;
        }
        self.broken_reason_now()
    }

    /// `broken_now` once the flag was seen set.
    #[cold]
    fn broken_reason_now(&self) -> Option<String> {
        if self.nanos_now() >= self.broken_until.load(Ordering::Relaxed) {
            return None; // cooldown over: let a job through to trigger re-init
        }
        Some(
            self.broken_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    fn refusal(&self) -> Error {
        // ORDERING: flags read after `closed` was seen set.
        if self.stopped.load(Ordering::Acquire) {
            Error::Stopped
        } else {
            Error::Closed
        }
    }

    fn has_exited(&self) -> bool {
        *self.exited.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_exited(&self) {
        *self.exited.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.exit_cv.notify_all();
    }

    /// Waits for the last owner thread to finish; `false` on time-out.
    fn wait_exited(&self, deadline: Option<Instant>) -> bool {
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        while !*exited {
            match deadline {
                None => exited = self.exit_cv.wait(exited).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    exited = self
                        .exit_cv
                        .wait_timeout(exited, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        true
    }
}

/// What lives on the owner thread: the user's state and the owner-bound
/// values handed out as [`Bound`] handles.
struct OwnerState<S> {
    pub(crate) state: S,
    bound: HashMap<u64, Box<dyn Any>>,
}

impl<S> OwnerState<S> {
    fn new(state: S) -> Self {
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
enum RunOutcome {
    Done,
    Cancelled,
    Panicked,
}

/// A type-erased job: the closure, how to call it, and its slot. Methods
/// take `&self` because a borrowed job lives on its caller's stack while
/// the owner uses it; `f` is touched by one side at a time (see `JobImpl`).
trait Job<S>: Send {
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
trait SlotHolder<R> {
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
struct JobImpl<S, F, R, P: SlotHolder<R>> {
    slot: P,
    /// Taken exactly once, by whichever side runs, rejects or drops the job.
    f: UnsafeCell<Option<F>>,
    call: fn(F, &mut OwnerState<S>) -> R,
    enqueued: Option<Instant>,
    /// The submitting thread's label (see `with_label`).
    #[cfg(feature = "tracing")]
    label: Option<Arc<str>>,
}

// SAFETY: `f` is only accessed by the side that holds the job (the owner
// while running or rejecting it, the creator before sending or after it got
// it back), never by two threads at once; F: Send lets it move.
unsafe impl<S, F: Send, R, P: SlotHolder<R> + Send> Send for JobImpl<S, F, R, P> {}

impl<S, F, R, P: SlotHolder<R>> JobImpl<S, F, R, P> {
    fn new(f: F, call: fn(F, &mut OwnerState<S>) -> R, slot: P, enqueued: Option<Instant>) -> Self {
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
    unsafe fn take_f(&self) -> Option<F> {
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
struct CacheAligned<T>(T);

/// A job on its caller's stack (from `run`), sent by pointer: no allocation.
/// The caller waits until the job is completed, so the pointer stays valid
/// while this exists; dropping it unrun rejects the job.
struct BorrowedJob<S>(JobPtr<S>);

/// The pointer itself.
struct JobPtr<S>(NonNull<dyn Job<S>>);

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
    fn job(&self) -> &dyn Job<S> {
        // SAFETY: the caller keeps the job alive until it is completed, and
        // completion happens only through this message (run/reject/drop).
        unsafe { self.0 .0.as_ref() }
    }

    fn run(self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> RunOutcome {
        let outcome = self.job().run(owner, tally);
        std::mem::forget(self); // completed: the job may already be gone
        outcome
    }

    fn reject(self, error: Error) {
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
struct PostedJob<S>(Posted<Lane<OwnerState<S>>>);

impl<S> PostedJob<S> {
    fn run(self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> RunOutcome {
        let outcome = |h: Handled| match h {
            Handled::Done => RunOutcome::Done,
            Handled::Panicked => RunOutcome::Panicked,
            Handled::Rejected => unreachable!("a run is not a rejection"),
        };
        let handled = lane::handle(&self.0, Action::Run(owner), |h| tally(outcome(h)));
        std::mem::forget(self); // answered
        outcome(handled)
    }

    fn reject(self, error: Error) {
        lane::handle(&self.0, Action::Reject(error), |_| ());
        std::mem::forget(self);
    }

    fn lane(&self) -> &Lane<OwnerState<S>> {
        self.0.mailbox().lane()
    }
}

impl<S> Drop for PostedJob<S> {
    fn drop(&mut self) {
        lane::handle(&self.0, Action::Reject(Error::Shutdown), |_| ());
    }
}

fn call_state<S, R, F: FnOnce(&mut S) -> R>(f: F, owner: &mut OwnerState<S>) -> R {
    f(&mut owner.state)
}

fn call_owner<S, R, G: FnOnce(&mut OwnerState<S>) -> R>(g: G, owner: &mut OwnerState<S>) -> R {
    g(owner)
}

enum Msg<S> {
    Job(Box<dyn Job<S>>),
    Borrowed(BorrowedJob<S>),
    Posted(PostedJob<S>),
    Stop,
}

impl<S> Msg<S> {
    fn run(self, owner: &mut OwnerState<S>, tally: &mut dyn FnMut(RunOutcome)) -> RunOutcome {
        match self {
            Msg::Job(job) => job.run(owner, tally),
            Msg::Borrowed(job) => job.run(owner, tally),
            Msg::Posted(job) => job.run(owner, tally),
            Msg::Stop => unreachable!("Stop is not a job"),
        }
    }

    fn reject(self, error: Error) {
        match self {
            Msg::Job(job) => job.reject(error),
            Msg::Borrowed(job) => job.reject(error),
            Msg::Posted(job) => job.reject(error),
            Msg::Stop => {}
        }
    }

    fn enqueued(&self) -> Option<Instant> {
        match self {
            Msg::Job(job) => job.enqueued(),
            Msg::Borrowed(job) => job.job().enqueued(),
            Msg::Posted(job) => job.lane().enqueued(),
            Msg::Stop => None,
        }
    }

    /// The span a job runs in: pool, worker index, caller label.
    #[cfg(feature = "tracing")]
    fn span(&self, shared: &Shared) -> tracing::Span {
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

enum Event<S> {
    Msg(Msg<S>),
    Release(u64),
    Disconnected,
}

/// The owner side: channels, the init closure for re-initialisation and the
/// breaker's memory. Moves to a fresh thread on re-init.
struct Core<S> {
    shared: Arc<Shared>,
    rx: Receiver<Msg<S>>,
    releases: Receiver<u64>,
    mailboxes: Scanner<Lane<OwnerState<S>>>,
    init: Box<dyn FnMut() -> Result<S, String> + Send>,
    panics: VecDeque<Instant>,
    /// Held while the owner thread is awake (dropped while it parks).
    engaged: Option<Engaged>,
}

impl<S: 'static> Core<S> {
    /// The next message: queued messages, then releases, then mailbox
    /// posts are taken without blocking; when there are none the owner
    /// spins for `owner_spin`, then parks until a producer wakes it.
    fn next(&mut self) -> Event<S> {
        loop {
            let (rx, releases) = (&self.rx, &self.releases);
            if let Some(event) = self.shared.bell.take_queued(|| poll_queues(rx, releases)) {
                return event;
            }
            // Spin (its first round is an immediate look): a post is taken
            // the moment it is seen (the hot path); queued work goes round
            // the loop.
            let mut post = None;
            let work = spin_until_done(
                || {
                    post = self.mailboxes.take();
                    post.is_some() || self.shared.bell.queued_hint()
                },
                self.shared.config.owner_spin,
                None,
            );
            if let Some(post) = post {
                return Event::Msg(Msg::Posted(PostedJob(post)));
            }
            if work {
                continue;
            }
            let (mailboxes, engaged) = (&self.mailboxes, &mut self.engaged);
            let look = || {
                if !rx.is_empty() || !releases.is_empty() || mailboxes.pending() {
                    return Look::Busy;
                }
                // An empty, disconnected queue looks empty: ask before
                // parking (no sender is left to wake us).
                match rx.try_recv() {
                    Ok(m) => Look::Found(Event::Msg(m)),
                    Err(TryRecvError::Disconnected) => Look::Found(Event::Disconnected),
                    Err(TryRecvError::Empty) => Look::Idle,
                }
            };
            let park = || {
                *engaged = None; // a parked owner takes no core
                thread::park();
                *engaged = Some(Engaged::new());
            };
            if let Some(event) = self.shared.bell.sleep(look, park) {
                return event;
            }
        }
    }

    /// Takes a job posted to a mailbox, if any.
    fn posted(&mut self) -> Option<Msg<S>> {
        self.mailboxes.take().map(|post| Msg::Posted(PostedJob(post)))
    }

    /// Records a panic; `true` if it trips the breaker.
    fn breaker_trips(&mut self) -> bool {
        let Some(b) = self.shared.config.breaker else {
            return false;
        };
        let now = Instant::now();
        self.panics.push_back(now);
        while self
            .panics
            .front()
            .is_some_and(|t| now.duration_since(*t) > b.window)
        {
            self.panics.pop_front();
        }
        if self.panics.len() >= b.max_panics as usize {
            self.panics.clear();
            self.shared.trip(
                format!("{} panics within {:?}", b.max_panics, b.window),
                b.cooldown,
            );
            return true;
        }
        false
    }

    fn cooldown(&self) -> Duration {
        self.shared
            .config
            .breaker
            .map_or(Duration::from_secs(1), |b| b.cooldown)
    }
}

/// Takes the next queued message or release, if any.
fn poll_queues<S>(rx: &Receiver<Msg<S>>, releases: &Receiver<u64>) -> Option<Event<S>> {
    match rx.try_recv() {
        Ok(m) => return Some(Event::Msg(m)),
        Err(TryRecvError::Disconnected) => return Some(Event::Disconnected),
        Err(TryRecvError::Empty) => {}
    }
    releases.try_recv().ok().map(Event::Release)
}

/// The owner thread's loop. `owner` is `None` while the state is missing
/// (a failed re-init). `pending` is a job to handle first (the one that
/// triggered a re-init).
fn owner_loop<S: 'static>(mut core: Core<S>, mut owner: Option<OwnerState<S>>, mut pending: Option<Msg<S>>) {
    let shared = Arc::clone(&core.shared);
    let c = &shared.counters;
    let mut stopping = false;
    core.engaged.get_or_insert_with(Engaged::new);
    loop {
        let job = match pending.take() {
            Some(job) => job,
            // Stop: everything queued before it has run; run what was posted
            // to mailboxes too (posted before close sent Stop), then exit.
            None if stopping => match core.posted() {
                Some(job) => {
                    Counters::bump(&c.submitted);
                    job
                }
                None => break,
            },
            None => match core.next() {
                Event::Msg(Msg::Stop) | Event::Disconnected => {
                    stopping = true;
                    continue;
                }
                Event::Msg(job) => {
                    // Counted here, by the owner, rather than by every
                    // caller on a shared line.
                    Counters::bump(&c.submitted);
                    job
                }
                Event::Release(id) => {
                    if let Some(o) = owner.as_mut() {
                        o.bound.remove(&id);
                    }
                    continue;
                }
            },
        };
        // ORDERING: set by close_timeout before it waits for us.
        if shared.aborting.load(Ordering::Acquire) {
            Counters::bump(&c.rejected);
            job.reject(Error::Shutdown);
            continue;
        }
        // ORDERING: set by this loop (Stop policy) or close.
        if shared.stopped.load(Ordering::Acquire) {
            Counters::bump(&c.rejected);
            job.reject(Error::Stopped);
            continue;
        }
        // ORDERING: see Shared::trip.
        if owner.is_none() || shared.broken.load(Ordering::Acquire) {
            if shared.broken_now().is_none() {
                // Cooldown over (or no state): re-initialise on a fresh
                // thread, which then handles this job.
                drop(owner.take());
                match respawn(core, Some(job)) {
                    Ok(()) => return,
                    Err(back) => {
                        let (c2, job) = *back;
                        core = c2;
                        pending = Some(job);
                        continue;
                    }
                }
            }
            Counters::bump(&c.rejected);
            let reason = shared
                .broken_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            job.reject(Error::Broken(reason));
            continue;
        }
        let o = owner.as_mut().expect("checked above");
        // Only jobs stamped at submission (one in `TIMED_ONE_JOB_IN` per
        // calling thread) are timed: the clock stays off most hand-offs.
        let start = job.enqueued().map(|q| {
            let now = Instant::now();
            shared.queue_wait.record(now.saturating_duration_since(q));
            now
        });
        #[cfg(feature = "tracing")]
        let _span = job.span(&shared).entered();
        // Counted before the caller sees the outcome, so a caller that
        // reads the metrics right after finds its job in them.
        let mut tally = |outcome| match outcome {
            RunOutcome::Done => {
                Counters::bump(&c.completed);
                if let Some(s) = start {
                    shared.run_time.record(s.elapsed());
                }
            }
            RunOutcome::Cancelled => Counters::bump(&c.cancelled),
            RunOutcome::Panicked => {
                Counters::bump(&c.panicked);
                if shared.config.panic_policy == PanicPolicy::Stop {
                    shared.stopped.store(true, Ordering::Release);
                    shared.closed.store(true, Ordering::SeqCst);
                }
            }
        };
        match job.run(o, &mut tally) {
            RunOutcome::Done | RunOutcome::Cancelled => {}
            RunOutcome::Panicked => {
                if core.breaker_trips() {
                    continue; // state stays until the cooldown's re-init
                }
                match shared.config.panic_policy {
                    PanicPolicy::Keep => {}
                    PanicPolicy::Reinit => {
                        drop(owner.take());
                        match respawn(core, None) {
                            Ok(()) => return,
                            Err(back) => core = back.0,
                        }
                    }
                    PanicPolicy::Stop => {} // stopped in `tally`
                }
            }
        }
    }
    // Stop: every job accepted before it has run. Drop the state here, on
    // its owner thread, then make sure nothing is left without an outcome.
    drop(owner);
    drain_rejecting(&mut core, Error::Stopped);
    drop(core);
    shared.mark_exited();
}

/// Refuses further intake and gives every job still queued or posted an
/// outcome. Queue producers already past the intake check are waited for
/// (a blocked sender is unblocked by the draining), so none can send after
/// the last look. A mailbox post that lands after the last look was
/// published after `closed` was set, so its poster sees `closed` when it
/// checks (`Owner::taking`), waits for this thread's exit and takes its job
/// back.
fn drain_rejecting<S: 'static>(core: &mut Core<S>, error: Error) {
    let shared = Arc::clone(&core.shared);
    // ORDERING: see `PinnedWorker::enter`; the fence orders the store
    // before the mailbox scans below (see `Owner::taking`).
    shared.closed.store(true, Ordering::SeqCst);
    std::sync::atomic::fence(Ordering::SeqCst);
    loop {
        let idle = shared.inflight.load(Ordering::SeqCst) == 0;
        while let Ok(msg) = core.rx.try_recv() {
            if !matches!(msg, Msg::Stop) {
                Counters::bump(&shared.counters.rejected);
                msg.reject(error.clone());
            }
        }
        while let Some(job) = core.posted() {
            Counters::bump(&shared.counters.rejected);
            job.reject(error.clone());
        }
        if idle {
            break;
        }
        thread::yield_now();
    }
}

/// Starts a fresh owner thread that re-runs `init` and carries on the loop.
/// On failure to create the thread, gives everything back.
#[allow(clippy::type_complexity)]
fn respawn<S: 'static>(core: Core<S>, pending: Option<Msg<S>>) -> Result<(), Box<(Core<S>, Msg<S>)>> {
    let shared = Arc::clone(&core.shared);
    let cooldown = core.cooldown();
    // The job and core move into the new thread; keep a way back if the
    // thread cannot be created.
    let slot: Arc<Mutex<Option<(Core<S>, Option<Msg<S>>)>>> = Arc::new(Mutex::new(Some((core, pending))));
    let theirs = Arc::clone(&slot);
    let spawned = shared.thread_builder().spawn(move || {
        let Some((mut core, pending)) = theirs.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        drop(theirs);
        let shared = Arc::clone(&core.shared);
        Counters::bump(&shared.counters.reinits);
        let owner = match shared.enter_owner_thread().map_err(|e| e.to_string()) {
            Ok(()) => match panic::catch_unwind(AssertUnwindSafe(&mut core.init)) {
                Ok(Ok(state)) => {
                    shared.heal();
                    Some(OwnerState::new(state))
                }
                Ok(Err(e)) => {
                    shared.trip(format!("re-init failed: {e}"), cooldown);
                    None
                }
                Err(p) => {
                    shared.trip(format!("re-init panicked: {}", panic_message(&*p)), cooldown);
                    None
                }
            },
            Err(e) => {
                shared.trip(format!("re-init could not set the CPU set: {e}"), cooldown);
                None
            }
        };
        owner_loop(core, owner, pending);
    });
    match spawned {
        Ok(handle) => {
            let mut threads = shared.threads.lock().unwrap_or_else(|e| e.into_inner());
            threads.retain(|h| !h.is_finished());
            threads.push(handle);
            Ok(())
        }
        Err(e) => {
            let (core, pending) = slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .expect("thread never started");
            shared.trip(format!("cannot start a fresh owner thread: {e}"), cooldown);
            match pending {
                Some(job) => Err(Box::new((core, job))),
                None => {
                    // Nothing pending: continue on this thread without state.
                    owner_loop(core, None, None);
                    Ok(())
                }
            }
        }
    }
}

/// What a caller posting to a mailbox needs to know of the owner.
impl Owner for Shared {
    #[inline]
    fn posted(&self) {
        self.bell.ring_after_post();
    }

    #[inline]
    fn taking(&self) -> bool {
        // ORDERING: SeqCst after the post's SeqCst publish, paired with
        // `drain_rejecting`'s SeqCst store and fence before its scans:
        // if this reads false the store comes later in the single order,
        // so those scans see the post.
        !self.closed.load(Ordering::SeqCst)
    }

    fn exited(&self) -> bool {
        self.has_exited()
    }

    fn refusal(&self) -> Error {
        Shared::refusal(self)
    }
}

/// A producer in flight (see `PinnedWorker::enter`).
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // ORDERING: see `PinnedWorker::enter`.
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How `enqueue` may wait for room in the queue.
#[derive(Clone, Copy)]
enum Wait {
    Block,
    No,
    Until(Instant),
}

/// Why `enqueue` refused a message (the message comes back with it).
enum Refused {
    Full,
    Err(Error),
}

/// A handle to one owner thread and its state `S`. `Send + Sync` whatever
/// `S` is: share it by reference or `Arc`. Dropping it closes the worker
/// (see [`close`](Self::close)).
///
/// ```
/// use pinned_ffi::{Config, Context, PinnedWorker};
/// // The context is created on the owner thread and never leaves it.
/// let worker = PinnedWorker::spawn(|| Context::new(&Config::with_seed(3)))?;
/// let out = worker.run(|ctx| ctx.op(1))??;
/// assert_eq!(Some(out), pinned_ffi::Model::new(3).op(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PinnedWorker<S> {
    shared: Arc<Shared>,
    tx: Sender<Msg<S>>,
    releases: Sender<u64>,
    mailboxes: Arc<Mailboxes<Lane<OwnerState<S>>>>,
    _state: PhantomData<fn() -> S>,
}

impl<S> std::fmt::Debug for PinnedWorker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedWorker")
            .field("name", &self.shared.name)
            .field("id", &self.shared.id)
            .finish()
    }
}

impl PinnedWorker<()> {
    /// A builder with the defaults; [`Builder::spawn`] fixes the state type.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<S: 'static> PinnedWorker<S> {
    /// Starts a worker with the defaults; see [`Builder::spawn`].
    ///
    /// # Errors
    /// As [`Builder::spawn`].
    pub fn spawn<E, F>(init: F) -> Result<Self, SpawnError<E>>
    where
        E: std::fmt::Display + Send + 'static,
        F: FnMut() -> Result<S, E> + Send + 'static,
    {
        Builder::default().spawn(init)
    }

    /// The error a new job would get now, if any (closed, stopped, broken).
    fn refuses(&self) -> Result<(), Error> {
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
    fn enter(&self) -> Result<InFlight<'_>, Error> {
        // ORDERING: SeqCst on `inflight` and `closed`, here and in `close`,
        // so either close sees this producer in flight and waits for it, or
        // this sees `closed`: no job slips in after the owner's last look.
        self.shared.inflight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(&self.shared);
        self.refuses()?;
        Ok(guard)
    }

    fn enqueue(&self, msg: Msg<S>, wait: Wait) -> Result<(), (Msg<S>, Refused)> {
        let own_thread = owner_of_current_thread() == Some(self.shared.id);
        // A job queued from its own owner thread must not wait for room: the
        // owner is the one that would make it.
        let wait = if own_thread { Wait::No } else { wait };
        let _flight = match self.enter() {
            Ok(g) => g,
            Err(e) => return Err((msg, Refused::Err(e))),
        };
        let sent = match wait {
            Wait::Block => self.tx.send(msg).map_err(|e| (e.0, true)),
            Wait::No => self.tx.try_send(msg).map_err(|e| match e {
                channel::TrySendError::Full(m) => (m, false),
                channel::TrySendError::Disconnected(m) => (m, true),
            }),
            Wait::Until(d) => self.tx.send_deadline(msg, d).map_err(|e| match e {
                channel::SendTimeoutError::Timeout(m) => (m, false),
                channel::SendTimeoutError::Disconnected(m) => (m, true),
            }),
        };
        match sent {
            Ok(()) => {
                self.shared.bell.ring_after_send();
                Ok(())
            }
            Err((m, gone)) => {
                let why = match (gone, own_thread) {
                    (true, _) => Refused::Err(self.shared.refusal()),
                    (false, true) => Refused::Err(Error::Reentrant),
                    (false, false) => Refused::Full,
                };
                Err((m, why))
            }
        }
    }

    /// When to stamp a job for the latency histograms: every
    /// [`TIMED_ONE_JOB_IN`]-th job per calling thread, so the clock is read
    /// on few hand-offs (a read costs tens of ns on a VM, as much as the
    /// hand-off itself).
    fn stamp(&self) -> Option<Instant> {
        thread_local! {
            static N: Cell<u32> = const { Cell::new(0) };
        }
        if !self.shared.config.timings {
            return None;
        }
        let n = N.with(|n| {
            let v = n.get().wrapping_add(1);
            n.set(v);
            v
        });
        (n % TIMED_ONE_JOB_IN == 0).then(Instant::now)
    }

    /// Runs `f` on the owner thread and waits for its result. `f` may
    /// borrow from the caller (no `'static` needed).
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
    /// [`Error::Panicked`] if `f` panicked; [`Error::Reentrant`] when called
    /// from this worker's own owner thread; [`Error::Closed`],
    /// [`Error::Stopped`], [`Error::Broken`] when refused.
    pub fn run<'a, R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'a,
        R: Send + 'a,
    {
        self.run_owner(move |o: &mut OwnerState<S>| f(&mut o.state))
    }

    /// Runs `g` on the owner thread and waits: through this thread's
    /// mailbox when nothing is queued (so the job cannot overtake one this
    /// thread queued before), through the queue otherwise.
    fn run_owner<'a, G, R>(&self, g: G) -> Result<R, Error>
    where
        G: FnOnce(&mut OwnerState<S>) -> R + Send + 'a,
        R: Send + 'a,
    {
        if owner_of_current_thread() == Some(self.shared.id) {
            return Err(Error::Reentrant);
        }
        if self.tx.is_empty() {
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
                // the owner thread never posts to its own worker (checked
                // above). The owner keeps `Owner`'s word: it takes posts
                // until it exits, and its exit path (`drain_rejecting`)
                // closes, fences and scans once more.
                return unsafe { Lane::call(mailbox, g, stamp, shared.config.spin, &**shared) };
            }
        }
        self.run_queued(g)
    }

    /// `run_owner` through the queue: the job stays on this stack and the
    /// queue carries a pointer to it.
    fn run_queued<'a, G, R>(&self, g: G) -> Result<R, Error>
    where
        G: FnOnce(&mut OwnerState<S>) -> R + Send + 'a,
        R: Send + 'a,
    {
        // Aligned to its own cache lines: the owner writes the slot while
        // this thread spins, and must not share a line with our stack.
        let job = CacheAligned(JobImpl::new(
            g,
            call_owner::<S, R, G>,
            Slot::new(self.shared.id),
            self.stamp(),
        ));
        let ptr: NonNull<dyn Job<S> + 'a> = NonNull::from(&job.0);
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
        if let Err((msg, why)) = self.enqueue(Msg::Borrowed(BorrowedJob(ptr)), Wait::Block) {
            drop(msg);
            return Err(match why {
                Refused::Err(e) => e,
                Refused::Full => Error::Reentrant,
            });
        }
        job.0.slot.wait(self.shared.config.spin)
    }

    /// Queues `f` and returns a [`Ticket`] for its result; blocks while the
    /// queue is full.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Stopped`], [`Error::Broken`] when
    /// refused; [`Error::Reentrant`] when called from the owner thread with
    /// the queue full.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let tickets: Vec<_> = (0..3).map(|i| w.submit(move |n| { *n += i; *n })).collect::<Result<_, _>>()?;
    /// let last = tickets.into_iter().map(|t| t.wait()).last().unwrap()?;
    /// assert_eq!(last, 0 + 1 + 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit<R, F>(&self, f: F) -> Result<Ticket<R>, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit_with(f, Wait::Block).map_err(|e| match e {
            TrySubmitError::Refused(_, e) => e,
            TrySubmitError::Full(_) => Error::Reentrant,
        })
    }

    /// Queues `f` if there is room now; otherwise gives it back.
    ///
    /// ```
    /// use pinned_ffi::{PinnedWorker, TrySubmitError};
    /// let w = PinnedWorker::builder().capacity(1).spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let (release, hold) = std::sync::mpsc::channel::<()>();
    /// let (started_tx, started) = std::sync::mpsc::channel::<()>();
    /// let busy = w.submit(move |_| { started_tx.send(()).unwrap(); hold.recv().ok(); })?;
    /// started.recv()?; // the owner is busy
    /// let queued = w.try_submit(|_| ()).unwrap(); // fills the one place
    /// let job = match w.try_submit(|_| ()) {
    ///     Err(TrySubmitError::Full(job)) => job, // given back, nothing lost
    ///     other => panic!("expected Full, got {other:?}"),
    /// };
    /// release.send(())?;
    /// busy.wait()?;
    /// queued.wait()?;
    /// w.submit(job)?.wait()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`TrySubmitError::Full`] with the job when the queue is full;
    /// [`TrySubmitError::Refused`] with the job and the reason otherwise.
    pub fn try_submit<R, F>(&self, f: F) -> Result<Ticket<R>, TrySubmitError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit_with(f, Wait::No)
    }

    /// Like [`try_submit`](Self::try_submit), waiting up to `timeout` for
    /// room in the queue.
    ///
    /// # Errors
    /// As [`try_submit`](Self::try_submit).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// use std::time::Duration;
    /// let t = w.submit_timeout(|n| *n + 1, Duration::from_millis(10)).map_err(|e| e.to_string())?;
    /// assert_eq!(t.wait()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_timeout<R, F>(&self, f: F, timeout: Duration) -> Result<Ticket<R>, TrySubmitError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit_with(f, Wait::Until(Instant::now() + timeout))
    }

    fn submit_with<R, F>(&self, f: F, wait: Wait) -> Result<Ticket<R>, TrySubmitError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        let slot = Arc::new(Slot::new(self.shared.id));
        let job = Box::new(JobImpl::new(
            f,
            call_state::<S, R, F>,
            Arc::clone(&slot),
            self.stamp(),
        ));
        match self.enqueue(Msg::Job(job), wait) {
            Ok(()) => Ok(Ticket::new(slot, self.shared.config.spin)),
            Err((msg, why)) => {
                let Msg::Job(job) = msg else {
                    unreachable!("enqueue gives back what it was given")
                };
                // SAFETY: this is the Box<JobImpl<..>> created above, unsized
                // to `dyn Job<S>` and handed back unchanged by the channel;
                // casting the pointer back restores its type.
                let job =
                    unsafe { Box::from_raw(Box::into_raw(job).cast::<JobImpl<S, F, R, Arc<Slot<R>>>>()) };
                // SAFETY: the job came back unrun; we are its only holder.
                let f = unsafe { job.take_f() }.expect("refused job was not run");
                Err(match why {
                    Refused::Full => TrySubmitError::Full(f),
                    Refused::Err(e) => TrySubmitError::Refused(f, e),
                })
            }
        }
    }

    /// Creates a value on the owner thread and keeps it there, returning a
    /// `Send` handle. The value is reachable only through
    /// [`with`](Self::with); dropping the handle, from any thread, runs the
    /// value's destructor on the owner thread. Use it for SDK objects that
    /// belong to the context (device buffers, sessions).
    ///
    /// ```
    /// # let worker = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let buf = worker.bind(|_| std::rc::Rc::new(vec![1u8, 2, 3]))?; // Rc: !Send, stays put
    /// let sum = std::thread::scope(|s| s.spawn(|| worker.with(&buf, |_, v| v.iter().sum::<u8>())).join().unwrap())?;
    /// assert_eq!(sum, 6);
    /// drop(buf); // the Rc is dropped on the owner thread
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub fn bind<T, F>(&self, make: F) -> Result<Bound<T>, Error>
    where
        T: 'static,
        F: FnOnce(&mut S) -> T + Send,
    {
        self.try_bind(|s| Ok::<T, std::convert::Infallible>(make(s)))?
            .map_err(|never| match never {})
    }

    /// Like [`bind`](Self::bind) for fallible creation: `make`'s error is
    /// returned inside `Ok`.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let ok = w.try_bind(|_| "42".parse::<u32>())?;
    /// assert!(ok.is_ok());
    /// let bad = w.try_bind(|_| "x".parse::<u32>())?;
    /// assert!(bad.is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_bind<T, E, F>(&self, make: F) -> Result<Result<Bound<T>, E>, Error>
    where
        T: 'static,
        E: Send,
        F: FnOnce(&mut S) -> Result<T, E> + Send,
    {
        let id = self.shared.next_bound.fetch_add(1, Ordering::Relaxed);
        let made = self.run_owner(move |o: &mut OwnerState<S>| -> Result<(), E> {
            let value = make(&mut o.state)?;
            o.bound.insert(id, Box::new(value));
            Ok(())
        })?;
        Ok(made.map(|()| Bound {
            id,
            worker: self.shared.id,
            releases: self.releases.clone(),
            shared: Arc::clone(&self.shared),
            _value: PhantomData,
        }))
    }

    /// Runs `f` on the owner thread with the state and the owner-bound value.
    ///
    /// # Errors
    /// [`Error::StaleHandle`] if the handle belongs to another worker or its
    /// value was dropped by a re-initialisation; otherwise as
    /// [`run`](Self::run).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let counter = w.bind(|_| std::cell::Cell::new(0u32))?; // Cell: !Sync, lives on the owner
    /// for _ in 0..3 { w.with(&counter, |_, c| c.set(c.get() + 1))?; }
    /// assert_eq!(w.with(&counter, |_, c| c.get())?, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with<T, R, F>(&self, bound: &Bound<T>, f: F) -> Result<R, Error>
    where
        T: 'static,
        R: Send,
        F: FnOnce(&mut S, &mut T) -> R + Send,
    {
        if bound.worker != self.shared.id {
            return Err(Error::StaleHandle);
        }
        let id = bound.id;
        self.run_owner(move |o: &mut OwnerState<S>| {
            let value = o
                .bound
                .get_mut(&id)
                .and_then(|v| v.downcast_mut::<T>())
                .ok_or(Error::StaleHandle)?;
            Ok(f(&mut o.state, value))
        })?
    }

    /// Stops intake, runs every job already accepted, drops the state on the
    /// owner thread and joins it. Idempotent; later calls return at once.
    /// Called by `Drop`.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let t = w.submit(|n| *n + 1)?;
    /// w.close(); // runs the queued job first
    /// assert_eq!(t.wait()?, 1);
    /// assert_eq!(w.run(|n| *n), Err(pinned_ffi::Error::Closed));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self) {
        self.close_inner(None);
    }

    /// Like [`close`](Self::close), but gives up on jobs still queued after
    /// `timeout`: they never run and their callers get [`Error::Shutdown`].
    /// A job already running is waited for (it cannot be interrupted).
    /// Returns how many accepted jobs were shut down that way.
    ///
    /// # Panics
    /// If called from this worker's own owner thread (it would wait on
    /// itself).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// use std::time::Duration;
    /// let shut_down = w.close_timeout(Duration::from_secs(1));
    /// assert_eq!(shut_down, 0); // nothing was queued
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close_timeout(&self, timeout: Duration) -> u64 {
        let before = self.shared.counters.rejected.load(Ordering::Relaxed);
        self.close_inner(Some(Instant::now() + timeout));
        self.shared.counters.rejected.load(Ordering::Relaxed) - before
    }

    fn close_inner(&self, deadline: Option<Instant>) {
        assert!(
            owner_of_current_thread() != Some(self.shared.id),
            "PinnedWorker::close called from its own owner thread"
        );
        close_shared(&self.shared, &self.tx, deadline);
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
    /// w.close();
    /// assert!(w.is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Jobs waiting in the queue now.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// assert_eq!(w.queue_len(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    /// Whether the queue is empty (cheaper than `queue_len() == 0`).
    pub(crate) fn queue_is_empty(&self) -> bool {
        self.tx.is_empty()
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
        MetricsSnapshot::read(&s.name, &s.counters, self.tx.len(), &s.queue_wait, &s.run_time)
    }
}

impl<S> Drop for PinnedWorker<S> {
    fn drop(&mut self) {
        if owner_of_current_thread() == Some(self.shared.id) {
            // Dropped by one of its own jobs: stop intake and let the owner
            // finish the queue; nobody can join it from here.
            self.shared.closed.store(true, Ordering::SeqCst);
            let _ = self.tx.try_send(Msg::Stop);
            self.shared.bell.ring_after_send();
            return;
        }
        close_shared(&self.shared, &self.tx, None);
    }
}

/// Stops intake, lets the owner finish (or, past `deadline`, shut down)
/// what was accepted, waits for it to exit and joins its thread(s).
fn close_shared<S>(shared: &Shared, tx: &Sender<Msg<S>>, deadline: Option<Instant>) {
    let abort = || shared.aborting.store(true, Ordering::Release); // ORDERING: read by the owner before each job
                                                                   // ORDERING: see `enqueue`.
    shared.closed.store(true, Ordering::SeqCst);
    while shared.inflight.load(Ordering::SeqCst) != 0 {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            abort();
        }
        thread::yield_now();
    }
    // A worker that already stopped has no receiver: nothing to send.
    let _ = match deadline {
        None => tx.send(Msg::Stop),
        Some(d) => tx.send_deadline(Msg::Stop, d).or_else(|e| match e {
            channel::SendTimeoutError::Timeout(m) => {
                abort();
                tx.send(m)
            }
            channel::SendTimeoutError::Disconnected(m) => Err(channel::SendError(m)),
        }),
    };
    shared.bell.ring_after_send();
    if !shared.wait_exited(deadline) {
        abort();
        shared.wait_exited(None);
    }
    let handles: Vec<_> = shared
        .threads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

/// A `Send + Sync` handle to a value of type `T` that lives on a worker's
/// owner thread (see [`PinnedWorker::bind`]). Dropping it from any thread
/// destroys the value on the owner thread.
pub struct Bound<T> {
    id: u64,
    worker: u64,
    releases: Sender<u64>,
    shared: Arc<Shared>,
    _value: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Bound<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("id", &self.id)
            .field("worker", &self.worker)
            .finish()
    }
}

impl<T> Drop for Bound<T> {
    fn drop(&mut self) {
        // Unbounded: never blocks, never full. If the worker is gone its
        // values were already destroyed on its owner thread.
        if self.releases.send(self.id).is_ok() {
            self.shared.bell.ring_after_send();
        }
    }
}
