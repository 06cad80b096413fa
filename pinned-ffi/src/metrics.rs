//! Per-worker counters and latency histograms, read as a
//! [`MetricsSnapshot`] that prints as one line.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: latencies are kept to within 1/8 (12.5%).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUB;

/// A lock-free log-linear histogram of nanoseconds. Written by the owner
/// thread only, read by anyone; all operations are relaxed. On cache lines
/// of its own (a `CachePadded` field of the worker), so the owner's writes
/// never evict what callers read.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let log = 63 - ns.leading_zeros();
    let sub = (ns >> (log - SUB_BITS)) as usize & (SUB - 1);
    ((log - SUB_BITS + 1) as usize) * SUB + sub
}

/// Upper bound (inclusive) of a bucket, in ns.
fn bucket_high(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let log = (b / SUB) as u32 + SUB_BITS - 1;
    let sub = (b % SUB) as u64;
    let low = (1u64 << log) | (sub << (log - SUB_BITS));
    low + ((1u64 << (log - SUB_BITS)) - 1)
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one duration. Only the owner thread records, so plain
    /// loads and stores do (no locked read-modify-writes).
    pub(crate) fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Counters::bump(&self.buckets[bucket_of(ns)]);
        Counters::bump(&self.count);
        // ORDERING: statistics only; single writer.
        if ns > self.max.load(Ordering::Relaxed) {
            self.max.store(ns, Ordering::Relaxed);
        }
    }

    pub(crate) fn summary(&self) -> Summary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let quantile = |q: f64| -> Duration {
            if count == 0 {
                return Duration::ZERO;
            }
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (b, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_nanos(bucket_high(b).min(max));
                }
            }
            Duration::from_nanos(max)
        };
        Summary {
            count,
            p50: quantile(0.50),
            p99: quantile(0.99),
            max: Duration::from_nanos(max),
        }
    }
}

/// Quantiles of a latency histogram (each within 12.5% of the true value),
/// and how many samples they come from.
///
/// Only sampled jobs are timed (see
/// [`TIMED_ONE_JOB_IN`](crate::TIMED_ONE_JOB_IN)), so `count` is at most
/// the number of jobs, and usually far fewer. With no samples the
/// quantiles are zero and mean nothing: `Display` then says `no samples`;
/// otherwise it prints `n=<count> p50 <p50> p99 <p99> max <max>`.
///
/// ```
/// use pinned_ffi::PinnedWorker;
/// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
/// assert_eq!(w.metrics().run_time.to_string(), "no samples");
/// w.run(|_| ())?; // a calling thread's first job is always timed
/// let run = w.metrics().run_time;
/// assert_eq!(run.count, 1);
/// assert!(run.to_string().starts_with("n=1 p50 "), "{run}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Samples recorded: the timed jobs (not all jobs; see
    /// [`TIMED_ONE_JOB_IN`](crate::TIMED_ONE_JOB_IN)). The quantiles below
    /// are zero when this is.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return f.write_str("no samples");
        }
        write!(
            f,
            "n={} p50 {:?} p99 {:?} max {:?}",
            self.count, self.p50, self.p99, self.max
        )
    }
}

/// The worker's live counters, all written by the owner thread alone (so
/// callers never contend on them); a `CachePadded` field of the worker.
#[derive(Default)]
pub(crate) struct Counters {
    /// Jobs the owner has taken (from the queue or a mailbox).
    pub(crate) submitted: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) reinits: AtomicU64,
    /// Panics caught on the owner outside jobs' own catches.
    pub(crate) contained: AtomicU64,
}

impl Counters {
    /// Adds one. Only the owner thread writes counters (one owner thread at
    /// a time: a re-init's fresh thread starts after the old one's last
    /// write), so a plain load and store does, without a locked
    /// read-modify-write on the hand-off path.
    pub(crate) fn bump(counter: &AtomicU64) {
        // ORDERING: statistics only; single writer (see above).
        Self::add(counter, 1);
    }

    /// Adds `n`; single writer, as [`bump`](Self::bump).
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        // ORDERING: statistics only; single writer (see `bump`).
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

/// A point-in-time view of one worker's metrics.
///
/// ```
/// let w = pinned_ffi::PinnedWorker::builder().name("demo").spawn(|| Ok::<_, std::convert::Infallible>(()))?;
/// w.run(|_| ())?;
/// let m = w.metrics();
/// assert_eq!((m.submitted, m.completed), (1, 1));
/// println!("{m}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// The worker's thread name.
    pub name: String,
    /// Jobs accepted: taken by the owner so far plus those queued now (a
    /// blocking caller's job is counted once the owner picks it up).
    pub submitted: u64,
    /// Jobs that ran and returned.
    pub completed: u64,
    /// Jobs that ended in an error: panicked plus rejected.
    pub failed: u64,
    /// Jobs that panicked.
    pub panicked: u64,
    /// Accepted jobs refused by the owner without running (broken, stopped,
    /// shut down).
    pub rejected: u64,
    /// Jobs whose caller gave up before they started (never run).
    pub cancelled: u64,
    /// Times the state was re-initialised on a fresh owner thread.
    pub reinits: u64,
    /// Panics in user code that the owner ran outside a job and caught:
    /// destructors of the state, of owner-bound values, of a cancelled or
    /// rejected job's captures, of a result (or a panic payload) whose
    /// caller had gone; a waker's `wake`; a panicking re-init's payload;
    /// and the panic that ended an owner thread's loop, if one ever does
    /// (see [`Error::OwnerDied`](crate::Error::OwnerDied)). The worker
    /// carries on after each (the panic hook still reports it). A job's own
    /// panic is counted in `panicked`, and a panicking init or re-init is
    /// reported rather than counted here, and so is a job's panic payload,
    /// which goes to the caller in [`Error::Panicked`](crate::Error::Panicked)
    /// (its destructor's panic is contained wherever the caller drops it):
    /// [`SpawnError::InitPanicked`](crate::SpawnError::InitPanicked) from
    /// `spawn`, or
    /// [`Error::Broken`](crate::Error::Broken) with its message.
    pub contained_panics: u64,
    /// Jobs waiting in the queue now.
    pub queue_depth: usize,
    /// Time from submission to start.
    pub queue_wait: Summary,
    /// Time the job ran on the owner thread.
    pub run_time: Summary,
    /// Jobs that ran past the worker's [`hang_limit`](crate::Builder::hang_limit)
    /// (each counted once, by the watchdog).
    pub hangs: u64,
    /// `false` while a job runs past the hang limit (see
    /// [`PinnedWorker::is_healthy`](crate::PinnedWorker::is_healthy)).
    pub healthy: bool,
}

