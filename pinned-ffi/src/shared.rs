//! The part of a worker shared by its handle, its callers and its owner
//! thread(s): flags, counters, the doorbell and the exit handshake.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::Builder;
use crate::doorbell::Doorbell;
use crate::error::Error;
use crate::lane::Owner;
use crossbeam_utils::CachePadded;

use crate::metrics::{Counters, Histogram};
use crate::room::Room;

/// The part of a worker shared by its handle and its owner thread(s).
/// Worker ids: unique in the process, never reused.
static NEXT_WORKER_ID: AtomicU64 = AtomicU64::new(1);

/// Owner threads started so far (see [`owners_started`](crate::owners_started)).
pub(crate) static OWNERS_STARTED: AtomicU64 = AtomicU64::new(0);

/// An owner thread's stack unless [`Builder::stack_size`] says otherwise:
/// the size of a process's main thread, which C libraries written for it
/// tend to assume, and room for results of up to
/// [`MAX_RESULT`](crate::PinnedWorker::MAX_RESULT). Untouched stack costs
/// address space only.
pub(crate) const DEFAULT_OWNER_STACK: usize = 8 << 20;

pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) config: Builder,
    pub(crate) epoch: Instant,
    /// Intake is over (closed, stopped, or the owner died). A shim atomic:
    /// the loom model of a close racing posts runs this code.
    pub(crate) closed: crate::sync::AtomicBool,
    /// Written by every caller: a cache line of its own.
    pub(crate) inflight: CachePadded<crate::sync::AtomicUsize>,
    pub(crate) broken: AtomicBool,
    pub(crate) broken_until: AtomicU64,
    pub(crate) broken_reason: Mutex<String>,
    pub(crate) stopped: AtomicBool,
    pub(crate) aborting: AtomicBool,
    /// Why the owner thread died, if it did (see `owner::OwnerThread`).
    pub(crate) died: Mutex<Option<String>>,
    pub(crate) counters: CachePadded<Counters>,
    pub(crate) queue_wait: CachePadded<Histogram>,
    pub(crate) run_time: CachePadded<Histogram>,
    /// Owner threads not yet joined: the current one and any it replaced.
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) exited: crate::sync::Mutex<bool>,
    pub(crate) exit_cv: crate::sync::Condvar,
    pub(crate) next_bound: AtomicU64,
    pub(crate) owner_tid: AtomicU64,
    /// How producers signal work and wake a parking owner.
    pub(crate) bell: Doorbell,
    /// The queue's bound, counted exactly.
    pub(crate) room: Room,
    /// Jobs a closer answered `Shutdown` itself, at its deadline (the
    /// owner's counters have a single writer).
    pub(crate) rejected_by_closer: AtomicU64,
    /// Panics a closer contained answering them (their captures' drops).
    pub(crate) contained_by_closer: AtomicU64,
    /// A close gave up waiting for a running job: the owner exits on its
    /// own, and dropping the handle does not wait for it.
    pub(crate) detached: AtomicBool,
    /// Releases of owner-bound values sent and not yet taken.
    pub(crate) releases_pending: crate::sync::AtomicUsize,
    /// When the running job started, for the watchdog.
    pub(crate) health: crate::health::Health,
    /// How callers' recent waits for this owner went (their spin budget);
    /// written only when a parked wait changes it.
    pub(crate) caller_spins: CachePadded<crate::spin::History>,
    /// Where the owner was last seen, for ticket waiters: noted after a
    /// park and after a job whose waiter stopped spinning, read only by
    /// waits past their first spins.
    pub(crate) owner_cpu: crate::spin::CpuHint,
}

impl Shared {
    /// A fresh worker's shared part, with a new id.
    pub(crate) fn new(config: Builder) -> Shared {
        // ORDERING: only uniqueness matters.
        let id = NEXT_WORKER_ID.fetch_add(1, Ordering::Relaxed);
        let name = config.name.clone().unwrap_or_else(|| format!("pinned-{id}"));
        let config_capacity = config.capacity;
        let config_hang_limit = config.hang_limit;
        Shared {
            id,
            name,
            config,
            epoch: Instant::now(),
            closed: crate::sync::AtomicBool::new(false),
            inflight: CachePadded::new(crate::sync::AtomicUsize::new(0)),
            broken: AtomicBool::new(false),
            broken_until: AtomicU64::new(0),
            broken_reason: Mutex::new(String::new()),
            stopped: AtomicBool::new(false),
            aborting: AtomicBool::new(false),
            died: Mutex::new(None),
            counters: CachePadded::new(Counters::default()),
            queue_wait: CachePadded::new(Histogram::new()),
            run_time: CachePadded::new(Histogram::new()),
            threads: Mutex::new(Vec::new()),
            exited: crate::sync::Mutex::new(false),
            exit_cv: crate::sync::Condvar::new(),
            next_bound: AtomicU64::new(1),
            owner_tid: AtomicU64::new(0),
            bell: Doorbell::new(),
            room: Room::new(config_capacity),
            rejected_by_closer: AtomicU64::new(0),
            contained_by_closer: AtomicU64::new(0),
            detached: AtomicBool::new(false),
            releases_pending: crate::sync::AtomicUsize::new(0),
            caller_spins: CachePadded::new(crate::spin::History::new()),
            owner_cpu: crate::spin::CpuHint::new(),
            health: crate::health::Health::new(config_hang_limit),
        }
    }

