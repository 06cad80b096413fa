//! The corruption scenarios: the same call sequences run raw (from a thread
//! pool, from migrating async tasks) and through the single-owner pattern,
//! each checked against the reference model.

use std::collections::HashMap;
use std::sync::Arc;

use affine::{Config, Context, Model, Stats, MAX_INPUT};

use pinned_ffi::PinnedWorker;

/// One scenario's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What was run.
    pub name: String,
    /// Calls issued.
    pub calls: u64,
    /// Calls whose result differs from the model: a wrong value or an error
    /// where the model has a value.
    pub wrong: u64,
    /// Failed calls whose error, read afterwards by the caller on its own
    /// thread, did not match (lost or foreign errno-style errors).
    pub lost_errors: u64,
    /// Failed calls in all.
    pub failed_calls: u64,
    /// Contexts the C library created for it.
    pub contexts: u64,
}

impl Outcome {
    /// The outcome of one caller's sequence on a context seeded with 1,
    /// with the contexts created since `before`.
    fn of_sequence(
        name: String,
        inputs: &[u64],
        observed: &[Result<u64, i32>],
        lost: u64,
        before: &Stats,
    ) -> Self {
        Outcome {
            name,
            calls: inputs.len() as u64,
            wrong: score(1, inputs, observed),
            lost_errors: lost,
            failed_calls: observed.iter().filter(|o| o.is_err()).count() as u64,
            contexts: Stats::now().since(before).created,
        }
    }
}

/// Contexts the raw async scenario strands on runtime threads (kept
/// reachable: the point is the corruption, not a leak).
static STRANDED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// Creates a context on this thread and leaves it current here, the way a
/// request handler binds its SDK context before awaiting. `Context` is
/// `!Send`, so the compiler would refuse to hold it across an `.await`;
/// raw code has no such guard, which is what this models.
fn bind_here_and_strand(seed: u64) {
    let ctx = Context::new(&Config::with_seed(seed)).expect("context");
    // Its owner is whichever runtime thread ran this; the task may end
    // elsewhere, where it could not be destroyed.
    STRANDED.lock().expect("lock").push(ctx.as_ptr() as usize);
    std::mem::forget(ctx);
}

/// Input `i` of a caller's sequence: valid, varied, deterministic.
pub fn input(caller: u64, i: u64) -> u64 {
    affine::mix64(caller.wrapping_mul(1_000_003).wrapping_add(i)) & MAX_INPUT
}

/// One raw `aff_op` on whatever context is current on the calling thread:
/// the value, or the C status.
pub fn raw_op(input: u64) -> Result<u64, i32> {
    let mut out = 0u64;
    // SAFETY: `out` is valid; aff_op uses whatever context is current on
    // this thread, which is exactly the hazard being shown.
    let rc = unsafe { ffi::aff_op(input, &mut out) };
    if rc == ffi::AFF_OK {
        Ok(out)
    } else {
        Err(rc)
    }
}

/// Scores observed results against the model of one context with `seed`:
/// a value must match exactly, and an invalid input must fail with
/// `AFF_E_INVALID_ARG`.
pub fn score(seed: u64, inputs: &[u64], observed: &[Result<u64, i32>]) -> u64 {
    let mut m = Model::new(seed);
    inputs
        .iter()
        .zip(observed)
        .filter(|(&i, o)| match m.op(i) {
            Some(want) => **o != Ok(want),
            None => **o != Err(ffi::AFF_E_INVALID_ARG),
        })
        .count() as u64
}

