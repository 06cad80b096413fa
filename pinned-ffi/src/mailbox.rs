//! Per-caller mailboxes: where blocking calls meet the owner.
//!
//! A round trip through a channel touches several shared cache lines (the
//! queue slot, its head and tail, the job). Here each calling thread owns
//! one mailbox per worker: a sequence number and a *lane* (the job it
//! carries, see [`lane`](crate::lane)) on one cache line. The caller writes
//! its job into the lane and bumps the number; the owner notices the new
//! number while scanning, runs the job in place and answers in the same
//! line. A blocking caller has at most one job in flight per worker, so one
//! mailbox per (thread, worker) is enough.
//!
//! Mailboxes register on a thread's first blocking call to a worker and
//! unregister when the thread exits.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::spin::Engaged;
use crate::sync::{AtomicU64, Mutex};

/// One thread's mailbox for one worker: its first cache line holds the
/// sequence number and the hot part of the lane, written by its thread
/// (and, for the answer, by the owner) and by no one else.
#[repr(C, align(128))]
pub(crate) struct Mailbox<L> {
    /// Bumped (SeqCst) after the lane was loaded; the owner compares it
    /// with the last number it took.
    seq: AtomicU64,
    lane: L,
}

impl<L> Mailbox<L> {
    fn new(lane: L) -> Self {
        Mailbox {
            seq: AtomicU64::new(0),
            lane,
        }
    }

    /// The job carrier. What may be written when is the lane's protocol.
    pub(crate) fn lane(&self) -> &L {
        &self.lane
    }

    /// Poster: announces the job just loaded into the lane; returns its
    /// post number (1, 2, ...).
    pub(crate) fn publish(&self) -> u64 {
        // ORDERING: the RMW's Release side publishes the lane's contents
        // to the owner's Acquire in `take_after`; being SeqCst it also
        // orders this post before the poster's SeqCst look at the owner's
        // `sleeping` flag (see `Doorbell::ring_after_post`), so no
        // separate fence is needed.
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Owner: the post number after `seen`, if any, and the new `seen`.
    fn take_after(&self, seen: &mut u64) -> Option<u64> {
        // ORDERING: Acquire pairs with `publish`'s Release, so the lane's
        // contents are those loaded before this number.
        let seq = self.seq.load(Ordering::Acquire);
        if seq == *seen {
            return None;
        }
        *seen = seq;
        Some(seq)
    }

    fn posted_after(&self, seen: u64) -> bool {
        // ORDERING: see `take_after`.
        self.seq.load(Ordering::Acquire) != seen
    }
}

#[cfg(test)]
impl<L> Mailbox<L> {
    /// A mailbox outside any registry, for protocol tests.
    pub(crate) fn for_test(lane: L) -> Self {
        Mailbox::new(lane)
    }

    /// Owner side of a protocol test: the last post number published, to
    /// start a test owner from (a fresh owner of a used mailbox must not
    /// take its last, answered post again).
    #[cfg(test)]
    pub(crate) fn published_for_test(&self) -> u64 {
        // ORDERING: see `take_after`.
        self.seq.load(Ordering::Acquire)
    }

    /// Owner side of a protocol test: the post after `seen`, if any.
    pub(crate) fn take_for_test(&self, seen: &mut u64) -> Option<Posted<L>> {
        self.take_after(seen).map(|seq| Posted {
            mailbox: NonNull::from(self),
            seq,
        })
    }
}

/// A post the owner took: which mailbox, and its post number.
///
/// The pointer stays valid while the owner handles the post: its poster
/// waits for the answer (so its thread, whose registration holds the
/// mailbox, cannot exit), and the scanner's snapshot holds the mailbox too.
pub(crate) struct Posted<L> {
    mailbox: NonNull<Mailbox<L>>,
    seq: u64,
}

// SAFETY: a Posted only gives shared access to the mailbox (the lane's
// protocol decides who writes what), so moving it to another thread needs
// the mailbox to be Sync.
unsafe impl<L: Sync> Send for Posted<L> {}

impl<L> Posted<L> {
    /// The post's mailbox.
    pub(crate) fn mailbox(&self) -> &Mailbox<L> {
        // SAFETY: valid while the post is being handled (see the type's
        // doc); a Posted exists only for that.
        unsafe { self.mailbox.as_ref() }
    }

