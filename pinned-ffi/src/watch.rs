//! [`ThreadWatch`]: catches accidental pinning in production. A service that
//! pins per request (a thread, or a whole owner, per call) grows its thread
//! count with load; one that uses a pool does not. The watch samples the
//! process's thread count, learns a baseline, and raises an [`Alarm`] when
//! the count stays well above it, naming the threads that appeared, or
//! when owner threads are being started faster than a pool ever would.

//! [`ThreadWatch`]: catches accidental pinning in production. The
//! user-facing documentation (what is measured, every default, the start
//! order) is on [`ThreadWatch`] and [`WatchConfig`], which the crate
//! re-exports, so that rustdoc shows it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::threads;
use crate::worker::owners_started;

/// The most sample intervals the owner-start window spans; a longer
/// [`WatchConfig::owner_churn_window`] is cut to this many intervals, so
/// the watch keeps a bounded history.
const MAX_WINDOW_SAMPLES: u32 = 4096;

/// When the watch raises an alarm. Start from `WatchConfig::default()` and
/// change what you need with the setters of the same names as the fields.
///
/// The defaults, and what they mean together:
///
/// | field | default | meaning |
/// |---|---|---|
/// | [`interval`](Self::interval) | 250 ms | one sample of the thread count and of [`owners_started`](crate::owners_started) per interval |
/// | [`learn`](Self::learn) | 8 samples | the thread-count baseline is the median of the first 8 samples (2 s) |
/// | [`over_ratio`](Self::over_ratio), [`min_extra`](Self::min_extra) | 0.5, 4 | "above" is more than `baseline + max(baseline × 0.5, 4)` threads |
/// | [`sustain`](Self::sustain) | 5 s | [`Alarm::ThreadGrowth`] once the count has stayed above for 5 s |
/// | [`max_owner_starts_per_sec`](Self::max_owner_starts_per_sec) | 5 /s | [`Alarm::OwnerChurn`] when owners start faster than this ... |
/// | [`owner_churn_window`](Self::owner_churn_window) | 10 s | ... on average over the last 10 s: more than 50 owner starts in 10 s |
///
/// ```
/// use std::time::Duration;
/// use pinned_ffi::WatchConfig;
/// let c = WatchConfig::default();
/// assert_eq!((c.interval, c.learn, c.sustain), (Duration::from_millis(250), 8, Duration::from_secs(5)));
/// assert_eq!((c.max_owner_starts_per_sec, c.owner_churn_window), (5.0, Duration::from_secs(10)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct WatchConfig {
    /// Time between samples (default 250 ms).
    pub interval: Duration,
    /// Samples whose median becomes the thread-count baseline (default 8).
    pub learn: usize,
    /// Growth that counts as "above": `max(baseline × ratio, min_extra)`
    /// threads over the baseline (default 0.5).
    pub over_ratio: f64,
    /// See `over_ratio` (default 4 threads).
    pub min_extra: usize,
    /// How long the count must stay above before the alarm (default 5 s).
    pub sustain: Duration,
    /// Owner threads started per second, on average over
    /// [`owner_churn_window`](Self::owner_churn_window), that count as
    /// churn (default 5).
    pub max_owner_starts_per_sec: f64,
    /// The sliding window the owner-start rate is averaged over (default
    /// 10 s): the rate is the owners started within the last window
    /// divided by the window, so a burst, such as one pool starting,
    /// counts once against `max_owner_starts_per_sec × window` owners (50
    /// with the defaults) and then ages out. A window longer than 4096
    /// intervals is cut to 4096 intervals; a window shorter than the
    /// interval measures each interval on its own.
    pub owner_churn_window: Duration,
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
    /// Sets [`owner_churn_window`](Self::owner_churn_window).
    ///
    /// ```
    /// use std::time::Duration;
    /// // Churn is more than 20 owner starts within any 2 s.
    /// let c = pinned_ffi::WatchConfig::default()
    ///     .max_owner_starts_per_sec(10.0)
    ///     .owner_churn_window(Duration::from_secs(2));
    /// assert_eq!(c.owner_churn_window, Duration::from_secs(2));
    /// ```
    #[must_use = "a setter returns the changed configuration"]
    pub fn owner_churn_window(mut self, window: Duration) -> Self {
        self.owner_churn_window = window;
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
            owner_churn_window: Duration::from_secs(10),
        }
    }
}

/// What the watch saw. Each kind is raised once per episode: again only
/// after what it measures has come back under its threshold.
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
        /// Owner threads started per second, on average over the last
        /// [`owner_churn_window`](WatchConfig::owner_churn_window), when
        /// the episode began.
        per_second: f64,
    },
}

