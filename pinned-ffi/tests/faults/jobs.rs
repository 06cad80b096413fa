//! Faults in what a job leaves behind: the captures of a cancelled or
//! rejected job, a panic payload's destructor, a result whose caller has
//! gone, and a waker's `wake`.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use pinned_ffi::{Breaker, Error, PanicPolicy, PinnedWorker};

use crate::{
    assert_carries_on, assert_policy_after_job_panic, assert_serves, block_on, builder, eventually,
    expect_contained, hold, poll_once, shared, within, worker, worker_with, Bomb, Fuse, Held, State,
    TestWaker, LONG, MARK, POLICIES,
};

// ---------------------------------------------------------------------------
// 4. the captures of a cancelled or rejected job
// ---------------------------------------------------------------------------

/// A job capturing a bomb: defused if the job runs, so it goes off only if
/// the job is dropped unrun.
fn bomb_job(fuse: &Arc<Fuse>, v: u32) -> impl FnOnce(&mut State) -> u32 + Send + 'static {
    let bomb = fuse.bomb();
    move |_| {
        bomb.defuse();
        v
    }
}

pub(crate) fn case_cancelled_captures(policy: PanicPolicy) {
    let what = format!("{policy:?}");
    let w = worker("cancel", policy);
    let tid = w.owner_tid();
    let fuse = Fuse::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let held = hold(&w, || ());
    // Ticket dropped.
    drop(w.submit(bomb_job(&fuse, 1)).expect("submit"));
    // Waited for with a time-out.
    let t = w.submit(bomb_job(&fuse, 2)).expect("submit");
    assert_eq!(
        t.wait_timeout(Duration::from_millis(5)),
        Err(Error::TimedOut { started: false }),
        "{what}"
    );
    // Polled once, then dropped.
    let mut t = w.submit(bomb_job(&fuse, 3)).expect("submit");
    assert!(poll_once(&mut t, Waker::noop()).is_pending(), "{what}");
    drop(t);
    // Awaited under a tokio time-out.
    let t = w.submit(bomb_job(&fuse, 4)).expect("submit");
    let r = rt.block_on(async { tokio::time::timeout(Duration::from_millis(5), t).await });
    assert!(r.is_err(), "{what}: the tokio time-out fired: {r:?}");
    assert_eq!(fuse.blasts(), 0, "{what}: nothing went off on the caller");
    held.finish();
    expect_contained(&w, 4, &format!("{what}: cancelled jobs' captures"));
    assert_eq!(w.metrics().cancelled, 4, "{what}: {}", w.metrics());
    assert_eq!(fuse.tids(), vec![tid; 4], "{what}: all dropped on the owner");
    assert_carries_on(&w, tid, &what);
    w.close().unwrap();
    assert_eq!(w.metrics().contained_panics, 4, "{what}");
}

#[test]
fn a_cancelled_jobs_panicking_captures_are_contained() {
    let _g = shared();
    within("cancelled captures", Duration::from_secs(30), || {
        for policy in POLICIES {
            case_cancelled_captures(policy);
        }
    });
}

/// The owner is held; a job that panics, a ticket and a blocking `run`
/// (through the queue) with bomb captures are queued behind it. Returns
/// the outcomes of the panicking job, the ticket and the run.
fn queued_behind_a_panic(w: &PinnedWorker<State>, fuse: &Arc<Fuse>) -> [Result<u32, Error>; 3] {
    let held = hold(w, || ());
    let boom = w
        .submit(|_| -> u32 { panic!("{MARK}: a job panics") })
        .expect("submit");
    let t = w.submit(bomb_job(fuse, 1)).expect("submit");
    thread::scope(|s| {
        let job = bomb_job(fuse, 2);
        let run = s.spawn(|| w.run(job));
        eventually("the blocking call is queued", || w.queue_len() == 3);
        held.finish();
        let boom = boom.wait_timeout(LONG);
        let t = t.wait_timeout(LONG);
        [boom, t, run.join().expect("the blocking caller")]
    })
}

pub(crate) fn case_rejected_when_stopped() {
    let w = worker("rej-stop", PanicPolicy::Stop);
    let tid = w.owner_tid();
    let fuse = Fuse::new();
    let [boom, t, run] = queued_behind_a_panic(&w, &fuse);
    assert!(
        matches!(&boom, Err(Error::Panicked(m)) if m.message().contains(MARK)),
        "{boom:?}"
    );
    assert_eq!(t, Err(Error::Stopped), "a queued ticket");
    assert_eq!(run, Err(Error::Stopped), "a queued blocking call");
    expect_contained(&w, 2, "rejected jobs' captures (stopped)");
    assert_eq!(w.run(|s| s.n), Err(Error::Stopped));
    w.close().unwrap();
    assert_eq!(w.metrics().contained_panics, 2, "{}", w.metrics());
    assert_eq!(fuse.tids(), vec![tid; 2]);
}

#[test]
fn a_stopped_workers_rejected_jobs_panicking_captures_are_contained() {
    let _g = shared();
    within(
        "rejected captures (stopped)",
        Duration::from_secs(30),
        case_rejected_when_stopped,
    );
}

