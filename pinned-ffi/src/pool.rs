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
use crossbeam_utils::CachePadded;

use crate::metrics::MetricsSnapshot;
use crate::placement::{Placement, Plan, Shortfall, Topology};
use crate::ticket::Ticket;
use crate::waits;
use crate::worker::PinnedWorker;

/// How [`Pool::run`] and [`Pool::submit`] pick a worker.
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
    /// Blocking calls in flight per worker (counted for `LeastLoaded`).
    running: Box<[CachePadded<AtomicUsize>]>,
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
    fn pick_index(&self, dispatch: Dispatch) -> usize {
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
            // ORDERING: only spreads load; no data depends on it.
            Dispatch::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len(),
            Dispatch::LeastLoaded => {
                let mut best = (usize::MAX, 0);
                for (i, w) in self.workers.iter().enumerate() {
                    // ORDERING: a load estimate; no data depends on it.
                    let running = self.running[i].load(Ordering::Relaxed);
                    if running == 0 && w.queue_is_empty() {
                        return i; // nothing beats an idle worker, and ties go to the first
                    }
                    let load = running + w.queue_len();
                    if load < best.0 {
                        best = (load, i);
                    }
                }
                best.1
            }
        }
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
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.workers[(h.finish() % self.workers.len() as u64) as usize]
    }

    /// Runs `f` on the worker the default dispatch picks; see
    /// [`PinnedWorker::run`].
    ///
    /// # Errors
    /// As [`PinnedWorker::run`].
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let i = pool.run(|i| *i)?;
    /// assert!(i < 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run<'a, R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'a,
        R: Send + 'a,
    {
        let i = self.pick_index(self.dispatch);
        if self.dispatch != Dispatch::LeastLoaded {
            return self.workers[i].run(f);
        }
        /// Counts a blocking call in flight on its worker while it lives.
        struct Running<'p>(&'p AtomicUsize);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                // ORDERING: see `dispatch_index`.
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // ORDERING: see `dispatch_index`.
        self.running[i].fetch_add(1, Ordering::Relaxed);
        let _running = Running(&self.running[i]);
        self.workers[i].run(f)
    }

    /// Runs `f` on the worker for `key` (sticky).
    ///
    /// # Errors
    /// As [`PinnedWorker::run`].
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let a = pool.run_keyed(&42u64, |i| *i)?;
    /// assert_eq!(pool.run_keyed(&42u64, |i| *i)?, a);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run_keyed<'a, K, R, F>(&self, key: &K, f: F) -> Result<R, Error>
    where
        K: Hash + ?Sized,
        F: FnOnce(&mut S) -> R + Send + 'a,
        R: Send + 'a,
    {
        self.for_key(key).run(f)
    }

    /// Queues `f` on the worker the default dispatch picks; see
    /// [`PinnedWorker::submit`].
    ///
    /// # Errors
    /// As [`PinnedWorker::submit`].
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let t = pool.submit(|i| *i * 10)?;
    /// assert!(t.wait()? <= 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit<R, F>(&self, f: F) -> Result<Ticket<R>, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.pick(self.dispatch).submit(f)
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
