//! What the owner takes off its queues: queued messages and the releases
//! of owner-bound values, in the order the loop needs them.

use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, TryRecvError};

use crate::job::{Msg, OwnerState};
use crate::shared::Shared;
use crate::slot::Dequeued;

/// What the owner loop handles next.
pub(crate) enum Event<S> {
    Msg(Msg<S>),
    Release(u64),
    Disconnected,
}

/// `msg` was taken off the queue: frees its place, or notes that an
/// abandoned job was reached. Returns the panics of wakers it woke.
pub(crate) fn took<S>(shared: &Shared, msg: &Msg<S>) -> u32 {
    match msg.dequeue() {
        Some(Dequeued::Held) => shared.room.give_back(),
        Some(Dequeued::Abandoned) => shared.room.skipped(),
        None => 0,
    }
}

/// Takes the next queued message or release, if any.
pub(crate) fn poll_queues<S>(
    rx: &Receiver<Msg<S>>,
    releases: &Receiver<u64>,
    shared: &Shared,
) -> Option<Event<S>> {
    // Releases first: a value dropped before a job was queued is freed
    // before that job runs. Looked for only while counted, which spares an
    // empty channel's poll per job: a release is counted before it is sent
    // (see `Bound::drop`), so a message in the channel is always counted.
    // ORDERING: as in `release_pending`.
    if shared.releases_pending.load(Ordering::Acquire) != 0 {
        if let Some(id) = take_release(releases, shared) {
            return Some(Event::Release(id));
        }
    }
    match rx.try_recv() {
        Ok(m) => {
            crate::sync::channel_recv();
            return Some(Event::Msg(m));
        }
        Err(TryRecvError::Disconnected) => return Some(Event::Disconnected),
        Err(TryRecvError::Empty) => {}
    }
    None
}

/// Takes one owner-bound value's release, if any.
fn take_release(releases: &Receiver<u64>, shared: &Shared) -> Option<u64> {
    let id = releases.try_recv().ok()?;
    crate::sync::channel_recv();
    // ORDERING: see `Bound::drop`; only a count of what is in the channel.
    shared.releases_pending.fetch_sub(1, Ordering::Relaxed);
    Some(id)
}

/// Frees every owner-bound value whose handle was dropped so far: run
/// before each job, so a handle dropped before a job was submitted (by any
/// thread, in happens-before order) has its value freed before the job
/// runs, however busy the queue. Returns the panics contained.
pub(crate) fn release_pending<S>(
    releases: &Receiver<u64>,
    shared: &Shared,
    owner: Option<&mut OwnerState<S>>,
) -> u32 {
    // ORDERING: a drop that happened before the job this owner just took
    // incremented the count before that job was sent, and taking the job
    // synchronises with its send (the channel's Release/Acquire), so this
    // load sees the increment and the message (sent after it, before the
    // job). Acquire pairs with the increment's Release for drops ordered
    // with this owner by other means. Model-checked:
    // `loom_a_value_released_before_a_submit_is_freed_before_that_job_runs`
    // and, with a release racing it, `loom_a_racing_release_does_not_hide_one_made_before_a_submit`.
    if shared.releases_pending.load(Ordering::Acquire) == 0 {
        return 0;
    }
    let mut contained = 0;
    let mut owner = owner;
    while let Some(id) = take_release(releases, shared) {
        contained += owner.as_deref_mut().map_or(0, |o| o.release(id));
    }
    contained
}