    pub(crate) fn thread_builder(&self) -> thread::Builder {
        let size = self.config.stack_size.unwrap_or(DEFAULT_OWNER_STACK);
        thread::Builder::new().name(self.name.clone()).stack_size(size)
    }

    /// Runs first on every owner thread: marks it, applies the CPU set.
    pub(crate) fn enter_owner_thread(&self) -> std::io::Result<()> {
        self.mark_owner_thread();
        match &self.config.cpus {
            Some(cpus) => crate::threads::set_current_affinity(cpus),
            None => Ok(()),
        }
    }

    /// Makes the calling thread this worker's owner: the deadlock
    /// detector's marker, the owner count, the thread id and the thread
    /// producers unpark. Everything [`enter_owner_thread`](Self::enter_owner_thread)
    /// does but the CPU set (an owner on a caller's thread keeps its
    /// placement; see `here.rs`).
    pub(crate) fn mark_owner_thread(&self) {
        crate::waits::become_owner_of(self.id);
        // ORDERING: a statistic.
        OWNERS_STARTED.fetch_add(1, Ordering::Relaxed);
        // ORDERING: informational.
        self.owner_tid
            .store(crate::threads::current_tid(), Ordering::Relaxed);
        self.bell.set_owner(crate::sync::current());
    }

    pub(crate) fn nanos_now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn trip(&self, reason: String, cooldown: Duration) {
        *self.broken_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        let until = self
            .nanos_now()
            .saturating_add(u64::try_from(cooldown.as_nanos()).unwrap_or(u64::MAX));
        // ORDERING: the reason is published by the mutex; these two only
        // steer a fast-fail check, which the owner re-checks.
        self.broken_until.store(until, Ordering::Relaxed);
        self.broken.store(true, Ordering::Release);
    }

    pub(crate) fn heal(&self) {
        // ORDERING: see `trip`.
        self.broken.store(false, Ordering::Release);
    }

    /// `Some(reason)` while callers should fail fast.
    #[inline]
    pub(crate) fn broken_now(&self) -> Option<String> {
        // ORDERING: see `trip`.
        if !self.broken.load(Ordering::Acquire) {
            return None;
        }
        self.broken_reason_now()
    }

    /// `broken_now` once the flag was seen set.
    #[cold]
    pub(crate) fn broken_reason_now(&self) -> Option<String> {
        if self.nanos_now() >= self.broken_until.load(Ordering::Relaxed) {
            return None; // cooldown over: let a job through to trigger re-init
        }
        Some(
            self.broken_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    pub(crate) fn refusal(&self) -> Error {
        if let Some(reason) = &*self.died.lock().unwrap_or_else(|e| e.into_inner()) {
            return Error::OwnerDied(reason.clone());
        }
        // ORDERING: flags read after `closed` was seen set.
        if self.stopped.load(Ordering::Acquire) {
            Error::Stopped
        } else {
            Error::Closed
        }
    }

    /// The owner thread is dying: record why and refuse all intake.
    pub(crate) fn die(&self, reason: String) {
        *self.died.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        // ORDERING: as in `close_shared`.
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.room.wake_all();
    }

    /// Accepted jobs refused without running, by the owner or a closer.
    pub(crate) fn rejected(&self) -> u64 {
        // ORDERING: statistics.
        self.counters.rejected.load(Ordering::Relaxed) + self.rejected_by_closer.load(Ordering::Relaxed)
    }

    pub(crate) fn has_exited(&self) -> bool {
        *self.exited.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn mark_exited(&self) {
        self.bell.clear_owner();
        *self.exited.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.exit_cv.notify_all();
    }

    /// Waits for the last owner thread to finish; `false` on time-out.
    pub(crate) fn wait_exited(&self, deadline: Option<Instant>) -> bool {
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        while !*exited {
            match deadline {
                None => exited = self.exit_cv.wait(exited).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    exited = self
                        .exit_cv
                        .wait_timeout(exited, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        true
    }
}

/// What a caller posting to a mailbox needs to know of the owner.
impl Owner for Shared {
    #[inline]
    fn posted(&self) {
        self.bell.ring_after_post();
    }

    #[inline]
    fn taking(&self) -> bool {
        // ORDERING: SeqCst after the post's SeqCst publish, paired with
        // `drain_rejecting`'s SeqCst store and fence before its scans:
        // if this reads false the store comes later in the single order,
        // so those scans see the post.
        crate::sync::seqcst_handshake();
        !self.closed.load(Ordering::SeqCst)
    }

    fn exited(&self) -> bool {
        self.has_exited()
    }

    fn refusal(&self) -> Error {
        Shared::refusal(self)
    }

    fn history(&self) -> &crate::spin::History {
        &self.caller_spins
    }
}

/// A producer in flight (see `PinnedWorker::enter`).
pub(crate) struct InFlight<'a>(pub(crate) &'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // ORDERING: see `PinnedWorker::enter`.
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}
