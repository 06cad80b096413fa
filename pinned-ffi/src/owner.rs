//! The owner thread: its loop, how it drains on exit, and how it moves its
//! work to a fresh thread on re-initialisation (or, on a caller's thread
//! made owner by `here.rs`, re-initialises in place).

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use crate::config::PanicPolicy;
use crate::doorbell::Look;
use crate::error::{panic_message, Error};
use crate::intake::{poll_queues, release_pending, took, Event};
use crate::job::{Msg, OwnerState, PostedJob, RunOutcome};
use crate::lane::Lane;
use crate::mailbox::Scanner;
use crate::metrics::Counters;
use crate::shared::Shared;
use crate::spin::{spin_with, Engaged, Waiter};
use crate::unwind::{catch, drop_payload};

/// The owner side: channels, the init closure for re-initialisation and the
/// breaker's memory. Moves to a fresh thread on re-init.
pub(crate) struct Core<S> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) rx: Receiver<Msg<S>>,
    pub(crate) releases: Receiver<u64>,
    pub(crate) mailboxes: Scanner<Lane<OwnerState<S>>>,
    pub(crate) init: Box<dyn FnMut() -> Result<S, String> + Send>,
    pub(crate) panics: VecDeque<Instant>,
    /// Held while the owner thread is awake (dropped while it parks).
    pub(crate) engaged: Option<Engaged>,
    /// When the last re-init started, and how many in a row have failed:
    /// attempts are spaced (see `respawn`).
    pub(crate) last_reinit: Option<Instant>,
    pub(crate) reinit_failures: u32,
    /// A `Stop` was seen: drain the mailboxes and exit.
    pub(crate) stopping: bool,
    /// The owner is a caller's thread (see `here.rs`): re-initialise on
    /// this thread instead of moving to a fresh one.
    pub(crate) in_place: bool,
}

impl<S> Core<S> {
    /// A fresh owner side.
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Msg<S>>,
        releases: Receiver<u64>,
        mailboxes: Scanner<Lane<OwnerState<S>>>,
        init: Box<dyn FnMut() -> Result<S, String> + Send>,
    ) -> Self {
        Core {
            shared,
            rx,
            releases,
            mailboxes,
            init,
            panics: VecDeque::new(),
            engaged: None,
            last_reinit: None,
            reinit_failures: 0,
            stopping: false,
            in_place: false,
        }
    }

    /// Counts panics contained on the owner outside jobs' own catches.
    pub(crate) fn contained(&self, panics: u32) {
        if panics > 0 {
            Counters::add(&self.shared.counters.contained, u64::from(panics));
        }
    }
}

