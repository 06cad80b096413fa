//! Every way to call the thread-affine library that the report and the
//! benches compare, on the same workload: a sequence of `aff_op` calls whose
//! outputs are checked against the model where a single sequence exists.
//!
//! A strategy is first [`prepare`](Strategy::prepare)d into a [`Fixture`]:
//! its threads started, its contexts created, its hand-offs warmed up. A
//! fixture then times any number of runs, so a benchmark sets up once and
//! measures many iterations.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use affine::{AffError, Config, Context, Model, Stats};

use pinned_ffi::{PinnedWorker, Pool};

use crate::scenarios::input;

/// One strategy's timed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// Wall time of the calls alone (set-up and tear-down excluded).
    pub elapsed: Duration,
    /// Calls made.
    pub calls: u64,
    /// Outputs that differ from the model; `None` where callers interleave
    /// on one context so no single sequence exists to check.
    pub wrong: Option<u64>,
    /// Contexts the C library created, set-up included.
    pub contexts: u64,
    /// OS threads the strategy started to touch the library (0: the
    /// caller's own thread).
    pub os_threads: u64,
}

/// The strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// Direct calls on the owner thread: the floor.
    Direct,
    /// `PinnedWorker::run`, one call per job.
    Pinned,
    /// `PinnedWorker::run`, `k` calls per job (one `aff_op_batch`).
    PinnedBatch(usize),
    /// `Pool` of `workers`, `callers` threads calling round-robin.
    Pool {
        /// Owner threads.
        workers: usize,
        /// Calling threads.
        callers: usize,
    },
    /// `callers` threads calling one `PinnedWorker`.
    PinnedCallers(usize),
    /// An async tokio task awaiting `submit` tickets.
    AsyncSubmit,
    /// Peer: owner thread + crossbeam request + tokio oneshot reply, awaited.
    AsyncOneshot,
    /// Peer: tokio `spawn_blocking` per call, a context per blocking thread.
    SpawnBlocking,
    /// Peer: tokio-util `LocalPoolHandle::spawn_pinned` per call onto a
    /// one-thread local pool holding the context in a thread-local.
    LocalPool,
    /// Lock + make-current + call + release, from the caller's thread.
    Rebind,
    /// A context created (and destroyed) for every call.
    ContextPerCall,
    /// A thread spawned per call, with its own context (pin per request).
    ThreadPerCall,
    /// Each of `callers` threads has its own context.
    ThreadLocal(usize),
    /// Peer: an owner thread behind crossbeam `bounded(1)` request/reply.
    CrossbeamNaive,
    /// `callers` threads on one crossbeam owner.
    CrossbeamCallers(usize),
    /// Hardware limit: two threads ping-ponging on one atomic (no C call).
    SpinPingPong,
    /// Limit for carrying the call: a hand-written owner thread with one
    /// slot on one cache line, the same C call, nothing else (no closures,
    /// no errors, no shutdown, one caller).
    BareSlot,
}

impl Strategy {
    /// The report's name for it.
    pub fn name(&self) -> String {
        match self {
            Strategy::Direct => "direct call on the owner (floor)".into(),
            Strategy::Pinned => "pinned worker, 1 call/job".into(),
            Strategy::PinnedBatch(k) => format!("pinned worker, batched {k} calls/job"),
            Strategy::Pool { workers, callers } => format!("pool of {workers}, {callers} callers"),
            Strategy::PinnedCallers(c) => format!("pinned worker, {c} callers"),
            Strategy::AsyncSubmit => "pinned worker, async submit (tokio)".into(),
            Strategy::AsyncOneshot => "peer: owner + tokio oneshot, awaited".into(),
            Strategy::SpawnBlocking => "peer: tokio spawn_blocking per call".into(),
            Strategy::LocalPool => "peer: tokio-util spawn_pinned per call".into(),
            Strategy::Rebind => "rebind: lock+make-current+call+release".into(),
            Strategy::ContextPerCall => "context created per call".into(),
            Strategy::ThreadPerCall => "thread spawned per call".into(),
            Strategy::ThreadLocal(c) => format!("thread-local context, {c} callers"),
            Strategy::CrossbeamNaive => "peer: crossbeam bounded(1) owner".into(),
            Strategy::CrossbeamCallers(c) => format!("peer: crossbeam owner, {c} callers"),
            Strategy::SpinPingPong => "limit: spin ping-pong (no C call)".into(),
            Strategy::BareSlot => "limit: bare one-slot owner, same C call".into(),
        }
    }

