//! Faults in a worker's lifecycle: a panicking `init` and re-init (also
//! after an open breaker's cooldown), a panicking state destructor at
//! close and at re-init, and a panicking owner-bound value's destructor.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pinned_ffi::threads::thread_names;
use pinned_ffi::{Breaker, Error, PanicPolicy, PinnedWorker, SpawnError};

use crate::{
    assert_carries_on, assert_serves, builder, eventually, expect_contained, shared, within, worker,
    worker_with, Bomb, Fuse, State, LONG, MARK, NEXT_NAME, OWNER, POLICIES,
};

// ---------------------------------------------------------------------------
// 1. init and re-init
// ---------------------------------------------------------------------------

pub(crate) fn case_init_panics(policy: PanicPolicy) {
    let gone = |name: &str| {
        let comm: String = name.chars().take(15).collect();
        thread_names().is_none_or(|names| !names.contains(&comm))
    };
    let name = format!("{OWNER}init-{}", NEXT_NAME.fetch_add(1, SeqCst));
    let b = PinnedWorker::builder().name(name.clone()).panic_policy(policy);
    match b.spawn(|| -> Result<State, Infallible> { panic!("{MARK}: init") }) {
        Err(SpawnError::InitPanicked(m)) => assert!(m.message().contains(MARK), "{policy:?}: {m}"),
        other => panic!("{policy:?}: a panicking init must fail the spawn: {other:?}"),
    }
    // Joined by `spawn`, but a joined thread stays listed for a moment:
    // `join` returns when the kernel clears its thread id, before the
    // kernel takes it out of /proc. A thread left running never goes.
    eventually(
        &format!("{policy:?}: the owner thread of a failed spawn is gone"),
        || gone(&name),
    );

    // The panic's payload panics too when dropped (by the spawner, to
    // whom it is carried).
    let fuse = Fuse::new();
    let f = Arc::clone(&fuse);
    let spawned = builder("init", policy)
        .spawn(move || -> Result<State, Infallible> { std::panic::panic_any(f.bomb()) });
    assert!(
        matches!(&spawned, Err(SpawnError::InitPanicked(p)) if p.downcast_ref::<Bomb>().is_some()),
        "{policy:?}: {spawned:?}"
    );
    assert_eq!(fuse.blasts(), 0, "{policy:?}: the payload came back whole");
    // The spawner drops it: the destructor's panic is contained there.
    drop(spawned);
    assert_eq!(fuse.blasts(), 1, "{policy:?}: the payload's destructor ran once");
    assert_eq!(fuse.off_owner(), 1, "{policy:?}: on the spawning thread");
}

#[test]
fn a_panicking_init_fails_the_spawn_and_leaves_no_thread() {
    let _g = shared();
    within("init panics", Duration::from_secs(30), || {
        for policy in POLICIES {
            case_init_panics(policy);
        }
    });
}

const COOLDOWN: Duration = Duration::from_millis(500);

/// Calls `w.run(|s| s.n)` until it succeeds, allowing only `Broken` before.
fn until_served(w: &PinnedWorker<State>, what: &str) -> u64 {
    let t = Instant::now();
    loop {
        match w.run(|s| s.n) {
            Ok(n) => return n,
            Err(Error::Broken(_)) if t.elapsed() < LONG => thread::sleep(Duration::from_millis(10)),
            other => panic!("{what}: waiting for the re-init to succeed: {other:?}"),
        }
    }
}

/// `PanicPolicy::Reinit`: the second `init` call panics (with a message, or
/// with a payload whose destructor panics too).
pub(crate) fn case_reinit_panics(payload_bomb: bool) {
    let what = if payload_bomb {
        "re-init panics with a bomb payload"
    } else {
        "re-init panics"
    };
    let fuse = Fuse::new();
    let f = Arc::clone(&fuse);
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let w = builder("reinit", PanicPolicy::Reinit)
        .breaker(Some(Breaker::new(1000, Duration::from_secs(60), COOLDOWN)))
        .spawn(move || {
            let n = counted.fetch_add(1, SeqCst) + 1;
            if n == 2 {
                if payload_bomb {
                    std::panic::panic_any(f.bomb());
                }
                panic!("{MARK}: re-init");
            }
            Ok::<_, Infallible>(State { n, _bomb: None })
        })
        .expect("spawn");
    assert_eq!(w.run(|s| s.n), Ok(1));
    let r = w.run(|_| -> u64 { panic!("{MARK}: a job panics") });
    assert!(
        matches!(&r, Err(Error::Panicked(m)) if m.message().contains(MARK)),
        "{what}: {r:?}"
    );
    // The re-init after that panic panics: no state until a later one works.
    let r = w.run(|s| s.n);
    assert!(matches!(r, Err(Error::Broken(_))), "{what}: right after: {r:?}");
    assert_eq!(until_served(&w, what), 3, "{what}: the third init's state serves");
    assert_serves(&w, what);
    let m = w.metrics();
    assert_eq!((calls.load(SeqCst), m.reinits), (3, 2), "{what}: {m}");
    w.close().unwrap();
    let expected = u64::from(payload_bomb);
    assert_eq!(w.metrics().contained_panics, expected, "{what}: {}", w.metrics());
    assert_eq!(fuse.blasts() as u64, expected, "{what}");
    assert_eq!(fuse.off_owner(), 0, "{what}");
}

