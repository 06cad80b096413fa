//! The pool has every submission form the worker has, through its
//! dispatch, by key and to worker `i`; keys can stick to the least-loaded
//! worker; and a hung owner is seen by the watchdog and routed around.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pinned_ffi::{DeadlineError, Dispatch, Error, KeyRouting, PinnedWorker, Pool, TrySubmitError};

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

fn pool(n: usize) -> Pool<usize> {
    Pool::builder(n).spawn(Ok::<_, std::io::Error>).unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// Blocks worker `i` until the returned sender is dropped or sent to.
fn hold(pool: &Pool<usize>, i: usize) -> (mpsc::Sender<()>, pinned_ffi::Ticket<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel();
    let t = pool
        .to(i)
        .submit(move |_| {
            started_tx.send(()).unwrap();
            let _ = rx.recv();
        })
        .unwrap();
    started.recv().unwrap();
    (tx, t)
}

#[test]
fn every_worker_form_exists_on_the_pool_through_its_dispatch() {
    within(60, || {
        let p = pool(2);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        assert!(p.run(|i| *i).unwrap() < 2);
        assert!(p.submit(|i| *i).unwrap().wait().unwrap() < 2);
        assert!(p.try_submit(|i| *i).ok().unwrap().wait().unwrap() < 2);
        let t = p.submit_timeout(|i| *i, Duration::from_secs(1)).ok().unwrap();
        assert!(t.wait().unwrap() < 2);
        assert!(p.run_deadline(|i| *i, soon()).ok().unwrap() < 2);
        let via_tokio = rt.block_on(async {
            let a = p.call(|i| *i).await.unwrap();
            let b = p.submit_async(|i| *i).await.unwrap().await.unwrap();
            let c = p.call_deadline(|i| *i, soon()).await.ok().unwrap();
            [a, b, c]
        });
        assert!(via_tokio.iter().all(|&i| i < 2));
        // A second executor: no runtime is needed.
        let via_futures = futures::executor::block_on(async {
            (
                p.call(|i| *i).await.unwrap(),
                p.call_deadline(|i| *i, soon()).await.ok().unwrap(),
            )
        });
        assert!(via_futures.0 < 2 && via_futures.1 < 2);
        let done: u64 = p.metrics().iter().map(|m| m.completed).sum();
        assert_eq!(done, 10);
    });
}

#[test]
fn direct_routing_reaches_worker_i_through_every_form() {
    within(60, || {
        let p = pool(3);
        for i in 0..3 {
            let r = p.to(i);
            assert_eq!(r.index(), i);
            assert_eq!(r.run(|s| *s).unwrap(), i);
            assert_eq!(r.submit(|s| *s).unwrap().wait().unwrap(), i);
            assert_eq!(r.try_submit(|s| *s).ok().unwrap().wait().unwrap(), i);
            let t = r.submit_timeout(|s| *s, Duration::from_secs(1)).ok().unwrap();
            assert_eq!(t.wait().unwrap(), i);
            assert_eq!(r.run_deadline(|s| *s, soon()).ok().unwrap(), i);
            let (a, b, c) = futures::executor::block_on(async {
                (
                    r.call(|s| *s).await.unwrap(),
                    r.submit_async(|s| *s).await.unwrap().await.unwrap(),
                    r.call_deadline(|s| *s, soon()).await.ok().unwrap(),
                )
            });
            assert_eq!((a, b, c), (i, i, i));
        }
        let bad = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.to(3).index()));
        assert!(bad.is_err(), "an index out of range is refused");
    });
}

#[test]
fn a_full_pool_worker_gives_the_job_back_from_try_submit_and_submit_timeout() {
    within(60, || {
        let p = Pool::builder(1)
            .worker(PinnedWorker::builder().capacity(1))
            .spawn(Ok::<_, std::io::Error>)
            .unwrap();
        let (release, running) = hold(&p, 0);
        let queued = p.submit(|s| *s).unwrap(); // fills the one place
        let job = match p.try_submit(|s| *s + 100) {
            Err(TrySubmitError::Full(f)) => f,
            other => panic!("expected Full, got {other:?}"),
        };
        assert_eq!(job(&mut 1), 101, "the job came back intact");
        let t0 = Instant::now();
        match p.submit_timeout(|s| *s + 7, Duration::from_millis(50)) {
            Err(e @ TrySubmitError::Full(_)) => assert_eq!(e.into_job()(&mut 0), 7),
            other => panic!("expected Full, got {other:?}"),
        }
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let e = p
            .run_deadline(|s| *s + 1, Instant::now() + Duration::from_millis(30))
            .unwrap_err();
        assert!(matches!(e, DeadlineError::QueueFull(_)), "{e:?}");
        release.send(()).unwrap();
        running.wait().unwrap();
        assert_eq!(queued.wait().unwrap(), 0);
    });
}