    /// The peer a pinned-worker or pool row is held against: the
    /// crossbeam owner with as many callers, or for async, the owner behind
    /// a tokio oneshot. `None` for the peers and limits themselves.
    ///
    /// ```
    /// use pinned_ffi_demo::strategies::Strategy;
    /// assert_eq!(Strategy::PinnedCallers(8).peer(), Some(Strategy::CrossbeamCallers(8)));
    /// assert_eq!(Strategy::Direct.peer(), None);
    /// ```
    pub fn peer(&self) -> Option<Strategy> {
        let crossbeam = |c: usize| {
            Some(if c == 1 {
                Strategy::CrossbeamNaive
            } else {
                Strategy::CrossbeamCallers(c)
            })
        };
        match *self {
            Strategy::Pinned | Strategy::PinnedBatch(_) => crossbeam(1),
            Strategy::PinnedCallers(c) | Strategy::Pool { callers: c, .. } => crossbeam(c),
            Strategy::AsyncSubmit => Some(Strategy::AsyncOneshot),
            _ => None,
        }
    }

    /// Whether one call costs micro- or milliseconds (fewer calls needed).
    pub fn is_slow(&self) -> bool {
        matches!(self, Strategy::ContextPerCall | Strategy::ThreadPerCall)
    }

    /// Whether one call costs tens of microseconds (a wake-up per call), so
    /// a trial needs fewer calls to take as long as the others.
    pub fn parks_per_call(&self) -> bool {
        matches!(
            self,
            Strategy::AsyncOneshot | Strategy::SpawnBlocking | Strategy::LocalPool
        )
    }

    /// Sets the strategy up and warms it: threads started, contexts
    /// created, hand-offs run for [`WARM_UP`].
    ///
    /// ```
    /// use pinned_ffi_demo::strategies::Strategy;
    /// let mut f = Strategy::Pinned.prepare();
    /// let m = f.run(1_000);
    /// assert_eq!((m.calls, m.wrong, m.contexts), (1_000, Some(0), 1));
    /// assert_eq!(f.run(500).wrong, Some(0)); // the model follows the context
    /// ```
    pub fn prepare(&self) -> Fixture {
        let before = Stats::now();
        let (timer, os_threads): (Timer, u64) = match *self {
            Strategy::Direct => (direct(), 0),
            Strategy::Pinned => (pinned(), 1),
            Strategy::PinnedBatch(k) => (pinned_batch(k), 1),
            Strategy::Pool { workers, callers } => (pool(workers, callers), workers as u64),
            Strategy::PinnedCallers(c) => (pool(1, c), 1),
            Strategy::AsyncSubmit => (async_submit(), 1),
            Strategy::AsyncOneshot => (async_oneshot(), 1),
            Strategy::SpawnBlocking => (spawn_blocking_per_call(), 0),
            Strategy::LocalPool => (local_pool(), 1),
            Strategy::Rebind => (rebind(), 0),
            Strategy::ContextPerCall => (Box::new(context_per_call), 0),
            Strategy::ThreadPerCall => (Box::new(thread_per_call), 0),
            Strategy::ThreadLocal(c) => (thread_local(c), c as u64),
            Strategy::CrossbeamNaive => (crossbeam(1), 1),
            Strategy::CrossbeamCallers(c) => (crossbeam(c), 1),
            Strategy::SpinPingPong => (spin_ping_pong(), 1),
            Strategy::BareSlot => (bare_slot(), 1),
        };
        Fixture {
            timer,
            before,
            os_threads,
            per_call_threads: matches!(self, Strategy::ThreadPerCall),
        }
    }

    /// Prepares a fixture and times one run of `calls` calls on it.
    pub fn run(&self, calls: u64) -> Measured {
        self.prepare().run(calls)
    }
}

/// Times one run of about n calls: its wall time, wrong outputs and the
/// calls made (a multiple of the callers, for several).
type Timer = Box<dyn FnMut(u64) -> (Duration, Option<u64>, u64)>;

/// A prepared strategy (see [`Strategy::prepare`]); dropping it stops its
/// threads and frees its contexts.
pub struct Fixture {
    timer: Timer,
    before: Stats,
    os_threads: u64,
    per_call_threads: bool,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("os_threads", &self.os_threads)
            .finish()
    }
}

