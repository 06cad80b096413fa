//! The latency histograms see short-lived callers: many threads with a few
//! jobs each leave samples, and a `Summary` says how many it holds (or
//! that it holds none).

use std::thread;

use pinned_ffi::{PinnedWorker, Pool, Summary, TIMED_ONE_JOB_IN};

const THREADS: u64 = 100;
const JOBS_EACH: u64 = 10;

fn check(what: &str, s: &Summary, total: u64, at_least: u64) {
    assert!(s.count > 0, "{what}: no samples: {s}");
    assert!(
        s.count >= at_least,
        "{what}: {} samples, want at least {at_least}",
        s.count
    );
    assert!(s.count <= total, "{what}: {} samples for {total} jobs", s.count);
    let shown = s.to_string();
    assert!(
        shown.starts_with(&format!("n={} p50 ", s.count)),
        "{what}: {shown}"
    );
    assert!(s.p50 <= s.p99 && s.p99 <= s.max, "{what}: {shown}");
}

#[test]
fn a_hundred_short_lived_callers_leave_samples() {
    // Fewer jobs per thread than one sampling period: the old per-thread
    // one-in-N sampling recorded nothing here.
    assert!(JOBS_EACH < u64::from(TIMED_ONE_JOB_IN));
    let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64)).unwrap();
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..JOBS_EACH {
                    w.run(|n| *n += 1).unwrap();
                }
            });
        }
    });
    let total = THREADS * JOBS_EACH;
    assert_eq!(w.run(|n| *n).unwrap(), total);
    let m = w.metrics();
    assert_eq!(m.completed, total + 1, "{m}");
    // Every thread's first job is stamped; this thread's one job too.
    check("queue wait", &m.queue_wait, total + 1, THREADS + 1);
    check("run time", &m.run_time, total + 1, THREADS + 1);
    let shown = m.to_string();
    assert!(shown.contains("wait n="), "{shown}");
    assert!(shown.contains("run n="), "{shown}");
    w.close().unwrap();
}

#[test]
fn tickets_and_pools_are_sampled_the_same_way() {
    let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(())).unwrap();
    let pool = Pool::builder(2)
        .spawn(|_| Ok::<_, std::convert::Infallible>(()))
        .unwrap();
    let many_callers = |job: &(dyn Fn() + Sync)| {
        thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for _ in 0..JOBS_EACH {
                        job();
                    }
                });
            }
        })
    };
    let total = THREADS * JOBS_EACH;
    many_callers(&|| w.submit(|_| ()).unwrap().wait().unwrap());
    let m = w.metrics();
    check("ticket queue wait", &m.queue_wait, total, THREADS);
    check("ticket run time", &m.run_time, total, THREADS);
    // A pool's workers share its callers: a thread's first job lands on
    // one of them, and together they see every thread.
    many_callers(&|| pool.run(|_| ()).unwrap());
    let sum = |f: fn(&pinned_ffi::MetricsSnapshot) -> u64| pool.metrics().iter().map(f).sum::<u64>();
    let (waits, runs) = (sum(|m| m.queue_wait.count), sum(|m| m.run_time.count));
    assert!(
        (THREADS..=total).contains(&waits),
        "pool: {waits} queue-wait samples for {total} jobs"
    );
    assert!(
        (THREADS..=total).contains(&runs),
        "pool: {runs} run-time samples for {total} jobs"
    );
    w.close().unwrap();
    pool.close().unwrap();
}

#[test]
fn an_unused_worker_says_it_has_no_samples() {
    let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(())).unwrap();
    let m = w.metrics();
    assert_eq!((m.queue_wait.count, m.run_time.count), (0, 0));
    assert_eq!(m.queue_wait.to_string(), "no samples");
    assert_eq!(m.run_time.to_string(), "no samples");
    let shown = m.to_string();
    assert!(shown.contains("wait no samples | run no samples"), "{shown}");
    assert!(!shown.contains("p50"), "{shown}");
    assert_eq!(Summary::default().to_string(), "no samples");

    // Timings off: nothing is sampled, and it says so.
    let off = PinnedWorker::builder()
        .timings(false)
        .spawn(|| Ok::<_, std::convert::Infallible>(()))
        .unwrap();
    for _ in 0..2 * TIMED_ONE_JOB_IN {
        off.run(|_| ()).unwrap();
    }
    let m = off.metrics();
    assert_eq!((m.queue_wait.count, m.run_time.count), (0, 0), "{m}");
    assert!(m.to_string().contains("wait no samples | run no samples"), "{m}");
}
