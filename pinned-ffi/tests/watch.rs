//! `ThreadWatch`'s owner-churn alarm: a pool started after the baseline is
//! not churn; owners started and closed in a loop are, raised once per
//! episode, and again after a quiet period.
//!
//! Owner starts are counted process-wide, so the tests here take turns
//! (one lock) and no other test binary's owners are counted.

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use pinned_ffi::{Alarm, PinnedWorker, Pool, ThreadWatch, WatchConfig};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn no_proc() -> bool {
    if pinned_ffi::threads::thread_count().is_none() {
        eprintln!("SKIPPED: no /proc thread count on this platform");
        return true;
    }
    false
}

type Alarms = Arc<Mutex<Vec<Alarm>>>;

fn start(config: WatchConfig) -> (ThreadWatch, Alarms) {
    let alarms = Alarms::default();
    let sink = Arc::clone(&alarms);
    let w = ThreadWatch::start(config, move |a| sink.lock().unwrap().push(a.clone())).expect("watch");
    (w, alarms)
}

fn churn_alarms(alarms: &Alarms) -> Vec<f64> {
    alarms
        .lock()
        .unwrap()
        .iter()
        .filter_map(|a| match a {
            Alarm::OwnerChurn { per_second } => Some(*per_second),
            _ => None,
        })
        .collect()
}

/// Starts and closes owners one after another for `period`; how many.
fn churn_for(period: Duration) -> usize {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < period {
        let owner = PinnedWorker::spawn(|| Ok::<_, std::io::Error>(0u64)).unwrap();
        assert_eq!(owner.run(|x| *x + 1), Ok(1));
        owner.close().unwrap();
        n += 1;
        thread::sleep(Duration::from_millis(2));
    }
    n
}

#[test]
fn one_pool_and_one_worker_started_after_the_baseline_are_not_churn_with_the_defaults() {
    if no_proc() {
        return;
    }
    let _turn = one_at_a_time();
    let config = WatchConfig::default();
    let (w, alarms) = start(config);
    // Past the baseline (8 samples of 250 ms), then the application starts
    // a pool and a worker: what the old single-interval rate called churn
    // (8 owners in one 250 ms interval is 32/s).
    thread::sleep(config.interval * (config.learn as u32 + 2));
    let pool = Pool::builder(8).spawn(Ok::<_, std::io::Error>).unwrap();
    let worker = PinnedWorker::spawn(|| Ok::<_, std::io::Error>(())).unwrap();
    assert_eq!(pool.broadcast(|i| *i).len(), 8);
    worker.run(|_| ()).unwrap();
    // Several samples see the starts inside the window.
    thread::sleep(config.interval * 8);
    w.stop();
    assert_eq!(
        churn_alarms(&alarms),
        Vec::<f64>::new(),
        "{:?}",
        alarms.lock().unwrap()
    );
}

#[test]
fn real_churn_raises_one_alarm_per_episode_and_again_after_a_quiet_period() {
    if no_proc() {
        return;
    }
    let _turn = one_at_a_time();
    let window = Duration::from_secs(1);
    let config = WatchConfig::default()
        .interval(Duration::from_millis(20))
        .max_owner_starts_per_sec(5.0)
        .owner_churn_window(window);
    let (w, alarms) = start(config);

    // Episode 1: owners started and closed for three windows (about 50
    // samples, each of which sees the rate above the limit).
    let started = churn_for(window * 3);
    assert!(started > 20, "the churn must be real: {started} owners in 3 s");
    let first = churn_alarms(&alarms);
    assert_eq!(
        first.len(),
        1,
        "one alarm for one episode, not one per sample: {first:?}"
    );
    assert!(first[0] > 5.0, "{first:?}");

    // Quiet for more than a window: the rate falls back, no new alarm.
    thread::sleep(window * 3);
    assert_eq!(churn_alarms(&alarms).len(), 1, "{:?}", alarms.lock().unwrap());

    // Episode 2: raised again, once.
    churn_for(window * 3);
    thread::sleep(config.interval * 5);
    w.stop();
    let all = churn_alarms(&alarms);
    assert_eq!(all.len(), 2, "one alarm per episode, two episodes: {all:?}");
}

#[test]
fn the_window_is_configurable_and_bounds_a_burst() {
    if no_proc() {
        return;
    }
    let _turn = one_at_a_time();
    // 8 owners at once, limit 5/s: over a 4 s window that is 2/s (quiet);
    // over a window shorter than the interval it is 8 per interval (raised).
    let quiet = WatchConfig::default()
        .interval(Duration::from_millis(50))
        .owner_churn_window(Duration::from_secs(4));
    let each_interval = quiet.owner_churn_window(Duration::ZERO);
    for (config, expect) in [(quiet, 0), (each_interval, 1)] {
        let (w, alarms) = start(config);
        thread::sleep(config.interval * 3);
        let pool = Pool::builder(8).spawn(|_| Ok::<_, std::io::Error>(())).unwrap();
        thread::sleep(config.interval * 10);
        w.stop();
        drop(pool);
        assert_eq!(
            churn_alarms(&alarms).len(),
            expect,
            "{config:?}: {:?}",
            alarms.lock().unwrap()
        );
    }
}