impl Fixture {
    /// Times `calls` calls (rounded up to a multiple of the callers where
    /// there are several; [`Measured::calls`] says how many ran).
    pub fn run(&mut self, calls: u64) -> Measured {
        let (elapsed, wrong, calls) = (self.timer)(calls);
        Measured {
            elapsed,
            calls,
            wrong,
            contexts: Stats::now().since(&self.before).created,
            os_threads: if self.per_call_threads {
                calls
            } else {
                self.os_threads
            },
        }
    }
}

const SEED: u64 = 1;

/// How long a fixture runs its hand-offs untimed when prepared. A new
/// thread starts on its parent's CPU and the kernel spreads spinning
/// threads over the cores only after tens of milliseconds (~20 ms here);
/// before that, two spinners share a core and every hand-off waits for a
/// time slice. The figures are steady-state costs, so every strategy gets
/// the same warm-up.
pub const WARM_UP: Duration = Duration::from_millis(25);

pub(crate) fn warm_up(mut f: impl FnMut()) {
    let t = Instant::now();
    while t.elapsed() < WARM_UP {
        f();
    }
}

/// Inputs for one run, and a model that follows one context across runs.
struct Checked {
    model: Model,
    next: u64,
}

impl Checked {
    fn new() -> Self {
        Checked {
            model: Model::new(SEED),
            next: 0,
        }
    }

    fn inputs(&mut self, calls: u64) -> Vec<u64> {
        let start = self.next;
        self.next += calls;
        (start..start + calls).map(|i| input(SEED, i)).collect()
    }

    /// Outputs that differ from the model's, which advances past them.
    fn wrong(&mut self, inputs: &[u64], outputs: &[u64]) -> Option<u64> {
        let m = &mut self.model;
        Some(
            inputs
                .iter()
                .zip(outputs)
                .filter(|(&i, &o)| m.op(i) != Some(o))
                .count() as u64,
        )
    }
}

/// A timer for one context used in sequence: `call` maps a run's inputs to
/// outputs.
fn sequential(mut call: impl FnMut(&[u64], &mut [u64]) + 'static) -> Timer {
    let mut checked = Checked::new();
    Box::new(move |calls| {
        let ins = checked.inputs(calls);
        let mut outs = vec![0u64; ins.len()];
        let t = Instant::now();
        call(&ins, &mut outs);
        let elapsed = t.elapsed();
        (elapsed, checked.wrong(&ins, &outs), calls)
    })
}

fn direct() -> Timer {
    let mut ctx = Context::new(&Config::with_seed(SEED)).expect("context");
    sequential(move |ins, outs| {
        for (i, o) in ins.iter().zip(outs.iter_mut()) {
            *o = ctx.op(*i).expect("op");
        }
    })
}

fn spawn_ctx_worker() -> PinnedWorker<Context> {
    let w = PinnedWorker::spawn(|| Context::new(&Config::with_seed(SEED))).expect("worker");
    warm_up(|| drop(w.run(|ctx| ctx.calls())));
    w
}

fn pinned() -> Timer {
    let w = spawn_ctx_worker();
    sequential(move |ins, outs| {
        for (i, o) in ins.iter().zip(outs.iter_mut()) {
            *o = w.run(|ctx| ctx.op(*i)).expect("run").expect("op");
        }
    })
}

fn pinned_batch(k: usize) -> Timer {
    let w = spawn_ctx_worker();
    sequential(move |ins, outs| {
        for (i, o) in ins.chunks(k).zip(outs.chunks_mut(k)) {
            w.run(|ctx| ctx.op_batch(i, o)).expect("run").expect("batch");
        }
    })
}

