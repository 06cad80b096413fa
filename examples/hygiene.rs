//! A small end-to-end run for memory checkers (`scripts/valgrind.sh`):
//! contexts directly and through a worker and a pool, owner-bound values,
//! a panicking job with re-init, cancellation and close. Exits non-zero if
//! the C library did not destroy every context it created.

use std::time::Duration;

use affine::{Config, Context, Stats};

use pinned_ffi::{PanicPolicy, PinnedWorker, Pool};

fn main() {
    let before = Stats::now();
    let quick = Config {
        init_work: 100,
        seed: 1,
    };
    {
        let mut direct = Context::new(&quick).expect("context");
        let _ = direct.op(u64::MAX); // an error, read and cleared
        let mut out = [0u64; 8];
        direct
            .op_batch(&[1, 2, 3, 4, 5, 6, 7, 8], &mut out)
            .expect("batch");

        let worker = PinnedWorker::builder()
            .panic_policy(PanicPolicy::Reinit)
            .spawn(move || Context::new(&quick))
            .expect("worker");
        let bound = worker
            .bind(move |_| Context::new(&Config { seed: 2, ..quick }).expect("ctx"))
            .expect("bind");
        worker.with(&bound, |_, c| c.op(1).expect("op")).expect("with");
        assert!(worker.run(|_| -> () { panic!("re-init") }).is_err());
        let slow = worker
            .submit(|_| std::thread::sleep(Duration::from_millis(20)))
            .expect("submit");
        let cancelled = worker.submit(|c| c.op(1)).expect("submit");
        drop(cancelled);
        slow.wait().expect("slow");
        drop(bound);

        let pool = Pool::builder(2)
            .spawn(move |i| {
                Context::new(&Config {
                    seed: i as u64 + 1,
                    ..quick
                })
            })
            .expect("pool");
        for i in 0..100 {
            pool.run(|c| c.op(i).expect("op")).expect("run");
        }
        pool.close().unwrap();
        worker.close().unwrap();
    }
    let d = Stats::now().since(&before);
    println!(
        "contexts created {}, destroyed {}, calls {}",
        d.created, d.destroyed, d.calls
    );
    if d.created != d.destroyed {
        std::process::exit(1);
    }
}
