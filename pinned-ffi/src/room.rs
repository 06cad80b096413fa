//! Room in a worker's bounded queue, counted exactly.
//!
//! The queue itself is an unbounded channel; its bound is this count. A
//! job holds a place from the moment it is admitted until the owner takes
//! it off the queue, or until its caller gives up on it (a dropped
//! [`Ticket`](crate::Ticket), a deadline): a job nobody waits for any more
//! frees its place at once, although it stays in the channel until the
//! owner reaches it and skips it. Those abandoned jobs hold no place, but
//! they are counted too, and admission stops while there are more than
//! [`ABANDONED_PER_PLACE`] per place, so their memory is bounded.
//!
//! Callers waiting for room (blocking `submit`, `submit_timeout`, the
//! async forms) wait in line: a FIFO of wakers. Whoever frees a place wakes
//! the first in line. The waiter registers, then looks again; the freer
//! frees, then looks at the line: a Dekker handshake over SeqCst accesses
//! (`waiting` and `used`), so either the waiter sees the room or the freer
//! sees the waiter. The loom model at the end checks it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::task::Waker;

use crossbeam_utils::CachePadded;

use crate::sync::{self, AtomicU64, AtomicUsize, Mutex};

/// How many abandoned jobs per place may sit in the channel before
/// admission waits for the owner to skip some.
pub(crate) const ABANDONED_PER_PLACE: usize = 4;

pub(crate) struct Room {
    capacity: usize,
    /// Places held by jobs in the queue that may still run.
    used: CachePadded<AtomicUsize>,
    /// Jobs in the channel whose callers gave up (they hold no place).
    abandoned: AtomicUsize,
    /// Waiters in line (kept equal to `line.len()`, read without the lock).
    waiting: AtomicUsize,
    line: Mutex<VecDeque<(u64, Waker)>>,
    next_waiter: AtomicU64,
}

/// A caller's place in the line for room.
pub(crate) struct Waiter(u64);

impl Room {
    pub(crate) fn new(capacity: usize) -> Self {
        Room {
            capacity: capacity.max(1),
            used: CachePadded::new(AtomicUsize::new(0)),
            abandoned: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            line: Mutex::new(VecDeque::new()),
            next_waiter: AtomicU64::new(1),
        }
    }

    /// Jobs holding a place now.
    pub(crate) fn used(&self) -> usize {
        // ORDERING: a reading for callers and metrics.
        self.used.load(Ordering::Relaxed)
    }

