//! `PinnedWorker<S>`: one test per promised behaviour.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use affine::{Config, Context, Model};

use pinned_ffi::{threads, Breaker, Error, PanicPolicy, PinnedWorker, SpawnError, TrySubmitError};

type Never = std::convert::Infallible;

fn ctx_worker(seed: u64) -> PinnedWorker<Context> {
    PinnedWorker::spawn(move || Context::new(&Config::with_seed(seed))).unwrap()
}

/// A worker whose owner is held inside a job until the returned sender is
/// dropped or sent to, so tests can fill the queue deterministically.
fn blocked<S: 'static>(w: &PinnedWorker<S>) -> (mpsc::Sender<()>, pinned_ffi::Ticket<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let t = w
        .submit(move |_| {
            started_tx.send(()).unwrap();
            let _ = rx.recv();
        })
        .unwrap();
    started_rx.recv().unwrap();
    (tx, t)
}

#[test]
fn init_runs_on_the_owner_thread_and_its_error_is_returned() {
    let caller = thread::current().id();
    let w = PinnedWorker::spawn(move || Ok::<_, Never>(thread::current().id())).unwrap();
    let owner = w.run(|id| *id).unwrap();
    assert_ne!(owner, caller);
    assert_eq!(w.run(|_| thread::current().id()).unwrap(), owner);

    let e = PinnedWorker::<Context>::spawn(|| Context::new(&Config::with_seed(0))).unwrap_err();
    match e {
        SpawnError::Init(e) => assert_eq!(e.message, "aff_ctx_create: seed must be non-zero"),
        other => panic!("unexpected {other:?}"),
    }
    let e = PinnedWorker::<()>::spawn(|| -> Result<(), Never> { panic!("init boom") }).unwrap_err();
    assert!(
        matches!(e, SpawnError::InitPanicked(ref m) if m.message() == "init boom"),
        "{e:?}"
    );
}

#[test]
fn run_may_borrow_the_callers_stack() {
    let w = ctx_worker(21);
    let inputs: Vec<u64> = (0..100).collect();
    let mut out = vec![0u64; 100];
    w.run(|ctx| ctx.op_batch(&inputs, &mut out)).unwrap().unwrap();
    let mut m = Model::new(21);
    assert_eq!(out, inputs.iter().map(|&i| m.op(i).unwrap()).collect::<Vec<_>>());
}

#[test]
fn run_carries_small_and_large_closures_and_results_alike() {
    // Small jobs travel inside the caller's mailbox line, large ones by
    // reference; both must come back whole, in order, with panics caught.
    let w = ctx_worker(5);
    let mut m = Model::new(5);
    let big_in = [7u64; 32];
    for round in 0..200u64 {
        let small = w.run(move |ctx| ctx.op(round)).unwrap().unwrap();
        assert_eq!(Some(small), m.op(round));
        let (sum, echoed) = w
            .run(move |ctx| {
                let out = ctx.op(round).unwrap();
                (out, big_in.map(|x| x + round))
            })
            .unwrap();
        assert_eq!(Some(sum), m.op(round));
        assert_eq!(echoed, [7 + round; 32]);
    }
    let big = String::from_utf8(vec![b'x'; 1000]).unwrap();
    assert_eq!(w.run(move |_| big.len()).unwrap(), 1000);
    // Over-aligned (16) values cannot travel in the 8-aligned line.
    let wide = u128::MAX - 5;
    assert_eq!(w.run(move |_| wide + 1).unwrap(), u128::MAX - 4);
    w.run(|_| ()).unwrap(); // zero-sized closure and result
    assert!(
        matches!(w.run(|_| -> [u64; 16] { panic!("large") }), Err(Error::Panicked(m)) if m.message() == "large")
    );
    assert!(
        matches!(w.run(|_| -> u8 { panic!("small") }), Err(Error::Panicked(m)) if m.message() == "small")
    );
    assert_eq!(w.run(|ctx| ctx.calls()).unwrap().unwrap(), 400);
}

