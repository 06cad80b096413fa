//! The process's main thread as an owner (`Builder::on_this_thread`,
//! `run_here`). A `harness = false` binary: `main` is the real main thread
//! (the test harness would run each test on a thread of its own), so every
//! check below can assert that jobs, re-inits and drops happen on the
//! thread whose id is the process id.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinned_ffi::{Breaker, Error, OwnerLoop, PanicPolicy, PinnedWorker};

fn tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

fn pid() -> i32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

fn on_main() -> bool {
    tid() == pid()
}

/// What was dropped, and on which thread.
static DROPS: Mutex<Vec<(String, i32)>> = Mutex::new(Vec::new());

fn dropped(what: &str) -> Vec<i32> {
    DROPS
        .lock()
        .unwrap()
        .iter()
        .filter(|(w, _)| w == what)
        .map(|(_, t)| *t)
        .collect()
}

/// Records its drop's thread.
struct Tracked(String);

impl Drop for Tracked {
    fn drop(&mut self) {
        DROPS.lock().unwrap().push((self.0.clone(), tid()));
    }
}

/// A stand-in for a main-thread SDK context: `!Send`, made and dropped on
/// the main thread only.
struct Sdk {
    made_on: i32,
    calls: u64,
    _drop: Tracked,
    _not_send: std::rc::Rc<()>,
}

impl Sdk {
    fn new(tag: &str, inits: &AtomicUsize) -> Result<Sdk, String> {
        inits.fetch_add(1, Ordering::SeqCst);
        Ok(Sdk {
            made_on: tid(),
            calls: 0,
            _drop: Tracked(tag.to_owned()),
            _not_send: std::rc::Rc::new(()),
        })
    }

    /// A call that must be on the main thread; returns where it ran.
    fn call(&mut self) -> i32 {
        assert!(on_main(), "an SDK call ran off the main thread");
        self.calls += 1;
        tid()
    }
}

/// Serves `owner_loop` here while `driver` runs on another thread; returns
/// the driver's result. Fails if the loop does not return within a minute.
fn drive<S: 'static, R: Send>(owner_loop: OwnerLoop<S>, driver: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        // Room for the largest results a job may return (see MAX_RESULT).
        let d = std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn_scoped(s, driver)
            .unwrap();
        let t0 = Instant::now();
        owner_loop.run();
        assert!(on_main(), "run returned on the main thread");
        assert!(t0.elapsed() < Duration::from_secs(60), "the loop took too long");
        d.join().unwrap_or_else(|p| panic::resume_unwind(p))
    })
}