#[test]
fn a_panicking_reinit_breaks_the_worker_until_a_later_reinit_succeeds() {
    let _g = shared();
    within("re-init panics", Duration::from_secs(30), || {
        case_reinit_panics(false);
        case_reinit_panics(true);
    });
}

/// The breaker re-inits after its cooldown: the old state's destructor
/// panics, then the re-init panics, then a later re-init serves.
pub(crate) fn case_breaker_reinit(policy: PanicPolicy) {
    let what = format!("breaker re-init under {policy:?}");
    let fuse = Fuse::new();
    let f = Arc::clone(&fuse);
    let mut calls = 0;
    let w = builder("breaker", policy)
        .breaker(Some(Breaker::new(1, Duration::from_secs(60), COOLDOWN)))
        .spawn(move || {
            calls += 1;
            if calls == 2 {
                panic!("{MARK}: re-init");
            }
            Ok::<_, Infallible>(State {
                n: calls,
                _bomb: Some(f.bomb()),
            })
        })
        .expect("spawn");
    let tid = w.owner_tid();
    let r = w.run(|_| -> u64 { panic!("{MARK}: a job panics") });
    assert!(matches!(r, Err(Error::Panicked(_))), "{what}: {r:?}");
    let r = w.run(|s| s.n);
    assert!(
        matches!(r, Err(Error::Broken(_))),
        "{what}: the open breaker: {r:?}"
    );
    assert_eq!(w.metrics().contained_panics, 0, "{what}");
    thread::sleep(COOLDOWN + Duration::from_millis(50));
    // This call triggers the re-init: the old state's bomb goes off, then
    // the new init panics, so it is answered as broken.
    let r = w.run(|s| s.n);
    assert!(
        matches!(r, Err(Error::Broken(_))),
        "{what}: the failed re-init: {r:?}"
    );
    expect_contained(&w, 1, &format!("{what}: the old state's destructor"));
    assert_eq!(fuse.tids(), vec![tid], "{what}: dropped on its own owner thread");
    assert_eq!(until_served(&w, &what), 3, "{what}");
    assert_serves(&w, &what);
    assert_eq!(w.metrics().reinits, 2, "{what}");
    w.close().unwrap();
    assert_eq!(
        w.metrics().contained_panics,
        2,
        "{what}: and the last state's: {}",
        w.metrics()
    );
    assert_eq!((fuse.blasts(), fuse.off_owner()), (2, 0), "{what}");
}

#[test]
fn the_breakers_reinit_contains_a_panicking_state_drop_and_init() {
    let _g = shared();
    within("breaker re-init", Duration::from_secs(30), || {
        for policy in [PanicPolicy::Keep, PanicPolicy::Reinit] {
            case_breaker_reinit(policy);
        }
    });
}

// ---------------------------------------------------------------------------
// 2. the state's destructor
// ---------------------------------------------------------------------------

pub(crate) fn case_state_drop_at_close(policy: PanicPolicy) {
    for how in ["close", "close_timeout", "drop"] {
        let what = format!("{policy:?}, {how}");
        let fuse = Fuse::new();
        let w = worker_with(builder("state", policy), Some(Arc::clone(&fuse)));
        assert_eq!(w.run(|s| s.n), Ok(1));
        let tid = w.owner_tid();
        if how == "drop" {
            drop(w); // closes
        } else {
            if how == "close" {
                w.close().unwrap();
            } else {
                assert_eq!(w.close_timeout(LONG).map(|r| r.shut_down), Ok(0), "{what}");
            }
            let m = w.metrics();
            assert_eq!(m.contained_panics, 1, "{what}: {m}");
            assert!(w.is_closed(), "{what}");
            assert_eq!(w.run(|s| s.n), Err(Error::Closed), "{what}");
            w.close().unwrap(); // idempotent
        }
        assert_eq!(fuse.blasts(), 1, "{what}: the state was dropped once");
        assert_eq!(fuse.tids(), vec![tid], "{what}: on its owner thread");
    }
}