#[test]
fn the_pool_waits_for_room_asynchronously_and_cancelling_frees_the_place() {
    within(60, || {
        let p = Arc::new(
            Pool::builder(1)
                .worker(PinnedWorker::builder().capacity(1))
                .spawn(Ok::<_, std::io::Error>)
                .unwrap(),
        );
        let (release, running) = hold(&p, 0);
        let queued = p.submit(|s| *s).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        // Given up while waiting for room: the job never runs.
        let r = Arc::clone(&ran);
        let gave_up = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(50),
                p.call(move |_| {
                    r.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .await
        });
        assert!(gave_up.is_err(), "it had to wait for room");
        // One still waiting: it gets in once room frees.
        let p2 = Arc::clone(&p);
        let waiting = rt.spawn(async move { p2.call(|s| *s + 40).await });
        release.send(()).unwrap();
        running.wait().unwrap();
        assert_eq!(queued.wait().unwrap(), 0);
        assert_eq!(rt.block_on(waiting).unwrap().unwrap(), 40);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the abandoned job never ran");
        assert_eq!(p.worker(0).queue_len(), 0);
    });
}

/// Two keys that the hash puts on the same worker.
fn colliding_keys(p: &Pool<usize>) -> (String, String) {
    let first = "key-0".to_owned();
    let w = p.for_key(&first).run(|s| *s).unwrap();
    let second = (1..1000)
        .map(|k| format!("key-{k}"))
        .find(|k| p.for_key(k).run(|s| *s).unwrap() == w)
        .unwrap();
    (first, second)
}

#[test]
fn sticky_keys_spread_where_hashing_stacks_them() {
    within(60, || {
        let hashed = pool(2);
        let (a, b) = colliding_keys(&hashed);
        assert_eq!(
            hashed.run_keyed(&a, |s| *s).unwrap(),
            hashed.run_keyed(&b, |s| *s).unwrap(),
            "by hash, both keys share one owner"
        );
        let sticky = Pool::builder(2)
            .key_routing(KeyRouting::LeastLoaded)
            .spawn(Ok::<_, std::io::Error>)
            .unwrap();
        let wa = sticky.run_keyed(&a, |s| *s).unwrap();
        let wb = sticky.run_keyed(&b, |s| *s).unwrap();
        assert_ne!(wa, wb, "the second hot key goes to the idle owner");
        for _ in 0..50 {
            assert_eq!(sticky.run_keyed(&a, |s| *s).unwrap(), wa);
            let route = sticky.keyed(&b).unwrap();
            assert_eq!(route.index(), wb);
            assert_eq!(futures::executor::block_on(route.call(|s| *s)).unwrap(), wb);
        }
    });
}

#[test]
fn a_new_key_goes_to_the_least_loaded_worker_first() {
    within(60, || {
        let p = Pool::builder(2)
            .key_routing(KeyRouting::LeastLoaded)
            .spawn(Ok::<_, std::io::Error>)
            .unwrap();
        // Worker 0 busy with a queue; worker 1 idle: a new key goes to 1.
        let (release, running) = hold(&p, 0);
        let queued: Vec<_> = (0..3).map(|_| p.to(0).submit(|s| *s).unwrap()).collect();
        assert_eq!(p.keyed(&"fresh").unwrap().index(), 1);
        // Load first, key count second: with worker 1 now holding a key
        // and worker 0 still loaded, the next key goes to 1 as well.
        assert_eq!(p.keyed(&"fresh-2").unwrap().index(), 1);
        release.send(()).unwrap();
        running.wait().unwrap();
        for t in queued {
            t.wait().unwrap();
        }
        // Idle again: the key count breaks the tie.
        assert_eq!(p.keyed(&"fresh-3").unwrap().index(), 0);
        // And the old keys stuck.
        assert_eq!(p.run_keyed(&"fresh", |s| *s).unwrap(), 1);
    });
}

#[test]
fn a_full_key_table_forgets_the_least_recently_used_key() {
    within(60, || {
        let p = Pool::builder(2)
            .key_routing(KeyRouting::LeastLoaded)
            .key_table(2)
            .spawn(Ok::<_, std::io::Error>)
            .unwrap();
        assert_eq!(p.run_keyed(&"a", |s| *s).unwrap(), 0);
        assert_eq!(p.run_keyed(&"b", |s| *s).unwrap(), 1);
        // "c" evicts "a", the oldest, and takes worker 0 (it holds no key now).
        assert_eq!(p.run_keyed(&"c", |s| *s).unwrap(), 0);
        // "a" comes back: "b" is now the oldest and goes; "a" is placed
        // afresh, on the worker that lost its key.
        assert_eq!(p.run_keyed(&"a", |s| *s).unwrap(), 1);
        assert_eq!(p.run_keyed(&"c", |s| *s).unwrap(), 0, "c was kept");
    });
}

