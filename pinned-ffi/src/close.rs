//! Closing a worker: stop intake, let the owner finish (or, past a
//! deadline, shut down) what was accepted, wait for it to exit and join it;
//! or, where waiting could never end, stop intake and return.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::Error;
use crate::intake::took;
use crate::job::Msg;
use crate::shared::Shared;
use crate::waits;
use crate::worker::PinnedWorker;

/// What [`PinnedWorker::close_timeout`] (or [`Pool::close_timeout`](crate::Pool::close_timeout)) did.
///
/// ```
/// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
/// let report = w.close_timeout(std::time::Duration::from_secs(1))?;
/// assert_eq!((report.shut_down, report.still_running), (0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CloseReport {
    /// Accepted jobs that never ran and were answered
    /// [`Error::Shutdown`] by the time the close returned. Past the
    /// deadline, a job the owner is refusing at that very moment, and a
    /// blocking call ([`run`](crate::PinnedWorker::run)) posted behind a
    /// running job (answered when that job ends), also get `Shutdown` but
    /// may be missing here; the worker's
    /// [`metrics`](crate::PinnedWorker::metrics) (`rejected`) count every
    /// one.
    pub shut_down: u64,
    /// Owners still busy at the deadline (0 or 1 per worker): each was
    /// running a job, which cannot be interrupted. It finishes the job,
    /// drops its state on its own thread and exits; until then its thread
    /// is still there (in [`threads::thread_names`](crate::threads::thread_names)).
    pub still_running: usize,
}

impl std::ops::AddAssign for CloseReport {
    fn add_assign(&mut self, other: CloseReport) {
        self.shut_down += other.shut_down;
        self.still_running += other.still_running;
    }
}

impl<S: 'static> PinnedWorker<S> {
    /// Stops intake, runs every job already accepted, drops the state on the
    /// owner thread and joins it. Idempotent; later calls return at once.
    /// Called by `Drop`.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let t = w.submit(|n| *n + 1)?;
    /// w.close()?; // runs the queued job first
    /// assert_eq!(t.wait()?, 1);
    /// assert_eq!(w.run(|n| *n), Err(pinned_ffi::Error::Closed));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Reentrant`] where waiting could never end: called from a
    /// job of this worker, or from a job of a worker that this one's owner
    /// waits on. Intake is stopped all the same; the owner runs what was
    /// accepted, then exits on its own once idle (or, if a caller was being
    /// refused at that moment, when it is next woken: by a call, or by the
    /// handle's drop).
    ///
    /// ```
    /// use std::sync::Arc;
    /// let w = Arc::new(pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?);
    /// let inner = Arc::clone(&w);
    /// let from_a_job = w.submit(move |_| inner.close())?.wait()?;
    /// assert_eq!(from_a_job, Err(pinned_ffi::Error::Reentrant));
    /// assert!(w.is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self) -> Result<(), Error> {
        self.close_inner(None).map(drop)
    }

    /// Like [`close`](Self::close), with a deadline `timeout` from now. At
    /// the deadline (give or take the time to answer the queue), jobs still
    /// queued are answered [`Error::Shutdown`] without running, and it
    /// returns: a job already running cannot be interrupted, so it is left
    /// to finish on its owner, which then drops the state on its own
    /// thread and exits ([`CloseReport::still_running`]). Dropping the
    /// handle after that does not wait for it either. A blocking
    /// [`run`](Self::run) that was handed to the owner directly (not
    /// queued) is answered when the owner next looks, after the running job.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use pinned_ffi::{Error, PinnedWorker};
    /// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let slow = w.submit(|_| std::thread::sleep(Duration::from_millis(300)))?;
    /// while w.queue_len() > 0 { std::thread::yield_now(); } // it started
    /// let queued = w.submit(|_| ())?;
    /// let t0 = Instant::now();
    /// let report = w.close_timeout(Duration::from_millis(20))?;
    /// assert!(t0.elapsed() < Duration::from_millis(250)); // did not wait for the slow job
    /// assert_eq!((report.shut_down, report.still_running), (1, 1));
    /// assert_eq!(queued.wait(), Err(Error::Shutdown));
    /// slow.wait()?; // it finished on its owner
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`close`](Self::close).
    pub fn close_timeout(&self, timeout: Duration) -> Result<CloseReport, Error> {
        self.close_inner(Instant::now().checked_add(timeout))
    }

    pub(crate) fn close_inner(&self, deadline: Option<Instant>) -> Result<CloseReport, Error> {
        close_from_here(&self.shared, &self.tx, &self.rx, deadline)
    }
}

