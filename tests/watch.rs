//! The accidental-pinning detector: quiet under a steady pool workload,
//! raised (naming the new threads) by per-request threads, and raised by
//! per-request owners. One test, in phases, so no other test's threads
//! move the count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use affine::{Config, Context};

use pinned_ffi::{Alarm, PinnedWorker, Pool, ThreadWatch, WatchConfig};

fn config() -> WatchConfig {
    WatchConfig::default()
        .interval(Duration::from_millis(20))
        .learn(5)
        .over_ratio(0.5)
        .min_extra(4)
        .sustain(Duration::from_millis(200))
        .max_owner_starts_per_sec(20.0)
        .owner_churn_window(Duration::from_millis(200))
}

fn watch() -> (ThreadWatch, Arc<Mutex<Vec<Alarm>>>) {
    let alarms = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&alarms);
    let w = ThreadWatch::start(config(), move |a| sink.lock().unwrap().push(a.clone())).expect("watch");
    thread::sleep(Duration::from_millis(150)); // learn the baseline
    (w, alarms)
}

#[test]
fn the_watch_fires_for_per_request_pinning_and_stays_quiet_for_a_pool() {
    if pinned_ffi::threads::thread_count().is_none() {
        eprintln!("SKIPPED: no /proc thread count on this platform");
        return;
    }

    // Phase 1: a pool and 4 steady callers: no alarm.
    let pool = Arc::new(
        Pool::builder(2)
            .spawn(|i| Context::new(&Config::with_seed(i as u64 + 1)))
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|c| {
            let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
            thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    pool.run(|ctx| ctx.op(c * 1_000_000 + i).unwrap()).unwrap();
                    i += 1;
                }
            })
        })
        .collect();
    let (w, alarms) = watch();
    thread::sleep(Duration::from_millis(600));
    w.stop();
    stop.store(true, Ordering::Relaxed);
    callers.into_iter().for_each(|c| c.join().unwrap());
    assert_eq!(
        *alarms.lock().unwrap(),
        vec![],
        "a steady pool must not raise an alarm"
    );

    // Phase 2: a thread per request, each living a while.
    let (w, alarms) = watch();
    let start = Instant::now();
    let mut reqs = Vec::new();
    while start.elapsed() < Duration::from_millis(700) {
        reqs.push(
            thread::Builder::new()
                .name("request".into())
                .spawn(|| {
                    let mut ctx = Context::new(&Config::with_seed(1)).unwrap(); // pinned per request
                    ctx.op(1).unwrap();
                    thread::sleep(Duration::from_millis(300));
                })
                .unwrap(),
        );
        thread::sleep(Duration::from_millis(10));
    }
    reqs.into_iter().for_each(|r| r.join().unwrap());
    w.stop();
    let got = alarms.lock().unwrap().clone();
    println!("per-request threads: {got:?}");
    let growth = got.iter().find_map(|a| match a {
        Alarm::ThreadGrowth {
            baseline,
            now,
            new_threads,
            ..
        } => Some((*baseline, *now, new_threads.clone())),
        _ => None,
    });
    let (baseline, now, names) = growth.expect("thread growth must be raised");
    assert!(now > baseline + 4);
    assert_eq!(
        names[0].0, "request",
        "names the threads that appeared: {names:?}"
    );

    // Phase 3: an owner per request.
    let (w, alarms) = watch();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        let owner = PinnedWorker::spawn(|| Context::new(&Config::with_seed(1))).unwrap();
        owner.run(|ctx| ctx.op(1).unwrap()).unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    w.stop();
    let got = alarms.lock().unwrap().clone();
    assert!(
        got.iter()
            .any(|a| matches!(a, Alarm::OwnerChurn { per_second } if *per_second > 20.0)),
        "owner churn must be raised: {got:?}"
    );
}