fn watched_pool(
    limit: Duration,
    fail_fast: bool,
    dispatch: Dispatch,
) -> (Pool<usize>, Arc<Mutex<Vec<String>>>) {
    let hangs = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&hangs);
    let p = Pool::builder(2)
        .name("watched")
        .dispatch(dispatch)
        .fail_fast_when_unhealthy(fail_fast)
        .worker(
            PinnedWorker::builder()
                .hang_limit(limit)
                .on_hang(move |h| log.lock().unwrap().push(h.worker.clone())),
        )
        .spawn(Ok::<_, std::io::Error>)
        .unwrap();
    (p, hangs)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_hung_owner_is_unhealthy_reported_once_and_healthy_again_when_its_job_ends() {
    within(60, || {
        let (p, hangs) = watched_pool(Duration::from_millis(30), false, Dispatch::LeastLoaded);
        assert!(p.workers().iter().all(PinnedWorker::is_healthy));
        let (release, running) = hold(&p, 1);
        wait_until("worker 1 unhealthy", || !p.worker(1).is_healthy());
        wait_until("the hang reported", || !hangs.lock().unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(150)); // several watchdog ticks
        assert_eq!(*hangs.lock().unwrap(), ["watched-1"], "one report per hang");
        let m = p.worker(1).metrics();
        assert_eq!((m.hangs, m.healthy), (1, false));
        assert!(m.to_string().contains("UNHEALTHY"), "{m}");
        assert!(p.worker(0).is_healthy());
        release.send(()).unwrap();
        running.wait().unwrap();
        assert!(
            p.worker(1).is_healthy(),
            "healthy as soon as its caller has the result"
        );
        assert!(p.worker(1).metrics().healthy);
        // A second hang on the same worker is a second report.
        p.to(1)
            .run(|_| std::thread::sleep(Duration::from_millis(400)))
            .unwrap();
        wait_until("the second hang reported", || hangs.lock().unwrap().len() == 2);
        assert_eq!(p.worker(1).metrics().hangs, 2);
    });
}

#[test]
fn the_dispatch_routes_new_work_around_a_hung_owner() {
    for dispatch in [Dispatch::LeastLoaded, Dispatch::RoundRobin] {
        within(60, move || {
            let (p, _) = watched_pool(Duration::from_millis(20), false, dispatch);
            let (release, running) = hold(&p, 0);
            wait_until("worker 0 unhealthy", || !p.worker(0).is_healthy());
            // Every form of dispatch lands on worker 1 while 0 is hung.
            for _ in 0..20 {
                assert_eq!(p.run(|s| *s).unwrap(), 1, "{dispatch:?}");
                assert_eq!(p.submit(|s| *s).unwrap().wait().unwrap(), 1);
                assert_eq!(futures::executor::block_on(p.call(|s| *s)).unwrap(), 1);
            }
            release.send(()).unwrap();
            running.wait().unwrap();
            let after: Vec<usize> = (0..4).map(|_| p.run(|s| *s).unwrap()).collect();
            assert!(after.contains(&0), "worker 0 takes work again: {after:?}");
        });
    }
}

#[test]
fn a_keyed_call_to_a_hung_owner_fails_fast_only_when_configured() {
    within(60, || {
        let (p, _) = watched_pool(Duration::from_millis(20), true, Dispatch::LeastLoaded);
        let w = p.keyed(&"tenant").unwrap().index();
        let (release, running) = hold(&p, w);
        wait_until("the key's worker unhealthy", || !p.worker(w).is_healthy());
        let t0 = Instant::now();
        match p.run_keyed(&"tenant", |s| *s) {
            Err(Error::Unhealthy { running_for }) => assert!(running_for > Duration::from_millis(20)),
            other => panic!("expected Unhealthy, got {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "fails fast");
        assert!(matches!(p.keyed(&"tenant"), Err(Error::Unhealthy { .. })));
        release.send(()).unwrap();
        running.wait().unwrap();
        assert_eq!(p.run_keyed(&"tenant", |s| *s).unwrap(), w);

        // Not configured: the keyed call waits its turn on the key's owner.
        let (p, _) = watched_pool(Duration::from_millis(20), false, Dispatch::LeastLoaded);
        let w = p.keyed(&"tenant").unwrap().index();
        let (release, running) = hold(&p, w);
        wait_until("the key's worker unhealthy", || !p.worker(w).is_healthy());
        let queued = p.keyed(&"tenant").unwrap().submit(|s| *s).unwrap();
        release.send(()).unwrap();
        running.wait().unwrap();
        assert_eq!(queued.wait().unwrap(), w);
    });
}

#[test]
fn a_panicking_hang_callback_is_contained() {
    within(60, || {
        let w = PinnedWorker::builder()
            .hang_limit(Duration::from_millis(10))
            .on_hang(|_| panic!("callback bug"))
            .spawn(|| Ok::<_, std::io::Error>(()))
            .unwrap();
        w.run(|_| std::thread::sleep(Duration::from_millis(300))).unwrap();
        wait_until("the hang counted", || w.metrics().hangs == 1);
        wait_until("the panic contained", || w.metrics().contained_panics == 1);
        w.run(|_| ()).unwrap();
        // The watchdog still works for the next hang.
        w.run(|_| std::thread::sleep(Duration::from_millis(300))).unwrap();
        wait_until("the next hang counted", || w.metrics().hangs == 2);
    });
}
