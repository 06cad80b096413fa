//! OS thread accounting: a worker or pool costs exactly its owner threads,
//! whatever the number of callers, and gives them back when closed. Alone in
//! this binary (one test) so no other test's threads move the count.

use std::sync::Arc;
use std::thread;

use affine::{Config, Context};

use pinned_ffi::{threads, PinnedWorker, Pool, SpawnError};

#[test]
fn pools_and_workers_cost_exactly_their_owner_threads() {
    let Some(baseline) = threads::thread_count() else {
        eprintln!("SKIPPED: no /proc/self/status on this platform");
        return;
    };

    // A failed init leaves no thread behind.
    let e = PinnedWorker::<Context>::spawn(|| Context::new(&Config::with_seed(0))).unwrap_err();
    assert!(matches!(e, SpawnError::Init(_)));
    assert_eq!(settled(baseline), Some(baseline));

    // A pool of N adds N threads, and 64 callers add none to it.
    let n = 3;
    let pool = Arc::new(
        Pool::builder(n)
            .name("acct")
            .spawn(|i| Context::new(&Config::with_seed(i as u64 + 1)))
            .unwrap(),
    );
    assert_eq!(threads::thread_count(), Some(baseline + n));
    let mut tids = pool.owner_tids();
    tids.sort_unstable();
    tids.dedup();
    assert_eq!(tids.len(), n, "the pool reports its {n} owner threads");
    for t in &tids {
        assert!(
            std::path::Path::new(&format!("/proc/self/task/{t}")).exists(),
            "owner {t} is a live thread"
        );
    }
    let names = threads::thread_names().unwrap();
    for i in 0..n {
        assert!(names.contains(&format!("acct-{i}")), "{names:?}");
    }
    let (counts_tx, counts_rx) = std::sync::mpsc::channel();
    let barrier = Arc::new(std::sync::Barrier::new(64));
    let callers: Vec<_> = (0..64)
        .map(|c| {
            let (pool, tx, barrier) = (Arc::clone(&pool), counts_tx.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                for i in 0..50 {
                    pool.run(|ctx| ctx.op(c * 100 + i).unwrap()).unwrap();
                }
                barrier.wait(); // all 64 callers alive at once
                tx.send(threads::thread_count().unwrap()).unwrap();
            })
        })
        .collect();
    for c in callers {
        c.join().unwrap();
    }
    drop(counts_tx);
    let during: Vec<usize> = counts_rx.iter().collect();
    assert!(during.iter().all(|&t| t <= baseline + n + 64), "{during:?}");
    assert!(
        during.contains(&(baseline + n + 64)),
        "all callers seen alive: {during:?}"
    );
    assert_eq!(
        settled(baseline + n),
        Some(baseline + n),
        "callers gone, the pool's N remain"
    );
    let total: u64 = pool.metrics().iter().map(|m| m.completed).sum();
    assert_eq!(total, 64 * 50);

    pool.close().unwrap();
    assert_eq!(settled(baseline), Some(baseline), "closing returns to baseline");
}

/// The thread count once it reaches `want`, or the last one read after 5 s.
/// A joined thread can still be counted for a moment: `join` returns when
/// the kernel clears its thread id, which it does before it takes the
/// thread out of the process's count. A leak never settles.
fn settled(want: usize) -> Option<usize> {
    let t = std::time::Instant::now();
    loop {
        let n = threads::thread_count();
        if n == Some(want) || t.elapsed() > std::time::Duration::from_secs(5) {
            return n;
        }
        thread::sleep(std::time::Duration::from_millis(1));
    }
}