    /// Its post number.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

/// A registered mailbox and its share of its thread's engaged guard.
type Entry<P> = (Arc<Mailbox<P>>, Arc<Engaged>);

/// A worker's mailboxes.
pub(crate) struct Mailboxes<P> {
    /// Each registered mailbox, with a share of the guard that counts its
    /// thread as engaged in hand-offs (see [`spin`](crate::spin)): the
    /// thread counts once, however many workers it calls, while any of its
    /// mailboxes is registered. A share drops with the entry when the
    /// thread exits, or with the list when the worker goes.
    list: Mutex<Vec<Entry<P>>>,
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

impl<P: Send + Sync + 'static> Registration for Registered<P> {
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
        // ORDERING: thread-local; no other thread reads it.
        let _ = LAST.try_with(|last| {
            if last.get().0 == self.key {
                last.set((0, std::ptr::null()));
            }
        });
        if let Some(registry) = self.registry.upgrade() {
            let mut list = registry.list.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|(m, _)| !Arc::ptr_eq(m, &self.mailbox));
            // ORDERING: Release publishes the new list to the owner's
            // Acquire check in `Scanner::refresh`.
            registry.generation.fetch_add(1, Ordering::Release);
        }
    }
}

thread_local! {
    static MINE: RefCell<Vec<Box<dyn Registration>>> = const { RefCell::new(Vec::new()) };
    /// The last mailbox `mine` returned, by key: a thread calling one
    /// worker over and over skips the search. Cleared when that
    /// registration goes (keys are never reused).
    static LAST: Cell<(u64, *const ())> = const { Cell::new((0, std::ptr::null())) };
    /// This thread's engaged guard while any registry holds a share of it.
    static ENGAGED_HERE: RefCell<Weak<Engaged>> = const { RefCell::new(Weak::new()) };
}

/// A share of this thread's engaged guard (see `Mailboxes::list`): a
/// blocking caller waits on one worker at a time, so a caller of several
/// workers is still one thread the cores must hold. (Counted once per
/// worker, a lone caller of a pool of 2 counted as two threads beside the
/// awake owner, so on two cores under load it parked on every call.)
fn engaged_here() -> Arc<Engaged> {
    ENGAGED_HERE
        .try_with(|here| {
            let mut here = here.borrow_mut();
            here.upgrade().unwrap_or_else(|| {
                let guard = Arc::new(Engaged::new());
                *here = Arc::downgrade(&guard);
                guard
            })
        })
        .unwrap_or_else(|_| Arc::new(Engaged::new()))
}

/// Drops this thread's registrations (loom models: their threads share
/// one OS thread's thread-locals, whose destructors would run outside the
/// model).
#[cfg(all(test, pinned_loom))]
pub(crate) fn forget_registrations() {
    let _ = LAST.try_with(|last| last.set((0, std::ptr::null())));
    let _ = MINE.try_with(|mine| mine.borrow_mut().clear());
}

impl<P: Send + Sync + 'static> Mailboxes<P> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Mailboxes {
            list: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
        })
    }

    /// This thread's mailbox for the worker `key`, registered on first use
    /// with the lane `make` gives. `None` if thread-locals are gone (the
    /// thread is exiting).
    ///
    /// The pointer stays valid until this thread exits or this registry is
    /// dropped (a thread's registrations are only ever removed by its exit,
    /// or when their registry is gone).
    ///
    /// # Safety
    /// `key` identifies this registry: no other registry is ever used with
    /// it (one key, one worker, one `P`), so the cached pointer for `key`
    /// is a `Mailbox<P>` of this registry.
    pub(crate) unsafe fn mine(
        self: &Arc<Self>,
        key: u64,
        make: impl FnOnce() -> P,
    ) -> Option<NonNull<Mailbox<P>>> {
        // ORDERING: thread-local.
        if let Ok((k, p)) = LAST.try_with(Cell::get) {
            if k == key && !p.is_null() {
                // SAFETY: LAST holds `key`'s mailbox while its registration
                // lives (cleared on drop), and by the contract it is a
                // Mailbox<P>.
                return Some(unsafe { NonNull::new_unchecked(p.cast_mut().cast::<Mailbox<P>>()) });
            }
        }
        MINE.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            let found = mine.iter().position(|r| r.key() == key);
            let index = match found {
                Some(i) => i,
                None => {
                    mine.retain(|r| r.alive()); // forget workers that are gone
                    let mailbox = Arc::new(Mailbox::new(make()));
                    let engaged = engaged_here();
                    self.list
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Arc::clone(&mailbox), engaged));
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
            let _ = LAST.try_with(|last| last.set((key, (mailbox as *const Mailbox<P>).cast())));
            NonNull::from(mailbox)
        })
        .ok()
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

