//! `Context`: every C behaviour through the safe wrapper, each error code
//! with its message, and the reference model against the C library.

use std::ops::ControlFlow;

use affine::{AffError, Config, Context, ErrorCode, Model, Stats, MAX_INPUT};

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
    assert_eq!(ErrorCode::from_raw(ffi::AFF_E_IN_CALLBACK), ErrorCode::InCallback);
    assert_eq!(ErrorCode::InCallback.raw(), 7);
    assert_eq!(ErrorCode::InCallback.to_string(), "AFF_E_IN_CALLBACK");
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

/// The message of a refused make-current from inside a visit callback.
const MAKE_CURRENT_IN_CALLBACK: &str = "aff_make_current: called from inside an aff_visit callback \
     on this thread; switching contexts would release the one the visit runs on";

/// What `n` visit calls on a fresh context with `seed` hand to the callback.
fn model_visit(seed: u64, n: u64) -> Vec<(u64, u64)> {
    let mut m = Model::new(seed);
    (0..n).map(|i| (i, m.op(i).unwrap())).collect()
}

#[test]
fn a_context_created_in_a_visit_callback_is_refused_and_the_visit_stays_correct() {
    let mut c = ctx(21);
    let mut seen = Vec::new();
    let mut refused = Vec::new();
    c.visit(6, |i, v| {
        seen.push((i, v));
        if i % 2 == 1 {
            // Before the fix this made the new context current (releasing
            // `c` under the running visit) and dropping it left the thread
            // with none: the next C visit step dereferenced NULL.
            refused.push(Context::new(&Config::with_seed(100 + i)).map(|_| ()));
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen, model_visit(21, 6));
    let expected = AffError {
        code: ErrorCode::InCallback,
        message: MAKE_CURRENT_IN_CALLBACK.into(),
    };
    assert_eq!(
        refused,
        vec![Err(expected.clone()), Err(expected.clone()), Err(expected)]
    );

    // `c` kept its own state, and the thread is usable again after the visit.
    let mut m = Model::new(21);
    for i in 0..6 {
        m.op(i);
    }
    assert_eq!(c.calls().unwrap(), 6);
    assert_eq!(c.op(9).unwrap(), m.op(9).unwrap());
    let mut fresh = ctx(22);
    assert_eq!(fresh.op(1).unwrap(), Model::new(22).op(1).unwrap());
    assert_eq!(c.op(10).unwrap(), m.op(10).unwrap());
}

#[test]
fn calls_on_another_context_in_a_visit_callback_are_refused() {
    let mut other = ctx(31);
    let mut c = ctx(30);
    let mut seen = Vec::new();
    let mut inner_calls = 0;
    c.visit(5, |i, v| {
        seen.push((i, v));
        let e = other.op(i).unwrap_err();
        assert_eq!(
            e,
            AffError {
                code: ErrorCode::InCallback,
                message: MAKE_CURRENT_IN_CALLBACK.into()
            }
        );
        let mut out = [0; 2];
        let e = other.op_batch(&[1, 2], &mut out).unwrap_err();
        assert_eq!((e.done, e.error.code), (0, ErrorCode::InCallback));
        assert_eq!(out, [0, 0]);
        assert_eq!(other.make_current().unwrap_err().code, ErrorCode::InCallback);
        let e = other
            .visit(3, |_, _| {
                inner_calls += 1;
                ControlFlow::Continue(())
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InCallback);
        // Explicit-context queries do not touch the current context.
        assert_eq!(other.calls().unwrap(), 0);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen, model_visit(30, 5));
    assert_eq!(inner_calls, 0);
    assert_eq!(c.calls().unwrap(), 5);
    // Nothing ran on `other`: its first call is still its model's first.
    assert_eq!(other.calls().unwrap(), 0);
    assert_eq!(other.op(5).unwrap(), Model::new(31).op(5).unwrap());
}

#[test]
fn dropping_another_context_in_a_visit_callback_is_allowed() {
    let mut others: Vec<Context> = (0..3).map(|i| ctx(41 + i)).collect();
    let mut c = ctx(40);
    let mut seen = Vec::new();
    c.visit(6, |i, v| {
        seen.push((i, v));
        if i % 2 == 0 {
            drop(others.pop());
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(others.is_empty());
    assert_eq!(seen, model_visit(40, 6));
    assert_eq!(c.calls().unwrap(), 6);
}

/// Reads and clears this thread's last C error.
fn take_c_error() -> String {
    // SAFETY: this thread's own message buffer, never NULL; copied out
    // before the clear.
    let message = unsafe { std::ffi::CStr::from_ptr(ffi::aff_last_error_message()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: touches only this thread's error storage.
    unsafe { ffi::aff_clear_error() };
    message
}

extern "C" fn count_calls(user: *mut std::ffi::c_void, _index: u64, _value: u64) -> std::ffi::c_int {
    // SAFETY: `user` is the `&mut u64` the test passes to aff_visit, alive
    // and used by nothing else during the call.
    unsafe { *user.cast::<u64>() += 1 };
    0
}

#[test]
fn c_pins_the_current_context_during_a_visit() {
    let mut c = ctx(50);
    let raw = c.as_ptr();
    let mut seen = Vec::new();
    let mut nested = 0u64;
    c.visit(4, |i, v| {
        seen.push((i, v));
        // SAFETY: no context argument; the C library refuses the release.
        assert_eq!(unsafe { ffi::aff_release_current() }, ffi::AFF_E_IN_CALLBACK);
        assert_eq!(
            take_c_error(),
            "aff_release_current: called from inside an aff_visit callback on this thread; \
             the current context is the one the visit runs on"
        );
        // SAFETY: `raw` is the live visited context on its owner thread; the
        // C library refuses to destroy it while it is visited.
        assert_eq!(unsafe { ffi::aff_ctx_destroy(raw) }, ffi::AFF_E_IN_CALLBACK);
        assert_eq!(
            take_c_error(),
            "aff_ctx_destroy: called from inside an aff_visit callback on this thread, \
             and the context is the current one the visit runs on"
        );
        // SAFETY: re-binding the current context is a no-op.
        assert_eq!(unsafe { ffi::aff_make_current(raw) }, ffi::AFF_OK);
        // A nested visit of the same, current context is harmless: two more
        // calls on it, and the outer visit stays pinned afterwards.
        // SAFETY: `count_calls` matches aff_visit_cb and never unwinds;
        // `nested` outlives the call.
        let rc = unsafe { ffi::aff_visit(2, Some(count_calls), (&mut nested as *mut u64).cast()) };
        assert_eq!(rc, ffi::AFF_OK);
        // SAFETY: as above.
        assert_eq!(unsafe { ffi::aff_release_current() }, ffi::AFF_E_IN_CALLBACK);
        take_c_error();
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(nested, 8);
    // Outer call i, then the nested visit's inputs 0 and 1.
    let mut m = Model::new(50);
    let mut expected = Vec::new();
    for i in 0..4 {
        expected.push((i, m.op(i).unwrap()));
        m.op(0);
        m.op(1);
    }
    assert_eq!(seen, expected);
    assert_eq!(c.calls().unwrap(), 4 * 3);
    assert_eq!(c.op(7).unwrap(), m.op(7).unwrap());
}

#[test]
fn the_pin_ends_on_every_exit_from_a_visit() {
    let mut c = ctx(60);
    // Stopped by the callback.
    let e = c.visit(5, |i, _| {
        if i == 1 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert_eq!(e.unwrap_err().code, ErrorCode::Callback);
    drop(ctx(61));
    // Stopped by a panic.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = c.visit(5, |_, _| panic!("stop"));
    }));
    assert!(r.is_err());
    drop(ctx(62));
    // Completed, and an empty visit.
    c.visit(2, |_, _| ControlFlow::Continue(())).unwrap();
    c.visit(0, |_, _| ControlFlow::Continue(())).unwrap();
    let mut other = ctx(63);
    assert_eq!(other.op(1).unwrap(), Model::new(63).op(1).unwrap());
    let mut m = Model::new(60);
    for i in [0, 1, 0, 0, 1] {
        m.op(i);
    }
    assert_eq!(c.op(3).unwrap(), m.op(3).unwrap());
}

/// Runs `body` in a child process of this test binary that runs only the
/// test `name`, so the process-wide C counters see nothing but `body` (the
/// tests in this file run in parallel threads of one process).
fn alone_in_a_process(name: &str, body: impl FnOnce()) {
    const CHILD: &str = "PINNED_FFI_CONTEXT_TEST_ALONE";
    if std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed alone ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn visit_callbacks_leak_no_context() {
    alone_in_a_process("visit_callbacks_leak_no_context", || {
        let before = Stats::now();
        {
            let mut other = ctx(71);
            let mut doomed = Some(ctx(72));
            let mut c = ctx(70);
            let mut seen = Vec::new();
            c.visit(4, |i, v| {
                seen.push((i, v));
                // Created in C, refused current, destroyed again.
                assert_eq!(
                    Context::new(&Config::with_seed(80 + i)).unwrap_err().code,
                    ErrorCode::InCallback
                );
                assert_eq!(other.op(i).unwrap_err().code, ErrorCode::InCallback);
                if i == 2 {
                    drop(doomed.take());
                }
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(seen, model_visit(70, 4));
            assert!(doomed.is_none());
        }
        let d = Stats::now().since(&before);
        // other, doomed, c, and the four refused in the callback.
        assert_eq!((d.created, d.destroyed), (3 + 4, 3 + 4));
        assert_eq!(d.calls, 4);
        assert_eq!(d.busy, 0);
    });
}
