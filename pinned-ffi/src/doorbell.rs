//! The doorbell: how producers tell an owner that work is waiting, and wake
//! it if it is parking.
//!
//! Two flags, each on cache lines of its own:
//! - `queued`, a hint that the owner's queues (jobs, `Stop`, releases) may
//!   hold something. Queue producers set it after sending; the owner clears
//!   it only after finding the queues empty, then looks once more. While
//!   spinning the owner reads this one quiet line instead of both channels'
//!   heads and tails. Mailbox posts do not use it: the owner scans those.
//! - `sleeping`, set by an owner about to park. A producer that sees it
//!   unparks the owner.
//!
//! Both are Dekker handshakes: each side writes its flag, then (after a
//! SeqCst fence, or through a SeqCst read-modify-write) reads the other's
//! data. In the single order of SeqCst operations one of the two comes
//! first, so either the owner sees the work or the producer sees the flag.
//! The loom models below check both handshakes.

use std::sync::atomic::Ordering;

use crate::sync::{self, AtomicBool, Mutex, Thread};
use crossbeam_utils::CachePadded;

/// What the owner found on its last look before parking.
pub(crate) enum Look<T> {
    /// Nothing: park.
    Idle,
    /// Work arrived: look again instead of parking.
    Busy,
    /// Something to return at once.
    Found(T),
}

pub(crate) struct Doorbell {
    sleeping: CachePadded<AtomicBool>,
    queued: CachePadded<AtomicBool>,
    owner: Mutex<Option<Thread>>,
}

impl Doorbell {
    pub(crate) fn new() -> Self {
        Doorbell {
            sleeping: CachePadded::new(AtomicBool::new(false)),
            queued: CachePadded::new(AtomicBool::new(false)),
            owner: Mutex::new(None),
        }
    }

    /// The thread to unpark: called by every owner thread when it starts
    /// (a re-init moves the owner to a fresh thread).
    pub(crate) fn set_owner(&self, owner: Thread) {
        *self.owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(owner);
    }

    /// The owner thread is leaving: no producer unparks it from now on (a
    /// late unpark, from a producer that saw `sleeping` before the owner
    /// woke, is harmless to a thread blocked on a lock, but loom cannot
    /// model it). A `try_lock` loop, because a producer may hold the lock
    /// while it unparks us, and blocking on it would be that case again.
    pub(crate) fn clear_owner(&self) {
        loop {
            if let Ok(mut owner) = self.owner.try_lock() {
                *owner = None;
                return;
            }
            sync::yield_now();
        }
    }

    /// Producer, after sending on one of the owner's queues.
    #[inline]
    pub(crate) fn ring_after_send(&self) {
        // ORDERING: the SeqCst fence pairs with the owner's fences between
        // clearing `queued` (or setting `sleeping`) and its next look at
        // the queues: either the owner sees our message, or we see the hint
        // cleared (and set it) or the owner sleeping (and unpark it). The
        // Release store publishes the message to the owner's Acquire load
        // of the hint. Read first: most sends find the hint set already,
        // and a read keeps the line shared.
        sync::fence(Ordering::SeqCst);
        if !self.queued.load(Ordering::Relaxed) {
            self.queued.store(true, Ordering::Release);
        }
        if self.sleeping.load(Ordering::Relaxed) {
            self.unpark();
        }
    }

    /// Producer, after a mailbox post. The post's SeqCst read-modify-write
    /// orders it before this SeqCst load (C++20 fence rules: the owner's
    /// SeqCst fence sits between its `sleeping` store and its last look),
    /// so no fence is needed.
    #[inline]
    pub(crate) fn ring_after_post(&self) {
        // Loom treats SeqCst accesses as AcqRel (its README, "Unsupported
        // features"), which would lose this guarantee in the model; the
        // fence gives the model what C++20 gives the real code.
        #[cfg(pinned_loom)]
        sync::fence(Ordering::SeqCst);
        // ORDERING: see above.
        if self.sleeping.load(Ordering::SeqCst) {
            self.unpark();
        }
    }

    #[cold]
    fn unpark(&self) {
        if let Some(t) = &*self.owner.lock().unwrap_or_else(|e| e.into_inner()) {
            t.unpark();
        }
    }

    /// Owner, spinning: whether queued work may be waiting (a hint; act on
    /// it through [`take_queued`](Self::take_queued)).
    #[inline]
    pub(crate) fn queued_hint(&self) -> bool {
        // ORDERING: a hint; `take_queued` reads it with Acquire.
        self.queued.load(Ordering::Relaxed)
    }

    /// Owner: what `poll` finds in the queues, if the hint says to look.
    /// Finding them empty clears the hint, then looks once more: a producer
    /// that saw the hint still set did not set it again.
    #[inline]
    pub(crate) fn take_queued<T>(&self, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
        // ORDERING: Acquire pairs with the producers' Release store.
        if !self.queued.load(Ordering::Acquire) {
            return None;
        }
        if let Some(found) = poll() {
            return Some(found);
        }
        // ORDERING: the fence pairs with `ring_after_send`'s.
        self.queued.store(false, Ordering::Relaxed);
        sync::fence(Ordering::SeqCst);
        let found = poll();
        if found.is_some() {
            // ORDERING: our own hint; more may be queued behind it.
            self.queued.store(true, Ordering::Relaxed);
        }
        found
    }