impl<S: 'static> Core<S> {
    /// The next message (see `next_event`); a job taken off the queue
    /// frees its place there.
    pub(crate) fn next(&mut self) -> Event<S> {
        let event = self.next_event();
        if let Event::Msg(msg) = &event {
            let woken = took(&self.shared, msg);
            self.contained(woken);
        }
        event
    }

    /// The next message: queued messages, then releases, then mailbox
    /// posts are taken without blocking; when there are none the owner
    /// spins for `owner_spin`, then parks until a producer wakes it.
    fn next_event(&mut self) -> Event<S> {
        loop {
            let (rx, releases) = (&self.rx, &self.releases);
            let shared = &self.shared;
            if let Some(event) = self.shared.bell.take_queued(|| poll_queues(rx, releases, shared)) {
                return event;
            }
            // Spin (its first round is an immediate look): a post is taken
            // the moment it is seen (the hot path); queued work goes round
            // the loop.
            let mut post = None;
            let spun = spin_with(
                || {
                    post = self.mailboxes.take();
                    post.is_some() || self.shared.bell.queued_hint()
                },
                self.shared.config.owner_spin,
                None,
                // An idle owner's wait is not a hand-off: no history (an
                // idle gap says nothing of how long jobs take).
                None,
                // A caller parked on this CPU posts only once we leave it.
                crate::spin::parked_poster,
                Waiter::IdleOwner,
            );
            if let Some(post) = post {
                return Event::Msg(Msg::Posted(PostedJob(post)));
            }
            if spun.is_ok() {
                continue;
            }
            let (mailboxes, engaged, shared) = (&self.mailboxes, &mut self.engaged, &self.shared);
            let look = || {
                if !rx.is_empty() || !releases.is_empty() || mailboxes.pending() {
                    return Look::Busy;
                }
                // Closed, idle, and no producer between admission and its
                // send: stop, whether or not a `Stop` comes (a close that
                // could not wait may have found the queue full). Read in
                // this order: a producer admitted after the in-flight read
                // sees `closed` (`enter`); one that sent before it left its
                // job in the queue, which the second look sees.
                // ORDERING: SeqCst, the other side of `enter`'s handshake.
                if shared.closed.load(Ordering::SeqCst) {
                    crate::sync::seqcst_handshake();
                    // A read-modify-write reads the latest count (a plain
                    // load could, in the memory model, return an old one).
                    if shared.inflight.fetch_add(0, Ordering::SeqCst) == 0 {
                        if !rx.is_empty() || !releases.is_empty() || mailboxes.pending() {
                            return Look::Busy;
                        }
                        return Look::Found(Event::Disconnected);
                    }
                    // A producer is between admission and its refusal or
                    // send: park; the next call, a release, or the
                    // handle's close or drop wakes this owner to stop.
                }
                // An empty, disconnected queue looks empty: ask before
                // parking (no sender is left to wake us).
                match rx.try_recv() {
                    Ok(m) => {
                        crate::sync::channel_recv();
                        Look::Found(Event::Msg(m))
                    }
                    Err(TryRecvError::Disconnected) => Look::Found(Event::Disconnected),
                    Err(TryRecvError::Empty) => Look::Idle,
                }
            };
            let park = || {
                *engaged = None; // a parked owner takes no core
                crate::sync::park();
                *engaged = Some(Engaged::owner());
                shared.owner_cpu.note_here();
            };
            if let Some(event) = self.shared.bell.sleep(look, park) {
                return event;
            }
        }
    }

    /// Takes a job posted to a mailbox, if any.
    pub(crate) fn posted(&mut self) -> Option<Msg<S>> {
        self.mailboxes.take().map(|post| Msg::Posted(PostedJob(post)))
    }

    /// Records a panic; `true` if it trips the breaker.
    pub(crate) fn breaker_trips(&mut self) -> bool {
        let Some(b) = self.shared.config.breaker else {
            return false;
        };
        let now = Instant::now();
        self.panics.push_back(now);
        while self
            .panics
            .front()
            .is_some_and(|t| now.duration_since(*t) > b.window)
        {
            self.panics.pop_front();
        }
        if self.panics.len() >= b.max_panics as usize {
            self.panics.clear();
            self.shared.trip(
                format!("{} panics within {:?}", b.max_panics, b.window),
                b.cooldown,
            );
            return true;
        }
        false
    }

    pub(crate) fn cooldown(&self) -> Duration {
        self.shared
            .config
            .breaker
            .map_or(Duration::from_secs(1), |b| b.cooldown)
    }
}

/// The least spacing between two re-init attempts; it doubles with each
/// failure in a row, up to [`REINIT_MAX_SPACING`], so a re-init that keeps
/// failing cannot start owner threads in a tight loop.
pub(crate) const REINIT_MIN_SPACING: Duration = Duration::from_millis(10);
/// The most a failing re-init's spacing grows to.
pub(crate) const REINIT_MAX_SPACING: Duration = Duration::from_secs(1);

/// An owner thread's holdings while it runs: if the thread ends any other
/// way than through the loop's exit or a hand-off to a fresh thread (a
/// panic in the library itself, or in a tracing subscriber it calls), the
/// guard's drop tears the state down under catches, marks the worker dead
/// and closed, answers every job still queued or posted, and lets `close`
/// and `Drop` return.
struct OwnerThread<S: 'static> {
    /// `None` once handed to a fresh thread or exited cleanly.
    core: Option<Core<S>>,
    /// `None` while the state is missing (a failed re-init).
    owner: Option<OwnerState<S>>,
    /// Why the thread is dying, when a panic was caught.
    died: Option<String>,
}

impl<S: 'static> Drop for OwnerThread<S> {
    fn drop(&mut self) {
        let Some(mut core) = self.core.take() else {
            return; // handed on, or exited cleanly
        };
        let shared = Arc::clone(&core.shared);
        let reason = self
            .died
            .take()
            .unwrap_or_else(|| "the owner thread ended unexpectedly".into());
        let owner = self.owner.take();
        let dying = Arc::clone(&shared);
        let _ = catch(move || {
            dying.die(reason.clone());
            let torn = owner.map_or(0, OwnerState::teardown);
            core.contained(torn + 1); // and the panic that ended the loop
            drain_rejecting(&mut core, Error::OwnerDied(reason));
        });
        shared.mark_exited();
    }
}

