//! Criterion per-call benchmarks: every strategy of the report on the same
//! workload (`aff_op` sequences), in one run, so ratios are meaningful.
//! `cargo bench --bench strategies`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pinned_ffi_demo::report::strategies;

fn per_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_call");
    group.throughput(Throughput::Elements(1));
    for strategy in strategies() {
        group.bench_function(strategy.name(), |b| {
            // One iteration is one call; each sample runs its calls in one
            // go, with set-up (spawning owners, creating contexts) excluded.
            b.iter_custom(|iters| strategy.run(iters.max(8)).elapsed)
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = per_call
}
criterion_main!(benches);
