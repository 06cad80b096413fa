//! [`Pool<S>`]: N pinned workers, each with its own state (its own C
//! context, one per GPU or HSM session), with least-loaded, round-robin and
//! keyed dispatch. The pool's thread count is N, whatever the number of
//! callers.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::close::CloseReport;
use crate::config::Builder;
use crate::error::{Error, SpawnError};
use crate::keys::{KeyRouting, KeyTable};
use crossbeam_utils::CachePadded;

use crate::metrics::MetricsSnapshot;
use crate::placement::{Placement, Plan, Shortfall, Topology};
use crate::waits;
use crate::worker::PinnedWorker;

/// How a [`Pool`]'s own submission forms ([`Pool::run`], [`Pool::call`],
/// [`Pool::try_submit`], ...) pick a worker. Both pass over workers that
/// are unhealthy (a job past their [`hang_limit`](crate::Builder::hang_limit))
/// while any is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Dispatch {
    /// Each worker in turn.
    RoundRobin,
    /// The worker with the least work: jobs in its queue plus the pool's
    /// own blocking calls ([`Pool::run`]) in flight on it (ties: the
    /// first). Blocking calls travel through per-caller mailboxes, not the
    /// queue, so the pool counts them itself, for this policy only.
    ///
    /// The default: a lone caller stays on one owner (the others idle and
    /// park), and callers spread out as they pile up. Round-robin would
    /// wake every owner in turn, which on a machine with fewer spare cores
    /// than owners costs a context switch or a wake-up per call.
    #[default]
    LeastLoaded,
}

/// Configures and starts a [`Pool`].
///
/// ```
/// use pinned_ffi::{Dispatch, Pool, PinnedWorker};
/// // One state per worker: here a `!Send` counter standing for a context.
/// let pool = Pool::builder(2)
///     .name("ctx")
///     .dispatch(Dispatch::LeastLoaded)
///     .worker(PinnedWorker::builder().capacity(64))
///     .spawn(|i| Ok::<_, std::io::Error>(std::rc::Rc::new(std::cell::Cell::new(i))))?;
/// assert_eq!(pool.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    size: usize,
    name: String,
    dispatch: Dispatch,
    worker: Builder,
    placement: Placement,
    key_routing: KeyRouting,
    key_table: usize,
    fail_fast: bool,
}

