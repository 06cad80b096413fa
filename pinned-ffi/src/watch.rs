//! [`ThreadWatch`]: catches accidental pinning in production. A service that
//! pins per request (a thread, or a whole owner, per call) grows its thread
//! count with load; one that uses a pool does not. The watch samples the
//! process's thread count, learns a baseline, and raises an [`Alarm`] when
//! the count stays well above it, naming the threads that appeared, or
//! when owner threads are being started faster than a pool ever would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::threads;
use crate::worker::owners_started;

/// When the watch raises an alarm. Start from `WatchConfig::default()` and
/// change what you need with the setters of the same names as the fields.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct WatchConfig {
    /// Time between samples.
    pub interval: Duration,
    /// Samples whose median becomes the baseline.
    pub learn: usize,
    /// Growth that counts as "above": `max(baseline × ratio, min_extra)`
    /// threads over the baseline.
    pub over_ratio: f64,
    /// See `over_ratio`.
    pub min_extra: usize,
    /// How long the count must stay above before the alarm.
    pub sustain: Duration,
    /// Owner threads started per second that count as churn.
    pub max_owner_starts_per_sec: f64,
}

impl WatchConfig {
    /// Sets [`interval`](Self::interval).
    ///
    /// ```
    /// use std::time::Duration;
    /// let c = pinned_ffi::WatchConfig::default().interval(Duration::from_millis(10)).learn(4);
    /// assert_eq!((c.interval, c.learn), (Duration::from_millis(10), 4));
    /// ```
    #[must_use = "a setter returns the changed configuration"]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
    /// Sets [`learn`](Self::learn).
    #[must_use = "a setter returns the changed configuration"]
    pub fn learn(mut self, samples: usize) -> Self {
        self.learn = samples;
        self
    }
    /// Sets [`over_ratio`](Self::over_ratio).
    #[must_use = "a setter returns the changed configuration"]
    pub fn over_ratio(mut self, ratio: f64) -> Self {
        self.over_ratio = ratio;
        self
    }
    /// Sets [`min_extra`](Self::min_extra).
    #[must_use = "a setter returns the changed configuration"]
    pub fn min_extra(mut self, threads: usize) -> Self {
        self.min_extra = threads;
        self
    }
    /// Sets [`sustain`](Self::sustain).
    #[must_use = "a setter returns the changed configuration"]
    pub fn sustain(mut self, sustain: Duration) -> Self {
        self.sustain = sustain;
        self
    }
    /// Sets [`max_owner_starts_per_sec`](Self::max_owner_starts_per_sec).
    #[must_use = "a setter returns the changed configuration"]
    pub fn max_owner_starts_per_sec(mut self, rate: f64) -> Self {
        self.max_owner_starts_per_sec = rate;
        self
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            interval: Duration::from_millis(250),
            learn: 8,
            over_ratio: 0.5,
            min_extra: 4,
            sustain: Duration::from_secs(5),
            max_owner_starts_per_sec: 5.0,
        }
    }
}

/// What the watch saw.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Alarm {
    /// The thread count stayed above the baseline for `sustained`.
    ThreadGrowth {
        /// The learned baseline.
        baseline: usize,
        /// The count now.
        now: usize,
        /// How long it has been above.
        sustained: Duration,
        /// Threads present now beyond the baseline's, by name, most first.
        new_threads: Vec<(String, usize)>,
    },
    /// Owner threads are being started faster than the limit.
    OwnerChurn {
        /// Owner threads started per second over the last sample interval.
        per_second: f64,
    },
}

/// A running watch; stops when dropped.
///
/// ```
/// use std::time::Duration;
/// use pinned_ffi::{ThreadWatch, WatchConfig};
/// let cfg = WatchConfig::default().interval(Duration::from_millis(10));
/// let watch = ThreadWatch::start(cfg, |alarm| eprintln!("pinned-ffi: {alarm:?}"))?;
/// // ... serve requests ...
/// watch.stop();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct ThreadWatch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Hands an alarm to the callback, and with the `tracing` feature logs it
/// as a warning too.
fn raise(on_alarm: &mut impl FnMut(&Alarm), alarm: &Alarm) {
    #[cfg(feature = "tracing")]
    tracing::warn!(?alarm, "pinned-ffi: possible accidental pinning");
    // A panicking callback must not end the watch: it is caught (the
    // panic hook still reports it) and the watch goes on.
    let _ = crate::unwind::catch(|| on_alarm(alarm));
}