#[test]
fn run_racing_close_always_returns_and_drops_every_closure() {
    // Callers keep calling `run` while the worker closes: each call gets
    // its result or `Closed`, none hangs, and every closure is dropped
    // exactly once (run on the owner, or handed back and dropped unrun).
    for _ in 0..20 {
        let w = Arc::new(PinnedWorker::spawn(|| Ok::<_, Never>(0u64)).unwrap());
        let token = Arc::new(());
        let ran = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(5));
        let callers: Vec<_> = (0..4)
            .map(|i| {
                let (w, token, ran, start) = (
                    Arc::clone(&w),
                    Arc::clone(&token),
                    Arc::clone(&ran),
                    Arc::clone(&start),
                );
                thread::spawn(move || {
                    start.wait();
                    let mut ok = 0u64;
                    loop {
                        let held = Arc::clone(&token);
                        let ran = Arc::clone(&ran);
                        // Even callers' closures travel inline; odd ones
                        // carry padding too big for that.
                        let outcome = if i % 2 == 0 {
                            w.run(move |n: &mut u64| {
                                *n += 1;
                                ran.fetch_add(1, Ordering::Relaxed);
                                drop(held);
                                i
                            })
                        } else {
                            let pad = [i; 8];
                            w.run(move |n: &mut u64| {
                                *n += 1;
                                ran.fetch_add(1, Ordering::Relaxed);
                                drop(held);
                                pad[7]
                            })
                        };
                        match outcome {
                            Ok(v) => {
                                assert_eq!(v, i);
                                ok += 1;
                            }
                            Err(Error::Closed) => return ok,
                            Err(e) => panic!("unexpected {e}"),
                        }
                    }
                })
            })
            .collect();
        start.wait();
        thread::sleep(Duration::from_millis(2));
        w.close().unwrap();
        let ok: u64 = callers.into_iter().map(|c| c.join().unwrap()).sum();
        assert!(ok > 0);
        assert_eq!(
            ran.load(Ordering::Relaxed),
            ok,
            "every Ok ran once, nothing else ran"
        );
        assert_eq!(Arc::strong_count(&token), 1, "every closure was dropped");
    }
}

#[test]
fn tickets_wait_poll_and_time_out() {
    let w = ctx_worker(22);
    let mut m = Model::new(22);
    let t = w.submit(|ctx| ctx.op(1).unwrap()).unwrap();
    assert_eq!(t.wait().unwrap(), m.op(1).unwrap());

    let (release, busy) = blocked(&w);
    let t = w.submit(|ctx| ctx.op(2).unwrap()).unwrap();
    let t = t.try_get().expect_err("not done while the owner is blocked");
    release.send(()).unwrap();
    busy.wait().unwrap();
    assert_eq!(t.wait_timeout(Duration::from_secs(10)).unwrap(), m.op(2).unwrap());
}

#[test]
fn the_ticket_is_a_future_under_tokio() {
    let w = Arc::new(ctx_worker(23));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let mut handles = Vec::new();
        for task in 0..8u64 {
            let w = Arc::clone(&w);
            handles.push(tokio::spawn(async move {
                let mut outs = Vec::new();
                for i in 0..50 {
                    outs.push(
                        w.submit(move |ctx| ctx.op(task * 1000 + i).unwrap())
                            .unwrap()
                            .await
                            .unwrap(),
                    );
                    tokio::task::yield_now().await;
                }
                outs.len()
            }));
        }
        let mut n = 0;
        for h in handles {
            n += h.await.unwrap();
        }
        n
    });
    assert_eq!(got, 400);
    assert_eq!(w.run(|ctx| ctx.calls().unwrap()).unwrap(), 400);
}