/// Starts serving on this owner thread. `owner` is `None` while the state
/// is missing (a failed re-init); `pending` is a job to handle first (the
/// one that triggered a re-init).
pub(crate) fn owner_thread<S: 'static>(core: Core<S>, owner: Option<OwnerState<S>>, pending: Option<Msg<S>>) {
    let shared = Arc::clone(&core.shared);
    let mut thread = OwnerThread {
        core: Some(core),
        owner,
        died: None,
    };
    let mut pending = pending;
    loop {
        let step = panic::catch_unwind(AssertUnwindSafe(|| serve(&mut thread, pending.take())));
        match step {
            Ok(Step::Exit) => {
                // Stop: every job accepted before it has run. Drop the state
                // here, on its owner thread, then make sure nothing is left
                // without an outcome.
                if let Some(mut core) = thread.core.take() {
                    let torn = thread.owner.take().map_or(0, OwnerState::teardown);
                    core.contained(torn);
                    drain_rejecting(&mut core, shared.refusal());
                }
                shared.mark_exited();
                return;
            }
            Ok(Step::Reinit(mut job)) => {
                if let Some(core) = thread.core.as_mut().filter(|c| c.in_place) {
                    // The thread is the point (a process's main thread):
                    // the state was dropped here, and is made again here.
                    space_reinit(core);
                    thread.owner = reinit_here(core, &mut job, Ok(()));
                    pending = job;
                    continue;
                }
                let Some(core) = thread.core.take() else { return };
                match respawn(core, job) {
                    Ok(()) => return, // the fresh thread carries on
                    Err(back) => {
                        let (core, job) = *back;
                        // No fresh thread: carry on here without state; the
                        // breaker (tripped by `respawn`) answers the job.
                        thread.core = Some(core);
                        pending = job;
                    }
                }
            }
            Err(payload) => {
                thread.died = Some(panic_message(&*payload));
                drop_payload(payload);
                return; // `thread`'s drop answers everyone
            }
        }
    }
}

/// What `serve` asks of its thread.
enum Step<S> {
    /// Stopped: tear down and exit.
    Exit,
    /// Re-initialise on a fresh thread, which then handles this job.
    Reinit(Option<Msg<S>>),
}

