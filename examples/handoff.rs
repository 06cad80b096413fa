//! Round trip of `PinnedWorker::run` against the spin ping-pong limit and
//! the naive crossbeam owner, interleaved, in one run.
use pinned_ffi_demo::strategies::Strategy;
fn main() {
    if std::env::args().nth(1).as_deref() == Some("tl") {
        let m = Strategy::ThreadLocal(2).run(100_000);
        println!("{:?}", m);
        return;
    }
    for _ in 0..3 {
        for s in [
            Strategy::SpinPingPong,
            Strategy::Pinned,
            Strategy::CrossbeamNaive,
            Strategy::PinnedCallers(8),
            Strategy::CrossbeamCallers(8),
            Strategy::Pool {
                workers: 2,
                callers: 2,
            },
            Strategy::AsyncSubmit,
        ] {
            let m = s.run(50_000);
            print!(
                "{}: {:.0} ns | ",
                s.name(),
                m.elapsed.as_nanos() as f64 / m.calls as f64
            );
        }
        println!();
    }
}
#[allow(dead_code)]
fn tl() {}