#[test]
fn a_ticket_polled_before_its_job_finishes_is_pending_then_woken() {
    use std::future::Future;
    use std::task::{Context as TaskContext, Poll, Wake, Waker};
    struct Count(AtomicU64);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let w = PinnedWorker::spawn(|| Ok::<_, Never>(())).unwrap();
    let (release, hold) = mpsc::channel::<()>();
    let mut ticket = w
        .submit(move |_| {
            hold.recv().unwrap();
            7u8
        })
        .unwrap();
    let count = Arc::new(Count(AtomicU64::new(0)));
    let waker = Waker::from(Arc::clone(&count));
    let mut cx = TaskContext::from_waker(&waker);
    // The first poll spins a little, then registers the waker.
    assert!(std::pin::Pin::new(&mut ticket).poll(&mut cx).is_pending());
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    release.send(()).unwrap();
    while count.0.load(Ordering::SeqCst) == 0 {
        thread::yield_now();
    }
    assert_eq!(std::pin::Pin::new(&mut ticket).poll(&mut cx), Poll::Ready(Ok(7)));
}

#[test]
fn a_full_queue_gives_the_job_back() {
    let w = PinnedWorker::builder()
        .capacity(2)
        .spawn(|| Ok::<_, Never>(0u32))
        .unwrap();
    let (release, busy) = blocked(&w);
    let a = w.try_submit(|n| *n += 1).unwrap();
    let b = w.try_submit(|n| *n += 1).unwrap();
    let marker = Arc::new(());
    let m2 = Arc::clone(&marker);
    let refused = w.try_submit(move |n: &mut u32| {
        let _keep = &m2;
        *n += 100
    });
    let job = match refused {
        Err(TrySubmitError::Full(job)) => job,
        other => panic!("expected Full, got {other:?}"),
    };
    assert_eq!(
        Arc::strong_count(&marker),
        2,
        "the refused job (and what it owns) came back"
    );
    let timed = w.submit_timeout(job, Duration::from_millis(20));
    let job = timed.expect_err("still full").into_job();
    release.send(()).unwrap();
    busy.wait().unwrap();
    a.wait().unwrap();
    b.wait().unwrap();
    w.submit(job).unwrap().wait().unwrap();
    assert_eq!(w.run(|n| *n).unwrap(), 102);
    // The blocker, a, b, the returned job and the final run; refusals do not count.
    assert_eq!(w.metrics().submitted, 5);
}

#[test]
fn a_job_whose_caller_gave_up_never_runs() {
    let w = ctx_worker(24);
    let (release, busy) = blocked(&w);
    let timed_out = w.submit(|ctx| ctx.op(1).unwrap()).unwrap();
    let dropped = w.submit(|ctx| ctx.op(2).unwrap()).unwrap();
    assert_eq!(
        timed_out.wait_timeout(Duration::from_millis(10)),
        Err(Error::TimedOut { started: false })
    );
    drop(dropped);
    release.send(()).unwrap();
    busy.wait().unwrap();
    // The C library's own counter: neither cancelled job made a call.
    assert_eq!(w.run(|ctx| ctx.calls().unwrap()).unwrap(), 0);
    assert_eq!(w.metrics().cancelled, 2);

    // A job that had started runs to the end; the caller is told so.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let t = w
        .submit(move |ctx| {
            let _ = go_rx.recv();
            ctx.op(3).unwrap()
        })
        .unwrap();
    thread::sleep(Duration::from_millis(20));
    assert_eq!(
        t.wait_timeout(Duration::from_millis(5)),
        Err(Error::TimedOut { started: true })
    );
    go_tx.send(()).unwrap();
    assert_eq!(w.run(|ctx| ctx.calls().unwrap()).unwrap(), 1);
}

