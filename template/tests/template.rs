//! The template's steps against the bundled C library.

use std::thread;

use affine::Model;

use pinned_ffi::Error;
use pinned_ffi_template::{Devices, SdkError, Session, SessionConfig};

#[test]
fn a_tenant_stays_on_one_device_and_session() {
    let devices = Devices::open(3, SessionConfig::default()).unwrap();
    let tenant = "acme";
    let device = devices
        .pool()
        .workers()
        .iter()
        .position(|w| std::ptr::eq(w, devices.pool().for_key(tenant)))
        .unwrap();
    let mut m = Model::new(SessionConfig::default().seed + device as u64);
    thread::scope(|s| {
        // The calls come from different threads, one after another.
        for i in 0..20u64 {
            let devices = &devices;
            let got = s.spawn(move || devices.call(tenant, i).unwrap()).join().unwrap();
            assert_eq!(got, m.op(i).unwrap());
        }
    });
}

#[test]
fn sdk_errors_are_typed_and_carry_the_message_read_on_the_owner() {
    let devices = Devices::open(1, SessionConfig::default()).unwrap();
    let e = devices.call("t", u64::MAX).unwrap_err();
    assert_eq!(
        e,
        SdkError::Sdk {
            code: ffi::AFF_E_INVALID_ARG,
            message: format!("aff_op: input {} exceeds AFF_MAX_INPUT", u64::MAX)
        }
    );
    // Cleared after reading: the next success is not shadowed by it.
    assert!(devices.call("t", 1).is_ok());
    let e = Devices::open(
        1,
        SessionConfig {
            seed: 0,
            init_work: 1,
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, SdkError::Sdk { code: ffi::AFF_E_INVALID_ARG, ref message } if message.contains("seed"))
    );
}

#[test]
fn buffers_are_owner_bound_and_stay_with_their_device() {
    let devices = Devices::open(2, SessionConfig::default()).unwrap();
    let (a, b) = (0..100).map(|i| format!("t{i}")).fold((None, None), |(a, b), t| {
        let w0 = std::ptr::eq(devices.pool().for_key(&t), devices.pool().worker(0));
        if w0 && a.is_none() {
            (Some(t), b)
        } else if !w0 && b.is_none() {
            (a, Some(t))
        } else {
            (a, b)
        }
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    let buf = devices.alloc(&a, 8).unwrap();
    devices.fill(&a, &buf, 3).unwrap();
    assert_eq!(devices.read(&a, &buf).unwrap(), vec![3; 8]);
    assert_eq!(
        devices.read(&b, &buf),
        Err(SdkError::Executor(Error::StaleHandle)),
        "another device's buffer"
    );
    thread::spawn(move || drop(buf)).join().unwrap();
}

#[test]
fn calling_back_into_the_pool_from_a_job_is_refused_not_deadlocked() {
    let devices = Devices::open(1, SessionConfig::default()).unwrap();
    let r = devices
        .pool()
        .run(|_s: &mut Session| devices.call("t", 1))
        .unwrap();
    assert_eq!(r, Err(SdkError::Executor(Error::Reentrant)));
}