/// Jobs from std threads (blocking `run`, `submit().wait()`) and tokio
/// tasks (`call`, `submit_async`), a contained panic, an in-place re-init,
/// `Bound` values, metrics, and a close from another thread.
fn jobs_from_threads_and_tasks_run_on_main() {
    static INITS: AtomicUsize = AtomicUsize::new(0);
    let (w, owner_loop) = PinnedWorker::builder()
        .name("main-owner")
        .panic_policy(PanicPolicy::Reinit)
        .on_this_thread(|| Sdk::new("sdk-1", &INITS))
        .unwrap();
    assert_eq!(
        INITS.load(Ordering::SeqCst),
        1,
        "init ran before on_this_thread returned"
    );
    assert_eq!(w.owner_tid(), pid() as u64);
    assert_eq!(w.name(), "main-owner");
    // This thread owns the worker: waiting on it here could never end.
    assert_eq!(w.run(|s| s.calls), Err(Error::Reentrant));
    assert_eq!(w.submit(|s| s.calls).unwrap().wait(), Err(Error::Reentrant));
    let w = Arc::new(w);
    let main = pid();
    let ok_jobs = drive(owner_loop, || {
        let mut ok_jobs = 0u64;
        // Blocking calls from several threads.
        let per_thread = 50;
        std::thread::scope(|s| {
            let ts: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        for i in 0..per_thread {
                            let ran_on = if i % 2 == 0 {
                                w.run(|s| s.call()).unwrap()
                            } else {
                                w.submit(|s| s.call()).unwrap().wait().unwrap()
                            };
                            assert_eq!(ran_on, main);
                        }
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
        });
        ok_jobs += 4 * per_thread;
        // Tasks on a multi-thread runtime, through the async forms.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .enable_all()
            .build()
            .unwrap();
        let tasks = 16u64;
        rt.block_on(async {
            let hs: Vec<_> = (0..tasks)
                .map(|i| {
                    let w = Arc::clone(&w);
                    tokio::spawn(async move {
                        let a = w.call(|s| s.call()).await.unwrap();
                        let b = w.submit_async(|s| s.call()).await.unwrap().await.unwrap();
                        tokio::task::yield_now().await;
                        let c = w.call(move |s| (s.call(), i)).await.unwrap();
                        assert_eq!((a, b, c), (main, main, (main, i)));
                    })
                })
                .collect();
            for h in hs {
                h.await.unwrap();
            }
        });
        ok_jobs += 3 * tasks;
        // A panic is contained; Reinit drops the state and makes it again
        // in place, on the main thread.
        let calls_before = w.run(|s| s.calls).unwrap();
        ok_jobs += 1;
        assert_eq!(calls_before, ok_jobs - 1);
        let boom: Result<(), Error> = w.run(|_| panic!("expected: sdk blew up"));
        match boom {
            Err(Error::Panicked(m)) => assert!(m.message().contains("sdk blew up")),
            other => panic!("expected Panicked, got {other:?}"),
        }
        let (made_on, calls) = w.run(|s| (s.made_on, s.calls)).unwrap();
        ok_jobs += 1;
        assert_eq!(INITS.load(Ordering::SeqCst), 2, "re-initialised once");
        assert_eq!(
            (made_on, calls),
            (main, 0),
            "a fresh state, made on the main thread"
        );
        assert_eq!(dropped("sdk-1"), [main], "the old state was dropped on main");
        assert_eq!(w.owner_tid(), main as u64, "the owner never moved");
        // Bound values: made and dropped from other threads, freed on main.
        let bound = std::thread::scope(|s| {
            s.spawn(|| w.bind(|_| (Tracked("bound".into()), tid())).unwrap())
                .join()
                .unwrap()
        });
        ok_jobs += 1;
        assert_eq!(w.with(&bound, |_, v| v.1).unwrap(), main);
        ok_jobs += 1;
        std::thread::scope(|s| {
            s.spawn(move || drop(bound));
        });
        w.run(|s| s.call()).unwrap(); // the release is handled before this job
        ok_jobs += 1;
        assert_eq!(dropped("bound"), [main], "the bound value was freed on main");
        let m = w.metrics();
        assert_eq!(m.completed, ok_jobs, "{m}");
        assert_eq!((m.panicked, m.reinits), (1, 1), "{m}");
        // A close from this (other) thread makes the main loop return.
        w.close().unwrap();
        assert!(w.is_closed());
        ok_jobs
    });
    // `run` returned: the state was dropped here, on main.
    assert_eq!(w.run(|s| s.calls), Err(Error::Closed));
    let m = w.metrics();
    assert_eq!(m.completed, ok_jobs);
    assert_eq!(dropped("sdk-1"), [pid(), pid()], "both states dropped on main");
}

/// After a loop returns, the main thread is an ordinary caller again: it
/// can wait on spawned workers and own the next worker.
fn after_the_loop_the_main_thread_can_host_another_owner() {
    let spawned = PinnedWorker::spawn(|| Ok::<_, std::io::Error>(())).unwrap();
    for round in 0..3 {
        static INITS: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("round-{round}");
        let (w, owner_loop) = PinnedWorker::on_this_thread({
            let tag = tag.clone();
            move || Sdk::new(&tag, &INITS)
        })
        .unwrap();
        // While it owns `w`, a blocking call elsewhere is fine.
        assert_ne!(spawned.run(|_| tid()).unwrap(), pid());
        let got = drive(owner_loop, || {
            let t = w.run(|s| s.call()).unwrap();
            drop(w.close());
            t
        });
        assert_eq!(got, pid());
        assert_eq!(dropped(&tag), [pid()]);
        assert_eq!(w.run(|s| s.calls), Err(Error::Closed), "refused, not Reentrant");
    }
    // A second owner at once is refused, and the first is unharmed.
    let (w, owner_loop) = PinnedWorker::on_this_thread(|| Ok::<_, std::io::Error>(1u8)).unwrap();
    let err = PinnedWorker::on_this_thread(|| Ok::<_, std::io::Error>(2u8)).unwrap_err();
    assert!(matches!(err, pinned_ffi::SpawnError::Os(ref e) if e.kind() == std::io::ErrorKind::ResourceBusy));
    let n = drive(owner_loop, || {
        let n = w.run(|n| *n).unwrap();
        w.close().unwrap();
        n
    });
    assert_eq!(n, 1);
}