pub(crate) fn case_rejected_when_broken(policy: PanicPolicy) {
    let what = format!("{policy:?}");
    let w = worker_with(
        builder("rej-brk", policy).breaker(Some(Breaker::new(
            1,
            Duration::from_secs(60),
            Duration::from_secs(60),
        ))),
        None,
    );
    let tid = w.owner_tid();
    let fuse = Fuse::new();
    let [boom, t, run] = queued_behind_a_panic(&w, &fuse);
    assert!(matches!(&boom, Err(Error::Panicked(_))), "{what}: {boom:?}");
    assert!(
        matches!(&t, Err(Error::Broken(_))),
        "{what}: a queued ticket: {t:?}"
    );
    assert!(
        matches!(&run, Err(Error::Broken(_))),
        "{what}: a queued run: {run:?}"
    );
    expect_contained(&w, 2, &format!("{what}: rejected jobs' captures (broken)"));
    assert!(matches!(w.run(|s| s.n), Err(Error::Broken(_))), "{what}");
    let t0 = Instant::now();
    w.close().unwrap();
    assert!(t0.elapsed() < LONG, "{what}: close waited for the cooldown");
    assert_eq!(w.metrics().contained_panics, 2, "{what}: {}", w.metrics());
    assert_eq!(fuse.tids(), vec![tid; 2], "{what}");
}

#[test]
fn a_broken_workers_rejected_jobs_panicking_captures_are_contained() {
    let _g = shared();
    within("rejected captures (broken)", Duration::from_secs(30), || {
        for policy in [PanicPolicy::Keep, PanicPolicy::Reinit] {
            case_rejected_when_broken(policy);
        }
    });
}

pub(crate) fn case_rejected_at_close_timeout(policy: PanicPolicy) {
    let what = format!("{policy:?}");
    let w = worker("rej-ct", policy);
    let tid = w.owner_tid();
    let fuse = Fuse::new();
    let held = hold(&w, || ());
    let tickets: Vec<_> = (0..3)
        .map(|i| w.submit(bomb_job(&fuse, i)).expect("submit"))
        .collect();
    let Held { ticket, release } = held;
    thread::scope(|s| {
        let job = bomb_job(&fuse, 9);
        let run = s.spawn(|| w.run(job));
        eventually("the blocking call is queued", || w.queue_len() == 4);
        // The holding job ends well after close_timeout has given up.
        s.spawn(move || {
            thread::sleep(Duration::from_millis(500));
            let _ = release.send(());
        });
        assert_eq!(
            w.close_timeout(Duration::from_millis(20))
                .map(|r| (r.shut_down, r.still_running)),
            Ok((4, 1)),
            "{what}: shut down at the deadline, the holding job still running"
        );
        assert_eq!(
            run.join().expect("the blocking caller"),
            Err(Error::Shutdown),
            "{what}"
        );
    });
    assert_eq!(
        ticket.wait_timeout(LONG),
        Ok(()),
        "{what}: the running job finished"
    );
    for t in tickets {
        assert_eq!(t.wait_timeout(LONG), Err(Error::Shutdown), "{what}");
    }
    // Answered at the deadline by the closing thread, which dropped their
    // captures (Send, so any thread may) under catches and counted them.
    let m = w.metrics();
    assert_eq!(m.contained_panics, 4, "{what}: {m}");
    assert!(
        fuse.tids().is_empty(),
        "{what}: none dropped on the owner ({tid})"
    );
    assert_eq!(fuse.off_owner(), 4, "{what}");
}

#[test]
fn jobs_shut_down_by_close_timeout_have_their_panicking_captures_contained() {
    let _g = shared();
    within(
        "rejected captures (close_timeout)",
        Duration::from_secs(30),
        || {
            for policy in POLICIES {
                case_rejected_at_close_timeout(policy);
            }
        },
    );
}

// ---------------------------------------------------------------------------
// 5. a panic payload's destructor
// ---------------------------------------------------------------------------

pub(crate) fn case_panic_payload(policy: PanicPolicy) {
    for via in ["run", "run through the queue", "submit"] {
        let what = format!("{policy:?}, {via}");
        let w = worker("payload", policy);
        let tid = w.owner_tid();
        let fuse = Fuse::new();
        let f = Arc::clone(&fuse);
        let job = move |_: &mut State| -> u32 { std::panic::panic_any(f.bomb()) };
        let r = match via {
            "run" => w.run(job),
            "submit" => w.submit(job).expect("submit").wait_timeout(LONG),
            _ => {
                let held = hold(&w, || ());
                let filler = w.submit(|_| 0u32).expect("submit");
                thread::scope(|s| {
                    let run = s.spawn(|| w.run(job));
                    eventually("the blocking call is queued", || w.queue_len() == 2);
                    held.finish();
                    assert_eq!(filler.wait_timeout(LONG), Ok(0));
                    run.join().expect("the blocking caller")
                })
            }
        };
        // The payload came back to the caller, intact.
        assert!(
            matches!(&r, Err(Error::Panicked(p)) if p.downcast_ref::<Bomb>().is_some()),
            "{what}: {r:?}"
        );
        assert_eq!(fuse.blasts(), 0, "{what}: the payload is still whole");
        assert_eq!(w.metrics().panicked, 1, "{what}");
        // Dropped by the caller: its destructor's panic is contained there.
        drop(r);
        assert_eq!(fuse.blasts(), 1, "{what}: the payload's destructor ran once");
        assert_eq!(fuse.off_owner(), 1, "{what}: on the caller");
        assert!(fuse.tids().is_empty(), "{what}: not on the owner");
        assert_policy_after_job_panic(&w, policy, tid, &what);
        w.close().unwrap();
        assert_eq!(w.metrics().contained_panics, 0, "{what}: {}", w.metrics());
    }
}

