//! Queued submission: [`submit`](PinnedWorker::submit) and its variants
//! hand a job to the worker's bounded queue and return a [`Ticket`] (the
//! blocking [`run`](PinnedWorker::run) is in `worker.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, TrySubmitError};
use crate::job::{
    call_state, call_state_boxed, Job, JobImpl, Msg, OwnerState, QueuedJob, SharedJob, TicketSlot,
};
use crate::slot::Slot;
use crate::ticket::{Ticket, BOX_PAST};
use crate::worker::{PinnedWorker, Refused, Wait};

impl<S: 'static> PinnedWorker<S> {
    /// Queues `f` and returns a [`Ticket`] for its result; blocks while the
    /// queue is full.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Stopped`], [`Error::Broken`],
    /// [`Error::OwnerDied`] when refused; [`Error::Reentrant`] when the
    /// queue is full and waiting for room could never end (from the owner
    /// thread, or an owner this worker waits on); [`Error::JobTooLarge`]
    /// and [`Error::ResultTooLarge`] as for [`run`](Self::run).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let tickets: Vec<_> = (0..3).map(|i| w.submit(move |n| { *n += i; *n })).collect::<Result<_, _>>()?;
    /// let last = tickets.into_iter().map(|t| t.wait()).last().unwrap()?;
    /// assert_eq!(last, 0 + 1 + 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit<R, F>(&self, f: F) -> Result<Ticket<R>, Error>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit_with(f, Wait::Block).map_err(|e| match e {
            TrySubmitError::Refused(_, e) => e,
            TrySubmitError::Full(_) => Error::Reentrant,
        })
    }

    /// Queues `f` if there is room now; otherwise gives it back.
    ///
    /// ```
    /// use pinned_ffi::{PinnedWorker, TrySubmitError};
    /// let w = PinnedWorker::builder().capacity(1).spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let (release, hold) = std::sync::mpsc::channel::<()>();
    /// let (started_tx, started) = std::sync::mpsc::channel::<()>();
    /// let busy = w.submit(move |_| { started_tx.send(()).unwrap(); hold.recv().ok(); })?;
    /// started.recv()?; // the owner is busy
    /// let queued = w.try_submit(|_| ()).unwrap(); // fills the one place
    /// let job = match w.try_submit(|_| ()) {
    ///     Err(TrySubmitError::Full(job)) => job, // given back, nothing lost
    ///     other => panic!("expected Full, got {other:?}"),
    /// };
    /// release.send(())?;
    /// busy.wait()?;
    /// queued.wait()?;
    /// w.submit(job)?.wait()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`TrySubmitError::Full`] with the job when the queue is full;
    /// [`TrySubmitError::Refused`] with the job and the reason otherwise.
    pub fn try_submit<R, F>(&self, f: F) -> Result<Ticket<R>, TrySubmitError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit_with(f, Wait::No)
    }

    /// Like [`try_submit`](Self::try_submit), waiting up to `timeout` for
    /// room in the queue.
    ///
    /// # Errors
    /// As [`try_submit`](Self::try_submit).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// use std::time::Duration;
    /// let t = w.submit_timeout(|n| *n + 1, Duration::from_millis(10)).map_err(|e| e.to_string())?;
    /// assert_eq!(t.wait()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_timeout<R, F>(&self, f: F, timeout: Duration) -> Result<Ticket<R>, TrySubmitError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        // A deadline past the clock's range never comes: wait without one.
        let wait = Instant::now()
            .checked_add(timeout)
            .map_or(Wait::Block, Wait::Until);
        self.submit_with(f, wait)
    }

    pub(crate) fn submit_with<R, F>(&self, f: F, wait: Wait) -> Result<Ticket<R>, TrySubmitError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        if let Err(e) = self.check_sizes::<F, R>() {
            return Err(TrySubmitError::Refused(f, e));
        }
        let spin = self.shared.config.spin;
        let shared = || Arc::clone(&self.shared);
        if std::mem::size_of::<R>() > BOX_PAST {
            self.submit_job(f, call_state_boxed::<S, R, F>, wait)
                .map(|slot| Ticket::boxed(slot, spin, shared()))
        } else {
            self.submit_job(f, call_state::<S, R, F>, wait)
                .map(|slot| Ticket::new(slot, spin, shared()))
        }
    }

    /// Queues `f`, to be called through `call`, with a fresh slot for its
    /// outcome (one allocation holds both; the ticket shares it); gives
    /// `f` back if refused.
    fn submit_job<T, F>(
        &self,
        f: F,
        call: fn(F, &mut OwnerState<S>) -> T,
        wait: Wait,
    ) -> Result<SharedJob<S, F, T>, TrySubmitError<F>>
    where
        F: Send + 'static,
        T: Send + 'static,
    {
        let job: SharedJob<S, F, T> = Arc::new(JobImpl::new(
            f,
            call,
            TicketSlot(Slot::queued(self.shared.id)),
            self.stamp(),
        ));
        match self.enqueue(
            Msg::Job(QueuedJob(Arc::clone(&job) as Arc<dyn Job<S> + Sync>)),
            wait,
        ) {
            Ok(()) => Ok(job),
            Err((msg, why)) => {
                // SAFETY: the message came back unhandled, so the owner
                // never saw the job: this thread is its only user.
                let f = unsafe { job.take_f() }.expect("refused job was not run");
                // Its drop finds `f` gone: nothing to reject or publish.
                drop(msg);
                Err(match why {
                    Refused::Full => TrySubmitError::Full(f),
                    Refused::Err(e) => TrySubmitError::Refused(f, e),
                })
            }
        }
    }
}
