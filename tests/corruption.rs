//! The proof, part 1: calling a thread-affine library raw from a thread pool
//! or from async tasks corrupts results and loses errors. Every test asserts
//! that corruption *was observed* and prints how much. Where a scheduler
//! decides placement, the test forces the migration it needs instead of
//! hoping for it.

use std::ffi::CStr;
use std::sync::mpsc;
use std::thread;

use affine::{Config, Context, Model, MAX_INPUT};
use pinned_ffi_demo::scenarios::{self, raw_op, score};

fn last_message() -> String {
    // SAFETY: this thread's own message buffer, never NULL.
    unsafe { CStr::from_ptr(ffi::aff_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// A fixed pool of OS threads; `on(t, f)` runs `f` on thread `t`, so tests
/// choose placement exactly as a pool's scheduler might.
struct Threads {
    senders: Vec<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Threads {
    fn new(n: usize, setup: impl Fn(usize) -> Option<Context> + Send + Sync + Clone + 'static) -> Self {
        let (mut senders, mut handles) = (Vec::new(), Vec::new());
        for t in 0..n {
            let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
            let setup = setup.clone();
            let (ready_tx, ready_rx) = mpsc::channel();
            handles.push(thread::spawn(move || {
                let _ctx = setup(t); // current on this thread for its life
                ready_tx.send(()).unwrap();
                for job in rx {
                    job();
                }
            }));
            ready_rx.recv().unwrap();
            senders.push(tx);
        }
        Threads { senders, handles }
    }

    /// Call `k` of the sequence on thread `k % n`, in order, as a pool
    /// handing each job to the next thread would.
    fn round_robin(&self, inputs: &[u64]) -> Vec<Result<u64, i32>> {
        let n = self.senders.len();
        inputs
            .iter()
            .enumerate()
            .map(|(k, &i)| self.on(k % n, move || raw_op(i)))
            .collect()
    }

    fn on<R: Send + 'static>(&self, t: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        self.senders[t]
            .send(Box::new(move || tx.send(f()).unwrap()))
            .unwrap();
        rx.recv().unwrap()
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.senders.clear();
        for h in self.handles.drain(..) {
            h.join().unwrap();
        }
    }
}

#[test]
fn pool_threads_without_the_context_get_no_context() {
    // The context is current on this thread (A); the pool threads have none.
    let mut ctx = Context::new(&Config::with_seed(1)).unwrap();
    let pool = Threads::new(4, |_| None);
    let inputs = scenarios::sequence(1, 400, 0);
    let observed = pool.round_robin(&inputs);
    let no_context = observed
        .iter()
        .filter(|o| **o == Err(ffi::AFF_E_NO_CONTEXT))
        .count();
    println!(
        "raw pool, context on another thread: {no_context}/{} calls failed AFF_E_NO_CONTEXT",
        observed.len()
    );
    assert_eq!(no_context, observed.len());
    assert_eq!(ctx.calls().unwrap(), 0, "not one call reached the context");
    assert_eq!(ctx.op(inputs[0]).unwrap(), Model::new(1).op(inputs[0]).unwrap());
}

#[test]
fn pool_threads_with_their_own_contexts_compute_wrong_values_silently() {
    // "Every pool thread gets an identical context": any thread will do?
    let pool = Threads::new(4, |_| Some(Context::new(&Config::with_seed(1)).unwrap()));
    let inputs = scenarios::sequence(1, 400, 0);
    let observed = pool.round_robin(&inputs);
    assert!(observed.iter().all(Result::is_ok), "every call 'succeeded'");
    let wrong = score(1, &inputs, &observed);
    println!(
        "raw pool, a context per thread: {wrong}/{} results wrong, 0 errors",
        inputs.len()
    );
    assert!(
        wrong >= 390,
        "almost every result is another thread's state: {wrong}"
    );
}

#[test]
fn errno_style_errors_read_on_another_thread_are_lost_or_foreign() {
    let pool = Threads::new(2, |_| Some(Context::new(&Config::with_seed(1)).unwrap()));
    let mut lost = 0;
    let mut foreign = 0;
    for k in 0..100u64 {
        let bad = MAX_INPUT + 1 + k;
        // The call fails on one pool thread, the error is read on the other.
        let rc = pool.on((k % 2) as usize, move || raw_op(bad));
        assert_eq!(rc, Err(ffi::AFF_E_INVALID_ARG));
        let msg = pool.on(((k + 1) % 2) as usize, last_message);
        let expected = format!("aff_op: input {bad} exceeds AFF_MAX_INPUT");
        if msg.is_empty() {
            lost += 1;
        } else if msg != expected {
            foreign += 1;
        }
    }
    println!("errno-style read on another thread: {lost} lost, {foreign} foreign of 100");
    assert_eq!(lost + foreign, 100, "no read saw its own call's error");
    assert!(
        foreign >= 98,
        "after the first two, each read returns the other thread's older error"
    );
}

/// Runs `rounds` batches of tokio tasks until a task has been seen on two
/// different threads across an await; returns what `body` counted.
fn until_migrated(
    rounds: usize,
    tasks: u64,
    body: fn(u64) -> tokio::task::JoinHandle<(bool, u64)>,
) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut migrated, mut bad) = (0, 0);
    for _ in 0..rounds {
        let results = rt.block_on(async {
            let handles: Vec<_> = (0..tasks).map(body).collect();
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        });
        for (m, b) in results {
            migrated += m as u64;
            bad += b;
        }
        if migrated > 0 && bad > 0 {
            break;
        }
    }
    (migrated, bad)
}

/// Keeps a worker thread busy for a moment so the runtime moves other tasks
/// (work stealing): this is what forces migration when the scheduler would
/// otherwise leave a task where it is.
fn hog() {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_micros(200) {
        std::hint::spin_loop();
    }
}

#[test]
fn async_tasks_that_migrate_compute_on_the_wrong_context() {
    let (migrated, wrong) = until_migrated(20, 16, |t| {
        tokio::spawn(async move {
            let seed = t + 1;
            // Bound where the task starts, as a handler binds its SDK context.
            let ctx = Context::new(&Config::with_seed(seed)).unwrap();
            std::mem::forget(ctx); // raw code: nothing stops the task moving on
            let before = thread::current().id();
            let mut m = Model::new(seed);
            let mut wrong = 0;
            for i in 0..20 {
                if raw_op(i) != m.op(i).ok_or(0) {
                    wrong += 1;
                }
                hog();
                tokio::task::yield_now().await;
            }
            (thread::current().id() != before, wrong)
        })
    });
    println!("async tasks: {migrated} migrated, {wrong} wrong results");
    assert!(migrated > 0, "no task migrated in 20 rounds");
    assert!(wrong > 0);
}

#[test]
fn glibc_errno_is_lost_across_an_await() {
    // The same hazard in a library nobody here wrote: errno.
    let (migrated, lost) = until_migrated(50, 16, |t| {
        tokio::spawn(async move {
            // Alternate two failures with different errnos.
            let expected = if t % 2 == 0 { libc::ENOENT } else { libc::EBADF };
            // SAFETY: plain libc calls with valid arguments; both fail by
            // design and set errno on this thread.
            unsafe {
                *libc::__errno_location() = 0;
                if t % 2 == 0 {
                    libc::open(c"/nonexistent/pinned-ffi".as_ptr(), libc::O_RDONLY);
                } else {
                    libc::close(-1);
                }
            }
            let before = thread::current().id();
            hog();
            tokio::task::yield_now().await;
            // SAFETY: reads this thread's errno.
            let seen = unsafe { *libc::__errno_location() };
            let moved = thread::current().id() != before;
            (moved, (moved && seen != expected) as u64)
        })
    });
    println!("glibc errno: {migrated} tasks migrated, {lost} read another thread's errno");
    assert!(migrated > 0, "no task migrated in 50 rounds");
    assert!(lost > 0);
}

#[test]
fn the_report_scenarios_show_corruption_raw_and_none_pinned() {
    let raw = scenarios::raw_thread_pool(4, 2_000);
    let raw_async = scenarios::raw_async_tasks(8, 250);
    let pinned = scenarios::pinned_thread_pool(4, 2_000);
    let pinned_async = scenarios::pinned_async_tasks(8, 250);
    for o in [&raw, &raw_async, &pinned, &pinned_async] {
        println!("{o:?}");
    }
    assert!(raw.wrong > 1_000 && raw_async.wrong > 1_000);
    assert_eq!((pinned.wrong, pinned.lost_errors), (0, 0));
    assert_eq!(
        pinned.failed_calls,
        2_000 / 16,
        "every invalid input reported as such"
    );
    assert_eq!(pinned_async.wrong, 0);
}