    /// Owner: announces that it is about to sleep, takes a last look
    /// (`look`), and calls `park` if it found nothing. Returns what the
    /// look found. After a park, or when work arrived, the hint is set so
    /// the owner looks at everything once.
    pub(crate) fn sleep<T>(&self, look: impl FnOnce() -> Look<T>, park: impl FnOnce()) -> Option<T> {
        // ORDERING: Relaxed flag + SeqCst fence, paired with the fence in
        // `ring_after_send` and the SeqCst RMW before `ring_after_post`: a
        // producer that published after our last look sees `sleeping` and
        // unparks us.
        self.sleeping.store(true, Ordering::Relaxed);
        sync::fence(Ordering::SeqCst);
        let found = match look() {
            Look::Found(found) => Some(found),
            Look::Idle => {
                park();
                None
            }
            Look::Busy => None,
        };
        // ORDERING: only this thread reads it as the owner; producers
        // reading a stale `true` unpark needlessly, which is harmless.
        self.sleeping.store(false, Ordering::Relaxed);
        if found.is_none() {
            // ORDERING: our own hint.
            self.queued.store(true, Ordering::Relaxed);
        }
        found
    }
}

/// Model checks of both handshakes: a producer sending on a queue and one
/// posting to a mailbox, against an owner that looks, then parks; every
/// message must reach the owner (loom fails a model that deadlocks). The
/// owner runs on a spawned thread and the model's main thread never parks
/// (joining after a park trips tokio-rs/loom#249).
#[cfg(all(test, pinned_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicU64;
    use loom::sync::Arc;

    struct World {
        bell: Doorbell,
        /// The queue, reduced to a count of messages sent (lock-free, like
        /// the channel: a lock would order the two sides by itself).
        sent: AtomicU64,
        posts: AtomicU64,
    }

    /// Starts an owner that returns once it took `want_queued` messages
    /// and `want_posts` posts: the owner's loop reduced to the doorbell's
    /// protocol (a real owner spins before it parks; the model goes
    /// straight to the racy part).
    fn owner(want_queued: u64, want_posts: u64) -> (Arc<World>, loom::thread::JoinHandle<()>) {
        let world = Arc::new(World {
            bell: Doorbell::new(),
            sent: AtomicU64::new(0),
            posts: AtomicU64::new(0),
        });
        let w = Arc::clone(&world);
        let handle = loom::thread::spawn(move || {
            let (mut taken, mut seen) = (0, 0);
            while taken < want_queued || seen < want_posts {
                let pop = || {
                    // ORDERING: Acquire pairs with the send's Release.
                    (w.sent.load(Ordering::Acquire) > taken).then_some(())
                };
                if w.bell.take_queued(pop).is_some() {
                    taken += 1;
                    continue;
                }
                // ORDERING: Acquire pairs with the post's SeqCst RMW.
                let now = w.posts.load(Ordering::Acquire);
                if now != seen {
                    seen = now;
                    continue;
                }
                let look = || {
                    // ORDERING: as above.
                    if w.sent.load(Ordering::Acquire) != taken || w.posts.load(Ordering::Acquire) != seen {
                        Look::<()>::Busy
                    } else {
                        Look::Idle
                    }
                };
                w.bell.sleep(look, sync::park);
            }
        });
        // Set before any producer runs, as `PinnedWorker::spawn` does.
        world.bell.set_owner(handle.thread().clone());
        (world, handle)
    }

    fn send(world: &World) {
        // ORDERING: publishes the message, as the channel's send does.
        world.sent.fetch_add(1, Ordering::Release);
        world.bell.ring_after_send();
    }

    #[test]
    fn loom_a_queued_message_always_reaches_a_parking_owner() {
        loom::model(|| {
            let (world, owner) = owner(1, 0);
            send(&world);
            owner.join().unwrap();
        });
    }

    #[test]
    fn loom_a_post_always_reaches_a_parking_owner() {
        loom::model(|| {
            let (world, owner) = owner(0, 1);
            // ORDERING: the post's SeqCst RMW, as in `Mailbox::publish`.
            world.posts.fetch_add(1, Ordering::SeqCst);
            world.bell.ring_after_post();
            owner.join().unwrap();
        });
    }

    #[test]
    fn loom_two_queued_messages_race_the_hints_clearing() {
        // The hint may be cleared while the second producer decides not to
        // set it; both messages must still arrive. (Here the last look
        // before parking catches such a message; in the worker the second
        // look in `take_queued` catches it before the owner spins on the
        // hint.) Three threads explode the state space: bound the
        // preemptions.
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (world, owner) = owner(2, 0);
            let other = {
                let world = Arc::clone(&world);
                loom::thread::spawn(move || send(&world))
            };
            send(&world);
            other.join().unwrap();
            owner.join().unwrap();
        });
    }
}
