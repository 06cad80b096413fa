//! Unit tests of the owner loop (see `owner.rs`).

use std::cell::Cell;

thread_local! {
    /// Makes this owner thread's loop panic after its next job: a
    /// stand-in for a bug in the loop itself.
    pub(crate) static DIE_AFTER_NEXT_JOB: Cell<bool> = const { Cell::new(false) };
}

#[test]
#[cfg_attr(miri, ignore)] // an owner thread calls libc's gettid
fn an_owner_whose_loop_dies_answers_every_job_and_closes_its_worker() {
    use crate::{Error, PinnedWorker};
    use std::sync::{mpsc, Arc};
    let w = Arc::new(PinnedWorker::spawn(|| Ok::<_, std::io::Error>(0u64)).unwrap());
    let (go, hold) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    let fatal = w
        .submit(move |_| {
            DIE_AFTER_NEXT_JOB.with(|d| d.set(true));
            started_tx.send(()).unwrap();
            hold.recv().ok();
            1
        })
        .unwrap();
    // Running (so off the queue) before the count below means anything:
    // otherwise six places could be this job and five others, with the
    // blocked caller not yet admitted.
    started.recv().unwrap();
    let queued: Vec<_> = (0..5).map(|_| w.submit(|n| *n).unwrap()).collect();
    let blocked = {
        let w = Arc::clone(&w);
        std::thread::spawn(move || w.run(|n| *n)) // queue road: the queue is not empty
    };
    while w.queue_len() < 6 {
        std::thread::yield_now();
    }
    go.send(()).unwrap();
    assert_eq!(fatal.wait(), Ok(1), "the job before the failure completed");
    let died = |r: Result<u64, Error>| matches!(r, Err(Error::OwnerDied(ref m)) if m.contains("injected"));
    for t in queued {
        assert!(died(t.wait()), "queued jobs are answered");
    }
    assert!(died(blocked.join().unwrap()), "a blocked caller is answered");
    assert!(w.is_closed());
    assert!(died(w.run(|n| *n)), "later calls are refused with the reason");
    assert!(matches!(w.submit(|n| *n).map(|_| ()), Err(Error::OwnerDied(_))));
    w.close().unwrap(); // returns: the dead owner marked its exit
    let m = w.metrics();
    assert_eq!(m.contained_panics, 1);
    assert_eq!(m.rejected, 6);
}

#[test]
#[cfg_attr(miri, ignore)] // an owner thread calls libc's gettid; no CPUs
fn an_owner_that_wakes_a_ticket_waiter_notes_where_it_runs() {
    use crate::spin::Partner;
    use crate::PinnedWorker;
    let w = PinnedWorker::spawn(|| Ok::<_, std::io::Error>(())).unwrap();
    let stale = Partner(4_000_000);
    let shared = std::sync::Arc::clone(&w.shared);
    // Made stale by the job itself, so the owner cannot park (and note
    // its CPU on waking) in between; long enough that the waiter parks.
    let t = w
        .submit(move |_| {
            shared.owner_cpu.set(stale);
            std::thread::sleep(std::time::Duration::from_millis(50));
        })
        .unwrap();
    t.wait().unwrap();
    // The owner notes it just after the wake-up, which may run first.
    let since = std::time::Instant::now();
    while w.shared.owner_cpu.get() == stale && since.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let noted = w.shared.owner_cpu.get();
    assert_ne!(noted, stale, "the hint was refreshed after the wake-up");
    assert_ne!(noted, Partner::UNKNOWN);
}

#[test]
fn reinit_spacing_doubles_up_to_its_cap() {
    use super::*;
    assert_eq!(reinit_spacing(0), REINIT_MIN_SPACING);
    assert_eq!(reinit_spacing(1), REINIT_MIN_SPACING * 2);
    assert_eq!(reinit_spacing(200), REINIT_MAX_SPACING);
}