#[test]
fn a_panic_payload_whose_destructor_panics_is_contained() {
    let _g = shared();
    within("panic payload drop", Duration::from_secs(30), || {
        for policy in POLICIES {
            case_panic_payload(policy);
        }
    });
}

// ---------------------------------------------------------------------------
// 6. a result whose caller has gone
// ---------------------------------------------------------------------------

pub(crate) fn case_orphaned_result(policy: PanicPolicy) {
    let what = format!("{policy:?}");
    let w = worker("orphan", policy);
    let tid = w.owner_tid();
    let fuse = Fuse::new();
    // The ticket is dropped while the job runs.
    let f = Arc::clone(&fuse);
    let held = hold(&w, move || f.bomb());
    drop(held.ticket);
    let _ = held.release.send(());
    expect_contained(&w, 1, &format!("{what}: a result nobody claimed"));
    // The caller times out while the job runs.
    let f = Arc::clone(&fuse);
    let held = hold(&w, move || f.bomb());
    let r = held.ticket.wait_timeout(Duration::from_millis(10));
    assert_eq!(r.err(), Some(Error::TimedOut { started: true }), "{what}");
    let _ = held.release.send(());
    expect_contained(&w, 2, &format!("{what}: a result whose caller timed out"));
    assert_eq!(fuse.tids(), vec![tid; 2], "{what}: dropped on the owner");
    assert_eq!(w.metrics().completed, 2, "{what}: {}", w.metrics());
    assert_carries_on(&w, tid, &what);
    w.close().unwrap();
    assert_eq!(w.metrics().contained_panics, 2, "{what}");
}

#[test]
fn a_panicking_result_whose_caller_has_gone_is_contained() {
    let _g = shared();
    within("orphaned result drop", Duration::from_secs(30), || {
        for policy in POLICIES {
            case_orphaned_result(policy);
        }
    });
}

// ---------------------------------------------------------------------------
// 7. a waker's wake
// ---------------------------------------------------------------------------

pub(crate) fn case_waker(policy: PanicPolicy) {
    let what = format!("{policy:?}");
    let w = worker("waker", policy);
    let tid = w.owner_tid();
    let fuse = Fuse::new();

    // Polled with a panicking waker, then released: the owner wakes it.
    let held = hold(&w, || 9u32);
    let mut t = held.ticket;
    let waker = TestWaker::new(Some(Arc::clone(&fuse)));
    assert!(
        poll_once(&mut t, &Waker::from(Arc::clone(&waker))).is_pending(),
        "{what}"
    );
    let _ = held.release.send(());
    expect_contained(&w, 1, &format!("{what}: a panicking wake"));
    assert!(t.is_done(), "{what}: the outcome was published before the wake");
    assert_eq!(poll_once(&mut t, Waker::noop()), Poll::Ready(Ok(9)), "{what}");
    assert_eq!(waker.wakes.load(SeqCst), 1, "{what}: woken once");
    assert_eq!(fuse.tids(), vec![tid], "{what}: woken on the owner");

    // A poll loop whose waker unparks it, then panics.
    let held = hold(&w, || 10u32);
    let Held { ticket, release } = held;
    let r = block_on(ticket, Some(Arc::clone(&fuse)), || {
        let _ = release.send(());
    });
    assert_eq!(r, Ok(10), "{what}: the poll loop got its result");
    expect_contained(&w, 2, &format!("{what}: a panicking wake in a poll loop"));

    // Polled with a panicking waker, then dropped while the job runs.
    let held = hold(&w, || 11u32);
    let mut t = held.ticket;
    assert!(poll_once(&mut t, &Waker::from(TestWaker::new(Some(Arc::clone(&fuse))))).is_pending());
    drop(t);
    let _ = held.release.send(());
    assert_serves(&w, &what); // the owner has finished that job by now
    let blasts = fuse.blasts() as u64;
    assert!((2..=3).contains(&blasts), "{what}: {blasts} wakes panicked");
    expect_contained(&w, blasts, &format!("{what}: every panicking wake"));
    assert_carries_on(&w, tid, &what);
    w.close().unwrap();
    assert_eq!(w.metrics().contained_panics, blasts, "{what}");
    assert_eq!(fuse.off_owner(), 0, "{what}: every wake ran on the owner");
}

#[test]
fn a_panicking_wakers_wake_is_contained() {
    let _g = shared();
    within("waker wake", Duration::from_secs(30), || {
        for policy in POLICIES {
            case_waker(policy);
        }
    });
}
