//! Every way to call the thread-affine library that the report and the
//! benches compare, on the same workload: a sequence of `aff_op` calls whose
//! outputs are checked against the model where a single sequence exists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pinned_ffi::{Config, Context, Model, PinnedWorker, Pool, Stats};

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
            Strategy::Rebind => "rebind: lock+make-current+call+release".into(),
            Strategy::ContextPerCall => "context created per call".into(),
            Strategy::ThreadPerCall => "thread spawned per call".into(),
            Strategy::ThreadLocal(c) => format!("thread-local context, {c} callers"),
            Strategy::CrossbeamNaive => "peer: crossbeam bounded(1) owner".into(),
            Strategy::CrossbeamCallers(c) => format!("peer: crossbeam owner, {c} callers"),
            Strategy::SpinPingPong => "limit: spin ping-pong (no C call)".into(),
        }
    }

    /// Whether one call costs micro- or milliseconds (fewer calls needed).
    pub fn is_slow(&self) -> bool {
        matches!(self, Strategy::ContextPerCall | Strategy::ThreadPerCall)
    }

    /// Whether one call costs tens of microseconds (a wake-up per call), so
    /// a trial needs fewer calls to take as long as the others.
    pub fn parks_per_call(&self) -> bool {
        matches!(self, Strategy::AsyncOneshot | Strategy::SpawnBlocking)
    }

    /// Runs `calls` calls and measures them.
    pub fn run(&self, calls: u64) -> Measured {
        let before = Stats::now();
        let (elapsed, wrong, os_threads) = match *self {
            Strategy::Direct => direct(calls),
            Strategy::Pinned => pinned(calls),
            Strategy::PinnedBatch(k) => pinned_batch(calls, k),
            Strategy::Pool { workers, callers } => pool(calls, workers, callers),
            Strategy::PinnedCallers(c) => pool(calls, 1, c),
            Strategy::AsyncSubmit => async_submit(calls),
            Strategy::AsyncOneshot => async_oneshot(calls),
            Strategy::SpawnBlocking => spawn_blocking_per_call(calls),
            Strategy::Rebind => rebind(calls),
            Strategy::ContextPerCall => context_per_call(calls),
            Strategy::ThreadPerCall => thread_per_call(calls),
            Strategy::ThreadLocal(c) => thread_local(calls, c),
            Strategy::CrossbeamNaive => crossbeam(calls, 1),
            Strategy::CrossbeamCallers(c) => crossbeam(calls, c),
            Strategy::SpinPingPong => spin_ping_pong(calls),
        };
        Measured {
            elapsed,
            calls,
            wrong,
            contexts: Stats::now().since(&before).created,
            os_threads,
        }
    }
}

const SEED: u64 = 1;

fn inputs(calls: u64) -> Vec<u64> {
    (0..calls).map(|i| input(SEED, i)).collect()
}

fn wrong(outputs: &[u64], inputs: &[u64]) -> Option<u64> {
    let mut m = Model::new(SEED);
    Some(
        inputs
            .iter()
            .zip(outputs)
            .filter(|(&i, &o)| m.op(i) != Some(o))
            .count() as u64,
    )
}

type Timed = (Duration, Option<u64>, u64);

fn direct(calls: u64) -> Timed {
    let mut ctx = Context::new(&Config::with_seed(SEED)).expect("context");
    let ins = inputs(calls);
    let mut outs = vec![0u64; ins.len()];
    let t = Instant::now();
    for (i, o) in ins.iter().zip(outs.iter_mut()) {
        *o = ctx.op(*i).expect("op");
    }
    (t.elapsed(), wrong(&outs, &ins), 0)
}

/// How long each strategy runs untimed first. A new thread starts on its
/// parent's CPU and the kernel spreads spinning threads over the cores
/// only after tens of milliseconds (~20 ms here); before that, two spinners
/// share a core
/// and every hand-off waits for a time slice. The figures are steady-state
/// costs, so every strategy gets the same warm-up.
const WARM_UP: Duration = Duration::from_millis(25);

fn warm_up(mut f: impl FnMut()) {
    let t = Instant::now();
    while t.elapsed() < WARM_UP {
        f();
    }
}

fn spawn_ctx_worker() -> PinnedWorker<Context> {
    PinnedWorker::spawn(|| Context::new(&Config::with_seed(SEED))).expect("worker")
}

fn pinned(calls: u64) -> Timed {
    let w = spawn_ctx_worker();
    warm_up(|| drop(w.run(|ctx| ctx.calls())));
    let ins = inputs(calls);
    let mut outs = vec![0u64; ins.len()];
    let t = Instant::now();
    for (i, o) in ins.iter().zip(outs.iter_mut()) {
        *o = w.run(|ctx| ctx.op(*i)).expect("run").expect("op");
    }
    (t.elapsed(), wrong(&outs, &ins), 1)
}

