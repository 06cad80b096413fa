//! The C library's process-wide counters. Alone in this binary so no other
//! test moves them.

use affine::{Config, Context, Stats};

#[test]
fn counters_count_what_happened() {
    let before = Stats::now();
    {
        let mut c = Context::new(&Config::with_seed(1)).unwrap();
        for i in 0..10 {
            c.op(i).unwrap();
        }
        let _ = c.op(u64::MAX);
        std::thread::spawn(|| {
            let mut out = 0;
            // SAFETY: valid pointer; this thread has no current context.
            unsafe { ffi::aff_op(0, &mut out) }
        })
        .join()
        .unwrap();
        assert!(Context::new(&Config::with_seed(0)).is_err());
    }
    let d = Stats::now().since(&before);
    assert_eq!(d.created, 1);
    assert_eq!(d.destroyed, 1);
    assert_eq!(d.calls, 10);
    assert_eq!(d.no_context, 1);
    assert_eq!(d.switches, 1);
}