impl MetricsSnapshot {
    pub(crate) fn read(
        name: &str,
        c: &Counters,
        queue_depth: usize,
        wait: &Histogram,
        run: &Histogram,
    ) -> Self {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (panicked, rejected) = (get(&c.panicked), get(&c.rejected));
        MetricsSnapshot {
            name: name.to_owned(),
            submitted: get(&c.submitted) + queue_depth as u64,
            completed: get(&c.completed),
            failed: panicked + rejected,
            panicked,
            rejected,
            cancelled: get(&c.cancelled),
            reinits: get(&c.reinits),
            contained_panics: get(&c.contained),
            queue_depth,
            queue_wait: wait.summary(),
            run_time: run.summary(),
            hangs: 0,
            healthy: true,
        }
    }
}

impl fmt::Display for MetricsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: submitted {} completed {} failed {} (panicked {}, rejected {}) cancelled {} reinits {} \
             contained panics {} queued {} hangs {}{} | wait {} | run {}",
            self.name,
            self.submitted,
            self.completed,
            self.failed,
            self.panicked,
            self.rejected,
            self.cancelled,
            self.reinits,
            self.contained_panics,
            self.queue_depth,
            self.hangs,
            if self.healthy { "" } else { " UNHEALTHY" },
            self.queue_wait,
            self.run_time
        )
    }
}

/// Export through the `metrics` facade, so any exporter (Prometheus,
/// StatsD, ...) sees the workers without this crate writing one.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
impl MetricsSnapshot {
    /// Publishes this snapshot to the installed `metrics` recorder, every
    /// series labelled `worker=<name>`: the job counters as absolute
    /// counters (`pinned_ffi_jobs_<kind>_total`, `pinned_ffi_hangs_total`),
    /// the queue depth and health (`pinned_ffi_healthy`, 1 or 0) as gauges, and the queue-wait and run-time p50/p99/max as gauges in
    /// seconds with a `quantile` label. Call it on a timer.
    ///
    /// ```
    /// let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// w.run(|_| ())?;
    /// w.metrics().export(); // a no-op until a recorder is installed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn export(&self) {
        let w = self.name.clone();
        for (name, value) in [
            ("pinned_ffi_jobs_submitted_total", self.submitted),
            ("pinned_ffi_jobs_completed_total", self.completed),
            ("pinned_ffi_jobs_failed_total", self.failed),
            ("pinned_ffi_jobs_panicked_total", self.panicked),
            ("pinned_ffi_jobs_rejected_total", self.rejected),
            ("pinned_ffi_jobs_cancelled_total", self.cancelled),
            ("pinned_ffi_reinits_total", self.reinits),
            ("pinned_ffi_contained_panics_total", self.contained_panics),
            ("pinned_ffi_hangs_total", self.hangs),
        ] {
            metrics::counter!(name, "worker" => w.clone()).absolute(value);
        }
        metrics::gauge!("pinned_ffi_queue_depth", "worker" => w.clone()).set(self.queue_depth as f64);
        metrics::gauge!("pinned_ffi_healthy", "worker" => w.clone()).set(if self.healthy {
            1.0
        } else {
            0.0
        });
        for (name, s) in [
            ("pinned_ffi_queue_wait_seconds", &self.queue_wait),
            ("pinned_ffi_run_seconds", &self.run_time),
        ] {
            for (q, v) in [("0.5", s.p50), ("0.99", s.p99), ("1", s.max)] {
                metrics::gauge!(name, "worker" => w.clone(), "quantile" => q).set(v.as_secs_f64());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in (0..20_000u64).chain([1 << 20, (1 << 40) + 12345, u64::MAX]) {
            let b = bucket_of(ns);
            assert!(b >= last || ns < 20_000, "bucket order");
            assert!(
                bucket_high(b) >= ns,
                "{ns} above its bucket's high {}",
                bucket_high(b)
            );
            assert!(bucket_high(b) - ns <= ns / 8 + 1, "{ns}: bucket too wide");
            last = b;
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        for i in 1..=100u64 {
            h.record(Duration::from_micros(i));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!(
            s.p50 >= Duration::from_micros(50) && s.p50 <= Duration::from_micros(57),
            "{s}"
        );
        assert!(
            s.p99 >= Duration::from_micros(99) && s.p99 <= Duration::from_micros(100),
            "{s}"
        );
        assert_eq!(s.max, Duration::from_micros(100));
    }
}
