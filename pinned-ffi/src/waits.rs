//! Who this thread is, and who waits on whom: the owner identity of each
//! thread and the executor's deadlock detector.
//!
//! A blocking wait made on an owner thread can never end when the worker
//! it waits on is, directly or through others, waiting on this one: a job
//! that waits on its own worker, two owners whose jobs wait on each other
//! (A's job calls B while B's job calls A), a nested `pool.run` that lands
//! back on a worker whose owner is waiting further up the chain. Each such
//! wait is an edge "worker A's owner waits on worker B"; before adding one
//! the detector walks the edges from B, and if they lead back to A the
//! wait fails with [`Error::Reentrant`] instead of hanging.
//!
//! Only waits made by owner threads (and by threads that act for one, such
//! as [`Pool::broadcast`](crate::Pool::broadcast)'s helpers) can close a
//! cycle the library can see, so only they take the lock; a plain caller's
//! wait costs two thread-local reads.
//!
//! What cannot be seen: waits outside the library. A job that joins a
//! thread, receives from a channel, takes a lock or awaits a future on
//! another executor, where that thread, sender, lock holder or future in
//! turn waits on this job's worker, deadlocks undetected; so does
//! `close` called from a job on a worker whose owner waits on the caller.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::Error;

/// Edges of the wait-for graph: (worker whose owner waits, worker waited
/// on), one per wait in progress.
static EDGES: Mutex<Vec<Edge>> = Mutex::new(Vec::new());

/// Edges recorded by a ticket's poll, which last until the ticket resolves
/// or the polling owner's job ends (see [`end_job`]); counted so the owner
/// looks for them only when there are some.
static POLLED: AtomicUsize = AtomicUsize::new(0);

/// Ids for edges, so each guard removes its own.
static NEXT_EDGE: AtomicU64 = AtomicU64::new(1);

/// One wait in progress: worker `from`'s owner waits on worker `to`.
#[derive(Debug, Clone, Copy)]
struct Edge {
    id: u64,
    from: u64,
    to: u64,
    /// Recorded by a poll: the owner is taken to block on the ticket
    /// (a nested `block_on`) until it resolves or the job ends.
    polled: bool,
}

thread_local! {
    /// The id of the worker whose owner thread this is (0: none).
    static OWNER_OF: Cell<u64> = const { Cell::new(0) };
    /// The worker this thread waits for, when it is not that worker's owner
    /// but that owner waits on it (a broadcast's helper thread).
    static ACTING_FOR: Cell<u64> = const { Cell::new(0) };
    /// Set while this thread calls a waker for the library: a future that
    /// waker polls inline returns at once and blocks nothing.
    static WAKING: Cell<bool> = const { Cell::new(false) };
}

/// Restores a thread-local flag when dropped.
struct RestoreWaking(bool);
impl Drop for RestoreWaking {
    fn drop(&mut self) {
        WAKING.with(|s| s.set(self.0));
    }
}

/// Calls a waker: polls it makes inline (some executors run the task in
/// `wake`) are not waits of this thread's owner (see [`polling_waiter`]).
pub(crate) fn waking<R>(f: impl FnOnce() -> R) -> R {
    let _restore = RestoreWaking(WAKING.with(|s| s.replace(true)));
    f()
}

/// Runs a job's closure: polls made inside it are waits of its owner,
/// even when the job itself was reached from a waker.
pub(crate) fn in_job<R>(f: impl FnOnce() -> R) -> R {
    let _restore = RestoreWaking(WAKING.with(|s| s.replace(false)));
    f()
}

/// The worker whose owner a not-ready poll on this thread would hold up:
/// like [`current`], except inside a waker the library calls (an executor
/// that polls the woken task inline), where a poll returns at once and
/// holds nobody up.
pub(crate) fn polling_waiter() -> Option<u64> {
    let acting = ACTING_FOR.with(Cell::get);
    if acting != 0 {
        return Some(acting);
    }
    if WAKING.with(Cell::get) {
        return None;
    }
    owner_of_current_thread()
}

/// Marks this thread as the owner thread of worker `id`.
pub(crate) fn become_owner_of(id: u64) {
    OWNER_OF.with(|o| o.set(id));
}

/// This thread is no longer worker `id`'s owner (its loop returned on a
/// caller's thread, see `here.rs`); a mark for another worker is kept.
pub(crate) fn leave_owner_of(id: u64) {
    OWNER_OF.with(|o| {
        if o.get() == id {
            o.set(0);
        }
    });
}

/// The worker whose owner thread the caller is on, if any.
#[inline]
pub(crate) fn owner_of_current_thread() -> Option<u64> {
    let id = OWNER_OF.with(Cell::get);
    (id != 0).then_some(id)
}

/// The worker on whose behalf this thread waits: the one whose owner it
/// is, or the one it acts for.
#[inline]
fn waiter() -> Option<u64> {
    owner_of_current_thread().or_else(|| {
        let id = ACTING_FOR.with(Cell::get);
        (id != 0).then_some(id)
    })
}

/// Whether the edges lead from `from` to `to`.
fn reaches(edges: &[Edge], from: u64, to: u64) -> bool {
    let mut stack = vec![from];
    let mut seen = Vec::new();
    while let Some(x) = stack.pop() {
        if x == to {
            return true;
        }
        if seen.contains(&x) {
            continue;
        }
        seen.push(x);
        stack.extend(edges.iter().filter(|e| e.from == x).map(|e| e.to));
    }
    false
}

/// Whether a blocking wait on `target` from this thread would never end.
pub(crate) fn would_deadlock(target: u64) -> bool {
    would_deadlock_as(waiter(), target)
}

