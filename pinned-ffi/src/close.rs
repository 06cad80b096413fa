//! Closing a worker: stop intake, let the owner finish (or shut down) what
//! was accepted, wait for it to exit and join it; or, where waiting could
//! never end, stop intake and return.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{self as channel, Sender};

use crate::job::Msg;
use crate::shared::Shared;
use crate::waits;
use crate::worker::PinnedWorker;

impl<S: 'static> PinnedWorker<S> {
    /// Stops intake, runs every job already accepted, drops the state on the
    /// owner thread and joins it. Idempotent; later calls return at once.
    /// Called by `Drop`.
    ///
    /// Where waiting could never end (called from a job of this worker, or
    /// from a job of a worker that this one's owner waits on), it stops
    /// intake and returns without waiting: the owner runs what was
    /// accepted, then exits on its own once idle (or, if a caller was being
    /// refused at that moment, when it is next woken: by a call, or by the
    /// handle's drop).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let t = w.submit(|n| *n + 1)?;
    /// w.close(); // runs the queued job first
    /// assert_eq!(t.wait()?, 1);
    /// assert_eq!(w.run(|n| *n), Err(pinned_ffi::Error::Closed));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self) {
        self.close_inner(None);
    }

    /// Like [`close`](Self::close), but gives up on jobs still queued after
    /// `timeout`: they never run and their callers get [`Error::Shutdown`](crate::Error::Shutdown).
    /// A job already running is waited for (it cannot be interrupted).
    /// Returns how many accepted jobs were shut down that way. Where it
    /// cannot wait it behaves as [`close`](Self::close) does and returns 0.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// use std::time::Duration;
    /// let shut_down = w.close_timeout(Duration::from_secs(1));
    /// assert_eq!(shut_down, 0); // nothing was queued
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close_timeout(&self, timeout: Duration) -> u64 {
        let before = self.shared.counters.rejected.load(Ordering::Relaxed);
        self.close_inner(Instant::now().checked_add(timeout));
        self.shared.counters.rejected.load(Ordering::Relaxed) - before
    }

    pub(crate) fn close_inner(&self, deadline: Option<Instant>) {
        close_from_here(&self.shared, &self.tx, deadline);
    }
}

impl<S> Drop for PinnedWorker<S> {
    fn drop(&mut self) {
        close_from_here(&self.shared, &self.tx, None);
    }
}

/// `close` and `Drop`: waits for the owner unless waiting could never end.
fn close_from_here<S>(shared: &Shared, tx: &Sender<Msg<S>>, deadline: Option<Instant>) {
    match waits::begin(shared.id) {
        // Recorded while it waits: a job of this worker that waits on the
        // caller's worker meanwhile is refused, not left hanging.
        Ok(_waiting) => close_shared(shared, tx, deadline),
        Err(_) => close_without_waiting(shared, tx),
    }
}

/// A close that cannot wait (called from the worker's own owner thread, or
/// from an owner this worker's owner waits on): stops intake and returns.
/// The owner runs what was accepted, sees the worker closed when it has
/// nothing left, and exits on its own (see `close`).
fn close_without_waiting<S>(shared: &Shared, tx: &Sender<Msg<S>>) {
    // ORDERING: as in `close_shared`.
    shared.closed.store(true, Ordering::SeqCst);
    crate::sync::channel_send();
    let _ = tx.try_send(Msg::Stop); // a full queue: the owner sees `closed`
    shared.bell.ring_after_send();
}

/// Stops intake, lets the owner finish (or, past `deadline`, shut down)
/// what was accepted, waits for it to exit and joins its thread(s).
pub(crate) fn close_shared<S>(shared: &Shared, tx: &Sender<Msg<S>>, deadline: Option<Instant>) {
    let abort = || shared.aborting.store(true, Ordering::Release); // ORDERING: read by the owner before each job
                                                                   // ORDERING: see `enqueue`.
    shared.closed.store(true, Ordering::SeqCst);
    crate::sync::seqcst_handshake();
    while shared.inflight.fetch_add(0, Ordering::SeqCst) != 0 {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            abort();
        }
        crate::sync::yield_now();
    }
    // A worker that already stopped has no receiver: nothing to send.
    crate::sync::channel_send();
    let _ = match deadline {
        None => tx.send(Msg::Stop),
        Some(d) => tx.send_deadline(Msg::Stop, d).or_else(|e| match e {
            channel::SendTimeoutError::Timeout(m) => {
                abort();
                tx.send(m)
            }
            channel::SendTimeoutError::Disconnected(m) => Err(channel::SendError(m)),
        }),
    };
    shared.bell.ring_after_send();
    if !shared.wait_exited(deadline) {
        abort();
        shared.wait_exited(None);
    }
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
