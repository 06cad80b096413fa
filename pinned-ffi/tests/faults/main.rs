//! Fault injection through the public API: every kind of user code that a
//! worker's owner thread runs is made to panic in turn: `init` and re-init,
//! the state's destructor, an owner-bound value's destructor, the captures
//! of a cancelled or rejected job, a panic payload's destructor, a result
//! whose caller has gone, and a waker's `wake`; under each panic policy.
//!
//! Each test proves the promise for its kind: the panic never kills the
//! owner (the next call is served, or refused with the documented error
//! under `PanicPolicy::Stop` or an open breaker), never hangs a caller or
//! `close` (every test runs under a watchdog that turns a hang into a
//! failure), never aborts the process (this binary finishes), is counted in
//! `MetricsSnapshot::contained_panics` when it happened outside a job, and
//! every accepted job gets exactly one outcome. The stress test mixes all of
//! it from several callers while `close` and `close_timeout` race them, and
//! checks each outcome against what the job did; the last test proves that
//! all owner threads go away once the workers are dropped (in a child
//! process of its own, so no other test's threads blur the count).

mod jobs;
mod lifecycle;
mod stress;
mod threads;

use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, Once, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use pinned_ffi::threads::current_tid;
use pinned_ffi::{Builder, Error, PanicPolicy, PinnedWorker, Ticket};

// ---------------------------------------------------------------------------
// Bombs, fuses and the quiet panic hook
// ---------------------------------------------------------------------------

/// In the message of every panic these tests provoke.
pub(crate) const MARK: &str = "faults-bomb";
/// The thread-name prefix of every owner thread these tests start.
pub(crate) const OWNER: &str = "fown-";
pub(crate) const POLICIES: [PanicPolicy; 3] = [PanicPolicy::Keep, PanicPolicy::Reinit, PanicPolicy::Stop];
/// The longest any single expected event may take before it counts as lost.
pub(crate) const LONG: Duration = Duration::from_secs(10);

fn on_owner_thread() -> bool {
    thread::current().name().is_some_and(|n| n.starts_with(OWNER))
}

/// Counts and records the explosions of its bombs (and panicking wakers).
#[derive(Default)]
pub(crate) struct Fuse {
    /// Explode only on an owner thread; elsewhere just count (the stress
    /// test's callers legitimately drop a refused job's captures).
    owner_only: bool,
    blasts: AtomicUsize,
    off_owner: AtomicUsize,
    /// The owner thread ids the explosions happened on.
    tids: Mutex<Vec<u64>>,
}

impl Fuse {
    /// A fuse whose bombs explode wherever they are dropped.
    pub(crate) fn new() -> Arc<Fuse> {
        Arc::new(Fuse::default())
    }

    pub(crate) fn owner_only() -> Arc<Fuse> {
        Arc::new(Fuse {
            owner_only: true,
            ..Fuse::default()
        })
    }

    pub(crate) fn bomb(self: &Arc<Self>) -> Bomb {
        Bomb(Some(Arc::clone(self)))
    }

    /// Panics (unless owner-only and off the owner), after recording it.
    fn explode(&self, what: &str) {
        if on_owner_thread() {
            self.tids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(current_tid());
        } else {
            self.off_owner.fetch_add(1, SeqCst);
            if self.owner_only {
                return;
            }
        }
        self.blasts.fetch_add(1, SeqCst);
        panic!("{MARK}: {what}");
    }

    pub(crate) fn blasts(&self) -> usize {
        self.blasts.load(SeqCst)
    }

    pub(crate) fn off_owner(&self) -> usize {
        self.off_owner.load(SeqCst)
    }