/// Whether waiting for room on `target` in a poll from this thread would
/// never end (see [`polling_waiter`]).
pub(crate) fn poll_would_deadlock(target: u64) -> bool {
    would_deadlock_as(polling_waiter(), target)
}

fn would_deadlock_as(waiter: Option<u64>, target: u64) -> bool {
    match waiter {
        None => false,
        Some(me) if me == target => true,
        Some(me) => reaches(&EDGES.lock().unwrap_or_else(|e| e.into_inner()), target, me),
    }
}

/// A wait in progress, recorded until dropped.
#[must_use = "the wait is recorded while the guard lives"]
pub(crate) struct Waiting(Option<(u64, u64)>); // (edge id, waiter)

/// Records that this thread waits on the worker `target` until the guard
/// drops.
///
/// # Errors
/// [`Error::Reentrant`] if the wait could never end: `target` is this
/// thread's own worker, or waits on it through others.
#[inline]
pub(crate) fn begin(target: u64) -> Result<Waiting, Error> {
    match waiter() {
        None => Ok(Waiting(None)),
        Some(me) => begin_as(me, target, false),
    }
}

/// Like [`begin`], for a ticket polled on an owner thread: the wait also
/// ends when the job that polled it ends ([`end_job`]), since the owner is
/// then no longer blocked, wherever the ticket went.
pub(crate) fn begin_polled(target: u64) -> Result<Waiting, Error> {
    match polling_waiter() {
        None => Ok(Waiting(None)),
        Some(me) => begin_as(me, target, true),
    }
}

#[cold]
fn begin_as(me: u64, target: u64, polled: bool) -> Result<Waiting, Error> {
    if me == target {
        return Err(Error::Reentrant);
    }
    let mut edges = EDGES.lock().unwrap_or_else(|e| e.into_inner());
    if reaches(&edges, target, me) {
        return Err(Error::Reentrant);
    }
    // ORDERING: only uniqueness matters for ids; POLLED is a hint,
    // confirmed under the lock.
    let id = NEXT_EDGE.fetch_add(1, Ordering::Relaxed);
    edges.push(Edge {
        id,
        from: me,
        to: target,
        polled,
    });
    if polled {
        POLLED.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Waiting(Some((id, me))))
}

/// Called on an owner thread when a job's closure returns, before its
/// outcome is published: the waits its polls recorded are over (the job no
/// longer blocks on those tickets, wherever they went).
#[inline]
pub(crate) fn end_job() {
    // ORDERING: a hint; the edges themselves are read under the lock.
    if POLLED.load(Ordering::Relaxed) == 0 {
        return;
    }
    if let Some(worker) = owner_of_current_thread() {
        end_job_slow(worker);
    }
}

#[cold]
fn end_job_slow(worker: u64) {
    let mut edges = EDGES.lock().unwrap_or_else(|e| e.into_inner());
    let before = edges.len();
    edges.retain(|e| !(e.polled && e.from == worker));
    // ORDERING: see `end_job`.
    POLLED.fetch_sub(before - edges.len(), Ordering::Relaxed);
}

impl Waiting {
    /// The worker whose owner waits, if the wait was recorded.
    pub(crate) fn waiter(&self) -> Option<u64> {
        self.0.map(|(_, me)| me)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some((id, _)) = self.0 {
            let mut edges = EDGES.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = edges.iter().position(|e| e.id == id) {
                if edges.swap_remove(i).polled {
                    // ORDERING: see `end_job`.
                    POLLED.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The worker this thread waits for, to hand to helper threads it waits on
/// (see [`acting_for`]).
pub(crate) fn current() -> Option<u64> {
    waiter()
}

/// Runs `f` on a helper thread that `worker`'s owner (if any) waits on, so
/// the helper's waits count as that owner's.
pub(crate) fn acting_for<R>(worker: Option<u64>, f: impl FnOnce() -> R) -> R {
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTING_FOR.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ACTING_FOR.with(|a| a.replace(worker.unwrap_or(0))));
    f()
}

#[cfg(all(test, not(pinned_loom)))]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_through_any_number_of_edges() {
        let e = |from, to| Edge {
            id: 0,
            from,
            to,
            polled: false,
        };
        let edges = [e(1, 2), e(2, 3), e(3, 4), e(9, 1)];
        assert!(reaches(&edges, 1, 4));
        assert!(reaches(&edges, 9, 3));
        assert!(!reaches(&edges, 4, 1));
        assert!(!reaches(&edges, 2, 1));
        assert!(
            reaches(&[e(1, 2), e(2, 1)], 1, 1),
            "a cycle in the edges is walked once"
        );
    }

    #[test]
    fn a_plain_thread_never_deadlocks_and_records_nothing() {
        assert!(!would_deadlock(42));
        let w = begin(42).unwrap();
        assert!(w.0.is_none());
    }

    #[test]
    fn a_helper_waits_for_the_worker_it_acts_for() {
        // Ids far above any worker's, so concurrent tests never meet them.
        let (a, b) = (u64::MAX - 10, u64::MAX - 11);
        acting_for(Some(a), || {
            assert!(would_deadlock(a));
            let wait = begin(b).unwrap();
            acting_for(Some(b), || {
                assert!(
                    would_deadlock(a),
                    "b waits on a: a wait by b on a closes the cycle"
                );
                assert_eq!(begin(a).err(), Some(Error::Reentrant));
            });
            drop(wait);
            acting_for(Some(b), || assert!(!would_deadlock(a)));
        });
        assert_eq!(current(), None);
    }
}