/// A failed init leaves the thread as it was; the job and result limits
/// follow the owner's stack, the main thread's or a smaller one.
fn failed_inits_and_stack_limits() {
    let err = PinnedWorker::<()>::on_this_thread(|| Err::<(), _>("no display")).unwrap_err();
    assert!(matches!(err, pinned_ffi::SpawnError::Init("no display")));
    let err = PinnedWorker::<()>::on_this_thread(|| -> Result<(), String> { panic!("expected: init") })
        .unwrap_err();
    assert!(matches!(err, pinned_ffi::SpawnError::InitPanicked(ref m) if m.message().contains("init")));
    // Not left marked as an owner: a blocking call works, and so does the
    // next owner.
    let spawned = PinnedWorker::spawn(|| Ok::<_, std::io::Error>(())).unwrap();
    assert_ne!(spawned.run(|_| tid()).unwrap(), pid());
    const MAX: usize = PinnedWorker::<()>::MAX_RESULT;
    let (w, owner_loop) = PinnedWorker::on_this_thread(|| Ok::<_, std::io::Error>(())).unwrap();
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid resource and a writable rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) }, 0);
    let main_has_8_mib = limit.rlim_cur >= 8 << 20;
    let (big, too_big) = drive(owner_loop, || {
        let big = w.submit(|_| [1u8; MAX]).map(|t| t.wait().map(|a| a.len()));
        let too_big = w.submit(|_| [1u8; MAX + 1]).err();
        w.close().unwrap();
        (big, too_big)
    });
    if main_has_8_mib {
        assert_eq!(
            big,
            Ok(Ok(MAX)),
            "the main thread takes what a default owner takes"
        );
    }
    assert!(matches!(too_big, Some(Error::ResultTooLarge { .. })));
    // An owner on a 256 KiB thread refuses a result its stack could not
    // hold, which a spawned owner takes. (glibc may give a thread a cached
    // stack up to four times the size asked: 1 MiB, whose limit is 128 KiB.)
    const SOME: usize = 160 << 10;
    assert_eq!(spawned.run(|_| [3u8; SOME]).unwrap().len(), SOME);
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            let (w, owner_loop) = PinnedWorker::on_this_thread(|| Ok::<_, std::io::Error>(())).unwrap();
            let refused = w.submit(|_| [1u8; SOME]).err();
            assert!(
                matches!(refused, Some(Error::ResultTooLarge { limit, .. }) if limit <= 128 << 10),
                "{refused:?}"
            );
            let small = w.submit(|_| [2u8; 8 << 10]).unwrap();
            drop(w);
            owner_loop.run();
            assert_eq!(small.wait().unwrap()[0], 2);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// `run_here`: the body on a scoped thread, the loop here; the worker
/// closes when the body returns, and a panicking body closes it too.
fn run_here_serves_the_body_and_closes_after_it() {
    let main = pid();
    let got = PinnedWorker::builder()
        .run_here(
            || Sdk::new("run-here", &AtomicUsize::new(0)),
            |w| {
                assert_ne!(tid(), main, "the body is on another thread");
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .build()
                    .unwrap();
                let from_tasks = rt.block_on(async {
                    let a = w.call(|s| s.call());
                    let b = w.call(|s| s.call());
                    let (a, b) = tokio::join!(a, b);
                    (a.unwrap(), b.unwrap())
                });
                (from_tasks, w.run(|s| s.calls).unwrap())
            },
        )
        .unwrap();
    assert_eq!(got, ((main, main), 2));
    assert_eq!(dropped("run-here"), [main]);
    // A panicking body: the worker is closed, the state dropped here, and
    // the panic comes back to the caller.
    let caught = panic::catch_unwind(AssertUnwindSafe(|| {
        PinnedWorker::run_here(
            || Sdk::new("run-here-panics", &AtomicUsize::new(0)),
            |w| {
                w.run(|s| s.call()).unwrap();
                panic!("expected: the body failed");
            },
        )
    }));
    let payload = caught.expect_err("the body's panic is resumed");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"expected: the body failed"));
    assert_eq!(dropped("run-here-panics"), [main]);
}

