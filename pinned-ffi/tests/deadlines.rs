//! One deadline over a call (where it ran out, the job back when it never
//! entered the queue), sync and async under two executors; and a
//! `close_timeout` that keeps its deadline while a job runs. Each test
//! runs under a watchdog.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use pinned_ffi::{threads, DeadlineError, Error, PinnedWorker};

fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("did not finish within {secs} s: a hang"),
    }
}

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

/// A worker whose owner is held busy until `release` is sent to.
fn held(capacity: usize) -> (Arc<PinnedWorker<u64>>, mpsc::Sender<()>, pinned_ffi::Ticket<()>) {
    let w = Arc::new(
        PinnedWorker::builder()
            .capacity(capacity)
            .spawn(|| Ok::<_, std::convert::Infallible>(0u64))
            .unwrap(),
    );
    let (release, hold) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    let busy = w
        .submit(move |_| {
            started_tx.send(()).unwrap();
            let _ = hold.recv();
        })
        .unwrap();
    started.recv().unwrap();
    (w, release, busy)
}

#[test]
fn run_deadline_says_where_the_time_ran_out() {
    within(30, || {
        // In time: the result.
        let (w, release, busy) = held(1);
        // Queued when the deadline passes: withdrawn, never runs, place freed.
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let e = w
            .run_deadline(move |_| r.fetch_add(1, Ordering::SeqCst), soon(30))
            .unwrap_err();
        assert!(matches!(e, DeadlineError::NotStarted), "{e:?}");
        assert_eq!(w.queue_len(), 0, "a withdrawn job holds no place");
        // No room before the deadline: the job comes back, intact.
        w.try_submit(|_| ()).unwrap().detach(); // the one place
        let e = w.run_deadline(|n| *n + 5, soon(30)).unwrap_err();
        let job = match e {
            DeadlineError::QueueFull(job) => job,
            other => panic!("expected QueueFull, got {other:?}"),
        };
        assert_eq!(job(&mut 1), 6);
        release.send(()).unwrap();
        busy.wait().unwrap();
        assert_eq!(w.run_deadline(|n| *n + 1, soon(5_000)).unwrap(), 1);
        // Running when the deadline passes: it finishes on the owner.
        let finished = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&finished);
        let e = w
            .run_deadline(
                move |_| {
                    std::thread::sleep(Duration::from_millis(150));
                    f.store(true, Ordering::SeqCst);
                },
                soon(30),
            )
            .unwrap_err();
        assert!(matches!(e, DeadlineError::Running), "{e:?}");
        w.run(|_| ()).unwrap(); // after the running job
        assert!(finished.load(Ordering::SeqCst));
        // Accepted and failed; refused before the queue (job back).
        let e = w.run_deadline(|_| panic!("boom"), soon(5_000)).unwrap_err();
        assert!(matches!(e, DeadlineError::Failed(Error::Panicked(_))), "{e:?}");
        w.close().unwrap();
        let e = w.run_deadline(|n| *n, soon(5_000)).unwrap_err();
        assert!(matches!(e, DeadlineError::Refused(_, Error::Closed)), "{e:?}");
        assert!(e.into_job().is_some());
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the withdrawn job never ran");
    });
}

/// The async form, on an executor of the caller's choice.
fn call_deadline_cases(block_on: impl Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>)) {
    let (w, release, busy) = held(1);
    block_on(Box::pin(async {
        let e = w.call_deadline(|n| *n, soon(30)).await.unwrap_err();
        assert!(matches!(e, DeadlineError::NotStarted), "{e:?}");
        assert_eq!(w.queue_len(), 0);
        w.try_submit(|_| ()).unwrap().detach();
        let e = w.call_deadline(|n| *n + 2, soon(30)).await.unwrap_err();
        assert_eq!(e.into_job().map(|job| job(&mut 1)), Some(3), "the job came back");
    }));
    release.send(()).unwrap();
    busy.wait().unwrap();
    block_on(Box::pin(async {
        assert_eq!(w.call_deadline(|n| *n + 1, soon(5_000)).await.unwrap(), 1);
        let e = w
            .call_deadline(|_| std::thread::sleep(Duration::from_millis(150)), soon(30))
            .await
            .unwrap_err();
        assert!(matches!(e, DeadlineError::Running), "{e:?}");
    }));
}

#[test]
fn call_deadline_under_tokio_and_under_futures_executor() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        call_deadline_cases(|f| rt.block_on(f));
        call_deadline_cases(|f| futures::executor::block_on(f));
    });
}

#[test]
fn close_timeout_returns_at_its_deadline_while_a_job_runs() {
    within(30, || {
        struct State(Arc<Mutex<Option<u64>>>);
        use std::sync::Mutex;
        impl Drop for State {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = Some(threads::current_tid());
            }
        }
        let dropped_on = Arc::new(Mutex::new(None));
        let d = Arc::clone(&dropped_on);
        let w = Arc::new(
            PinnedWorker::builder()
                .name("long-job")
                .spawn(move || Ok::<_, std::convert::Infallible>(State(Arc::clone(&d))))
                .unwrap(),
        );
        let owner = w.owner_tid();
        let (started_tx, started) = mpsc::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&finished);
        let long = w
            .submit(move |_| {
                started_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(1500));
                f.store(true, Ordering::SeqCst);
            })
            .unwrap();
        started.recv().unwrap();
        let queued: Vec<_> = (0..3).map(|i| w.submit(move |_| i).unwrap()).collect();
        let blocked = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || w.run(|_| 9))
        };
        while w.queue_len() < 4 {
            std::thread::yield_now();
        }
        let t0 = Instant::now();
        let report = w.close_timeout(Duration::from_millis(50)).unwrap();
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(1000), "close_timeout took {took:?}");
        assert_eq!((report.shut_down, report.still_running), (4, 1), "{report:?}");
        // The queued callers learn it now, while the long job still runs.
        for t in queued {
            assert_eq!(t.wait(), Err(Error::Shutdown));
        }
        assert_eq!(blocked.join().unwrap(), Err(Error::Shutdown));
        assert!(
            !finished.load(Ordering::SeqCst),
            "answered before the running job ended"
        );
        assert!(
            threads::thread_names().is_none_or(|n| n.iter().any(|n| n == "long-job")),
            "the owner thread is still there"
        );
        // The running job finishes on its owner, which drops the state on
        // its own thread and exits.
        assert_eq!(long.wait(), Ok(()));
        let t0 = Instant::now();
        while dropped_on.lock().unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the state was never dropped"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*dropped_on.lock().unwrap(), Some(owner));
        if threads::thread_names().is_some() {
            while threads::thread_names().unwrap().iter().any(|n| n == "long-job") {
                assert!(t0.elapsed() < Duration::from_secs(10), "the owner never exited");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Dropping the handle after a close that gave up does not wait.
        drop(w);
    });
}

#[test]
fn close_from_inside_a_job_is_an_error_not_a_panic() {
    within(30, || {
        let w = Arc::new(PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64)).unwrap());
        let inner = Arc::clone(&w);
        assert_eq!(w.run(move |_| inner.close()), Ok(Err(Error::Reentrant)));
        let inner = Arc::clone(&w);
        let timed = w.submit(move |_| inner.close_timeout(Duration::from_secs(1)).map(|_| ()));
        // Closed by the first: a later job is refused, and close from
        // outside now waits and succeeds.
        assert!(matches!(timed.map(|_| ()), Err(Error::Closed)));
        w.close().unwrap();
    });
}