    pub(crate) fn tids(&self) -> Vec<u64> {
        self.tids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A value whose destructor panics (through its fuse), unless defused.
pub(crate) struct Bomb(Option<Arc<Fuse>>);

impl Bomb {
    /// Drops it without an explosion: a job that runs defuses its captures,
    /// so only the captures of a job that never ran go off.
    pub(crate) fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if let Some(fuse) = self.0.take() {
            fuse.explode("a destructor panics");
        }
    }
}

/// Keeps the provoked panics on owner threads out of the output; every
/// other panic (a failed assertion, a bomb going off on a caller) still
/// goes to the previous hook.
fn quiet() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let p = info.payload();
            let ours = p.downcast_ref::<Bomb>().is_some()
                || p.downcast_ref::<&str>().is_some_and(|s| s.contains(MARK))
                || p.downcast_ref::<String>().is_some_and(|s| s.contains(MARK));
            if !(ours && on_owner_thread()) {
                previous(info);
            }
        }));
    });
}

/// A waker that counts its wakes and, with a fuse, panics in `wake` (after
/// unparking its thread, so a poll loop still makes progress).
pub(crate) struct TestWaker {
    thread: thread::Thread,
    fuse: Option<Arc<Fuse>>,
    pub(crate) wakes: AtomicUsize,
}

impl TestWaker {
    pub(crate) fn new(fuse: Option<Arc<Fuse>>) -> Arc<Self> {
        Arc::new(TestWaker {
            thread: thread::current(),
            fuse,
            wakes: AtomicUsize::new(0),
        })
    }
}

impl Wake for TestWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, SeqCst);
        self.thread.unpark();
        if let Some(fuse) = &self.fuse {
            fuse.explode("a waker's wake panics");
        }
    }
}

/// A minimal executor: polls `fut` on this thread, parking between polls,
/// with a [`TestWaker`]; calls `on_pending` after every `Pending`. No park
/// time-out: a lost wake-up hangs here (and the watchdog reports it).
pub(crate) fn block_on<F: Future>(
    fut: F,
    fuse: Option<Arc<Fuse>>,
    mut on_pending: impl FnMut(),
) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(TestWaker::new(fuse));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        on_pending();
        thread::park();
    }
}

pub(crate) fn poll_once<R>(t: &mut Ticket<R>, waker: &Waker) -> Poll<Result<R, Error>> {
    Pin::new(t).poll(&mut Context::from_waker(waker))
}

// ---------------------------------------------------------------------------
// Harness: watchdog, serialisation, workers, helpers
// ---------------------------------------------------------------------------

/// Runs `f` on a thread of its own and fails if it has not finished within
/// `limit` (a hang: a caller or `close` that never returned) or panicked.
pub(crate) fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    quiet();
    let (tx, rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("fwatch".into())
        .spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        })
        .expect("spawn the watched thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => {
            let _ = handle.join();
            v
        }
        Ok(Err(payload)) => {
            let _ = handle.join();
            std::panic::resume_unwind(payload)
        }
        Err(_) => panic!("{what}: did not finish within {limit:?}: a caller or close() hung"),
    }
}

/// Tests that load the CPUs (or count threads) run alone; the others share.
static SERIAL: RwLock<()> = RwLock::new(());

pub(crate) fn shared() -> RwLockReadGuard<'static, ()> {
    SERIAL.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERIAL.write().unwrap_or_else(|e| e.into_inner())
}

pub(crate) static NEXT_NAME: AtomicUsize = AtomicUsize::new(0);

/// A builder for an owner named `fown-<tag>-<n>`, with `policy` and no
/// breaker (tests that want one set it).
pub(crate) fn builder(tag: &str, policy: PanicPolicy) -> Builder {
    PinnedWorker::builder()
        .name(format!("{OWNER}{tag}-{}", NEXT_NAME.fetch_add(1, SeqCst)))
        .panic_policy(policy)
        .breaker(None)
}

/// The state of every worker here: which `init` call made it, and maybe a
/// bomb that goes off when the state is dropped.
pub(crate) struct State {
    pub(crate) n: u64,
    pub(crate) _bomb: Option<Bomb>,
}

/// A worker whose `init` counts its calls; each state carries a bomb of
/// `fuse` if given.
pub(crate) fn worker_with(b: Builder, fuse: Option<Arc<Fuse>>) -> PinnedWorker<State> {
    let calls = AtomicU64::new(0);
    b.spawn(move || {
        Ok::<_, Infallible>(State {
            n: calls.fetch_add(1, SeqCst) + 1,
            _bomb: fuse.as_ref().map(Fuse::bomb),
        })
    })
    .expect("spawn")
}

