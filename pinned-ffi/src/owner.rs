//! The owner thread: its loop, how it drains on exit, and how it moves its
//! work to a fresh thread on re-initialisation.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use crate::builder::PanicPolicy;
use crate::doorbell::Look;
use crate::error::{panic_message, Error};
use crate::job::{Msg, OwnerState, PostedJob, RunOutcome};
use crate::lane::Lane;
use crate::mailbox::Scanner;
use crate::metrics::Counters;
use crate::shared::Shared;
use crate::spin::{spin_until_done, Engaged};

pub(crate) enum Event<S> {
    Msg(Msg<S>),
    Release(u64),
    Disconnected,
}

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
}

impl<S: 'static> Core<S> {
    /// The next message: queued messages, then releases, then mailbox
    /// posts are taken without blocking; when there are none the owner
    /// spins for `owner_spin`, then parks until a producer wakes it.
    pub(crate) fn next(&mut self) -> Event<S> {
        loop {
            let (rx, releases) = (&self.rx, &self.releases);
            if let Some(event) = self.shared.bell.take_queued(|| poll_queues(rx, releases)) {
                return event;
            }
            // Spin (its first round is an immediate look): a post is taken
            // the moment it is seen (the hot path); queued work goes round
            // the loop.
            let mut post = None;
            let work = spin_until_done(
                || {
                    post = self.mailboxes.take();
                    post.is_some() || self.shared.bell.queued_hint()
                },
                self.shared.config.owner_spin,
                None,
            );
            if let Some(post) = post {
                return Event::Msg(Msg::Posted(PostedJob(post)));
            }
            if work {
                continue;
            }
            let (mailboxes, engaged) = (&self.mailboxes, &mut self.engaged);
            let look = || {
                if !rx.is_empty() || !releases.is_empty() || mailboxes.pending() {
                    return Look::Busy;
                }
                // An empty, disconnected queue looks empty: ask before
                // parking (no sender is left to wake us).
                match rx.try_recv() {
                    Ok(m) => Look::Found(Event::Msg(m)),
                    Err(TryRecvError::Disconnected) => Look::Found(Event::Disconnected),
                    Err(TryRecvError::Empty) => Look::Idle,
                }
            };
            let park = || {
                *engaged = None; // a parked owner takes no core
                thread::park();
                *engaged = Some(Engaged::new());
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

/// Takes the next queued message or release, if any.
pub(crate) fn poll_queues<S>(rx: &Receiver<Msg<S>>, releases: &Receiver<u64>) -> Option<Event<S>> {
    match rx.try_recv() {
        Ok(m) => return Some(Event::Msg(m)),
        Err(TryRecvError::Disconnected) => return Some(Event::Disconnected),
        Err(TryRecvError::Empty) => {}
    }
    releases.try_recv().ok().map(Event::Release)
}

/// The owner thread's loop. `owner` is `None` while the state is missing
/// (a failed re-init). `pending` is a job to handle first (the one that
/// triggered a re-init).
pub(crate) fn owner_loop<S: 'static>(
    mut core: Core<S>,
    mut owner: Option<OwnerState<S>>,
    mut pending: Option<Msg<S>>,
) {
    let shared = Arc::clone(&core.shared);
    let c = &shared.counters;
    let mut stopping = false;
    core.engaged.get_or_insert_with(Engaged::new);
    loop {
        let job = match pending.take() {
            Some(job) => job,
            // Stop: everything queued before it has run; run what was posted
            // to mailboxes too (posted before close sent Stop), then exit.
            None if stopping => match core.posted() {
                Some(job) => {
                    Counters::bump(&c.submitted);
                    job
                }
                None => break,
            },
            None => match core.next() {
                Event::Msg(Msg::Stop) | Event::Disconnected => {
                    stopping = true;
                    continue;
                }
                Event::Msg(job) => {
                    // Counted here, by the owner, rather than by every
                    // caller on a shared line.
                    Counters::bump(&c.submitted);
                    job
                }
                Event::Release(id) => {
                    if let Some(o) = owner.as_mut() {
                        o.bound.remove(&id);
                    }
                    continue;
                }
            },
        };
        // ORDERING: set by close_timeout before it waits for us.
        if shared.aborting.load(Ordering::Acquire) {
            Counters::bump(&c.rejected);
            job.reject(Error::Shutdown);
            continue;
        }
        // ORDERING: set by this loop (Stop policy) or close.
        if shared.stopped.load(Ordering::Acquire) {
            Counters::bump(&c.rejected);
            job.reject(Error::Stopped);
            continue;
        }
        // ORDERING: see Shared::trip.
        if owner.is_none() || shared.broken.load(Ordering::Acquire) {
            if shared.broken_now().is_none() {
                // Cooldown over (or no state): re-initialise on a fresh
                // thread, which then handles this job.
                drop(owner.take());
                match respawn(core, Some(job)) {
                    Ok(()) => return,
                    Err(back) => {
                        let (c2, job) = *back;
                        core = c2;
                        pending = Some(job);
                        continue;
                    }
                }
            }
            Counters::bump(&c.rejected);
            let reason = shared
                .broken_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            job.reject(Error::Broken(reason));
            continue;
        }
        let o = owner.as_mut().expect("checked above");
        // Only jobs stamped at submission (one in `TIMED_ONE_JOB_IN` per
        // calling thread) are timed: the clock stays off most hand-offs.
        let start = job.enqueued().map(|q| {
            let now = Instant::now();
            shared.queue_wait.record(now.saturating_duration_since(q));
            now
        });
        #[cfg(feature = "tracing")]
        let _span = job.span(&shared).entered();
        // Counted before the caller sees the outcome, so a caller that
        // reads the metrics right after finds its job in them.
        let mut tally = |outcome| match outcome {
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
                }
            }
        };
        match job.run(o, &mut tally) {
            RunOutcome::Done | RunOutcome::Cancelled => {}
            RunOutcome::Panicked => {
                if core.breaker_trips() {
                    continue; // state stays until the cooldown's re-init
                }
                match shared.config.panic_policy {
                    PanicPolicy::Keep => {}
                    PanicPolicy::Reinit => {
                        drop(owner.take());
                        match respawn(core, None) {
                            Ok(()) => return,
                            Err(back) => core = back.0,
                        }
                    }
                    PanicPolicy::Stop => {} // stopped in `tally`
                }
            }
        }
    }
    // Stop: every job accepted before it has run. Drop the state here, on
    // its owner thread, then make sure nothing is left without an outcome.
    drop(owner);
    drain_rejecting(&mut core, Error::Stopped);
    drop(core);
    shared.mark_exited();
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
    std::sync::atomic::fence(Ordering::SeqCst);
    loop {
        let idle = shared.inflight.load(Ordering::SeqCst) == 0;
        while let Ok(msg) = core.rx.try_recv() {
            if !matches!(msg, Msg::Stop) {
                Counters::bump(&shared.counters.rejected);
                msg.reject(error.clone());
            }
        }
        while let Some(job) = core.posted() {
            Counters::bump(&shared.counters.rejected);
            job.reject(error.clone());
        }
        if idle {
            break;
        }
        thread::yield_now();
    }
}