/// The owner loop proper: takes jobs and runs or refuses them until a stop
/// or a re-init.
fn serve<S: 'static>(t: &mut OwnerThread<S>, mut pending: Option<Msg<S>>) -> Step<S> {
    let Some(core) = t.core.as_mut() else {
        return Step::Exit;
    };
    let shared = Arc::clone(&core.shared);
    let c = &shared.counters;
    core.engaged.get_or_insert_with(Engaged::owner);
    loop {
        let job = match pending.take() {
            Some(job) => job,
            // Stop: everything queued before it has run; run what was posted
            // to mailboxes too (posted before close sent Stop), then exit.
            None if core.stopping => match core.posted() {
                Some(job) => {
                    Counters::bump(&c.submitted);
                    job
                }
                None => return Step::Exit,
            },
            None => match core.next() {
                Event::Msg(Msg::Stop) | Event::Disconnected => {
                    core.stopping = true;
                    continue;
                }
                Event::Msg(job) => {
                    // Counted here, by the owner, rather than by every
                    // caller on a shared line.
                    Counters::bump(&c.submitted);
                    job
                }
                Event::Release(id) => {
                    let torn = t.owner.as_mut().map_or(0, |o| o.release(id));
                    core.contained(torn);
                    continue;
                }
            },
        };
        let freed = release_pending(&core.releases, &shared, t.owner.as_mut());
        core.contained(freed);
        // ORDERING: set by close_timeout before it waits for us.
        if shared.aborting.load(Ordering::Acquire) {
            Counters::bump(&c.rejected);
            core.contained(job.reject(Error::Shutdown));
            continue;
        }
        // ORDERING: set by this loop (Stop policy) or close.
        if shared.stopped.load(Ordering::Acquire) {
            Counters::bump(&c.rejected);
            core.contained(job.reject(Error::Stopped));
            continue;
        }
        // ORDERING: see Shared::trip.
        if t.owner.is_none() || shared.broken.load(Ordering::Acquire) {
            if shared.broken_now().is_none() {
                // Cooldown over (or no state): re-initialise on a fresh
                // thread, which then handles this job.
                let torn = t.owner.take().map_or(0, OwnerState::teardown);
                core.contained(torn);
                return Step::Reinit(Some(job));
            }
            Counters::bump(&c.rejected);
            let reason = shared
                .broken_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            core.contained(job.reject(Error::Broken(reason)));
            continue;
        }
        let Some(o) = t.owner.as_mut() else { continue };
        // Only jobs stamped at submission (a calling thread's first, then
        // one in `TIMED_ONE_JOB_IN`) are timed from the queue, and the owner
        // times the run of one in `TIMED_ONE_JOB_IN` of all jobs too, so
        // callers whose jobs go unstamped are seen: the clock stays off most
        // hand-offs.
        let start = match job.enqueued() {
            Some(q) => {
                let now = Instant::now();
                shared.queue_wait.record(now.saturating_duration_since(q));
                Some(now)
            }
            // ORDERING: the owner's own counter (single writer); it only
            // picks which jobs to sample.
            None => (shared.config.timings
                && c.submitted
                    .load(Ordering::Relaxed)
                    .is_multiple_of(u64::from(crate::worker::TIMED_ONE_JOB_IN)))
            .then(Instant::now),
        };
        #[cfg(feature = "tracing")]
        let _span = job.span(&shared).entered();
        // Counted before the caller sees the outcome, so a caller that
        // reads the metrics right after finds its job in them.
        let mut woken = 0;
        let health = &shared.health;
        let mut tally = |outcome| {
            health.job_ends();
            match outcome {
                RunOutcome::Done => {
                    Counters::bump(&c.completed);
                    if let Some(s) = start {
                        shared.run_time.record(s.elapsed());
                    }
                }
                RunOutcome::Cancelled => Counters::bump(&c.cancelled),
                RunOutcome::Panicked => {
                    Counters::bump(&c.panicked);
                    if shared.config.panic_policy == PanicPolicy::Stop {
                        shared.stopped.store(true, Ordering::Release);
                        shared.closed.store(true, Ordering::SeqCst);
                        // Waiters for room are refused now (every other
                        // closer wakes them too).
                        woken += shared.room.wake_all();
                    }
                }
            }
        };
        health.job_starts(&shared);
        let handling = job.run(o, &mut tally);
        // Its waiter stopped spinning (see `note_poster`; or the note is
        // an older job's, as after a cancelled one: one needless store):
        // an owner that never parks would otherwise leave its CPU hint
        // stale for good.
        if crate::spin::parked_poster() != crate::spin::Partner::UNKNOWN {
            shared.owner_cpu.note_here();
        }
        health.job_ends();
        core.contained(handling.contained + woken);
        if handling.outcome == RunOutcome::Panicked {
            if core.breaker_trips() {
                continue; // state stays until the cooldown's re-init
            }
            if shared.config.panic_policy == PanicPolicy::Reinit {
                let torn = t.owner.take().map_or(0, OwnerState::teardown);
                core.contained(torn);
                return Step::Reinit(None);
            }
            // Keep: go on. Stop: stopped in `tally`.
        }
        #[cfg(all(test, not(pinned_loom)))]
        if tests::DIE_AFTER_NEXT_JOB.with(|d| d.replace(false)) {
            panic!("injected: the owner loop itself panics");
        }
    }
}

/// Refuses further intake and gives every job still queued or posted an
/// outcome. Queue producers already past the intake check are waited for
/// (a blocked sender is unblocked by the draining), so none can send after
/// the last look. A mailbox post that lands after the last look was
/// published after `closed` was set, so its poster sees `closed` when it
/// checks (`Owner::taking`), waits for this thread's exit and takes its job
/// back.
pub(crate) fn drain_rejecting<S: 'static>(core: &mut Core<S>, error: Error) {
    let shared = Arc::clone(&core.shared);
    // ORDERING: see `PinnedWorker::enter`; the fence orders the store
    // before the mailbox scans below (see `Owner::taking`).
    shared.closed.store(true, Ordering::SeqCst);
    crate::sync::fence(Ordering::SeqCst);
    loop {
        let idle = shared.inflight.fetch_add(0, Ordering::SeqCst) == 0;
        while let Ok(msg) = core.rx.try_recv() {
            crate::sync::channel_recv();
            let woken = took(&shared, &msg);
            core.contained(woken);
            if !matches!(msg, Msg::Stop) {
                Counters::bump(&shared.counters.rejected);
                core.contained(msg.reject(error.clone()));
            }
        }
        while let Some(job) = core.posted() {
            Counters::bump(&shared.counters.rejected);
            core.contained(job.reject(error.clone()));
        }
        if idle {
            break;
        }
        crate::sync::yield_now();
    }
}

