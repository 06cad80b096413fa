//! Unit tests of jobs (see `job.rs`): what the owner does with a job's
//! outcome when its caller is gone, and with a job nobody handled.

use super::*;
use std::time::Duration;

/// Once the owner publishes a borrowed job's outcome, its caller may
/// return and free the job: the owner must hold no reference into it
/// by then (raw pointers only; the release is its last access). Under
/// Miri (`scripts/sanitizers.sh`) this is the regression test for that
/// rule: a reference still protected by a running `&self` method when
/// the caller frees the job is undefined behaviour there.
#[test]
fn a_borrowed_job_may_be_freed_the_moment_its_outcome_is_published() {
    let (tx, rx) = std::sync::mpsc::channel::<Msg<u64>>();
    let owner = std::thread::spawn(move || {
        let mut o = OwnerState::new(0u64);
        for msg in rx {
            let handling = msg.run(&mut o, &mut |_| ());
            assert_eq!(handling.outcome, RunOutcome::Done);
        }
        o.state
    });
    let mut want = 0;
    for i in 0..20u64 {
        // The job lives in this iteration's frame and is gone after it.
        let job = JobImpl::new(
            move |o: &mut OwnerState<u64>| {
                o.state += i;
                o.state
            },
            call_owner,
            Slot::new(1),
            None,
        );
        let ptr: NonNull<dyn Job<u64>> = NonNull::from(&job);
        tx.send(Msg::Borrowed(BorrowedJob(JobPtr(ptr)))).unwrap();
        want += i;
        // Spin 0: park at once, the path where the owner also wakes us.
        assert_eq!(
            job.slot.wait(Duration::ZERO, || crate::spin::Partner::UNKNOWN),
            Ok(want)
        );
    }
    drop(tx);
    assert_eq!(owner.join().unwrap(), want);
}
/// A ticket's job and its ticket share one allocation: the queue's
/// message dropped unhandled (a channel torn down) must still answer
/// the ticket, and drop the closure exactly once.
#[test]
fn a_queued_job_dropped_unhandled_answers_its_ticket() {
    let captured = Arc::new(());
    let held = Arc::clone(&captured);
    let job: SharedJob<u64, _, u64> = Arc::new(JobImpl::new(
        move |o: &mut OwnerState<u64>| {
            let _keep = &held;
            o.state
        },
        call_owner,
        TicketSlot(Slot::queued(1)),
        None,
    ));
    let ticket: Arc<dyn HoldsSlot<u64>> = job.clone();
    drop(Msg::Job(QueuedJob(job)));
    assert!(ticket.slot().is_done());
    assert_eq!(ticket.slot().take(), Err(Error::Shutdown));
    assert_eq!(Arc::strong_count(&captured), 1, "the closure was dropped");
    drop(ticket);
    assert_eq!(Arc::strong_count(&captured), 1);
}

/// When the ticket is gone before the owner lets go, the owner frees
/// the job, and with it the result nobody claimed: a panic in that
/// result's destructor is contained and counted, on the owner.
#[test]
fn an_unclaimed_result_is_dropped_by_the_owner_under_a_catch() {
    struct Loud;
    impl Drop for Loud {
        fn drop(&mut self) {
            panic!("result destructor");
        }
    }
    let job: SharedJob<u64, _, Loud> = Arc::new(JobImpl::new(
        |_: &mut OwnerState<u64>| Loud,
        call_owner,
        TicketSlot(Slot::queued(1)),
        None,
    ));
    let ticket: Arc<dyn HoldsSlot<Loud>> = job.clone();
    let msg = Msg::Job(QueuedJob(job));
    drop(ticket); // let go without a cancel, as `detach` does
    let mut owner = OwnerState::new(0u64);
    let handling = msg.run(&mut owner, &mut |_| ());
    assert_eq!(handling.outcome, RunOutcome::Done);
    assert_eq!(
        handling.contained, 1,
        "the result's destructor panicked, contained"
    );
}