#[test]
fn a_job_waiting_on_its_own_worker_gets_reentrant_at_once() {
    let w = Arc::new(PinnedWorker::spawn(|| Ok::<_, Never>(())).unwrap());
    let inner = Arc::clone(&w);
    let start = Instant::now();
    let (run_err, wait_err) = w
        .run(move |_| {
            let run = inner.run(|_| ());
            let wait = inner.submit(|_| ()).map(|t| t.wait());
            (run, wait)
        })
        .unwrap();
    assert_eq!(run_err, Err(Error::Reentrant));
    assert_eq!(wait_err, Ok(Err(Error::Reentrant)));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(w.metrics().completed, 1);
}

thread_local! {
    static JOBS_ON_THIS_THREAD: Cell<u64> = const { Cell::new(0) };
}

#[test]
fn a_panic_is_caught_and_the_worker_survives() {
    let w = PinnedWorker::builder()
        .breaker(None)
        .spawn(|| Ok::<_, Never>(5u32))
        .unwrap();
    let tid = w.owner_tid();
    assert_eq!(
        w.run(|_| -> u32 { panic!("job boom") }),
        Err(Error::Panicked("job boom".into()))
    );
    assert_eq!(w.run(|n| *n).unwrap(), 5, "Keep: state kept");
    assert_eq!(w.owner_tid(), tid);
    assert_eq!(w.metrics().panicked, 1);
}

#[test]
fn reinit_gives_a_fresh_thread_with_fresh_thread_local_state() {
    let w = PinnedWorker::builder()
        .panic_policy(PanicPolicy::Reinit)
        .breaker(None)
        .spawn(|| Context::new(&Config::with_seed(77)))
        .unwrap();
    let count = |w: &PinnedWorker<Context>| {
        w.run(|_| {
            JOBS_ON_THIS_THREAD.with(|c| {
                c.set(c.get() + 1);
                (c.get(), threads::current_tid())
            })
        })
        .unwrap()
    };
    let mut m = Model::new(77);
    let first = w.run(|ctx| ctx.op(1).unwrap()).unwrap();
    assert_eq!(first, m.op(1).unwrap());
    let (n1, tid1) = count(&w);
    let (n2, _) = count(&w);
    assert_eq!((n1, n2), (1, 2));
    assert!(matches!(
        w.run(|_| panic!("tainted")),
        Err::<(), _>(Error::Panicked(_))
    ));
    let (n3, tid2) = count(&w);
    assert_ne!(tid1, tid2, "a fresh OS thread");
    assert_eq!(n3, 1, "fresh __thread state");
    // A fresh context: the model starts again.
    assert_eq!(
        w.run(|ctx| ctx.op(1).unwrap()).unwrap(),
        Model::new(77).op(1).unwrap()
    );
    assert_eq!(w.metrics().reinits, 1);
}

#[test]
fn stop_policy_stops_the_worker() {
    let w = PinnedWorker::builder()
        .panic_policy(PanicPolicy::Stop)
        .spawn(|| Ok::<_, Never>(()))
        .unwrap();
    assert!(matches!(
        w.run(|_| panic!("fatal")),
        Err::<(), _>(Error::Panicked(_))
    ));
    assert_eq!(w.run(|_| ()), Err(Error::Stopped));
    assert!(w.is_closed());
}

#[test]
fn the_breaker_trips_fails_fast_and_recovers() {
    let cooldown = Duration::from_millis(200);
    let w = PinnedWorker::builder()
        .breaker(Some(Breaker::new(3, Duration::from_secs(10), cooldown)))
        .spawn(|| Ok::<_, Never>(threads::current_tid()))
        .unwrap();
    let tid0 = w.run(|t| *t).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            w.run(|_| panic!("again")),
            Err::<(), _>(Error::Panicked(_))
        ));
    }
    let t = Instant::now();
    match w.run(|_| ()) {
        Err(Error::Broken(reason)) => assert!(reason.contains("3 panics"), "{reason}"),
        other => panic!("expected Broken, got {other:?}"),
    }
    assert!(t.elapsed() < cooldown, "fails fast");
    thread::sleep(cooldown + Duration::from_millis(50));
    let tid1 = w.run(|t| *t).unwrap();
    assert_ne!(tid0, tid1, "recovered by a re-init on a fresh thread");
    assert_eq!(w.run(|_| 1).unwrap(), 1);
}