    /// Takes a place if there is one.
    pub(crate) fn try_take(&self) -> bool {
        // ORDERING: SeqCst, the waiter's side of the handshake (see the
        // module doc); the place itself guards no data.
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used >= self.capacity || self.too_many_abandoned() {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(used, used + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    fn too_many_abandoned(&self) -> bool {
        // ORDERING: a bound on memory, not on correctness.
        self.abandoned.load(Ordering::Relaxed) > self.capacity.saturating_mul(ABANDONED_PER_PLACE)
    }

    /// Frees a place (the owner took the job, or it was never sent) and
    /// wakes the first waiter. Returns the panics its waker raised.
    pub(crate) fn give_back(&self) -> u32 {
        // ORDERING: SeqCst, the freer's side of the handshake: the free is
        // before the look at `waiting` in the single order.
        self.used.fetch_sub(1, Ordering::SeqCst);
        sync::seqcst_handshake();
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        self.wake_next()
    }

    /// A caller gave up on a job still in the channel: its place is free
    /// now; the job is skipped when the owner reaches it ([`skipped`](Self::skipped)).
    pub(crate) fn abandon(&self) -> u32 {
        // ORDERING: see `too_many_abandoned`.
        self.abandoned.fetch_add(1, Ordering::Relaxed);
        self.give_back()
    }

    /// The owner reached an abandoned job.
    pub(crate) fn skipped(&self) -> u32 {
        // ORDERING: see `too_many_abandoned`; the fence orders the
        // decrement before the look at the line, as in `give_back`.
        self.abandoned.fetch_sub(1, Ordering::Relaxed);
        sync::fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        self.wake_next()
    }

    /// A new place in the line (not yet in it).
    pub(crate) fn waiter(&self) -> Waiter {
        // ORDERING: only uniqueness matters.
        Waiter(self.next_waiter.fetch_add(1, Ordering::Relaxed))
    }

    /// Puts `w` in line (or refreshes its waker if it is in line already).
    /// Then look again with [`try_take`](Self::try_take): a place freed
    /// before this call woke no one.
    pub(crate) fn wait_in_line(&self, w: &Waiter, waker: &Waker) {
        let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        match line.iter_mut().find(|(id, _)| *id == w.0) {
            Some((_, old)) => {
                if !old.will_wake(waker) {
                    *old = waker.clone();
                }
            }
            None => {
                line.push_back((w.0, waker.clone()));
                // ORDERING: SeqCst, the waiter's side of the handshake:
                // this store is before the waiter's next `try_take`.
                self.waiting.store(line.len(), Ordering::SeqCst);
            }
        }
        drop(line);
        sync::seqcst_handshake();
    }

    /// Takes `w` out of line: it got a place, gave up or was refused. If it
    /// had been woken already (it is no longer in line) and room is left,
    /// the wake passes to the next in line, so none is lost. Returns the
    /// panics a waker raised.
    pub(crate) fn leave(&self, w: &Waiter) -> u32 {
        let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = line.iter().position(|(id, _)| *id == w.0) {
            line.remove(i);
            // ORDERING: as in `wait_in_line`.
            self.waiting.store(line.len(), Ordering::SeqCst);
            return 0;
        }
        let more = !line.is_empty();
        drop(line);
        // ORDERING: a reading; a waiter that misses the room looks again
        // after registering.
        if more && self.used.load(Ordering::SeqCst) < self.capacity {
            return self.wake_next();
        }
        0
    }

    /// Wakes every waiter (the worker closed: they will be refused).
    pub(crate) fn wake_all(&self) -> u32 {
        let woken: Vec<Waker> = {
            let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
            // ORDERING: as in `wait_in_line`.
            self.waiting.store(0, Ordering::SeqCst);
            line.drain(..).map(|(_, w)| w).collect()
        };
        woken.into_iter().map(wake_caught).sum()
    }

    /// Wakes the first in line, outside the lock.
    fn wake_next(&self) -> u32 {
        let first = {
            let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
            let first = line.pop_front();
            // ORDERING: as in `wait_in_line`.
            self.waiting.store(line.len(), Ordering::SeqCst);
            first
        };
        first.map_or(0, |(_, w)| wake_caught(w))
    }
}

/// A waker is user code (an executor's): it may run on the owner thread
/// here, so it runs under a catch.
fn wake_caught(w: Waker) -> u32 {
    match crate::unwind::catch(move || crate::waits::waking(move || w.wake())) {
        Ok(()) => 0,
        Err(caught) => caught.panics(),
    }
}

/// Model check: a waiter for room is always woken when room frees.
#[cfg(all(test, pinned_loom))]
mod loom_tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Unpark(crate::sync::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    #[test]
    fn loom_a_waiter_for_room_is_woken_when_a_place_frees() {
        loom::model(|| {
            let room = Arc::new(Room::new(1));
            assert!(room.try_take());
            let freer = {
                let room = Arc::clone(&room);
                loom::thread::spawn(move || {
                    room.give_back();
                })
            };
            let w = room.waiter();
            let waker = Waker::from(Arc::new(Unpark(sync::current())));
            loop {
                room.wait_in_line(&w, &waker);
                if room.try_take() {
                    room.leave(&w);
                    break;
                }
                sync::park(); // would hang (loom reports a deadlock) if the wake were lost
            }
            freer.join().unwrap();
            assert_eq!(room.used(), 1);
        });
    }
}
