//! `Context`: every C behaviour through the safe wrapper, each error code
//! with its message, and the reference model against the C library.

use std::ops::ControlFlow;

use pinned_ffi::{AffError, Config, Context, ErrorCode, Model, MAX_INPUT};

fn ctx(seed: u64) -> Context {
    Context::new(&Config::with_seed(seed)).expect("context")
}

#[test]
fn outputs_follow_the_model_exactly() {
    let mut c = ctx(42);
    let mut m = Model::new(42);
    for i in 0..1000u64 {
        let input = i.wrapping_mul(0x9E37_79B9) & MAX_INPUT;
        assert_eq!(c.op(input).unwrap(), m.op(input).unwrap(), "call {i}");
    }
    assert_eq!(c.calls().unwrap(), 1000);
}

#[test]
fn invalid_config_is_an_error_with_message() {
    let e = Context::new(&Config {
        seed: 0,
        ..Config::default()
    })
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArg);
    assert_eq!(e.message, "aff_ctx_create: seed must be non-zero");
    let e = Context::new(&Config {
        init_work: u32::MAX,
        seed: 1,
    })
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArg);
    assert!(
        e.message
            .contains("init_work 4294967295 exceeds AFF_MAX_INIT_WORK"),
        "{}",
        e.message
    );
}

#[test]
fn invalid_input_fails_and_leaves_state_unchanged() {
    let mut c = ctx(5);
    let mut m = Model::new(5);
    let e = c.op(MAX_INPUT + 1).unwrap_err();
    assert_eq!(
        e,
        AffError {
            code: ErrorCode::InvalidArg,
            message: format!("aff_op: input {} exceeds AFF_MAX_INPUT", MAX_INPUT + 1)
        }
    );
    assert!(m.op(MAX_INPUT + 1).is_none());
    assert_eq!(c.op(3).unwrap(), m.op(3).unwrap());
    // The error was read and cleared: the next failure carries its own message.
    let e2 = c.op(u64::MAX).unwrap_err();
    assert!(e2.message.contains("18446744073709551615"));
}

#[test]
fn batch_matches_single_calls_and_reports_progress() {
    let mut c = ctx(9);
    let mut m = Model::new(9);
    let inputs: Vec<u64> = (0..256).collect();
    let mut out = vec![0; 256];
    c.op_batch(&inputs, &mut out).unwrap();
    let expected: Vec<u64> = inputs.iter().map(|&i| m.op(i).unwrap()).collect();
    assert_eq!(out, expected);

    let inputs = [1, 2, MAX_INPUT + 7, 4];
    let mut out = [0; 4];
    let e = c.op_batch(&inputs, &mut out).unwrap_err();
    assert_eq!(e.done, 2);
    assert_eq!(e.error.code, ErrorCode::InvalidArg);
    assert!(e.error.message.contains("input[2]"), "{}", e.error.message);
    assert_eq!(out[..2], [m.op(1).unwrap(), m.op(2).unwrap()]);
}

#[test]
fn two_contexts_on_one_thread_keep_separate_state() {
    let mut a = ctx(1);
    let mut b = ctx(2);
    let (mut ma, mut mb) = (Model::new(1), Model::new(2));
    for i in 0..50 {
        assert_eq!(a.op(i).unwrap(), ma.op(i).unwrap());
        assert_eq!(b.op(i).unwrap(), mb.op(i).unwrap());
    }
}

#[test]
fn busy_when_current_on_another_thread() {
    let c = ctx(3);
    let raw = c.as_ptr() as usize;
    let err = std::thread::spawn(move || {
        // SAFETY: the context is alive (the main thread holds it until join)
        // and make-current on another thread is exactly what is tested.
        let rc = unsafe { ffi::aff_make_current(raw as *mut ffi::aff_ctx) };
        // SAFETY: reads this thread's own error storage.
        let msg = unsafe { std::ffi::CStr::from_ptr(ffi::aff_last_error_message()) };
        (rc, msg.to_string_lossy().into_owned())
    })
    .join()
    .unwrap();
    assert_eq!(
        err,
        (
            ffi::AFF_E_BUSY,
            "aff_make_current: context is current on another thread".into()
        )
    );
}

#[test]
fn no_context_and_wrong_thread_on_a_foreign_thread() {
    let c = ctx(4);
    let raw = c.as_ptr() as usize;
    let msg = || {
        // SAFETY: this thread's own message buffer, never NULL.
        unsafe { std::ffi::CStr::from_ptr(ffi::aff_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    };
    let (op, info, destroy) = std::thread::spawn(move || {
        let mut out = 0u64;
        // SAFETY: valid out pointer; no context is current on this thread.
        let op = (unsafe { ffi::aff_op(1, &mut out) }, msg());
        let mut calls = 0u64;
        // SAFETY: the context is alive; this thread is not its owner.
        let info = (
            unsafe { ffi::aff_ctx_info(raw as *const ffi::aff_ctx, &mut calls) },
            msg(),
        );
        // SAFETY: as above; destroy from a non-owner must be refused.
        let destroy = (unsafe { ffi::aff_ctx_destroy(raw as *mut ffi::aff_ctx) }, msg());
        (op, info, destroy)
    })
    .join()
    .unwrap();
    assert_eq!(
        op,
        (
            ffi::AFF_E_NO_CONTEXT,
            "aff_op: no context is current on this thread".into()
        )
    );
    assert_eq!(
        info,
        (
            ffi::AFF_E_WRONG_THREAD,
            "aff_ctx_info: called from a thread that does not own the context".into()
        )
    );
    assert_eq!(
        destroy,
        (
            ffi::AFF_E_WRONG_THREAD,
            "aff_ctx_destroy: called from a thread that does not own the context".into()
        )
    );
    assert_eq!(c.calls().unwrap(), 0);
}

#[test]
fn error_codes_round_trip() {
    for rc in 1..=7 {
        assert_eq!(ErrorCode::from_raw(rc).raw(), rc);
    }
    assert_eq!(ErrorCode::from_raw(ffi::AFF_E_BUSY).to_string(), "AFF_E_BUSY");
}

#[test]
fn visit_calls_back_on_this_thread_and_can_stop() {
    let mut c = ctx(11);
    let mut m = Model::new(11);
    let me = std::thread::current().id();
    let mut seen = Vec::new();
    c.visit(5, |i, v| {
        assert_eq!(std::thread::current().id(), me);
        seen.push((i, v));
        ControlFlow::Continue(())
    })
    .unwrap();
    let expected: Vec<_> = (0..5).map(|i| (i, m.op(i).unwrap())).collect();
    assert_eq!(seen, expected);

    let e = c
        .visit(10, |i, _| {
            if i == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Callback);
    assert_eq!(e.message, "aff_visit: callback stopped the visit at index 3");
    assert_eq!(c.calls().unwrap(), 5 + 4);
}

#[test]
fn a_panicking_callback_resumes_in_rust_not_in_c() {
    let mut c = ctx(12);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = c.visit(10, |i, _| {
            if i == 2 {
                panic!("boom at {i}");
            }
            ControlFlow::Continue(())
        });
    }));
    let payload = r.unwrap_err();
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("boom at 2")
    );
    // C stopped the visit at the panic and the context is still usable.
    assert_eq!(c.calls().unwrap(), 3);
    let mut m = Model::new(12);
    for i in 0..3 {
        m.op(i);
    }
    assert_eq!(c.op(1).unwrap(), m.op(1).unwrap());
}