/// Sleeps for `interval` or until `stop` is set (the stopper unparks this
/// thread), whichever comes first; `false` once stopped. An interval past
/// the clock's range sleeps until stopped.
fn nap(interval: Duration, stop: &AtomicBool) -> bool {
    let wake_at = Instant::now().checked_add(interval);
    loop {
        // ORDERING: a stop request; nothing else is published through it.
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match wake_at {
            None => thread::park(),
            Some(at) => {
                let now = Instant::now();
                if now >= at {
                    return true;
                }
                thread::park_timeout(at - now);
            }
        }
    }
}

fn name_counts() -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in threads::thread_names().unwrap_or_default() {
        *m.entry(n).or_insert(0) += 1;
    }
    m
}

impl ThreadWatch {
    /// Starts the watch on its own thread (named `pinned-watch`), calling
    /// `on_alarm` there. A thread-growth alarm is raised once per episode:
    /// again only after the count has come back under the threshold.
    ///
    /// # Errors
    /// `Unsupported` where the thread count cannot be read (not Linux);
    /// the OS error if the thread cannot start.
    pub fn start(
        config: WatchConfig,
        mut on_alarm: impl FnMut(&Alarm) + Send + 'static,
    ) -> std::io::Result<Self> {
        if threads::thread_count().is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "no /proc/self/status",
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("pinned-watch".into())
            .spawn(move || {
                let mut samples = Vec::new();
                let mut baseline: Option<(usize, HashMap<String, usize>)> = None;
                let mut above_since: Option<Instant> = None;
                let mut raised = false;
                let (mut last_owners, mut last_at) = (owners_started(), Instant::now());
                while nap(config.interval, &flag) {
                    // The watch's own thread is not the service's: leave it out.
                    let Some(count) = threads::thread_count().map(|c| c.saturating_sub(1)) else {
                        continue;
                    };

                    let (owners, at) = (owners_started(), Instant::now());
                    let rate =
                        (owners - last_owners) as f64 / at.duration_since(last_at).as_secs_f64().max(1e-9);
                    (last_owners, last_at) = (owners, at);
                    if rate > config.max_owner_starts_per_sec {
                        raise(&mut on_alarm, &Alarm::OwnerChurn { per_second: rate });
                    }

                    let Some((base, base_names)) = &baseline else {
                        samples.push(count);
                        if samples.len() >= config.learn.max(1) {
                            samples.sort_unstable();
                            baseline = Some((samples[samples.len() / 2], name_counts()));
                        }
                        continue;
                    };
                    let limit = base + ((*base as f64 * config.over_ratio) as usize).max(config.min_extra);
                    if count <= limit {
                        above_since = None;
                        raised = false;
                        continue;
                    }
                    let since = *above_since.get_or_insert(at);
                    if !raised && at.duration_since(since) >= config.sustain {
                        raised = true;
                        let mut new_threads: Vec<(String, usize)> = name_counts()
                            .into_iter()
                            .filter_map(|(n, c)| {
                                let extra = c.saturating_sub(base_names.get(&n).copied().unwrap_or(0));
                                (extra > 0 && n != "pinned-watch").then_some((n, extra))
                            })
                            .collect();
                        new_threads.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                        raise(
                            &mut on_alarm,
                            &Alarm::ThreadGrowth {
                                baseline: *base,
                                now: count,
                                sustained: at.duration_since(since),
                                new_threads,
                            },
                        );
                    }
                }
            })?;
        Ok(ThreadWatch {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the watch and joins its thread, at once (not at the end of
    /// the current interval).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // ORDERING: see the loop.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark(); // cut its nap short
            let _ = h.join();
        }
    }
}

impl Drop for ThreadWatch {
    fn drop(&mut self) {
        self.shutdown();
    }
}
