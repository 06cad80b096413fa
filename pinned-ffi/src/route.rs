//! Every submission form on a [`Pool`]: through its dispatch
//! (`pool.run`, `pool.call`, ...), by key (`pool.keyed(&k)?.call(..)`) or
//! to worker `i` (`pool.to(i).try_submit(..)`). A [`Route`] is one chosen
//! worker with the pool's load accounting; the pool's own forms pick a
//! [`Route`] by its dispatch and delegate.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::deadline::DeadlineError;
use crate::error::{Error, TrySubmitError};
use crate::pool::Pool;
use crate::ticket::Ticket;
use crate::worker::PinnedWorker;

/// One of a [`Pool`]'s workers, chosen by the pool's dispatch, by key
/// ([`Pool::keyed`]) or by index ([`Pool::to`]), with every submission
/// form a [`PinnedWorker`] has. Going through a route rather than
/// [`Pool::worker`] keeps the pool's load accounting right (blocking calls
/// in flight count for [`Dispatch::LeastLoaded`](crate::Dispatch::LeastLoaded)
/// and [`KeyRouting::LeastLoaded`](crate::KeyRouting::LeastLoaded)).
///
/// ```
/// # let rt = tokio::runtime::Runtime::new()?;
/// let pool = pinned_ffi::Pool::builder(3).spawn(|i| Ok::<_, std::io::Error>(i))?;
/// assert_eq!(pool.to(2).run(|i| *i)?, 2);
/// assert_eq!(rt.block_on(pool.to(1).call(|i| *i))?, 1);
/// let t = pool.keyed(&"tenant-a")?.try_submit(|i| *i).map_err(|e| e.to_string())?;
/// assert_eq!(t.wait()?, pool.keyed(&"tenant-a")?.index());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Route<'p, S> {
    pool: &'p Pool<S>,
    index: usize,
}

impl<S> Clone for Route<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for Route<'_, S> {}

/// Counts a blocking call in flight on its worker while it lives.
struct Running<'p>(Option<&'p AtomicUsize>);

impl<'p> Running<'p> {
    fn new(counter: Option<&'p AtomicUsize>) -> Self {
        if let Some(c) = counter {
            // ORDERING: a load estimate for dispatch; no data depends on it.
            c.fetch_add(1, Ordering::Relaxed);
        }
        Running(counter)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            // ORDERING: as in `new`.
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<'p, S: 'static> Route<'p, S> {
    pub(crate) fn new(pool: &'p Pool<S>, index: usize) -> Self {
        Route { pool, index }
    }

    /// The chosen worker's index in the pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The chosen worker.
    pub fn worker(&self) -> &'p PinnedWorker<S> {
        self.pool.worker(self.index)
    }

    /// As [`PinnedWorker::run`], on this route's worker.
    ///
    /// # Errors
    /// As [`PinnedWorker::run`].
    pub fn run<'a, R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'a,
        R: Send + 'a,
    {
        let _running = Running::new(self.pool.running_counter(self.index));
        self.worker().run(f)
    }

    /// As [`PinnedWorker::submit`].
    ///
    /// # Errors
    /// As [`PinnedWorker::submit`].
    pub fn submit<R, F>(&self, f: F) -> Result<Ticket<R>, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.worker().submit(f)
    }

    /// As [`PinnedWorker::try_submit`].
    ///
    /// # Errors
    /// As [`PinnedWorker::try_submit`]: the job comes back.
    pub fn try_submit<R, F>(&self, f: F) -> Result<Ticket<R>, TrySubmitError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.worker().try_submit(f)
    }

    /// As [`PinnedWorker::submit_timeout`].
    ///
    /// # Errors
    /// As [`PinnedWorker::submit_timeout`]: the job comes back.
    pub fn submit_timeout<R, F>(&self, f: F, timeout: Duration) -> Result<Ticket<R>, TrySubmitError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.worker().submit_timeout(f, timeout)
    }

    /// As [`PinnedWorker::submit_async`] (cancel-safe).
    ///
    /// # Errors
    /// As [`PinnedWorker::submit_async`].
    pub async fn submit_async<R, F>(&self, f: F) -> Result<Ticket<R>, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.worker().submit_async(f).await
    }

    /// As [`PinnedWorker::call`] (cancel-safe).
    ///
    /// # Errors
    /// As [`PinnedWorker::call`].
    pub async fn call<R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.worker().call(f).await
    }

    /// As [`PinnedWorker::run_deadline`].
    ///
    /// # Errors
    /// See [`DeadlineError`].
    pub fn run_deadline<R, F>(&self, f: F, deadline: Instant) -> Result<R, DeadlineError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.worker().run_deadline(f, deadline)
    }

    /// As [`PinnedWorker::call_deadline`] (cancel-safe).
    ///
    /// # Errors
    /// See [`DeadlineError`].
    pub async fn call_deadline<R, F>(&self, f: F, deadline: Instant) -> Result<R, DeadlineError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.worker().call_deadline(f, deadline).await
    }
}

