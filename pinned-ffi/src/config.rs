//! How a worker is configured: the [`Builder`]'s settings, and the
//! [`PanicPolicy`] and [`Breaker`] that decide what a panic does. Starting
//! a worker from them is `spawn.rs`'s.

use std::time::Duration;

/// What the owner does after a job panics. The panicking job's caller always
/// gets [`Error::Panicked`](crate::Error::Panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PanicPolicy {
    /// Keep the state and go on (the default).
    #[default]
    Keep,
    /// Drop the state on its owner thread, end that thread (and its
    /// `__thread` storage), and run `init` again on a fresh owner thread.
    /// An owner on a caller's thread ([`Builder::on_this_thread`]) stays:
    /// the state is dropped and `init` runs again on that same thread.
    Reinit,
    /// Stop the worker: later jobs get [`Error::Stopped`](crate::Error::Stopped).
    /// An [`OwnerLoop`](crate::OwnerLoop) returns from `run` then.
    Stop,
}

/// The circuit breaker: after `max_panics` panics within `window`, callers
/// fail fast with [`Error::Broken`](crate::Error::Broken) for `cooldown`; then the state is
/// re-initialised on a fresh owner thread (in place, on the same thread,
/// for [`Builder::on_this_thread`]), and the breaker closes once that
/// succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Breaker {
    /// Panics that trip it.
    pub max_panics: u32,
    /// Within this long.
    pub window: Duration,
    /// How long it stays open before a re-init is tried.
    pub cooldown: Duration,
}

impl Breaker {
    /// A breaker that trips after `max_panics` panics within `window` and
    /// stays open for `cooldown`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = pinned_ffi::Breaker::new(3, Duration::from_secs(1), Duration::from_millis(100));
    /// assert_eq!(b.max_panics, 3);
    /// ```
    #[must_use]
    pub const fn new(max_panics: u32, window: Duration, cooldown: Duration) -> Self {
        Breaker {
            max_panics,
            window,
            cooldown,
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            max_panics: 5,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(1),
        }
    }
}

/// Configures and starts a [`PinnedWorker`](crate::PinnedWorker).
///
/// ```
/// use std::time::Duration;
/// use pinned_ffi::{PanicPolicy, PinnedWorker};
/// let w = PinnedWorker::builder()
///     .name("gpu-0")
///     .capacity(256)
///     .panic_policy(PanicPolicy::Reinit)
///     .spin(Duration::from_micros(20))
///     .spawn(|| Ok::<_, std::io::Error>(Vec::<u8>::new()))?;
/// assert_eq!(w.run(|v| { v.push(1); v.len() })?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) name: Option<String>,
    pub(crate) stack_size: Option<usize>,
    pub(crate) capacity: usize,
    pub(crate) panic_policy: PanicPolicy,
    pub(crate) breaker: Option<Breaker>,
    pub(crate) cpus: Option<Vec<usize>>,
    pub(crate) spin: Duration,
    pub(crate) owner_spin: Duration,
    pub(crate) timings: bool,
    pub(crate) hang_limit: Option<Duration>,
    pub(crate) on_hang: Option<crate::health::HangHook>,
    /// Set by `PoolBuilder`: the pool's name and this worker's index.
    pub(crate) pool: Option<(String, usize)>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: None,
            stack_size: None,
            capacity: 1024,
            panic_policy: PanicPolicy::Keep,
            breaker: Some(Breaker::default()),
            cpus: None,
            spin: Duration::from_micros(50),
            owner_spin: Duration::from_micros(50),
            timings: true,
            hang_limit: None,
            on_hang: None,
            pool: None,
        }
    }
}