pub(crate) fn worker(tag: &str, policy: PanicPolicy) -> PinnedWorker<State> {
    worker_with(builder(tag, policy), None)
}

/// Waits for `cond`, failing with `what` if it is not met within [`LONG`].
pub(crate) fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < LONG, "never happened: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until the worker has contained at least `n` panics, then checks it
/// is exactly `n`.
pub(crate) fn expect_contained<S: 'static>(w: &PinnedWorker<S>, n: u64, what: &str) {
    eventually(&format!("{what}: {n} contained panic(s)"), || {
        w.metrics().contained_panics >= n
    });
    let m = w.metrics();
    assert_eq!(m.contained_panics, n, "{what}: {m}");
}

/// A job that holds the owner until released: submitted, and known to be
/// running, when this returns; it ends with `done()`.
pub(crate) struct Held<R> {
    pub(crate) ticket: Ticket<R>,
    pub(crate) release: mpsc::Sender<()>,
}

pub(crate) fn hold<S: 'static, R: Send + 'static>(
    w: &PinnedWorker<S>,
    done: impl FnOnce() -> R + Send + 'static,
) -> Held<R> {
    let (started_tx, started) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let ticket = w
        .submit(move |_| {
            let _ = started_tx.send(());
            let _ = released.recv();
            done()
        })
        .expect("submit the holding job");
    started
        .recv_timeout(LONG)
        .expect("the owner never started the holding job");
    Held { ticket, release }
}

impl Held<()> {
    pub(crate) fn finish(self) {
        let _ = self.release.send(());
        assert_eq!(self.ticket.wait_timeout(LONG), Ok(()), "the holding job");
    }
}

/// The worker still serves: a blocking call and a ticket both get the
/// right result.
pub(crate) fn assert_serves(w: &PinnedWorker<State>, what: &str) {
    assert_eq!(w.run(|_| 6 * 7), Ok(42), "{what}: run afterwards");
    let t = w.submit(|_| 5u64);
    assert_eq!(
        t.and_then(|t| t.wait_timeout(LONG)),
        Ok(5),
        "{what}: submit afterwards"
    );
}

/// After a job panicked: the worker goes on as its policy says.
pub(crate) fn assert_policy_after_job_panic(
    w: &PinnedWorker<State>,
    policy: PanicPolicy,
    old_tid: u64,
    what: &str,
) {
    match policy {
        PanicPolicy::Keep => {
            assert_eq!(w.run(|s| s.n), Ok(1), "{what}: Keep keeps the state");
            assert_eq!(w.owner_tid(), old_tid, "{what}: Keep keeps the thread");
            assert_serves(w, what);
            assert_eq!(w.metrics().reinits, 0, "{what}");
        }
        PanicPolicy::Reinit => {
            assert_eq!(w.run(|s| s.n), Ok(2), "{what}: Reinit gives a fresh state");
            assert_ne!(w.owner_tid(), old_tid, "{what}: Reinit gives a fresh thread");
            assert_serves(w, what);
            assert_eq!(w.metrics().reinits, 1, "{what}");
        }
        PanicPolicy::Stop => {
            assert_eq!(w.run(|s| s.n), Err(Error::Stopped), "{what}: Stop refuses run");
            assert_eq!(
                w.submit(|s| s.n).err(),
                Some(Error::Stopped),
                "{what}: Stop refuses submit"
            );
            assert!(w.is_closed(), "{what}: a stopped worker is closed");
        }
        other => panic!("{what}: no expectations for {other:?}"),
    }
}

/// After a panic outside any job: the worker carries on whatever its policy.
pub(crate) fn assert_carries_on(w: &PinnedWorker<State>, tid: u64, what: &str) {
    assert!(
        !w.is_closed(),
        "{what}: a contained panic must not stop the worker"
    );
    assert_serves(w, what);
    let m = w.metrics();
    assert_eq!((m.reinits, m.panicked), (0, 0), "{what}: no job panicked: {m}");
    assert_eq!(w.owner_tid(), tid, "{what}: the owner thread is the same");
}