/// `Stop` ends the loop; the breaker's re-init after its cooldown happens
/// in place.
fn stop_returns_and_the_breaker_reinits_in_place() {
    let (w, owner_loop) = PinnedWorker::builder()
        .panic_policy(PanicPolicy::Stop)
        .on_this_thread(|| Sdk::new("stop", &AtomicUsize::new(0)))
        .unwrap();
    let outcome = drive(owner_loop, || {
        let boom: Result<(), Error> = w.run(|_| panic!("expected: stop here"));
        // The loop returns by itself; no close needed.
        (boom, w.run(|s| s.call()))
    });
    assert!(matches!(outcome.0, Err(Error::Panicked(_))));
    assert_eq!(outcome.1, Err(Error::Stopped));
    assert_eq!(dropped("stop"), [pid()]);

    static INITS: AtomicUsize = AtomicUsize::new(0);
    let cooldown = Duration::from_millis(50);
    let (w, owner_loop) = PinnedWorker::builder()
        .breaker(Some(Breaker::new(2, Duration::from_secs(10), cooldown)))
        .on_this_thread(|| Sdk::new("breaker", &INITS))
        .unwrap();
    let main = pid();
    drive(owner_loop, || {
        for _ in 0..2 {
            let again: Result<(), Error> = w.run(|_| panic!("expected: again"));
            assert!(matches!(again, Err(Error::Panicked(_))));
        }
        assert!(matches!(w.run(|s| s.call()), Err(Error::Broken(_))), "tripped");
        std::thread::sleep(cooldown + Duration::from_millis(20));
        let (made_on, ran_on) = w.run(|s| (s.made_on, s.call())).unwrap();
        assert_eq!((made_on, ran_on), (main, main), "re-initialised in place");
        assert_eq!(INITS.load(Ordering::SeqCst), 2);
        assert_eq!(w.metrics().reinits, 1);
        w.close().unwrap();
    });
    assert_eq!(dropped("breaker"), [main, main]);
}

/// Closing from a job on the main owner is refused as on any worker;
/// dropping the handle on main before `run`, or the loop without `run`,
/// leaves nothing hanging and nothing unanswered.
fn closes_that_cannot_wait_and_loops_never_run() {
    // close() from a job on this owner: Reentrant, intake stopped, and
    // the loop returns after what was accepted.
    let (w, owner_loop) = PinnedWorker::on_this_thread(|| Ok::<_, std::io::Error>(())).unwrap();
    let w = Arc::new(w);
    let inner = Arc::clone(&w);
    let from_job = w.submit(move |_| inner.close()).unwrap();
    let after = w.submit(|_| tid()).unwrap();
    owner_loop.run(); // returns: closed, and everything accepted ran
    assert_eq!(from_job.wait().unwrap(), Err(Error::Reentrant));
    assert_eq!(after.wait().unwrap(), pid());
    assert!(w.is_closed());

    // The handle dropped on main before run(): run serves what was queued
    // and returns.
    let (w, owner_loop) =
        PinnedWorker::on_this_thread(|| Sdk::new("dropped-handle", &AtomicUsize::new(0))).unwrap();
    let t = w.submit(|s| s.call()).unwrap();
    let t0 = Instant::now();
    drop(w); // no deadlock: a close that does not wait
    assert!(t0.elapsed() < Duration::from_secs(5));
    owner_loop.run();
    assert_eq!(t.wait().unwrap(), pid());
    assert_eq!(dropped("dropped-handle"), [pid()]);

    // The loop dropped without run(): Shutdown for what was queued, the
    // state dropped here, a waiting close released.
    let (w, owner_loop) =
        PinnedWorker::on_this_thread(|| Sdk::new("never-run", &AtomicUsize::new(0))).unwrap();
    let w = Arc::new(w);
    let queued: Vec<_> = (0..3).map(|_| w.submit(|s| s.call()).unwrap()).collect();
    let closer = {
        let w = Arc::clone(&w);
        std::thread::spawn(move || w.close())
    };
    while !w.is_closed() {
        std::thread::yield_now();
    }
    drop(owner_loop);
    assert_eq!(closer.join().unwrap(), Ok(()), "the waiting close returned");
    for t in queued {
        assert_eq!(t.wait(), Err(Error::Shutdown));
    }
    assert_eq!(w.run(|s| s.calls), Err(Error::Closed));
    assert_eq!(dropped("never-run"), [pid()]);
    assert_eq!(w.metrics().rejected, 3);
}

