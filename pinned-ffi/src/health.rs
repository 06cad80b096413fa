//! The watchdog for hung owners. A worker built with a
//! [`hang_limit`](crate::Builder::hang_limit) publishes when its running
//! job started; a job running longer than the limit makes the worker
//! unhealthy ([`PinnedWorker::is_healthy`](crate::PinnedWorker::is_healthy),
//! [`MetricsSnapshot::healthy`](crate::MetricsSnapshot::healthy)) until it
//! ends. One process-wide watchdog thread, started with the first such
//! worker, reports each hang once: it counts it
//! ([`MetricsSnapshot::hangs`](crate::MetricsSnapshot::hangs)), logs a
//! `tracing` warning (feature `tracing`) and calls the worker's
//! [`on_hang`](crate::Builder::on_hang) callback. A pool routes new work
//! around unhealthy workers (see [`Pool`](crate::Pool)).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::shared::Shared;

/// A job that ran past its worker's [`hang_limit`](crate::Builder::hang_limit),
/// as given to the [`on_hang`](crate::Builder::on_hang) callback.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hang {
    /// The worker's thread name.
    pub worker: String,
    /// How long the job had run when the watchdog saw it.
    pub running_for: Duration,
    /// The worker's limit.
    pub limit: Duration,
}

/// The callback a worker calls (on the watchdog thread) when a job hangs.
#[derive(Clone)]
pub(crate) struct HangHook(pub(crate) Arc<dyn Fn(&Hang) + Send + Sync>);

impl fmt::Debug for HangHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HangHook(..)")
    }
}

/// A worker's health: when its running job started, and its hangs.
#[derive(Debug)]
pub(crate) struct Health {
    limit: Option<Duration>,
    /// Nanoseconds since the worker's epoch at which the running job
    /// started, plus one; 0 while no job runs.
    since: AtomicU64,
    /// The `since` of the last job reported as hung (each hang is
    /// reported once).
    reported: AtomicU64,
    /// Hangs reported.
    pub(crate) hangs: AtomicU64,
    /// Panics of the `on_hang` callback, contained on the watchdog thread.
    pub(crate) contained: AtomicU64,
}

impl Health {
    pub(crate) fn new(limit: Option<Duration>) -> Self {
        Health {
            limit,
            since: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            hangs: AtomicU64::new(0),
            contained: AtomicU64::new(0),
        }
    }

    /// The owner is about to run a job. Costs nothing without a limit.
    pub(crate) fn job_starts(&self, shared: &Shared) {
        if self.limit.is_some() {
            // ORDERING: a reading for the watchdog and the pool's dispatch;
            // no data is published with it.
            self.since.store(shared.nanos_now() + 1, Ordering::Relaxed);
        }
    }

    /// The owner's job ended (before its caller sees the outcome, so a
    /// caller that got its result finds the worker healthy again).
    pub(crate) fn job_ends(&self) {
        if self.limit.is_some() {
            // ORDERING: as in `job_starts`.
            self.since.store(0, Ordering::Relaxed);
        }
    }

    /// How long the running job has run, if one runs and a limit is set.
    fn running_for(&self, shared: &Shared) -> Option<(u64, Duration)> {
        self.limit?;
        // ORDERING: as in `job_starts`.
        let since = self.since.load(Ordering::Relaxed);
        let ran = shared.nanos_now().checked_sub(since.checked_sub(1)?)?;
        Some((since, Duration::from_nanos(ran)))
    }

    /// Whether no job has run past the limit (always, without a limit).
    pub(crate) fn is_healthy(&self, shared: &Shared) -> bool {
        match (self.limit, self.running_for(shared)) {
            (Some(limit), Some((_, ran))) => ran <= limit,
            _ => true,
        }
    }

    /// How long the running job has run, when that is past the limit
    /// (`None` while healthy).
    pub(crate) fn hung_for(&self, shared: &Shared) -> Option<Duration> {
        let limit = self.limit?;
        self.running_for(shared)
            .map(|(_, ran)| ran)
            .filter(|&ran| ran > limit)
    }
}

struct Watchdog {
    watched: Mutex<Vec<Weak<Shared>>>,
    changed: Condvar,
}

static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();

/// How often the watchdog looks, for a given limit: a hang is reported
/// within a quarter of the limit past it (within 1 ms to 250 ms).
fn tick(limit: Duration) -> Duration {
    (limit / 4).clamp(Duration::from_millis(1), Duration::from_millis(250))
}

/// Puts a worker with a hang limit under the watchdog (started on first
/// use; if its thread cannot start, health is still computed on demand,
/// only hangs are not reported).
pub(crate) fn watch(shared: &Arc<Shared>) {
    if shared.health.limit.is_none() {
        return;
    }
    let dog = WATCHDOG.get_or_init(|| {
        let _ = std::thread::Builder::new()
            .name("pinned-ffi-watchdog".into())
            .stack_size(256 << 10)
            .spawn(run);
        Watchdog {
            watched: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        }
    });
    dog.watched
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::downgrade(shared));
    dog.changed.notify_one();
}

/// The watchdog thread: looks at every watched worker, reports new hangs
/// outside its lock, sleeps for the shortest tick.
fn run() {
    let dog = WATCHDOG.wait();
    let mut watched = dog.watched.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let mut hung = Vec::new();
        let mut next: Option<Duration> = None;
        watched.retain(|w| {
            let Some(shared) = w.upgrade() else {
                return false;
            };
            let health = &shared.health;
            let Some(limit) = health.limit else {
                return false;
            };
            next = Some(next.map_or(tick(limit), |t| t.min(tick(limit))));
            if let Some((since, ran)) = health.running_for(&shared) {
                // ORDERING: only this thread writes `reported`.
                if ran > limit && health.reported.load(Ordering::Relaxed) != since {
                    health.reported.store(since, Ordering::Relaxed);
                    hung.push((shared, ran, limit));
                }
            }
            true
        });
        if !hung.is_empty() {
            drop(watched);
            for (shared, running_for, limit) in hung {
                report(&shared, running_for, limit);
            }
            watched = dog.watched.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        watched = match next {
            None => dog.changed.wait(watched).unwrap_or_else(|e| e.into_inner()),
            Some(t) => {
                dog.changed
                    .wait_timeout(watched, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

/// Counts, logs and calls back one hang (the callback is user code: its
/// panic is contained here and counted with the worker's contained panics).
fn report(shared: &Shared, running_for: Duration, limit: Duration) {
    crate::metrics::Counters::bump(&shared.health.hangs);
    #[cfg(feature = "tracing")]
    tracing::warn!(
        worker = %shared.name,
        running_for = ?running_for,
        limit = ?limit,
        "pinned-ffi: a job has run past the worker's hang limit; the worker is unhealthy until it ends"
    );
    if let Some(HangHook(hook)) = &shared.config.on_hang {
        let hang = Hang {
            worker: shared.name.clone(),
            running_for,
            limit,
        };
        if crate::unwind::catch(|| hook(&hang)).is_err() {
            crate::metrics::Counters::bump(&shared.health.contained);
        }
    }
}
