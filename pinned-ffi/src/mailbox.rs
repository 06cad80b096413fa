//! Per-caller mailboxes: the fast lane of the hand-off.
//!
//! A round trip through a channel touches several shared cache lines (the
//! queue slot, its head and tail, the job). Here each calling thread owns
//! one cache line per worker, written only by that thread: it stores a
//! pointer to its job there and bumps a sequence number; the owner, which
//! only ever *reads* mailboxes, notices the new number while scanning. A
//! blocking caller has at most one job in flight per worker, so one slot
//! per (thread, worker) is enough, and the job itself (on the caller's
//! stack) carries the completion.
//!
//! Mailboxes register on a thread's first blocking call to a worker and
//! unregister when the thread exits.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use crate::sync::{AtomicU64, UnsafeCell};

/// One thread's mailbox for one worker: on a cache line of its own, written
/// only by its thread.
#[repr(align(128))]
pub(crate) struct Mailbox<P> {
    /// Bumped (Release) after `item` is written; the owner compares it with
    /// the last number it took.
    seq: AtomicU64,
    item: UnsafeCell<Option<P>>,
}

// SAFETY: `item` is written by the mailbox's thread only while no item is
// outstanding (its previous job has completed, which happens after the
// owner read it), and read by the owner only after seeing a new `seq`
// (Acquire, pairing with the Release that follows the write). P: Send moves
// between the two.
unsafe impl<P: Send> Sync for Mailbox<P> {}
// SAFETY: as above.
unsafe impl<P: Send> Send for Mailbox<P> {}

impl<P: Copy> Mailbox<P> {
    fn new() -> Self {
        Mailbox {
            seq: AtomicU64::new(0),
            item: UnsafeCell::new(None),
        }
    }

    /// Poster: publishes `item`.
    ///
    /// # Safety
    /// Only the mailbox's own thread posts, and only once the owner has
    /// taken its previous item.
    unsafe fn put(&self, item: P) {
        // SAFETY: exclusive by the caller's contract.
        self.item.with_mut(|i| unsafe { *i = Some(item) });
        // ORDERING: the RMW's Release side publishes `item` to the owner's
        // Acquire; being SeqCst it also orders this post before the
        // poster's SeqCst look at the owner's `sleeping` flag (see
        // `Shared::wake_owner_after_post`), so no separate fence is needed.
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    /// Owner: the item posted after `seen`, if any, and the new `seen`.
    fn take_after(&self, seen: &mut u64) -> Option<P> {
        // ORDERING: Acquire pairs with `put`'s Release, so `item` is the one
        // written before this sequence number.
        let seq = self.seq.load(Ordering::Acquire);
        if seq == *seen {
            return None;
        }
        *seen = seq;
        // SAFETY: the poster wrote `item` before this `seq` and will not
        // write again until this item's job completes.
        self.item.with_mut(|i| unsafe { *i })
    }

    fn posted_after(&self, seen: u64) -> bool {
        // ORDERING: see `take_after`.
        self.seq.load(Ordering::Acquire) != seen
    }
}

/// A worker's mailboxes.
pub(crate) struct Mailboxes<P> {
    list: Mutex<Vec<Arc<Mailbox<P>>>>,
    /// Bumped (Release) on every registration change.
    generation: AtomicU64,
}

/// Type-erased registration held in a thread-local: unregisters on drop.
trait Registration {
    fn key(&self) -> u64;
    fn mailbox(&self) -> &dyn Any;
    fn alive(&self) -> bool;
}

struct Registered<P: 'static> {
    key: u64,
    mailbox: Arc<Mailbox<P>>,
    registry: Weak<Mailboxes<P>>,
}

impl<P: Send + 'static> Registration for Registered<P> {
    fn key(&self) -> u64 {
        self.key
    }
    fn mailbox(&self) -> &dyn Any {
        &*self.mailbox
    }
    fn alive(&self) -> bool {
        self.registry.strong_count() > 0
    }
}

impl<P: 'static> Drop for Registered<P> {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            let mut list = registry.list.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|m| !Arc::ptr_eq(m, &self.mailbox));
            // ORDERING: Release publishes the new list to the owner's
            // Acquire check in `Scanner::refresh`.
            registry.generation.fetch_add(1, Ordering::Release);
        }
    }
}

thread_local! {
    static MINE: RefCell<Vec<Box<dyn Registration>>> = const { RefCell::new(Vec::new()) };
}