#[test]
fn close_under_load_gives_every_accepted_job_an_outcome() {
    let w = Arc::new(
        PinnedWorker::builder()
            .capacity(64)
            .spawn(|| Ok::<_, Never>(0u64))
            .unwrap(),
    );
    let accepted = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(AtomicU64::new(0));
    let ran = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(17));
    let mut callers = Vec::new();
    for _ in 0..16 {
        let (w, accepted, outcomes, ran, start) = (
            Arc::clone(&w),
            Arc::clone(&accepted),
            Arc::clone(&outcomes),
            Arc::clone(&ran),
            Arc::clone(&start),
        );
        callers.push(thread::spawn(move || {
            start.wait();
            let mut tickets = Vec::new();
            loop {
                let ran = Arc::clone(&ran);
                match w.submit(move |n| {
                    *n += 1;
                    ran.fetch_add(1, Ordering::Relaxed);
                }) {
                    Ok(t) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        tickets.push(t);
                    }
                    Err(Error::Closed) => break,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            for t in tickets {
                t.wait().expect("close drains every accepted job");
                outcomes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    start.wait();
    thread::sleep(Duration::from_millis(50));
    w.close().unwrap();
    for c in callers {
        c.join().unwrap();
    }
    let accepted = accepted.load(Ordering::Relaxed);
    assert!(accepted > 0);
    assert_eq!(outcomes.load(Ordering::Relaxed), accepted);
    assert_eq!(ran.load(Ordering::Relaxed), accepted);
    assert_eq!(w.run(|_| ()), Err(Error::Closed));
}

#[test]
fn close_timeout_shuts_down_what_it_cannot_run() {
    let w = PinnedWorker::spawn(|| Ok::<_, Never>(())).unwrap();
    let (release, busy) = blocked(&w);
    let queued: Vec<_> = (0..5).map(|_| w.submit(|_| ()).unwrap()).collect();
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        drop(release);
    });
    let shut = w.close_timeout(Duration::from_millis(20)).unwrap();
    releaser.join().unwrap();
    assert_eq!((shut.shut_down, shut.still_running), (5, 1));
    busy.wait().unwrap();
    for t in queued {
        assert_eq!(t.wait(), Err(Error::Shutdown));
    }
}

#[test]
fn the_state_is_dropped_on_the_owner_thread_at_close() {
    struct Probe(mpsc::Sender<thread::ThreadId>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.send(thread::current().id()).unwrap();
        }
    }
    let (tx, rx) = mpsc::channel();
    let w = PinnedWorker::spawn(move || Ok::<_, Never>(Probe(tx.clone()))).unwrap();
    let owner = w.run(|_| thread::current().id()).unwrap();
    drop(w); // dropping the handle closes gracefully
    assert_eq!(rx.recv().unwrap(), owner);
}

#[test]
fn owner_bound_values_stay_and_die_on_the_owner_thread() {
    struct Buffer {
        bytes: Vec<u8>,
        dropped_on: mpsc::Sender<thread::ThreadId>,
        _not_send: std::rc::Rc<()>,
    }
    impl Drop for Buffer {
        fn drop(&mut self) {
            self.dropped_on.send(thread::current().id()).unwrap();
        }
    }
    let w = Arc::new(PinnedWorker::spawn(|| Ok::<_, Never>(())).unwrap());
    let owner = w.run(|_| thread::current().id()).unwrap();
    let (tx, rx) = mpsc::channel();
    let buf = w
        .bind(move |_| Buffer {
            bytes: vec![1, 2, 3],
            dropped_on: tx,
            _not_send: std::rc::Rc::new(()),
        })
        .unwrap();
    let w2 = Arc::clone(&w);
    // The handle travels to another thread, is used there, and dropped there.
    thread::spawn(move || {
        assert_eq!(
            w2.with(&buf, |_, b| b.bytes.iter().map(|&x| x as u32).sum::<u32>())
                .unwrap(),
            6
        );
        drop(buf);
    })
    .join()
    .unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), owner);

    let other = PinnedWorker::spawn(|| Ok::<_, Never>(())).unwrap();
    let b2 = w.bind(|_| 5u8).unwrap();
    assert_eq!(other.with(&b2, |_, v| *v), Err(Error::StaleHandle));
}