impl PoolBuilder {
    /// Thread names are `<name>-<index>` (default `pool`).
    ///
    /// ```
    /// let pool = pinned_ffi::Pool::builder(2).name("gpu").spawn(|_| Ok::<_, std::io::Error>(()))?;
    /// assert_eq!(pool.worker(1).name(), "gpu-1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// The default dispatch for [`Pool::run`] and [`Pool::submit`].
    #[must_use = "a builder method returns the changed builder"]
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }
    /// Settings for every worker (its name is replaced by `<name>-<index>`).
    #[must_use = "a builder method returns the changed builder"]
    pub fn worker(mut self, builder: Builder) -> Self {
        self.worker = builder;
        self
    }

    /// Where the owners run (default [`Placement::Anywhere`]); the NUMA
    /// layout is read from sysfs when the pool starts, and the plan uses
    /// only the CPUs the starting thread may run on
    /// ([`Placement::plan`]). Where the policy cannot be honoured within
    /// them, the pool still starts, inside the allowed set, and
    /// [`Pool::placement_shortfalls`] says why (logged as warnings too,
    /// with the `tracing` feature).
    ///
    /// ```
    /// use pinned_ffi::{placement::Placement, Pool};
    /// # if pinned_ffi::placement::Topology::read().is_err() { return Ok(()); }
    /// let pool = Pool::builder(2).placement(Placement::Pack).spawn(|_| Ok::<_, std::io::Error>(()))?;
    /// let cpus = pool.broadcast(|_| pinned_ffi::threads::current_affinity().unwrap());
    /// assert!(cpus.iter().all(|c| c.as_ref().unwrap().len() == 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// How keys pick a worker (default [`KeyRouting::Hash`]).
    #[must_use = "a builder method returns the changed builder"]
    pub fn key_routing(mut self, routing: KeyRouting) -> Self {
        self.key_routing = routing;
        self
    }

    /// How many keys [`KeyRouting::LeastLoaded`] remembers (default
    /// [`KeyRouting::DEFAULT_TABLE`], at least 1); past it, the least
    /// recently used key is forgotten.
    #[must_use = "a builder method returns the changed builder"]
    pub fn key_table(mut self, keys: usize) -> Self {
        self.key_table = keys.max(1);
        self
    }

    /// Whether a keyed call ([`Pool::keyed`], [`Pool::run_keyed`]) whose
    /// worker is unhealthy (a job past its
    /// [`hang_limit`](crate::Builder::hang_limit)) fails at once with
    /// [`Error::Unhealthy`] (default `false`: it waits its turn, as the
    /// key's state lives on that worker). Unkeyed calls are always routed
    /// around unhealthy workers.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pinned_ffi::{Error, PinnedWorker, Pool};
    /// let pool = Pool::builder(2)
    ///     .worker(PinnedWorker::builder().hang_limit(Duration::from_millis(10)))
    ///     .fail_fast_when_unhealthy(true)
    ///     .spawn(|_| Ok::<_, std::io::Error>(()))?;
    /// let key_worker = pool.keyed(&"k")?.index();
    /// let stuck = pool.to(key_worker).submit(|_| std::thread::sleep(Duration::from_millis(300)))?;
    /// std::thread::sleep(Duration::from_millis(100));
    /// assert!(matches!(pool.run_keyed(&"k", |_| ()), Err(Error::Unhealthy { .. })));
    /// assert_ne!(pool.run(|_| pinned_ffi::threads::current_tid())?, pool.worker(key_worker).owner_tid());
    /// stuck.wait()?;
    /// pool.run_keyed(&"k", |_| ())?; // healthy again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "a builder method returns the changed builder"]
    pub fn fail_fast_when_unhealthy(mut self, on: bool) -> Self {
        self.fail_fast = on;
        self
    }

    /// Starts the workers, calling `init(index)` on each one's owner thread
    /// (and again on a fresh thread when one re-initialises). If any init
    /// fails, the workers already started are closed and the error returned.
    ///
    /// # Errors
    /// As [`Builder::spawn`].
    pub fn spawn<S, E, F>(self, init: F) -> Result<Pool<S>, SpawnError<E>>
    where
        S: 'static,
        E: std::fmt::Display + Send + 'static,
        F: Fn(usize) -> Result<S, E> + Send + Sync + 'static,
    {
        let plan = match self.placement {
            Placement::Anywhere => Plan {
                cpus: vec![None; self.size],
                ..Plan::default()
            },
            ref p => p.plan(&Topology::read()?, self.size)?,
        };
        #[cfg(feature = "tracing")]
        for s in &plan.shortfalls {
            tracing::warn!(pool = %self.name, placement = ?self.placement, "pinned-ffi: placement not honoured: {s}");
        }
        let init = Arc::new(init);
        let mut workers = Vec::with_capacity(self.size);
        for (i, cpus) in plan.cpus.into_iter().enumerate() {
            let init = Arc::clone(&init);
            let mut b = self.worker.clone().in_pool(&self.name, i);
            if let Some(cpus) = cpus {
                b = b.cpus(cpus);
            }
            workers.push(b.spawn(move || init(i))?);
        }
        let running = workers
            .iter()
            .map(|_| CachePadded::new(AtomicUsize::new(0)))
            .collect();
        Ok(Pool {
            workers,
            next: AtomicUsize::new(0),
            dispatch: self.dispatch,
            running,
            keys: (self.key_routing == KeyRouting::LeastLoaded)
                .then(|| KeyTable::new(self.key_table, self.size)),
            fail_fast: self.fail_fast,
            shortfalls: plan.shortfalls,
        })
    }
}

/// N pinned workers, each owning its own `S`.
///
/// ```
/// use pinned_ffi::Pool;
/// // Each worker owns its own call counter (a `!Send` stand-in for a context).
/// let pool = Pool::builder(2).spawn(|_| Ok::<_, std::io::Error>(std::rc::Rc::new(std::cell::Cell::new(0u64))))?;
/// pool.run_keyed(&"tenant-a", |calls| calls.set(calls.get() + 1))?; // same key, same worker
/// let all = pool.broadcast(|calls| calls.get());
/// assert_eq!(all.iter().map(|r| *r.as_ref().unwrap()).sum::<u64>(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pool<S> {
    workers: Vec<PinnedWorker<S>>,
    next: AtomicUsize,
    dispatch: Dispatch,
    /// Blocking calls in flight per worker (counted when routing uses load).
    running: Box<[CachePadded<AtomicUsize>]>,
    /// The sticky key table, for [`KeyRouting::LeastLoaded`].
    keys: Option<KeyTable>,
    /// Keyed calls to an unhealthy worker fail fast.
    fail_fast: bool,
    /// Where the placement could not be honoured.
    shortfalls: Vec<Shortfall>,
}

impl<S> std::fmt::Debug for Pool<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers)
            .field("dispatch", &self.dispatch)
            .finish_non_exhaustive()
    }
}