/// How long to wait before the next re-init attempt.
fn reinit_spacing(failures: u32) -> Duration {
    REINIT_MIN_SPACING
        .saturating_mul(1 << failures.min(16))
        .min(REINIT_MAX_SPACING)
}

/// Waits out the spacing between re-init attempts (see [`respawn`]) and
/// notes this attempt's start.
fn space_reinit<S>(core: &mut Core<S>) {
    let spacing = reinit_spacing(core.reinit_failures);
    if let Some(last) = core.last_reinit {
        let since = last.elapsed();
        if since < spacing {
            thread::sleep(spacing - since);
        }
    }
    core.last_reinit = Some(Instant::now());
}

/// Re-runs `init` on this thread, the owner now (`entered` says whether it
/// could become one). On success the breaker closes; on failure it trips
/// and `pending` is answered with the reason. Returns the new state, if any.
fn reinit_here<S: 'static>(
    core: &mut Core<S>,
    pending: &mut Option<Msg<S>>,
    entered: std::io::Result<()>,
) -> Option<OwnerState<S>> {
    let shared = Arc::clone(&core.shared);
    Counters::bump(&shared.counters.reinits);
    let made = match entered {
        Ok(()) => match catch(&mut core.init) {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => Err(format!("re-init failed: {e}")),
            Err(caught) => {
                core.contained(u32::from(caught.payload_panicked));
                Err(format!("re-init panicked: {}", caught.message))
            }
        },
        Err(e) => Err(format!("re-init could not set the CPU set: {e}")),
    };
    match made {
        Ok(state) => {
            core.reinit_failures = 0;
            shared.heal();
            Some(OwnerState::new(state))
        }
        Err(reason) => {
            core.reinit_failures = core.reinit_failures.saturating_add(1);
            let cooldown = core.cooldown().max(reinit_spacing(core.reinit_failures));
            shared.trip(reason.clone(), cooldown);
            if let Some(job) = pending.take() {
                Counters::bump(&shared.counters.rejected);
                core.contained(job.reject(Error::Broken(reason)));
            }
            None
        }
    }
}

/// Starts a fresh owner thread that re-runs `init` and carries on the loop
/// with `pending` first. Attempts are spaced at least
/// [`REINIT_MIN_SPACING`] apart (more after failures in a row). If `init`
/// fails, the pending job is answered with the breaker's error; if the
/// thread cannot be created, everything comes back.
#[allow(clippy::type_complexity)]
fn respawn<S: 'static>(
    mut core: Core<S>,
    pending: Option<Msg<S>>,
) -> Result<(), Box<(Core<S>, Option<Msg<S>>)>> {
    let shared = Arc::clone(&core.shared);
    space_reinit(&mut core);
    // The job and core move into the new thread; keep a way back if the
    // thread cannot be created.
    let slot: Arc<Mutex<Option<(Core<S>, Option<Msg<S>>)>>> = Arc::new(Mutex::new(Some((core, pending))));
    let theirs = Arc::clone(&slot);
    let spawned = shared.thread_builder().spawn(move || {
        let Some((mut core, mut pending)) = theirs.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        drop(theirs);
        let entered = core.shared.enter_owner_thread();
        let owner = reinit_here(&mut core, &mut pending, entered);
        owner_thread(core, owner, pending);
    });
    match spawned {
        Ok(handle) => {
            let mut threads = shared.threads.lock().unwrap_or_else(|e| e.into_inner());
            threads.retain(|h| !h.is_finished());
            threads.push(handle);
            Ok(())
        }
        Err(e) => {
            let back = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some((core, pending)) = back else {
                return Ok(()); // unreachable: a thread that never started took nothing
            };
            shared.trip(format!("cannot start a fresh owner thread: {e}"), core.cooldown());
            Err(Box::new((core, pending)))
        }
    }
}

#[cfg(all(test, not(pinned_loom)))]
#[path = "owner_tests.rs"]
pub(crate) mod tests;

/// Model checks of the production paths: a real `PinnedWorker` handle, the
/// real owner loop (`owner_thread`) on a loom thread, and the real `close`,
/// wired as `Builder::spawn` wires them minus the std thread.
#[cfg(all(test, pinned_loom))]
#[path = "owner_loom.rs"]
mod loom_tests;