#[test]
fn metrics_count_and_time_jobs() {
    let w = PinnedWorker::spawn(|| Ok::<_, Never>(())).unwrap();
    for _ in 0..100 {
        w.run(|_| thread::sleep(Duration::from_micros(200))).unwrap();
    }
    let _ = w.run(|_| panic!("x"));
    let m = w.metrics();
    assert_eq!((m.submitted, m.completed, m.panicked, m.failed), (101, 100, 1, 1));
    // A calling thread's first job and then one in TIMED_ONE_JOB_IN are
    // stamped (this thread's first job here is its first ever: jobs 1, 33,
    // 65, 97); the owner also times the run of one in TIMED_ONE_JOB_IN of
    // the jobs it takes (32, 64, 96: none of them stamped).
    let every = u64::from(pinned_ffi::TIMED_ONE_JOB_IN);
    let stamped = 100u64.div_ceil(every);
    assert!(stamped > 1);
    assert_eq!(m.queue_wait.count, stamped, "{m}");
    assert_eq!(m.run_time.count, stamped + 100 / every, "{m}");
    assert!(m.to_string().contains(&format!("wait n={stamped} ")), "{m}");
    assert!(m.run_time.p50 >= Duration::from_micros(200), "{m}");
    assert!(m.to_string().contains("completed 100"), "{m}");
}

#[test]
fn owner_threads_are_named_and_pinned_to_cpus() {
    let w = PinnedWorker::builder()
        .name("affine-owner")
        .cpus([0])
        .spawn(|| Ok::<_, Never>(()))
        .unwrap();
    let (name, cpus) = w
        .run(|_| {
            (
                thread::current().name().map(str::to_owned),
                threads::current_affinity().unwrap(),
            )
        })
        .unwrap();
    assert_eq!(name.as_deref(), Some("affine-owner"));
    assert_eq!(cpus, vec![0]);
    let bad = PinnedWorker::builder()
        .cpus([usize::MAX])
        .spawn(|| Ok::<_, Never>(()));
    assert!(matches!(bad, Err(SpawnError::Os(_))));
}

#[test]
fn an_idle_worker_costs_no_cpu_and_the_measure_sees_a_busy_one() {
    let w = PinnedWorker::spawn(|| Ok::<_, Never>(())).unwrap();
    w.run(|_| ()).unwrap();
    thread::sleep(Duration::from_millis(50)); // past the owner's spin window
    let tid = w.owner_tid();
    let Some(t0) = threads::thread_cpu_time(tid) else {
        eprintln!("SKIPPED: no per-thread CPU time on this platform");
        return;
    };
    thread::sleep(Duration::from_millis(300));
    let idle = threads::thread_cpu_time(tid).unwrap() - t0;
    assert!(
        idle < Duration::from_millis(3),
        "idle owner used {idle:?} in 300 ms"
    );

    // The same measure on a busy owner reads most of the window.
    let t1 = threads::thread_cpu_time(tid).unwrap();
    w.run(|_| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            std::hint::spin_loop();
        }
    })
    .unwrap();
    let busy = threads::thread_cpu_time(tid).unwrap() - t1;
    // A lower bar than the 200 ms spun: other tests share the two cores.
    assert!(
        busy > Duration::from_millis(20),
        "busy owner measured at {busy:?}"
    );
}