#[test]
fn a_panicking_state_destructor_at_close_is_contained() {
    let _g = shared();
    within("state drop at close", Duration::from_secs(30), || {
        for policy in POLICIES {
            case_state_drop_at_close(policy);
        }
    });
}

pub(crate) fn case_state_drop_at_reinit() {
    let fuse = Fuse::new();
    let w = worker_with(builder("state-re", PanicPolicy::Reinit), Some(Arc::clone(&fuse)));
    let tid = w.owner_tid();
    let r = w.run(|_| -> u64 { panic!("{MARK}: a job panics") });
    assert!(matches!(r, Err(Error::Panicked(_))), "{r:?}");
    assert_eq!(w.run(|s| s.n), Ok(2), "the fresh state serves");
    expect_contained(&w, 1, "the old state's destructor at re-init");
    assert_eq!(fuse.tids(), vec![tid], "dropped on the old owner thread");
    let new_tid = w.owner_tid();
    assert_ne!(new_tid, tid);
    assert_serves(&w, "after re-init");
    assert_eq!(w.metrics().reinits, 1);
    w.close().unwrap();
    assert_eq!(w.metrics().contained_panics, 2, "{}", w.metrics());
    assert_eq!(fuse.tids(), vec![tid, new_tid]);
    assert_eq!(fuse.off_owner(), 0);
}

#[test]
fn a_panicking_state_destructor_at_reinit_is_contained() {
    let _g = shared();
    within(
        "state drop at re-init",
        Duration::from_secs(30),
        case_state_drop_at_reinit,
    );
}

// ---------------------------------------------------------------------------
// 3. an owner-bound value's destructor
// ---------------------------------------------------------------------------

pub(crate) fn case_bound_drop(policy: PanicPolicy) {
    let what = format!("{policy:?}");
    let w = worker("bound", policy);
    let tid = w.owner_tid();
    let fuse = Fuse::new();
    let keep = w.bind(|_| 5u32).expect("bind");
    let f = Arc::clone(&fuse);
    let bomb = w.bind(move |_| f.bomb()).expect("bind a bomb");
    drop(bomb); // its destructor runs on the owner, and panics there
    expect_contained(&w, 1, &format!("{what}: released value"));
    assert_eq!(fuse.tids(), vec![tid], "{what}: on the owner thread");
    assert_eq!(
        w.with(&keep, |_, v| *v),
        Ok(5),
        "{what}: other bound values live on"
    );
    assert_carries_on(&w, tid, &what);

    // At close, each value still bound is dropped under its own catch.
    let (a, b) = (
        w.bind({
            let f = Arc::clone(&fuse);
            move |_| f.bomb()
        })
        .expect("bind"),
        w.bind({
            let f = Arc::clone(&fuse);
            move |_| f.bomb()
        })
        .expect("bind"),
    );
    w.close().unwrap();
    assert_eq!(
        w.metrics().contained_panics,
        3,
        "{what}: at close: {}",
        w.metrics()
    );
    drop((a, b, keep)); // after close: nothing left to drop, nothing panics here
    assert_eq!(fuse.blasts(), 3, "{what}");
    assert_eq!(fuse.tids(), vec![tid; 3], "{what}");
}

#[test]
fn a_panicking_bound_value_destructor_is_contained() {
    let _g = shared();
    within("bound value drop", Duration::from_secs(30), || {
        for policy in POLICIES {
            case_bound_drop(policy);
        }
    });
}

pub(crate) fn case_bound_drop_at_reinit() {
    let w = worker("bound-re", PanicPolicy::Reinit);
    let tid = w.owner_tid();
    let fuse = Fuse::new();
    let f = Arc::clone(&fuse);
    let bomb = w.bind(move |_| f.bomb()).expect("bind");
    let r = w.run(|_| -> u64 { panic!("{MARK}: a job panics") });
    assert!(matches!(r, Err(Error::Panicked(_))), "{r:?}");
    assert_eq!(
        w.with(&bomb, |s, _| s.n),
        Err(Error::StaleHandle),
        "the value died with its state"
    );
    expect_contained(&w, 1, "the bound value's destructor at re-init");
    assert_eq!(fuse.tids(), vec![tid], "on the old owner thread");
    drop(bomb); // already gone: nothing to drop
    assert_serves(&w, "after re-init");
    w.close().unwrap();
    assert_eq!(w.metrics().contained_panics, 1, "{}", w.metrics());
    assert_eq!((fuse.blasts(), fuse.off_owner()), (1, 0));
}

#[test]
fn a_panicking_bound_value_destructor_at_reinit_is_contained() {
    let _g = shared();
    within(
        "bound value drop at re-init",
        Duration::from_secs(30),
        case_bound_drop_at_reinit,
    );
}
