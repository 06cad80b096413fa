//! The proof, part 3: what each correct strategy costs in contexts and
//! threads, counted by the C library itself, and clean-up afterwards. The
//! C counters are process-wide, so the tests here take turns.

use std::sync::Mutex;

use affine::{Config, Context, Stats};

use pinned_ffi::{PinnedWorker, Pool};
use pinned_ffi_demo::strategies::Strategy;

static TURN: Mutex<()> = Mutex::new(());

fn counted<R>(f: impl FnOnce() -> R) -> (R, Stats) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let before = Stats::now();
    let r = f();
    (r, Stats::now().since(&before))
}

#[test]
fn rebinding_per_call_is_correct_with_one_context_and_a_switch_per_call() {
    let (m, d) = counted(|| Strategy::Rebind.run(10_000));
    assert_eq!(m.wrong, Some(0));
    assert_eq!(d.created, 1);
    assert_eq!(d.switches, 10_000, "a make-current per call");
}

#[test]
fn a_context_per_calling_thread_is_correct_but_costs_one_each() {
    let (m, d) = counted(|| Strategy::ThreadLocal(4).run(4_000));
    assert_eq!(m.wrong, Some(0));
    assert_eq!(d.created, 4);
    assert_eq!(d.destroyed, 4);
}

#[test]
fn a_million_calls_through_one_worker_use_one_context() {
    let (calls, d) = counted(|| {
        let w = PinnedWorker::spawn(|| Context::new(&Config::with_seed(1))).unwrap();
        let inputs: Vec<u64> = (0..4096).collect();
        let mut out = vec![0; 4096];
        for _ in 0..256 {
            w.run(|ctx| ctx.op_batch(&inputs, &mut out)).unwrap().unwrap();
        }
        w.run(|ctx| ctx.calls().unwrap()).unwrap()
    });
    assert_eq!(calls, 1_048_576);
    assert_eq!(d.calls, 1_048_576);
    assert_eq!((d.created, d.destroyed), (1, 1));
}

#[test]
fn a_pool_of_n_uses_n_contexts_and_thread_per_call_one_per_call() {
    let (_, d) = counted(|| {
        let pool = Pool::builder(3)
            .spawn(|i| Context::new(&Config::with_seed(i as u64 + 1)))
            .unwrap();
        for i in 0..30_000 {
            pool.run(|ctx| ctx.op(i).unwrap()).unwrap();
        }
    });
    assert_eq!(d.calls, 30_000);
    assert_eq!((d.created, d.destroyed), (3, 3));

    let (m, d) = counted(|| Strategy::ThreadPerCall.run(200));
    assert_eq!(m.wrong, Some(0));
    assert_eq!(m.os_threads, 200);
    assert_eq!(d.created, 200);
}

#[test]
fn closing_workers_and_pools_leaves_nothing_behind() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let before = Stats::now();
    {
        let w = PinnedWorker::spawn(|| Context::new(&Config::with_seed(1))).unwrap();
        let pool = Pool::builder(2)
            .spawn(|i| Context::new(&Config::with_seed(i as u64 + 1)))
            .unwrap();
        let bound = w.bind(|_| Context::new(&Config::with_seed(9)).unwrap()).unwrap();
        w.with(&bound, |_, c| c.op(1).unwrap()).unwrap();
        pool.run(|c| c.op(1).unwrap()).unwrap();
        drop(bound);
        pool.close().unwrap();
        w.close().unwrap();
    }
    let d = Stats::now().since(&before);
    assert_eq!(d.created, 4);
    assert_eq!(d.destroyed, d.created, "every context destroyed");
    // The thread count's return to baseline is checked in tests/threads.rs,
    // a binary with no other test threads coming and going.
}