/// `close_timeout` from another thread while main runs a long job returns
/// at its deadline; the loop finishes the job, then returns.
fn close_timeout_leaves_the_running_job_to_main() {
    let (w, owner_loop) =
        PinnedWorker::on_this_thread(|| Sdk::new("close-timeout", &AtomicUsize::new(0))).unwrap();
    let (started_tx, started) = std::sync::mpsc::channel();
    let slow = w
        .submit(move |s| {
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            s.call()
        })
        .unwrap();
    let queued = w.submit(|s| s.call()).unwrap();
    let handle = &w;
    let report = drive(owner_loop, move || {
        let w = handle;
        started.recv().unwrap();
        let t0 = Instant::now();
        let report = w.close_timeout(Duration::from_millis(20)).unwrap();
        assert!(
            t0.elapsed() < Duration::from_millis(250),
            "returned at the deadline"
        );
        report
    });
    assert_eq!((report.shut_down, report.still_running), (1, 1));
    assert_eq!(slow.wait().unwrap(), pid());
    assert_eq!(queued.wait(), Err(Error::Shutdown));
    assert_eq!(dropped("close-timeout"), [pid()]);
}

/// The watchdog sees a hung job on a main-thread owner, and the worker is
/// healthy again once the job ends.
fn the_watchdog_sees_a_hung_main_thread_owner() {
    let (w, owner_loop) = PinnedWorker::builder()
        .hang_limit(Duration::from_millis(20))
        .on_this_thread(|| Sdk::new("watchdog", &AtomicUsize::new(0)))
        .unwrap();
    let handle = &w;
    let (healthy_during, ran_on) = drive(owner_loop, move || {
        let w = handle;
        let (started_tx, started) = std::sync::mpsc::channel();
        let stuck = w
            .submit(move |_| {
                started_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                tid()
            })
            .unwrap();
        started.recv().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let healthy_during = w.is_healthy();
        let ran_on = stuck.wait().unwrap();
        assert!(w.is_healthy(), "healthy again when the job ended");
        w.close().unwrap();
        (healthy_during, ran_on)
    });
    assert!(!healthy_during, "a job past its limit makes the worker unhealthy");
    assert_eq!(ran_on, pid());
    assert_eq!(w.metrics().hangs, 1);
}

fn main() {
    assert!(
        on_main(),
        "main_thread must run on the process's main thread (harness = false)"
    );
    // The checks' own panics are expected: keep them off stderr.
    let report = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let message = p
            .downcast_ref::<&str>()
            .copied()
            .or(p.downcast_ref::<String>().map(String::as_str));
        if !message.is_some_and(|m| m.starts_with("expected: ")) {
            report(info);
        }
    }));
    // A hang fails the binary rather than the CI job's clock.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("main_thread: timed out after 120 s");
        std::process::exit(2);
    });
    let checks: &[(&str, fn())] = &[
        (
            "jobs_from_threads_and_tasks_run_on_main",
            jobs_from_threads_and_tasks_run_on_main,
        ),
        (
            "after_the_loop_the_main_thread_can_host_another_owner",
            after_the_loop_the_main_thread_can_host_another_owner,
        ),
        ("failed_inits_and_stack_limits", failed_inits_and_stack_limits),
        (
            "run_here_serves_the_body_and_closes_after_it",
            run_here_serves_the_body_and_closes_after_it,
        ),
        (
            "stop_returns_and_the_breaker_reinits_in_place",
            stop_returns_and_the_breaker_reinits_in_place,
        ),
        (
            "closes_that_cannot_wait_and_loops_never_run",
            closes_that_cannot_wait_and_loops_never_run,
        ),
        (
            "the_watchdog_sees_a_hung_main_thread_owner",
            the_watchdog_sees_a_hung_main_thread_owner,
        ),
        (
            "close_timeout_leaves_the_running_job_to_main",
            close_timeout_leaves_the_running_job_to_main,
        ),
    ];
    println!(
        "\nrunning {} checks on the main thread (tid {})",
        checks.len(),
        tid()
    );
    let t0 = Instant::now();
    let mut failed = Vec::new();
    for (name, check) in checks {
        let outcome = panic::catch_unwind(check);
        assert!(on_main());
        match outcome {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    let passed = checks.len() - failed.len();
    if failed.is_empty() {
        println!(
            "\ntest result: ok. {passed} passed; 0 failed; finished in {:.2}s\n",
            t0.elapsed().as_secs_f64()
        );
    } else {
        println!("\nfailures: {failed:?}");
        println!(
            "\ntest result: FAILED. {passed} passed; {} failed\n",
            failed.len()
        );
        std::process::exit(101);
    }
}
