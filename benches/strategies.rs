//! Criterion per-call benchmarks: every strategy of the report on the same
//! workload (`aff_op` sequences), in one run, so ratios are meaningful.
//! `cargo bench --bench strategies`. The `busy` group runs the pinned
//! worker, the pool and their peers again with one CPU-bound hog process
//! per core (`cargo bench --bench strategies -- busy`).

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pinned_ffi_demo::busy::Hogs;
use pinned_ffi_demo::report::strategies;
use pinned_ffi_demo::strategies::Strategy;

fn per_call(c: &mut Criterion) {
    bench_group(c, "per_call", strategies(), || ());
}

/// The strategies whose hand-off the busy machine tests, and their peers.
fn busy(c: &mut Criterion) {
    let list = vec![
        Strategy::Pinned,
        Strategy::CrossbeamNaive,
        Strategy::Pool {
            workers: 2,
            callers: 2,
        },
        Strategy::CrossbeamCallers(2),
        Strategy::PinnedCallers(8),
        Strategy::CrossbeamCallers(8),
        Strategy::AsyncSubmit,
        Strategy::AsyncOneshot,
    ];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Started by the first benchmark of the group that runs (a filter that
    // leaves the group out starts no hog), stopped when the group ends.
    let hogs = std::cell::RefCell::new(None);
    bench_group(c, "busy", list, || {
        hogs.borrow_mut().get_or_insert_with(|| Hogs::start(cores));
    });
}

fn bench_group(c: &mut Criterion, name: &str, list: Vec<Strategy>, before: impl Fn()) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for strategy in list {
        // Set up once per benchmark (owners spawned, contexts created,
        // hand-offs warmed); every sample then times calls on it.
        let mut fixture = strategy.prepare();
        group.bench_function(strategy.name(), |b| {
            // One iteration is one call. A strategy with several callers
            // runs a multiple of them: scale back to `iters` calls.
            before();
            b.iter_custom(|iters| {
                let m = fixture.run(iters);
                m.elapsed.mul_f64(iters as f64 / m.calls as f64)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = per_call, busy
}
criterion_main!(benches);
