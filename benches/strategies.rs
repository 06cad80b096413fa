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
        // Set up once per benchmark (owners spawned, contexts created,
        // hand-offs warmed); every sample then times calls on it.
        let mut fixture = strategy.prepare();
        group.bench_function(strategy.name(), |b| {
            // One iteration is one call. A strategy with several callers
            // runs a multiple of them: scale back to `iters` calls.
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
    targets = per_call
}
criterion_main!(benches);