/// Starts a fresh owner thread that re-runs `init` and carries on the loop.
/// On failure to create the thread, gives everything back.
#[allow(clippy::type_complexity)]
pub(crate) fn respawn<S: 'static>(
    core: Core<S>,
    pending: Option<Msg<S>>,
) -> Result<(), Box<(Core<S>, Msg<S>)>> {
    let shared = Arc::clone(&core.shared);
    let cooldown = core.cooldown();
    // The job and core move into the new thread; keep a way back if the
    // thread cannot be created.
    let slot: Arc<Mutex<Option<(Core<S>, Option<Msg<S>>)>>> = Arc::new(Mutex::new(Some((core, pending))));
    let theirs = Arc::clone(&slot);
    let spawned = shared.thread_builder().spawn(move || {
        let Some((mut core, pending)) = theirs.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        drop(theirs);
        let shared = Arc::clone(&core.shared);
        Counters::bump(&shared.counters.reinits);
        let owner = match shared.enter_owner_thread().map_err(|e| e.to_string()) {
            Ok(()) => match panic::catch_unwind(AssertUnwindSafe(&mut core.init)) {
                Ok(Ok(state)) => {
                    shared.heal();
                    Some(OwnerState::new(state))
                }
                Ok(Err(e)) => {
                    shared.trip(format!("re-init failed: {e}"), cooldown);
                    None
                }
                Err(p) => {
                    shared.trip(format!("re-init panicked: {}", panic_message(&*p)), cooldown);
                    None
                }
            },
            Err(e) => {
                shared.trip(format!("re-init could not set the CPU set: {e}"), cooldown);
                None
            }
        };
        owner_loop(core, owner, pending);
    });
    match spawned {
        Ok(handle) => {
            let mut threads = shared.threads.lock().unwrap_or_else(|e| e.into_inner());
            threads.retain(|h| !h.is_finished());
            threads.push(handle);
            Ok(())
        }
        Err(e) => {
            let (core, pending) = slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .expect("thread never started");
            shared.trip(format!("cannot start a fresh owner thread: {e}"), cooldown);
            match pending {
                Some(job) => Err(Box::new((core, job))),
                None => {
                    // Nothing pending: continue on this thread without state.
                    owner_loop(core, None, None);
                    Ok(())
                }
            }
        }
    }
}