/// A running accidental-pinning detector; stops when dropped.
///
/// A service that pins per request (a thread, or a whole owner, per call)
/// grows its thread count with load; one that uses a pool does not. The
/// watch samples, every [`interval`](WatchConfig::interval), the process's
/// thread count and the number of owner threads started so far
/// ([`owners_started`](crate::owners_started)), and raises an [`Alarm`]:
///
/// - [`Alarm::ThreadGrowth`] when the thread count stays well above a
///   learned baseline for [`sustain`](WatchConfig::sustain), naming the
///   threads that appeared;
/// - [`Alarm::OwnerChurn`] when owners are started faster than a pool ever
///   would: more than [`max_owner_starts_per_sec`](WatchConfig::max_owner_starts_per_sec)
///   on average over the sliding [`owner_churn_window`](WatchConfig::owner_churn_window)
///   (with the defaults, more than 50 owners within 10 s).
///
/// Each is raised once per episode, and raised again only after the count
/// or the rate has come back under its threshold. The defaults are listed
/// on [`WatchConfig`].
///
/// # Start order
///
/// Build the application's pools and long-lived workers first, then start
/// the watch:
///
/// - The first [`learn`](WatchConfig::learn) samples (2 s with the
///   defaults) are the thread-count baseline: their median. Threads that
///   exist then are normal; threads that start later count as growth, so a
///   pool built after the baseline and bigger than the margin
///   (`max(baseline × over_ratio, min_extra)`) raises one
///   [`ThreadGrowth`](Alarm::ThreadGrowth) after `sustain`.
/// - Owner starts are counted from the watch's start. Owners started
///   before it never count as churn; a pool started later counts its
///   owners once, within one window, and then ages out: it raises no
///   [`OwnerChurn`](Alarm::OwnerChurn) unless it alone has more owners
///   than `max_owner_starts_per_sec × owner_churn_window` (50 with the
///   defaults). Re-initialised owners count as starts too.
///
/// With the `tracing` feature each alarm is also logged as a warning. A
/// panic in the callback is caught and the watch goes on.
///
/// ```
/// use std::time::Duration;
/// use pinned_ffi::{Pool, ThreadWatch, WatchConfig};
/// // First the application's pools, then the watch.
/// let pool = Pool::builder(2).spawn(|_| Ok::<_, std::io::Error>(()))?;
/// let cfg = WatchConfig::default().interval(Duration::from_millis(10));
/// let watch = ThreadWatch::start(cfg, |alarm| eprintln!("pinned-ffi: {alarm:?}"))?;
/// // ... serve requests through `pool` ...
/// # pool.run(|_| ())?;
/// watch.stop();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ThreadWatch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// The owner-start rate over a sliding window, from samples of
/// [`owners_started`], and whether an episode of churn is under way.
struct ChurnMeter {
    window: Duration,
    limit: f64,
    /// Samples, oldest first; the first is the newest one at or before the
    /// window's start (or the watch's first sample, while it is younger
    /// than the window).
    history: VecDeque<(Instant, u64)>,
    churning: bool,
}

impl ChurnMeter {
    fn new(config: &WatchConfig, at: Instant, owners: u64) -> Self {
        ChurnMeter {
            window: config
                .owner_churn_window
                .min(config.interval.saturating_mul(MAX_WINDOW_SAMPLES)),
            limit: config.max_owner_starts_per_sec,
            history: VecDeque::from([(at, owners)]),
            churning: false,
        }
    }

    /// Records a sample; the rate when an episode begins with it.
    fn sample(&mut self, at: Instant, owners: u64) -> Option<f64> {
        self.history.push_back((at, owners));
        // Keep the newest sample at or before `at - window` as the window's
        // start, and the previous sample whatever the window (a window
        // shorter than the interval measures the last interval).
        while self.history.len() > 2 && at.duration_since(self.history[1].0) >= self.window {
            self.history.pop_front();
        }
        let (from_at, from) = self.history[0];
        // Divided by the whole window even while the watch is younger than
        // it: a burst just after the start is one burst, not a rate.
        let span = at
            .duration_since(from_at)
            .max(self.window)
            .as_secs_f64()
            .max(1e-9);
        let rate = owners.saturating_sub(from) as f64 / span;
        if rate > self.limit {
            let begins = !self.churning;
            self.churning = true;
            begins.then_some(rate)
        } else {
            self.churning = false;
            None
        }
    }
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
    /// `on_alarm` there. Each kind of alarm is raised once per episode:
    /// again only after the count or the rate has come back under its
    /// threshold. Start it after the application's pools (see
    /// [`ThreadWatch`]).
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
                let mut churn = ChurnMeter::new(&config, Instant::now(), owners_started());
                while nap(config.interval, &flag) {
                    // The watch's own thread is not the service's: leave it out.
                    let Some(count) = threads::thread_count().map(|c| c.saturating_sub(1)) else {
                        continue;
                    };

                    let at = Instant::now();
                    if let Some(rate) = churn.sample(at, owners_started()) {
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