/// Reads the calling thread's errno-style last error message.
fn last_message_here() -> String {
    // SAFETY: reads the calling thread's own message buffer (never NULL).
    unsafe { std::ffi::CStr::from_ptr(ffi::aff_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// A tiny raw thread pool: `threads` OS threads taking closures from one
/// queue, each first running `setup` (e.g. making a context current there).
struct RawPool {
    tx: Option<crossbeam_channel::Sender<Box<dyn FnOnce() + Send>>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl RawPool {
    /// `setup` runs first on each thread; what it returns lives until the
    /// thread ends (after it released its current context).
    fn new<G: 'static>(threads: usize, setup: impl Fn(usize) -> G + Send + Sync + 'static) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        let setup = Arc::new(setup);
        let ready = Arc::new(std::sync::Barrier::new(threads + 1));
        let handles = (0..threads)
            .map(|t| {
                let (rx, setup, ready) = (rx.clone(), Arc::clone(&setup), Arc::clone(&ready));
                std::thread::spawn(move || {
                    let guard = setup(t);
                    ready.wait();
                    for job in rx {
                        job();
                    }
                    drop(guard);
                })
            })
            .collect();
        ready.wait();
        RawPool {
            tx: Some(tx),
            handles,
        }
    }

    fn call<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx
            .as_ref()
            .expect("open")
            .send(Box::new(move || tx.send(f()).expect("caller waits")))
            .expect("pool alive");
        rx.recv().expect("job ran")
    }
}

impl Drop for RawPool {
    fn drop(&mut self) {
        drop(self.tx.take());
        for h in self.handles.drain(..) {
            h.join().expect("pool thread");
        }
    }
}

/// Every `bad_every`-th call gets an invalid input (each a different one,
/// so each error message is unique), exercising errno-style reporting.
pub fn sequence(caller: u64, calls: u64, bad_every: u64) -> Vec<u64> {
    (0..calls)
        .map(|i| {
            if bad_every > 0 && i % bad_every == bad_every - 1 {
                MAX_INPUT + 1 + i
            } else {
                input(caller, i)
            }
        })
        .collect()
}

/// The message the C library gives for invalid input `i` to `aff_op`.
pub fn invalid_message(i: u64) -> String {
    format!("aff_op: input {i} exceeds AFF_MAX_INPUT")
}

/// Raw: a thread pool where each of `threads` threads made its own context
/// current at start, all with the same seed ("contexts are identical, any
/// thread will do"). One caller's sequence runs call by call on whichever
/// thread is free; the caller reads the last error after each failed call
/// with a second job, as errno-style code does.
pub fn raw_thread_pool(threads: usize, calls: u64) -> Outcome {
    let before = Stats::now();
    // Each context stays current on its pool thread for the thread's life.
    let pool = RawPool::new(threads, |_| Context::new(&Config::with_seed(1)).expect("context"));
    let inputs = sequence(1, calls, 16);
    let mut observed = Vec::with_capacity(inputs.len());
    let mut lost = 0;
    for &i in &inputs {
        let r = pool.call(move || raw_op(i));
        if r.is_err() {
            // The follow-up read, like errno-style code does it, lands on
            // whichever pool thread is free.
            if pool.call(last_message_here) != invalid_message(i) {
                lost += 1;
            }
        }
        observed.push(r);
    }
    drop(pool);
    Outcome::of_sequence(
        format!("raw: {threads}-thread pool, a context per pool thread"),
        &inputs,
        &observed,
        lost,
        &before,
    )
}

/// Runs one session per task (seeds `1..=tasks`, each its own call sequence)
/// on a 2-thread tokio runtime, yielding after every call so tasks
/// interleave and migrate, and scores each session against the model.
/// `call(seed, input)` makes one call for that session.
fn async_sessions<Fut>(
    name: String,
    tasks: u64,
    calls_per_task: u64,
    before: &Stats,
    start: impl Fn(u64) + Send + Sync + 'static,
    call: impl Fn(u64, u64) -> Fut + Send + Sync + 'static,
) -> Outcome
where
    Fut: std::future::Future<Output = Result<u64, i32>> + Send,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (start, call) = (Arc::new(start), Arc::new(call));
    let results = rt.block_on(async {
        let handles: Vec<_> = (1..=tasks)
            .map(|seed| {
                let (start, call) = (Arc::clone(&start), Arc::clone(&call));
                tokio::spawn(async move {
                    start(seed);
                    let inputs = sequence(seed, calls_per_task, 0);
                    let mut observed = Vec::with_capacity(inputs.len());
                    for &i in &inputs {
                        observed.push(call(seed, i).await);
                        tokio::task::yield_now().await;
                    }
                    (seed, inputs, observed)
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    });
    drop(rt);
    let mut outcome = Outcome {
        name,
        calls: tasks * calls_per_task,
        wrong: 0,
        lost_errors: 0,
        failed_calls: 0,
        contexts: 0,
    };
    for (seed, inputs, observed) in &results {
        outcome.wrong += score(*seed, inputs, observed);
        outcome.failed_calls += observed.iter().filter(|o| o.is_err()).count() as u64;
    }
    outcome.contexts = Stats::now().since(before).created;
    outcome
}

/// Raw: tokio tasks on a multi-thread runtime; each task creates its
/// context and makes it current where it starts (as a request handler
/// would), then calls, awaits, calls again. A task that resumes on another
/// worker thread, or after another task made its context current, computes
/// on the wrong state or finds no context.
pub fn raw_async_tasks(tasks: u64, calls_per_task: u64) -> Outcome {
    let before = Stats::now();
    async_sessions(
        format!("raw: {tasks} async tasks on 2 tokio threads"),
        tasks,
        calls_per_task,
        &before,
        bind_here_and_strand,
        |_, i| std::future::ready(raw_op(i)),
    )
}

/// Pinned: the same single sequence, issued from the same kind of thread
/// pool, through one `PinnedWorker` that owns the context; errors come back
/// with each call.
pub fn pinned_thread_pool(threads: usize, calls: u64) -> Outcome {
    let before = Stats::now();
    let worker = Arc::new(PinnedWorker::spawn(|| Context::new(&Config::with_seed(1))).expect("worker"));
    let pool = RawPool::new(threads, |_| {});
    let inputs = sequence(1, calls, 16);
    let mut observed = Vec::with_capacity(inputs.len());
    let mut lost = 0;
    for &i in &inputs {
        let w = Arc::clone(&worker);
        let r = pool.call(move || w.run(move |ctx| ctx.op(i)).expect("worker"));
        if let Err(e) = &r {
            if e.message != invalid_message(i) {
                lost += 1;
            }
        }
        observed.push(r.map_err(|e| e.code.raw()));
    }
    drop(pool);
    drop(Arc::try_unwrap(worker).expect("sole owner"));
    Outcome::of_sequence(
        format!("pinned: same {threads}-thread pool through one PinnedWorker"),
        &inputs,
        &observed,
        lost,
        &before,
    )
}

/// Pinned: the async tasks again, each task's context living on the owner
/// thread of one worker (keyed by task), reached with `submit(..).await`.
pub fn pinned_async_tasks(tasks: u64, calls_per_task: u64) -> Outcome {
    let before = Stats::now();
    let worker = Arc::new(
        PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(HashMap::<u64, Context>::new()))
            .expect("worker"),
    );
    let caller = Arc::clone(&worker);
    let outcome = async_sessions(
        format!("pinned: {tasks} async tasks, contexts on one owner"),
        tasks,
        calls_per_task,
        &before,
        |_| {},
        move |seed, i| {
            let ticket = caller
                .submit(move |ctxs| {
                    let ctx = ctxs
                        .entry(seed)
                        .or_insert_with(|| Context::new(&Config::with_seed(seed)).expect("context"));
                    ctx.op(i).map_err(|e| e.code.raw())
                })
                .expect("worker");
            async move { ticket.await.expect("job") }
        },
    );
    // The runtime, and with it the last clone, are gone: close on this thread.
    drop(Arc::try_unwrap(worker).expect("sole owner"));
    outcome
}