impl Pool<()> {
    /// A builder for `size` workers (at least 1); [`PoolBuilder::spawn`]
    /// fixes the state type.
    pub fn builder(size: usize) -> PoolBuilder {
        PoolBuilder {
            size: size.max(1),
            name: "pool".into(),
            dispatch: Dispatch::default(),
            worker: Builder::default(),
            placement: Placement::default(),
            key_routing: KeyRouting::default(),
            key_table: KeyRouting::DEFAULT_TABLE,
            fail_fast: false,
        }
    }
}

impl<S: 'static> Pool<S> {
    /// Number of workers.
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// assert_eq!(pool.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always `false`: a pool has at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The worker at `index`.
    ///
    /// # Panics
    /// If `index >= len()`.
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// assert_eq!(pool.worker(1).run(|i| *i)?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn worker(&self, index: usize) -> &PinnedWorker<S> {
        &self.workers[index]
    }

    /// All workers.
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let indices: Vec<usize> = pool.workers().iter().map(|w| w.run(|i| *i)).collect::<Result<_, _>>()?;
    /// assert_eq!(indices, [0, 1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn workers(&self) -> &[PinnedWorker<S>] {
        &self.workers
    }

    /// Where the pool's [`placement`](PoolBuilder::placement) could not be
    /// honoured within the CPUs allowed when it started; empty when it was
    /// (always, for [`Placement::Anywhere`]).
    ///
    /// ```
    /// use pinned_ffi::{placement::Placement, Pool};
    /// # if pinned_ffi::placement::Topology::read().is_err() { return Ok(()); }
    /// // More owners than allowed CPUs: they share, and the pool says so.
    /// let cpus = pinned_ffi::threads::current_affinity()?.len();
    /// let pool = Pool::builder(cpus + 1).placement(Placement::Pack).spawn(|_| Ok::<_, std::io::Error>(()))?;
    /// assert_eq!(pool.placement_shortfalls()[0].workers, vec![cpus]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn placement_shortfalls(&self) -> &[Shortfall] {
        &self.shortfalls
    }

    /// The worker `dispatch` picks now.
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// use pinned_ffi::Dispatch;
    /// let a = pool.pick(Dispatch::RoundRobin).run(|i| *i)?;
    /// let b = pool.pick(Dispatch::RoundRobin).run(|i| *i)?;
    /// assert_ne!(a, b);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pick(&self, dispatch: Dispatch) -> &PinnedWorker<S> {
        &self.workers[self.pick_index(dispatch)]
    }

    /// The worker `dispatch` picks, passing over any that the calling
    /// thread cannot wait on (from inside a pool job: its own worker, and
    /// any whose owner waits on it); when every worker is like that, the
    /// pick stands and the call fails with [`Error::Reentrant`].
    pub(crate) fn pick_index(&self, dispatch: Dispatch) -> usize {
        let i = self.dispatch_index(dispatch);
        if !waits::would_deadlock(self.workers[i].id()) {
            return i;
        }
        (1..self.workers.len())
            .map(|k| (i + k) % self.workers.len())
            .find(|&k| !waits::would_deadlock(self.workers[k].id()))
            .unwrap_or(i)
    }

    fn dispatch_index(&self, dispatch: Dispatch) -> usize {
        match dispatch {
            Dispatch::RoundRobin => {
                // ORDERING: only spreads load; no data depends on it.
                let first = self.next.fetch_add(1, Ordering::Relaxed);
                let n = self.workers.len();
                (0..n)
                    .map(|k| (first + k) % n)
                    .find(|&i| self.workers[i].is_healthy())
                    .unwrap_or(first % n)
            }
            Dispatch::LeastLoaded => self.least_loaded(None),
        }
    }

    /// The healthy worker with the least work: jobs in its queue plus the
    /// pool's blocking calls in flight on it; ties go to the one holding
    /// the fewest keys (when `held` is given), then to the first. When
    /// every worker is unhealthy, the least loaded of all.
    fn least_loaded(&self, held: Option<&[usize]>) -> usize {
        let mut best: Option<((bool, usize, usize), usize)> = None;
        for (i, w) in self.workers.iter().enumerate() {
            let sick = !w.is_healthy();
            // ORDERING: a load estimate; no data depends on it.
            let running = self.running[i].load(Ordering::Relaxed);
            let keys = held.map_or(0, |h| h[i]);
            if !sick && keys == 0 && running == 0 && w.queue_is_empty() {
                return i; // nothing beats an idle worker, and ties go to the first
            }
            let score = (sick, running + w.queue_len(), keys);
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, i));
            }
        }
        best.map_or(0, |(_, i)| i)
    }

    /// The worker for `key`: the same key always gives the same worker.
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let w = pool.for_key("tenant-7").name().to_owned();
    /// assert_eq!(pool.for_key("tenant-7").name(), w); // sticky
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn for_key<K: Hash + ?Sized>(&self, key: &K) -> &PinnedWorker<S> {
        &self.workers[self.key_index(key)]
    }

    /// The index of the worker for `key`, by the pool's [`KeyRouting`].
    pub(crate) fn key_index<K: Hash + ?Sized>(&self, key: &K) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let hash = h.finish();
        match &self.keys {
            None => (hash % self.workers.len() as u64) as usize,
            Some(table) => table.worker_for(hash, |held| self.least_loaded(Some(held))),
        }
    }

    /// The pool's default dispatch.
    pub(crate) fn dispatch(&self) -> Dispatch {
        self.dispatch
    }

    /// Whether keyed calls to an unhealthy worker fail fast.
    pub(crate) fn fails_fast(&self) -> bool {
        self.fail_fast
    }

    /// The counter of blocking calls in flight on worker `i`, when the
    /// pool's routing uses load.
    pub(crate) fn running_counter(&self, i: usize) -> Option<&AtomicUsize> {
        let uses_load = self.dispatch == Dispatch::LeastLoaded || self.keys.is_some();
        uses_load.then(|| &*self.running[i])
    }

    /// Runs `f` on every worker, in parallel, and returns the results in
    /// worker order.
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let all: Vec<usize> = pool.broadcast(|i| *i).into_iter().collect::<Result<_, _>>()?;
    /// assert_eq!(all, [0, 1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn broadcast<R, F>(&self, f: F) -> Vec<Result<R, Error>>
    where
        F: Fn(&mut S) -> R + Send + Sync,
        R: Send,
    {
        // Called from a pool job, the caller's own worker is run here (and
        // refused at once as re-entrant); helper threads run the others on
        // the caller's behalf, so a wait of theirs that would close a cycle
        // through the caller is refused too.
        let me = waits::current();
        let here = self.workers.iter().position(|w| Some(w.id()) == me).unwrap_or(0);
        std::thread::scope(|scope| {
            let f = &f;
            let helpers: Vec<_> = (0..self.workers.len())
                .filter(|&i| i != here)
                .map(|i| {
                    let w = &self.workers[i];
                    (i, scope.spawn(move || waits::acting_for(me, || w.run(f))))
                })
                .collect();
            let mut out: Vec<Option<Result<R, Error>>> = (0..self.workers.len()).map(|_| None).collect();
            out[here] = Some(self.workers[here].run(f));
            for (i, h) in helpers {
                out[i] = Some(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            out.into_iter().flatten().collect()
        })
    }

    /// The kernel thread ids of the pool's owner threads, in worker order:
    /// the OS threads this pool owns (one per worker, whatever the callers).
    ///
    /// ```
    /// let pool = pinned_ffi::Pool::builder(3).spawn(|_| Ok::<_, std::io::Error>(()))?;
    /// let tids = pool.owner_tids();
    /// assert_eq!(tids.len(), 3);
    /// assert!(tids.iter().all(|t| std::path::Path::new(&format!("/proc/self/task/{t}")).exists()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn owner_tids(&self) -> Vec<u64> {
        self.workers.iter().map(PinnedWorker::owner_tid).collect()
    }

    /// Metrics of every worker, in order.
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// pool.broadcast(|_| ());
    /// assert!(pool.metrics().iter().all(|m| m.completed == 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metrics(&self) -> Vec<MetricsSnapshot> {
        self.workers.iter().map(PinnedWorker::metrics).collect()
    }

    /// Closes every worker (see [`PinnedWorker::close`]).
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// pool.close()?;
    /// assert!(pool.workers().iter().all(|w| w.is_closed()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Reentrant`] if a worker could not be waited for (called
    /// from a pool job); every worker's intake is stopped all the same.
    pub fn close(&self) -> Result<(), Error> {
        self.workers
            .iter()
            .map(PinnedWorker::close)
            .fold(Ok(()), Result::and)
    }

    /// Closes every worker with one shared deadline (see
    /// [`PinnedWorker::close_timeout`]); the report adds up the workers'.
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// assert_eq!(pool.close_timeout(std::time::Duration::from_secs(1))?.shut_down, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`close`](Self::close).
    pub fn close_timeout(&self, timeout: Duration) -> Result<CloseReport, Error> {
        // A deadline past the clock's range never comes.
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut report = CloseReport::default();
        let mut outcome = Ok(());
        for w in &self.workers {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(std::time::Instant::now())
            });
            match w.close_timeout(left) {
                Ok(r) => report += r,
                Err(e) => outcome = Err(e),
            }
        }
        outcome.map(|()| report)
    }
}