fn pinned_batch(calls: u64, k: usize) -> Timed {
    let w = spawn_ctx_worker();
    warm_up(|| drop(w.run(|ctx| ctx.calls())));
    let ins = inputs(calls);
    let mut outs = vec![0u64; ins.len()];
    let t = Instant::now();
    for (i, o) in ins.chunks(k).zip(outs.chunks_mut(k)) {
        w.run(|ctx| ctx.op_batch(i, o)).expect("run").expect("batch");
    }
    (t.elapsed(), wrong(&outs, &ins), 1)
}

fn pool(calls: u64, workers: usize, callers: usize) -> Timed {
    let pool = Pool::builder(workers)
        .spawn(|_| Context::new(&Config::with_seed(SEED)))
        .expect("pool");
    let per = calls / callers as u64;
    let elapsed = callers_in_parallel(
        callers,
        |_| warm_up(|| drop(pool.run(|ctx| ctx.calls()))),
        |c, ()| {
            for i in 0..per {
                pool.run(|ctx| ctx.op(input(c, i))).expect("run").expect("op");
            }
        },
    );
    (elapsed, None, workers as u64)
}

/// Runs `body` on `callers` threads at once (each after its `setup`) and
/// returns the span from the first start to the last end, as measured by
/// the callers themselves (the coordinating thread may not even be
/// scheduled while they run).
fn callers_in_parallel<T>(
    callers: usize,
    setup: impl Fn(u64) -> T + Sync,
    body: impl Fn(u64, T) + Sync,
) -> Duration {
    let start = std::sync::Barrier::new(callers);
    let spans: Vec<(Instant, Instant)> = thread::scope(|s| {
        let handles: Vec<_> = (0..callers as u64)
            .map(|c| {
                let (start, setup, body) = (&start, &setup, &body);
                s.spawn(move || {
                    let state = setup(c);
                    start.wait();
                    let t0 = Instant::now();
                    body(c, state);
                    (t0, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("caller")).collect()
    });
    let first = spans.iter().map(|s| s.0).min().expect("at least one caller");
    let last = spans.iter().map(|s| s.1).max().expect("at least one caller");
    last - first
}

/// One async caller on a one-thread tokio runtime awaiting `call(input)`
/// for each input after a warm-up of `call(u64::MAX)` pings (which must
/// leave the context alone). Returns the timed span and the outputs.
fn on_tokio(calls: u64, call: AsyncCall) -> (Duration, Vec<u64>, Vec<u64>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime");
    let ins = inputs(calls);
    let task_ins = ins.clone();
    let (elapsed, outs) = rt.block_on(async move {
        tokio::spawn(async move {
            let t = Instant::now();
            while t.elapsed() < WARM_UP {
                call(u64::MAX).await;
            }
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
    (elapsed, outs, ins)
}

type AsyncCall =
    Arc<dyn Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>> + Send + Sync>;

fn async_submit(calls: u64) -> Timed {
    let w = Arc::new(spawn_ctx_worker());
    let (elapsed, outs, ins) = on_tokio(
        calls,
        Arc::new(move |i| {
            let t = w
                .submit(move |ctx| if i == u64::MAX { 0 } else { ctx.op(i).expect("op") })
                .expect("submit");
            Box::pin(async move { t.await.expect("job") })
        }),
    );
    (elapsed, wrong(&outs, &ins), 1)
}

/// Peer: the owner thread behind a crossbeam channel, replies through a
/// tokio oneshot that the caller awaits (the tokio-rusqlite shape).
fn async_oneshot(calls: u64) -> Timed {
    type Req = (u64, tokio::sync::oneshot::Sender<u64>);
    let (tx, rx) = crossbeam_channel::unbounded::<Req>();
    let owner = thread::spawn(move || {
        let mut ctx = Context::new(&Config::with_seed(SEED)).expect("context");
        for (i, reply) in rx {
            let _ = reply.send(if i == u64::MAX { 0 } else { ctx.op(i).expect("op") });
        }
    });
    let sender = tx.clone();
    let (elapsed, outs, ins) = on_tokio(
        calls,
        Arc::new(move |i| {
            let (reply, answer) = tokio::sync::oneshot::channel();
            sender.send((i, reply)).expect("owner");
            Box::pin(async move { answer.await.expect("reply") })
        }),
    );
    drop(tx);
    owner.join().expect("owner");
    (elapsed, wrong(&outs, &ins), 1)
}

thread_local! {
    /// The context of a tokio blocking-pool thread (spawn_blocking peer).
    static BLOCKING_CTX: std::cell::RefCell<Option<Context>> = const { std::cell::RefCell::new(None) };
}

/// Peer: `spawn_blocking` per call, each blocking thread with its own
/// context (no affinity: whichever pool thread runs the call).
fn spawn_blocking_per_call(calls: u64) -> Timed {
    let (elapsed, outs, ins) = on_tokio(
        calls,
        Arc::new(|i| {
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
        }),
    );
    (elapsed, wrong(&outs, &ins), 0)
}

/// A context pointer that moves between threads under a lock, as rebinding
/// wrappers do.
struct SharedCtx(*mut ffi::aff_ctx);
// SAFETY: the pointer is only used while the Mutex is held, and each user
// binds the context to its thread before use and releases it after, which
// is the C library's rule for moving a context between threads.
unsafe impl Send for SharedCtx {}

fn create_raw() -> *mut ffi::aff_ctx {
    let cfg = ffi::aff_config {
        init_work: ffi::AFF_DEFAULT_INIT_WORK,
        seed: SEED,
    };
    let mut raw = std::ptr::null_mut();
    // SAFETY: valid pointers; the context is owned by this thread.
    assert_eq!(unsafe { ffi::aff_ctx_create(&cfg, &mut raw) }, ffi::AFF_OK);
    raw
}

fn destroy_raw(raw: *mut ffi::aff_ctx) {
    // SAFETY: called on the creating thread, context not current anywhere.
    assert_eq!(unsafe { ffi::aff_ctx_destroy(raw) }, ffi::AFF_OK);
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

fn rebind(calls: u64) -> Timed {
    let raw = create_raw();
    let ctx = Mutex::new(SharedCtx(raw));
    let ins = inputs(calls);
    let mut outs = vec![0u64; ins.len()];
    let t = Instant::now();
    for (i, o) in ins.iter().zip(outs.iter_mut()) {
        *o = rebound_op(&ctx, *i);
    }
    let elapsed = t.elapsed();
    destroy_raw(raw);
    (elapsed, wrong(&outs, &ins), 0)
}

fn context_per_call(calls: u64) -> Timed {
    let ins = inputs(calls);
    let mut bad = 0;
    let t = Instant::now();
    for &i in &ins {
        let mut ctx = Context::new(&Config::with_seed(SEED)).expect("context");
        if Some(ctx.op(i).expect("op")) != Model::new(SEED).op(i) {
            bad += 1;
        }
    }
    (t.elapsed(), Some(bad), 0)
}

fn thread_per_call(calls: u64) -> Timed {
    let ins = inputs(calls);
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

fn thread_local(calls: u64, callers: usize) -> Timed {
    let per = calls / callers as u64;
    let bad = AtomicU64::new(0);
    let elapsed = callers_in_parallel(
        callers,
        |_| {
            (
                Context::new(&Config::with_seed(SEED)).expect("context"),
                Model::new(SEED),
            )
        },
        |_, (mut ctx, mut m)| {
            for i in 0..per {
                let x = input(SEED, i);
                if Some(ctx.op(x).expect("op")) != m.op(x) {
                    // ORDERING: a tally read after the threads are joined.
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        },
    );
    (elapsed, Some(bad.into_inner()), callers as u64)
}

fn crossbeam(calls: u64, callers: usize) -> Timed {
    type Req = (u64, crossbeam_channel::Sender<u64>);
    let (tx, rx) = crossbeam_channel::bounded::<Req>(1);
    let owner = thread::spawn(move || {
        let mut ctx = Context::new(&Config::with_seed(SEED)).expect("context");
        for (i, reply) in rx {
            // u64::MAX: a warm-up ping that leaves the context alone.
            let out = if i == u64::MAX { 0 } else { ctx.op(i).expect("op") };
            let _ = reply.send(out);
        }
    });
    let per = calls / callers as u64;
    let ins = inputs(per);
    let outs = Mutex::new(Vec::new());
    let elapsed = callers_in_parallel(
        callers,
        |_| {
            let (rtx, rrx) = crossbeam_channel::bounded(1);
            warm_up(|| {
                tx.send((u64::MAX, rtx.clone())).expect("owner");
                rrx.recv().expect("reply");
            });
            (rtx, rrx)
        },
        |_, (rtx, rrx)| {
            let mut mine = Vec::with_capacity(ins.len());
            for &i in &ins {
                tx.send((i, rtx.clone())).expect("owner");
                mine.push(rrx.recv().expect("reply"));
            }
            *outs.lock().expect("lock") = mine;
        },
    );
    drop(tx);
    owner.join().expect("owner");
    let checked = if callers == 1 {
        wrong(&outs.into_inner().expect("lock"), &ins)
    } else {
        None
    };
    (elapsed, checked, 1)
}

fn spin_ping_pong(calls: u64) -> Timed {
    // The same warm-up as the others, as a number of untimed round trips.
    let warm = 200_000;
    let flag = Arc::new(AtomicU64::new(0));
    let other = Arc::clone(&flag);
    let peer = thread::spawn(move || {
        for k in 0..warm + calls {
            // ORDERING: Acquire/Release make each side see the other's turn;
            // the value itself is the message.
            while other.load(Ordering::Acquire) != 2 * k + 1 {
                std::hint::spin_loop();
            }
            other.store(2 * k + 2, Ordering::Release);
        }
    });
    let round_trip = |k: u64| {
        // ORDERING: as above.
        flag.store(2 * k + 1, Ordering::Release);
        while flag.load(Ordering::Acquire) != 2 * k + 2 {
            std::hint::spin_loop();
        }
    };
    (0..warm).for_each(round_trip);
    let t = Instant::now();
    (warm..warm + calls).for_each(round_trip);
    let elapsed = t.elapsed();
    peer.join().expect("peer");
    (elapsed, None, 1)
}