impl Builder {
    /// The owner thread's name (default `pinned-<id>`; a pool names its
    /// workers `<pool>-<index>`). Linux shows the first 15 bytes.
    #[must_use = "a builder method returns the changed builder"]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// The owner thread's stack size in bytes (default 8 MiB, the size of
    /// a process's main thread; at least [`Builder::MIN_STACK`]). It also
    /// sets the largest result a job may return by value: an eighth of it
    /// (see [`PinnedWorker::MAX_RESULT`](crate::PinnedWorker::MAX_RESULT)).
    ///
    /// ```
    /// let w = pinned_ffi::PinnedWorker::builder().stack_size(256 * 1024).spawn(|| Ok::<_, std::io::Error>(()))?;
    /// w.run(|_| ())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes.max(Self::MIN_STACK));
        self
    }

    /// The smallest owner stack [`stack_size`](Self::stack_size) accepts
    /// (256 KiB): room for the hand-off's own frames and the largest
    /// closure and result it admits, in a debug build too.
    pub const MIN_STACK: usize = 256 << 10;
    /// Queue capacity (default 1024, at least 1): `submit` blocks,
    /// `submit_async` waits and `try_submit` gives the job back when this
    /// many are waiting. A job whose caller gave up (a dropped ticket, a
    /// passed deadline) frees its place at once; it stays in memory until
    /// the owner reaches and skips it, and while more than four per place
    /// are waiting to be skipped, admission waits as if the queue were
    /// full (which bounds that memory).
    #[must_use = "a builder method returns the changed builder"]
    pub fn capacity(mut self, jobs: usize) -> Self {
        self.capacity = jobs.max(1);
        self
    }
    /// What to do after a job panics (default [`PanicPolicy::Keep`]).
    #[must_use = "a builder method returns the changed builder"]
    pub fn panic_policy(mut self, policy: PanicPolicy) -> Self {
        self.panic_policy = policy;
        self
    }
    /// The circuit breaker (default: 5 panics in 10 s, 1 s cooldown);
    /// `None` disables it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pinned_ffi::{Breaker, PinnedWorker};
    /// let b = Breaker::new(3, Duration::from_secs(1), Duration::from_millis(100));
    /// let w = PinnedWorker::builder().breaker(Some(b)).spawn(|| Ok::<_, std::io::Error>(()))?;
    /// # drop(w);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn breaker(mut self, breaker: Option<Breaker>) -> Self {
        self.breaker = breaker;
        self
    }
    /// Pins the owner thread to these CPUs (Linux `sched_setaffinity`).
    ///
    /// ```
    /// let w = pinned_ffi::PinnedWorker::builder().cpus([0]).spawn(|| Ok::<_, std::io::Error>(()))?;
    /// assert_eq!(w.run(|_| pinned_ffi::threads::current_affinity())??, vec![0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn cpus(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        self.cpus = Some(cpus.into_iter().collect());
        self
    }
    /// The most a waiting caller spins before it parks (default 50 µs).
    /// Spinning turns a hand-off into a cache-line transfer instead of a
    /// futex wake (tens of µs on a VM); zero always parks. An awaited
    /// [`Ticket`](crate::Ticket) spins at most [`Ticket::POLL_SPIN`](crate::Ticket::POLL_SPIN) of it.
    ///
    /// The window is a ceiling; the evidence decides how much of it a wait
    /// uses. After its first few spins, a wait that has not seen its
    /// answer:
    /// - spins on while the threads taking part in hand-offs and the
    ///   cores other processes keep busy (sampled from `/proc/stat` and
    ///   this process's CPU time when a worker is spawned, then at most
    ///   every 100 ms) fit in the cores;
    /// - yields the core on every round while our own threads alone
    ///   outnumber the cores (an idle owner only while another owner is
    ///   awake or its partner shares its CPU: a lone owner is the partner
    ///   all those callers wait for);
    /// - parks while other processes hold the cores, since a yield would
    ///   hand the core to them for a whole time slice: at once when our
    ///   engaged threads outnumber the cores, after at most 5 µs when
    ///   they fit (one caller and its owner on two cores);
    /// - parks as soon as it finds it was preempted while spinning;
    /// - gives way at once when its partner (the owner, for a caller; the
    ///   caller it last woke, for an idle owner) was last seen on the CPU
    ///   it runs on: that partner runs only once the waiter leaves. It
    ///   parks while other processes hold the cores and yields otherwise.
    ///
    /// And each worker shortens the window (down to 1/64) while its waits
    /// keep outlasting it, and restores it when they get short again. The
    /// owner's [`owner_spin`](Self::owner_spin) follows the same rules but
    /// the last (an idle gap says nothing of how long jobs take).
    ///
    /// Windows longer than [`Builder::MAX_SPIN`] are clamped to it.
    #[must_use = "a builder method returns the changed builder"]
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin.min(Self::MAX_SPIN);
        self
    }
    /// The most an idle owner spins for the next job before it parks
    /// (default 50 µs; used as [`spin`](Self::spin) describes). After that
    /// an idle worker costs no CPU.
    ///
    /// Windows longer than [`Builder::MAX_SPIN`] are clamped to it.
    #[must_use = "a builder method returns the changed builder"]
    pub fn owner_spin(mut self, spin: Duration) -> Self {
        self.owner_spin = spin.min(Self::MAX_SPIN);
        self
    }

    /// The longest spin window [`spin`](Self::spin) and
    /// [`owner_spin`](Self::owner_spin) accept (1 s): a spinning thread
    /// holds a core, and a wait longer than this is cheaper parked.
    ///
    /// ```
    /// use std::time::Duration;
    /// // Any window is accepted; the library spins at most MAX_SPIN of it.
    /// let w = pinned_ffi::PinnedWorker::builder().spin(Duration::MAX).spawn(|| Ok::<_, std::io::Error>(()))?;
    /// w.run(|_| ())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const MAX_SPIN: Duration = Duration::from_secs(1);
    /// Whether to time jobs for the queue-wait and run-time histograms
    /// (default on). Each calling thread's first job and then one in
    /// [`TIMED_ONE_JOB_IN`](crate::TIMED_ONE_JOB_IN) are timed, with three
    /// clock reads, and the owner times the run of one in that many of all
    /// jobs with two; the others pay nothing.
    ///
    /// ```
    /// let w = pinned_ffi::PinnedWorker::builder().timings(false).spawn(|| Ok::<_, std::io::Error>(()))?;
    /// w.run(|_| ())?;
    /// assert_eq!(w.metrics().run_time.count, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn timings(mut self, on: bool) -> Self {
        self.timings = on;
        self
    }

    /// Puts the worker under the watchdog (default: off): a job running
    /// longer than `limit` makes the worker unhealthy until it ends
    /// ([`PinnedWorker::is_healthy`](crate::PinnedWorker::is_healthy) is
    /// `false`, [`MetricsSnapshot::healthy`](crate::MetricsSnapshot::healthy)
    /// too), and the watchdog thread reports it once: it counts it in
    /// [`MetricsSnapshot::hangs`](crate::MetricsSnapshot::hangs), logs a
    /// `tracing` warning (feature `tracing`) and calls
    /// [`on_hang`](Self::on_hang). A running C call cannot be interrupted:
    /// the job goes on, and the worker is healthy again when it ends. A
    /// [`Pool`](crate::Pool) routes new work around unhealthy workers.
    /// With a limit, every job reads the clock once more.
    ///
    /// ```
    /// use std::time::Duration;
    /// let w = pinned_ffi::PinnedWorker::builder()
    ///     .hang_limit(Duration::from_millis(20))
    ///     .spawn(|| Ok::<_, std::io::Error>(()))?;
    /// let stuck = w.submit(|_| std::thread::sleep(Duration::from_millis(200)))?;
    /// std::thread::sleep(Duration::from_millis(100));
    /// assert!(!w.is_healthy()); // the job has run past its limit
    /// stuck.wait()?;
    /// assert!(w.is_healthy()); // and it ended
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn hang_limit(mut self, limit: Duration) -> Self {
        self.hang_limit = Some(limit);
        self
    }

    /// Called on the watchdog thread, once per hang, when a job runs past
    /// the [`hang_limit`](Self::hang_limit) (no effect without one). Keep
    /// it short: it delays the watchdog's look at other workers. A panic
    /// in it is contained and counted in
    /// [`MetricsSnapshot::contained_panics`](crate::MetricsSnapshot::contained_panics).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let w = pinned_ffi::PinnedWorker::builder()
    ///     .name("hsm")
    ///     .hang_limit(Duration::from_millis(10))
    ///     .on_hang(move |hang| log.lock().unwrap().push(hang.worker.clone()))
    ///     .spawn(|| Ok::<_, std::io::Error>(()))?;
    /// w.run(|_| std::thread::sleep(Duration::from_millis(150)))?;
    /// assert_eq!(*seen.lock().unwrap(), ["hsm"]);
    /// assert_eq!(w.metrics().hangs, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn on_hang(mut self, callback: impl Fn(&crate::Hang) + Send + Sync + 'static) -> Self {
        self.on_hang = Some(crate::health::HangHook(std::sync::Arc::new(callback)));
        self
    }

    /// Marks the worker as `index` of the pool `name` (thread name and
    /// tracing fields).
    pub(crate) fn in_pool(mut self, name: &str, index: usize) -> Self {
        self.pool = Some((name.to_owned(), index));
        self.name(format!("{name}-{index}"))
    }
}