impl<S> Drop for PinnedWorker<S> {
    fn drop(&mut self) {
        // ORDERING: set by a close that gave up, on some thread before.
        if self.shared.detached.load(Ordering::Acquire) {
            close_without_waiting(&self.shared, &self.tx);
            return;
        }
        let _ = close_from_here(&self.shared, &self.tx, &self.rx, None);
    }
}

/// `close` and `Drop`: waits for the owner unless waiting could never end.
fn close_from_here<S>(
    shared: &Shared,
    tx: &Sender<Msg<S>>,
    rx: &Receiver<Msg<S>>,
    deadline: Option<Instant>,
) -> Result<CloseReport, Error> {
    match waits::begin(shared.id) {
        // Recorded while it waits: a job of this worker that waits on the
        // caller's worker meanwhile is refused, not left hanging.
        Ok(_waiting) => Ok(close_shared(shared, tx, rx, deadline)),
        Err(e) => {
            close_without_waiting(shared, tx);
            Err(e)
        }
    }
}

/// A close that cannot wait (called from the worker's own owner thread, or
/// from an owner this worker's owner waits on): stops intake and returns.
/// The owner runs what was accepted, sees the worker closed when it has
/// nothing left, and exits on its own (see `close`).
fn close_without_waiting<S>(shared: &Shared, tx: &Sender<Msg<S>>) {
    stop_intake(shared);
    crate::sync::channel_send();
    let _ = tx.send(Msg::Stop);
    shared.bell.ring_after_send();
}

/// No job is admitted from here on; callers waiting for room are refused.
fn stop_intake(shared: &Shared) {
    // ORDERING: SeqCst, see `PinnedWorker::enter`.
    shared.closed.store(true, Ordering::SeqCst);
    crate::sync::seqcst_handshake();
    let _ = shared.room.wake_all();
}

/// Stops intake, lets the owner finish what was accepted, waits for it to
/// exit and joins its thread(s); past `deadline`, answers the queue itself
/// and returns without waiting for a running job.
pub(crate) fn close_shared<S>(
    shared: &Shared,
    tx: &Sender<Msg<S>>,
    rx: &Receiver<Msg<S>>,
    deadline: Option<Instant>,
) -> CloseReport {
    let rejected = || shared.rejected();
    let before = rejected();
    stop_intake(shared);
    // Producers between admission and their send finish at once: none
    // waits (the line for room was just refused).
    while shared.inflight.fetch_add(0, Ordering::SeqCst) != 0 {
        crate::sync::yield_now();
    }
    // A worker that already stopped has no receiver: nothing to send. The
    // channel is unbounded: this never waits.
    crate::sync::channel_send();
    let _ = tx.send(Msg::Stop);
    shared.bell.ring_after_send();
    if shared.wait_exited(deadline) {
        join_owner_threads(shared);
        return CloseReport {
            shut_down: rejected() - before,
            still_running: 0,
        };
    }
    // The deadline passed: the owner refuses whatever it takes from now
    // on, and the queue is answered here, at the deadline.
    // ORDERING: read by the owner before each job.
    shared.aborting.store(true, Ordering::Release);
    while let Ok(msg) = rx.try_recv() {
        crate::sync::channel_recv();
        let _ = took(shared, &msg);
        if !matches!(msg, Msg::Stop) {
            // Captures are dropped here, under catches, off the owner.
            // ORDERING: statistics.
            shared.rejected_by_closer.fetch_add(1, Ordering::Relaxed);
            let contained = msg.reject(Error::Shutdown);
            shared
                .contained_by_closer
                .fetch_add(u64::from(contained), Ordering::Relaxed);
        }
    }
    // The owner exits after its job; put `Stop` back for it (it may have
    // been taken above).
    let _ = tx.send(Msg::Stop);
    shared.bell.ring_after_send();
    // ORDERING: see `Drop`.
    shared.detached.store(true, Ordering::Release);
    let exited = shared.has_exited();
    if exited {
        join_owner_threads(shared);
    }
    CloseReport {
        shut_down: rejected() - before,
        still_running: usize::from(!exited),
    }
}

/// Joins the owner threads that have exited (all of them, after a close
/// that saw the exit).
fn join_owner_threads(shared: &Shared) {
    let handles: Vec<_> = shared
        .threads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .collect();
    for h in handles {
        let _ = h.join();
    }
}