/// `callers` threads that live as long as the gang and run a share of each
/// run's calls together. Each keeps the state its `setup` made (warming up
/// there); the figure is the span from the first start to the last end, as
/// measured by the callers themselves (the coordinating thread may not even
/// be scheduled while they run).
struct Gang {
    orders: Vec<mpsc::Sender<u64>>,
    spans: mpsc::Receiver<(Instant, Instant)>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Gang {
    fn start<T: 'static>(
        callers: usize,
        setup: impl Fn(u64) -> T + Send + Sync + 'static,
        body: impl Fn(u64, &mut T, u64) + Send + Sync + 'static,
    ) -> Gang {
        let (setup, body) = (Arc::new(setup), Arc::new(body));
        let (span_tx, spans) = mpsc::channel();
        let ready = Arc::new(std::sync::Barrier::new(callers + 1));
        let mut orders = Vec::new();
        let threads = (0..callers as u64)
            .map(|c| {
                let (order_tx, order_rx) = mpsc::channel::<u64>();
                orders.push(order_tx);
                let (setup, body, span_tx, ready) = (
                    Arc::clone(&setup),
                    Arc::clone(&body),
                    span_tx.clone(),
                    Arc::clone(&ready),
                );
                thread::spawn(move || {
                    let mut state = setup(c);
                    ready.wait();
                    for calls in order_rx {
                        let t0 = Instant::now();
                        body(c, &mut state, calls);
                        if span_tx.send((t0, Instant::now())).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        ready.wait();
        Gang {
            orders,
            spans,
            threads,
        }
    }

    /// Runs `calls` calls (rounded up to a multiple of the callers) split
    /// over the callers; returns the span and the calls made.
    fn run(&self, calls: u64) -> (Duration, u64) {
        let per = calls.div_ceil(self.orders.len() as u64);
        for o in &self.orders {
            o.send(per).expect("caller alive");
        }
        let spans: Vec<_> = (0..self.orders.len())
            .map(|_| self.spans.recv().expect("caller alive"))
            .collect();
        let first = spans.iter().map(|s| s.0).min().expect("at least one caller");
        let last = spans.iter().map(|s| s.1).max().expect("at least one caller");
        (last - first, per * self.orders.len() as u64)
    }
}

impl Drop for Gang {
    fn drop(&mut self) {
        self.orders.clear(); // callers see their orders end and exit
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn pool(workers: usize, callers: usize) -> Timer {
    let pool = Arc::new(
        Pool::builder(workers)
            .spawn(|_| Context::new(&Config::with_seed(SEED)))
            .expect("pool"),
    );
    let (p1, p2) = (Arc::clone(&pool), pool);
    let gang = Gang::start(
        callers,
        move |_| warm_up(|| drop(p1.run(|ctx| ctx.calls()))),
        move |c, (), calls| {
            for i in 0..calls {
                p2.run(|ctx| ctx.op(input(c, i))).expect("run").expect("op");
            }
        },
    );
    Box::new(move |calls| {
        let (elapsed, made) = gang.run(calls);
        (elapsed, None, made)
    })
}

/// A one-thread tokio runtime and the async call under test, awaited once
/// per input; warmed up with `call(u64::MAX)` pings (which must leave the
/// context alone).
fn on_tokio(call: AsyncCall) -> Timer {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime");
    let warm = Arc::clone(&call);
    rt.block_on(async move {
        tokio::spawn(async move {
            let t = Instant::now();
            while t.elapsed() < WARM_UP {
                warm(u64::MAX).await;
            }
        })
        .await
        .expect("warm-up task");
    });
    let mut checked = Checked::new();
    Box::new(move |calls| {
        let ins = checked.inputs(calls);
        let task_ins = ins.clone();
        let call = Arc::clone(&call);
        let (elapsed, outs) = rt.block_on(async move {
            tokio::spawn(async move {
                let mut outs = Vec::with_capacity(task_ins.len());
                let t = Instant::now();
                for &i in &task_ins {
                    outs.push(call(i).await);
                }
                (t.elapsed(), outs)
            })
            .await
            .expect("task")
        });
        (elapsed, checked.wrong(&ins, &outs), calls)
    })
}

type AsyncCall =
    Arc<dyn Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>> + Send + Sync>;

fn async_submit() -> Timer {
    let w = Arc::new(PinnedWorker::spawn(|| Context::new(&Config::with_seed(SEED))).expect("worker"));
    on_tokio(Arc::new(move |i| {
        let t = w
            .submit(move |ctx| if i == u64::MAX { 0 } else { ctx.op(i).expect("op") })
            .expect("submit");
        Box::pin(async move { t.await.expect("job") })
    }))
}

/// Peer: the owner thread behind a crossbeam channel, replies through a
/// tokio oneshot that the caller awaits (the tokio-rusqlite shape). The
/// owner exits when the fixture (and with it the sender) is dropped.
fn async_oneshot() -> Timer {
    type Req = (u64, tokio::sync::oneshot::Sender<u64>);
    let (tx, rx) = crossbeam_channel::unbounded::<Req>();
    thread::spawn(move || {
        let mut ctx = Context::new(&Config::with_seed(SEED)).expect("context");
        for (i, reply) in rx {
            let _ = reply.send(if i == u64::MAX { 0 } else { ctx.op(i).expect("op") });
        }
    });
    on_tokio(Arc::new(move |i| {
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.send((i, reply)).expect("owner");
        Box::pin(async move { answer.await.expect("reply") })
    }))
}

thread_local! {
    /// The context of a tokio blocking-pool thread (spawn_blocking peer).
    static BLOCKING_CTX: std::cell::RefCell<Option<Context>> = const { std::cell::RefCell::new(None) };
}

/// Peer: `spawn_blocking` per call, each blocking thread with its own
/// context (no affinity: whichever pool thread runs the call).
fn spawn_blocking_per_call() -> Timer {
    on_tokio(Arc::new(|i| {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                BLOCKING_CTX.with(|c| {
                    let mut c = c.borrow_mut();
                    let ctx =
                        c.get_or_insert_with(|| Context::new(&Config::with_seed(SEED)).expect("context"));
                    if i == u64::MAX {
                        0
                    } else {
                        ctx.op(i).expect("op")
                    }
                })
            })
            .await
            .expect("blocking task")
        })
    }))
}

thread_local! {
    /// The context of the local pool's thread (spawn_pinned peer).
    static POOL_CTX: std::cell::RefCell<Option<Context>> = const { std::cell::RefCell::new(None) };
}

/// Peer: tokio-util's pool of `!Send` tasks, one thread, a task spawned and
/// pinned there per call; the context lives in that thread's thread-local.
fn local_pool() -> Timer {
    let pool = tokio_util::task::LocalPoolHandle::new(1);
    on_tokio(Arc::new(move |i| {
        let task = pool.spawn_pinned(move || async move {
            POOL_CTX.with(|c| {
                let mut c = c.borrow_mut();
                let ctx = c.get_or_insert_with(|| Context::new(&Config::with_seed(SEED)).expect("context"));
                if i == u64::MAX {
                    0
                } else {
                    ctx.op(i).expect("op")
                }
            })
        });
        Box::pin(async move { task.await.expect("pinned task") })
    }))
}

/// A context pointer that moves between threads under a lock, as rebinding
/// wrappers do. Destroyed on drop, by whichever thread drops it.
struct SharedCtx(*mut ffi::aff_ctx);
// SAFETY: the pointer is only used while the Mutex is held, and each user
// binds the context to its thread before use and releases it after, which
// is the C library's rule for moving a context between threads.
unsafe impl Send for SharedCtx {}

impl SharedCtx {
    fn create() -> Self {
        let cfg = ffi::aff_config {
            init_work: ffi::AFF_DEFAULT_INIT_WORK,
            seed: SEED,
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid pointers for the call.
        assert_eq!(unsafe { ffi::aff_ctx_create(&cfg, &mut raw) }, ffi::AFF_OK);
        SharedCtx(raw)
    }
}

impl Drop for SharedCtx {
    fn drop(&mut self) {
        // SAFETY: not current on any thread (every user releases it), and
        // no one uses it after this.
        assert_eq!(unsafe { ffi::aff_ctx_destroy(self.0) }, ffi::AFF_OK);
    }
}

fn rebound_op(ctx: &Mutex<SharedCtx>, i: u64) -> u64 {
    let guard = ctx.lock().expect("lock");
    let mut out = 0;
    // SAFETY: under the lock no other thread has the context current; we
    // bind it here, call, and release before unlocking.
    unsafe {
        assert_eq!(ffi::aff_make_current(guard.0), ffi::AFF_OK);
        assert_eq!(ffi::aff_op(i, &mut out), ffi::AFF_OK);
        assert_eq!(ffi::aff_release_current(), ffi::AFF_OK);
    }
    out
}

fn rebind() -> Timer {
    let ctx = Mutex::new(SharedCtx::create());
    sequential(move |ins, outs| {
        for (i, o) in ins.iter().zip(outs.iter_mut()) {
            *o = rebound_op(&ctx, *i);
        }
    })
}

fn context_per_call(calls: u64) -> (Duration, Option<u64>, u64) {
    let ins: Vec<u64> = (0..calls).map(|i| input(SEED, i)).collect();
    let mut bad = 0;
    let t = Instant::now();
    for &i in &ins {
        let mut ctx = Context::new(&Config::with_seed(SEED)).expect("context");
        if Some(ctx.op(i).expect("op")) != Model::new(SEED).op(i) {
            bad += 1;
        }
    }
    (t.elapsed(), Some(bad), calls)
}

fn thread_per_call(calls: u64) -> (Duration, Option<u64>, u64) {
    let ins: Vec<u64> = (0..calls).map(|i| input(SEED, i)).collect();
    let mut bad = 0;
    let t = Instant::now();
    for &i in &ins {
        // Pinning per request: a fresh owner thread with a fresh context.
        let out = thread::scope(|s| {
            s.spawn(|| {
                Context::new(&Config::with_seed(SEED))
                    .expect("context")
                    .op(i)
                    .expect("op")
            })
            .join()
            .expect("thread")
        });
        if Some(out) != Model::new(SEED).op(i) {
            bad += 1;
        }
    }
    (t.elapsed(), Some(bad), calls)
}

fn thread_local(callers: usize) -> Timer {
    let bad = Arc::new(AtomicU64::new(0));
    let tally = Arc::clone(&bad);
    let gang = Gang::start(
        callers,
        |_| {
            (
                Context::new(&Config::with_seed(SEED)).expect("context"),
                Checked::new(),
            )
        },
        move |_, (ctx, checked), calls| {
            let ins = checked.inputs(calls);
            let outs: Vec<u64> = ins.iter().map(|&x| ctx.op(x).expect("op")).collect();
            let wrong = checked.wrong(&ins, &outs).unwrap_or(0);
            // ORDERING: a tally read after the callers reported back.
            tally.fetch_add(wrong, Ordering::Relaxed);
        },
    );
    Box::new(move |calls| {
        let (elapsed, made) = gang.run(calls);
        // ORDERING: the callers' spans were received after their adds.
        (elapsed, Some(bad.swap(0, Ordering::Relaxed)), made)
    })
}

fn crossbeam(callers: usize) -> Timer {
    type Req = (u64, crossbeam_channel::Sender<u64>);
    let (tx, rx) = crossbeam_channel::bounded::<Req>(1);
    thread::spawn(move || {
        let mut ctx = Context::new(&Config::with_seed(SEED)).expect("context");
        for (i, reply) in rx {
            // u64::MAX: a warm-up ping that leaves the context alone.
            let out = if i == u64::MAX { 0 } else { ctx.op(i).expect("op") };
            let _ = reply.send(out);
        }
    });
    // With one caller the outputs form one sequence: check them.
    let checked = Arc::new(Mutex::new(Checked::new()));
    let wrong = Arc::new(Mutex::new(None));
    let (c2, w2) = (Arc::clone(&checked), Arc::clone(&wrong));
    let t2 = tx.clone();
    let gang = Gang::start(
        callers,
        move |_| {
            let (rtx, rrx) = crossbeam_channel::bounded(1);
            warm_up(|| {
                t2.send((u64::MAX, rtx.clone())).expect("owner");
                rrx.recv().expect("reply");
            });
            (rtx, rrx)
        },
        move |_, (rtx, rrx), calls| {
            let ins = c2.lock().expect("lock").inputs(calls);
            let mut outs = Vec::with_capacity(ins.len());
            for &i in &ins {
                tx.send((i, rtx.clone())).expect("owner");
                outs.push(rrx.recv().expect("reply"));
            }
            if callers == 1 {
                *w2.lock().expect("lock") = c2.lock().expect("lock").wrong(&ins, &outs);
            }
        },
    );
    Box::new(move |calls| {
        let (elapsed, made) = gang.run(calls);
        (elapsed, wrong.lock().expect("lock").take(), made)
    })
}

/// The value that tells a spinning peer to exit.
const STOP: u64 = u64::MAX;

/// A peer thread that spins until its `flag` reads [`STOP`]; stopped and
/// joined on drop.
struct Peer {
    flag: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // ORDERING: the peer exits when it sees STOP.
        self.flag.store(STOP, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Hardware limit: a peer answers `2k+1` with `2k+2` on one atomic.
fn spin_ping_pong() -> Timer {
    let flag = Arc::new(AtomicU64::new(0));
    let other = Arc::clone(&flag);
    let thread = thread::spawn(move || {
        let mut k = 0u64;
        loop {
            // ORDERING: Acquire/Release make each side see the other's turn;
            // the value itself is the message.
            match other.load(Ordering::Acquire) {
                STOP => return,
                seen if seen == 2 * k + 1 => {
                    other.store(2 * k + 2, Ordering::Release);
                    k += 1;
                }
                _ => std::hint::spin_loop(),
            }
        }
    });
    let peer = Peer {
        flag,
        thread: Some(thread),
    };
    let mut k = 0u64;
    let mut round_trips = move |n: u64| {
        for _ in 0..n {
            // ORDERING: as above.
            peer.flag.store(2 * k + 1, Ordering::Release);
            while peer.flag.load(Ordering::Acquire) != 2 * k + 2 {
                std::hint::spin_loop();
            }
            k += 1;
        }
    };
    let t = Instant::now();
    while t.elapsed() < WARM_UP {
        round_trips(1_000);
    }
    Box::new(move |calls| {
        let t = Instant::now();
        round_trips(calls);
        (t.elapsed(), None, calls)
    })
}

/// The one slot of [`Strategy::BareSlot`]: request and answer on one line.
#[repr(C, align(128))]
struct Slot {
    /// Bumped by the caller after writing `value`.
    posted: AtomicU64,
    /// Set by the owner to the post number it answered.
    answered: AtomicU32,
    /// The input going in, the output coming out.
    value: std::cell::UnsafeCell<u64>,
}

// SAFETY: `value` is written by the caller only before posting (the owner
// reads it after seeing the post, Acquire) and by the owner only before
// answering (the caller reads it after seeing the answer, Acquire).
unsafe impl Sync for Slot {}

/// Limit for carrying the call: what a hand-written single-owner thread
/// for exactly this call costs, with no generality at all.
fn bare_slot() -> Timer {
    let slot = Arc::new(Slot {
        posted: AtomicU64::new(0),
        answered: AtomicU32::new(0),
        value: std::cell::UnsafeCell::new(0),
    });
    let ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicU64::new(0));
    let (theirs, up, stopped) = (Arc::clone(&slot), Arc::clone(&ready), Arc::clone(&stop));
    let thread = thread::spawn(move || {
        let mut ctx = Context::new(&Config::with_seed(SEED)).expect("context");
        // ORDERING: publishes nothing; the caller only waits for it.
        up.store(true, Ordering::Release);
        let mut seen = 0;
        loop {
            // ORDERING: Acquire pairs with the caller's post (SeqCst RMW).
            let posted = theirs.posted.load(Ordering::Acquire);
            if posted == seen {
                // ORDERING: see `Peer::drop`.
                if stopped.load(Ordering::Acquire) == STOP {
                    return;
                }
                std::hint::spin_loop();
                continue;
            }
            seen = posted;
            // SAFETY: the caller wrote the input before posting and waits.
            let input = unsafe { *theirs.value.get() };
            // u64::MAX: a warm-up ping that leaves the context alone.
            let out: Result<u64, AffError> = if input == u64::MAX { Ok(0) } else { ctx.op(input) };
            // SAFETY: the caller reads it only after the answer below.
            unsafe { *theirs.value.get() = out.expect("op") };
            // ORDERING: Release publishes the output to the caller.
            theirs.answered.swap(posted as u32, Ordering::AcqRel);
        }
    });
    let owner = Peer {
        flag: stop,
        thread: Some(thread),
    };
    let call = move |input: u64| {
        // SAFETY: the owner reads `value` only after the post below and is
        // done with it (answered) before we write again.
        unsafe { *slot.value.get() = input };
        // ORDERING: publishes `value` (Release) to the owner's Acquire.
        let post = slot.posted.fetch_add(1, Ordering::SeqCst) + 1;
        // ORDERING: Acquire pairs with the owner's answer.
        while slot.answered.load(Ordering::Acquire) != post as u32 {
            std::hint::spin_loop();
        }
        // SAFETY: answered: the owner wrote the output and is done.
        unsafe { *slot.value.get() }
    };
    while !ready.load(Ordering::Acquire) {
        thread::yield_now();
    }
    warm_up(|| {
        call(u64::MAX);
    });
    sequential(move |ins, outs| {
        let _owner = &owner; // lives, and stops the owner, with the fixture
        for (i, o) in ins.iter().zip(outs.iter_mut()) {
            *o = call(*i);
        }
    })
}