impl<P: Copy + Send + 'static> Mailboxes<P> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Mailboxes {
            list: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
        })
    }

    /// Posts `item` to the owner through this thread's mailbox for the
    /// worker `key` (registering it on first use). Returns `false`, posting
    /// nothing, if thread-locals are gone (the thread is exiting).
    ///
    /// # Safety
    /// The calling thread's previous item for `key` must have been taken by
    /// the owner already (the caller waited for its job to complete), and
    /// `key` must identify this registry (one key, one worker, one `P`).
    pub(crate) unsafe fn post(self: &Arc<Self>, key: u64, item: P) -> bool {
        MINE.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            let found = mine.iter().position(|r| r.key() == key);
            let index = match found {
                Some(i) => i,
                None => {
                    mine.retain(|r| r.alive()); // forget workers that are gone
                    let mailbox = Arc::new(Mailbox::new());
                    self.list
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Arc::clone(&mailbox));
                    // ORDERING: see Registered::drop.
                    self.generation.fetch_add(1, Ordering::Release);
                    mine.push(Box::new(Registered {
                        key,
                        mailbox,
                        registry: Arc::downgrade(self),
                    }));
                    mine.len() - 1
                }
            };
            let mailbox = mine[index]
                .mailbox()
                .downcast_ref::<Mailbox<P>>()
                .expect("a worker key always maps to the same mailbox type");
            // SAFETY: this is the thread's own mailbox, and by the caller's
            // contract the owner is done with the previous item.
            unsafe { mailbox.put(item) };
            true
        })
        .unwrap_or(false)
    }
}

/// The owner's view of the mailboxes: a snapshot, refreshed when the
/// registrations change, with the last sequence number taken from each.
pub(crate) struct Scanner<P> {
    registry: Arc<Mailboxes<P>>,
    snapshot: Vec<(Arc<Mailbox<P>>, u64)>,
    generation: u64,
    next: usize,
}

impl<P: Copy + Send + 'static> Scanner<P> {
    pub(crate) fn new(registry: Arc<Mailboxes<P>>) -> Self {
        Scanner {
            registry,
            snapshot: Vec::new(),
            generation: 0,
            next: 0,
        }
    }

    fn changed(&self) -> bool {
        // ORDERING: Acquire pairs with the registrations' Release.
        self.registry.generation.load(Ordering::Acquire) != self.generation
    }

    /// Re-reads the registrations if they changed.
    pub(crate) fn refresh(&mut self) {
        if !self.changed() {
            return;
        }
        let list = self.registry.list.lock().unwrap_or_else(|e| e.into_inner());
        // ORDERING: read under the lock, which orders it with the list.
        self.generation = self.registry.generation.load(Ordering::Acquire);
        let old = std::mem::take(&mut self.snapshot);
        self.snapshot = list
            .iter()
            .map(|m| {
                let seen = old.iter().find(|(o, _)| Arc::ptr_eq(o, m)).map_or(0, |(_, s)| *s);
                (Arc::clone(m), seen)
            })
            .collect();
    }

    /// Whether a new item or registration is waiting (for spin and park
    /// checks; takes nothing).
    pub(crate) fn pending(&self) -> bool {
        self.changed() || self.snapshot.iter().any(|(m, seen)| m.posted_after(*seen))
    }

    /// Takes the next posted item, scanning round-robin for fairness.
    pub(crate) fn take(&mut self) -> Option<P> {
        self.refresh();
        let n = self.snapshot.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let (m, seen) = &mut self.snapshot[i];
            if let Some(item) = m.take_after(seen) {
                self.next = i + 1;
                return Some(item);
            }
        }
        None
    }
}

/// Model checks of the mailbox protocol: a poster that waits for each
/// item's completion before the next, and an owner that only reads.
#[cfg(all(test, pinned_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicU64 as Done;

    #[test]
    fn loom_the_owner_takes_each_item_once_in_order() {
        loom::model(|| {
            let mb = Arc::new(Mailbox::<u64>::new());
            let done = Arc::new(Done::new(0));
            let owner = {
                let (mb, done) = (Arc::clone(&mb), Arc::clone(&done));
                loom::thread::spawn(move || {
                    let (mut seen, mut got) = (0, Vec::new());
                    while got.len() < 2 {
                        match mb.take_after(&mut seen) {
                            Some(item) => {
                                got.push(item);
                                done.store(item, Ordering::Release); // the job "completes"
                            }
                            None => loom::thread::yield_now(),
                        }
                    }
                    got
                })
            };
            for item in [10, 20] {
                // SAFETY: the previous item completed (waited for below).
                unsafe { mb.put(item) };
                while done.load(Ordering::Acquire) != item {
                    loom::thread::yield_now();
                }
            }
            assert_eq!(owner.join().unwrap(), vec![10, 20]);
        });
    }
}