/// The pool's own submission forms: each picks a worker by the pool's
/// [`Dispatch`](crate::Dispatch) (passing over unhealthy workers, and any
/// the calling thread cannot wait on) when it is called, then behaves as
/// the worker's form of the same name. An async form picks its worker
/// when it is first polled, and then waits on that worker.
impl<S: 'static> Pool<S> {
    /// The worker the pool's dispatch picks now, as a [`Route`].
    fn dispatched(&self) -> Route<'_, S> {
        Route::new(self, self.pick_index(self.dispatch()))
    }

    /// Worker `index`, with every submission form.
    ///
    /// # Panics
    /// If `index >= len()`.
    ///
    /// ```
    /// let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::io::Error>(i * 10))?;
    /// assert_eq!(pool.to(1).run(|n| *n)?, 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to(&self, index: usize) -> Route<'_, S> {
        assert!(index < self.len(), "worker {index} of a pool of {}", self.len());
        Route::new(self, index)
    }

    /// The worker for `key` (see [`KeyRouting`](crate::KeyRouting)), with
    /// every submission form.
    ///
    /// ```
    /// let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::io::Error>(i))?;
    /// let route = pool.keyed(&("tenant", 7))?;
    /// assert_eq!(route.run(|i| *i)?, route.index());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Unhealthy`] when the key's worker is running a job past its
    /// [`hang_limit`](crate::Builder::hang_limit) and the pool was built
    /// with [`fail_fast_when_unhealthy`](crate::PoolBuilder::fail_fast_when_unhealthy);
    /// otherwise the route is given and its calls wait their turn.
    pub fn keyed<K: Hash + ?Sized>(&self, key: &K) -> Result<Route<'_, S>, Error> {
        let index = self.key_index(key);
        if self.fails_fast() {
            if let Some(running_for) = self.worker(index).hung_for() {
                return Err(Error::Unhealthy { running_for });
            }
        }
        Ok(Route::new(self, index))
    }

    /// Runs `f` on the worker the default dispatch picks; see
    /// [`PinnedWorker::run`]. Blocks the calling thread for the round
    /// trip: in async code use [`call`](Self::call).
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
        self.dispatched().run(f)
    }

    /// Runs `f` on the worker for `key` (sticky); see [`keyed`](Self::keyed).
    ///
    /// # Errors
    /// As [`keyed`](Self::keyed) and [`PinnedWorker::run`].
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
        self.keyed(key)?.run(f)
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
        self.dispatched().submit(f)
    }

    /// Queues `f` on the worker the default dispatch picks if it has room
    /// now; see [`PinnedWorker::try_submit`].
    ///
    /// # Errors
    /// As [`PinnedWorker::try_submit`]: the job comes back.
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let t = pool.try_submit(|i| *i + 1).map_err(|e| e.to_string())?;
    /// assert!(t.wait()? <= 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_submit<R, F>(&self, f: F) -> Result<Ticket<R>, TrySubmitError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.dispatched().try_submit(f)
    }

    /// Queues `f` on the worker the default dispatch picks, waiting up to
    /// `timeout` for room; see [`PinnedWorker::submit_timeout`].
    ///
    /// # Errors
    /// As [`PinnedWorker::submit_timeout`]: the job comes back.
    ///
    /// ```
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let t = pool.submit_timeout(|i| *i, std::time::Duration::from_secs(1)).map_err(|e| e.to_string())?;
    /// assert!(t.wait()? < 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_timeout<R, F>(&self, f: F, timeout: Duration) -> Result<Ticket<R>, TrySubmitError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.dispatched().submit_timeout(f, timeout)
    }

    /// Queues `f` on the worker the default dispatch picks (when first polled),
    /// awaiting room without blocking the thread; see
    /// [`PinnedWorker::submit_async`] (cancel-safe).
    ///
    /// # Errors
    /// As [`PinnedWorker::submit_async`].
    ///
    /// ```
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let i = rt.block_on(async { pool.submit_async(|i| *i).await?.await })?;
    /// assert!(i < 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn submit_async<R, F>(&self, f: F) -> Result<Ticket<R>, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.dispatched().submit_async(f).await
    }

    /// Runs `f` on the worker the default dispatch picks (when first polled) and
    /// awaits its result; see [`PinnedWorker::call`] (cancel-safe). The
    /// async counterpart of [`run`](Self::run).
    ///
    /// # Errors
    /// As [`PinnedWorker::call`].
    ///
    /// ```
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let i = rt.block_on(pool.call(|i| *i))?;
    /// assert!(i < 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn call<R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.dispatched().call(f).await
    }

    /// One deadline over queueing and start, on the worker the default
    /// dispatch picks; see [`PinnedWorker::run_deadline`].
    ///
    /// # Errors
    /// See [`DeadlineError`].
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let i = pool.run_deadline(|i| *i, Instant::now() + Duration::from_secs(5))?;
    /// assert!(i < 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run_deadline<R, F>(&self, f: F, deadline: Instant) -> Result<R, DeadlineError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.dispatched().run_deadline(f, deadline)
    }

    /// The async form of [`run_deadline`](Self::run_deadline); see
    /// [`PinnedWorker::call_deadline`] (cancel-safe).
    ///
    /// # Errors
    /// See [`DeadlineError`].
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # let pool = pinned_ffi::Pool::builder(2).spawn(|i| Ok::<_, std::convert::Infallible>(i))?;
    /// let i = rt.block_on(pool.call_deadline(|i| *i, Instant::now() + Duration::from_secs(5)))?;
    /// assert!(i < 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn call_deadline<R, F>(&self, f: F, deadline: Instant) -> Result<R, DeadlineError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.dispatched().call_deadline(f, deadline).await
    }
}