impl<P: Send + Sync + 'static> Scanner<P> {
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
    #[inline]
    pub(crate) fn refresh(&mut self) {
        if self.changed() {
            self.reread();
        }
    }

    #[cold]
    #[inline(never)]
    fn reread(&mut self) {
        let list = self.registry.list.lock().unwrap_or_else(|e| e.into_inner());
        // ORDERING: read under the lock, which orders it with the list.
        self.generation = self.registry.generation.load(Ordering::Acquire);
        let old = std::mem::take(&mut self.snapshot);
        self.snapshot = list
            .iter()
            .map(|(m, _)| {
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

    /// Takes the next post, scanning round-robin for fairness. The caller
    /// handles it before taking another (the snapshot may change then).
    ///
    /// The owner's spin calls this on every round, so a round is a few
    /// loads: inlined into the spin, a plain index loop (an idle owner's
    /// round with one mailbox took 83 instructions with a chained iterator,
    /// 48 now, by callgrind).
    #[inline]
    pub(crate) fn take(&mut self) -> Option<Posted<P>> {
        self.refresh();
        let n = self.snapshot.len();
        let mut i = if self.next < n { self.next } else { 0 };
        for _ in 0..n {
            let (m, seen) = &mut self.snapshot[i];
            i += 1;
            if let Some(seq) = m.take_after(seen) {
                self.next = i;
                return Some(Posted {
                    mailbox: NonNull::from(&**m),
                    seq,
                });
            }
            if i == n {
                i = 0;
            }
        }
        None
    }
}

/// Model checks of the mailbox protocol: a poster that loads its lane and
/// waits for each post's completion before the next, and an owner that
/// reads the lane after seeing the post.
#[cfg(all(test, pinned_loom))]
mod loom_tests {
    use super::*;
    use crate::sync::UnsafeCell;
    use loom::sync::atomic::AtomicU64 as Done;

    /// A lane holding one number.
    struct Cell(UnsafeCell<u64>);
    // SAFETY: written by the poster only while no post is outstanding, read
    // by the owner only after it took the post (the protocol under test).
    unsafe impl Sync for Cell {}

    #[test]
    fn loom_the_owner_takes_each_post_once_with_its_contents() {
        loom::model(|| {
            let mb = Arc::new(Mailbox::new(Cell(UnsafeCell::new(0))));
            let done = Arc::new(Done::new(0));
            let owner = {
                let (mb, done) = (Arc::clone(&mb), Arc::clone(&done));
                loom::thread::spawn(move || {
                    let (mut seen, mut got) = (0, Vec::new());
                    while got.len() < 2 {
                        match mb.take_after(&mut seen) {
                            Some(seq) => {
                                // SAFETY: the post is ours until we complete it.
                                let value = mb.lane().0.with_mut(|v| unsafe { *v });
                                got.push((seq, value));
                                done.store(seq, Ordering::Release); // the job "completes"
                            }
                            None => loom::thread::yield_now(),
                        }
                    }
                    got
                })
            };
            for value in [10, 20] {
                // SAFETY: the previous post completed (waited for below).
                mb.lane().0.with_mut(|v| unsafe { *v = value });
                let seq = mb.publish();
                while done.load(Ordering::Acquire) != seq {
                    loom::thread::yield_now();
                }
            }
            assert_eq!(owner.join().unwrap(), vec![(1, 10), (2, 20)]);
        });
    }
}
