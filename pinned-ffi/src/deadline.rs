//! One deadline over a whole call, queueing and start included:
//! [`PinnedWorker::run_deadline`] (blocking) and
//! [`PinnedWorker::call_deadline`] (async), whose [`DeadlineError`] says
//! where the time ran out and gives the job back when it never entered
//! the queue.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use crate::admit::Admit;
use crate::error::{Error, TrySubmitError};
use crate::ticket::Ticket;
use crate::timer::Sleep;
use crate::worker::{PinnedWorker, Wait};

/// Why a call with a deadline ([`run_deadline`](PinnedWorker::run_deadline),
/// [`call_deadline`](PinnedWorker::call_deadline)) gave no result.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum DeadlineError<F> {
    /// The deadline passed while waiting for room in the queue: the job
    /// never entered it, and here it is.
    #[error("the deadline passed before the job found room in the queue")]
    QueueFull(F),
    /// The deadline passed while the job waited in the queue: it was
    /// withdrawn (its place freed at once) and will never run.
    #[error("the deadline passed before the job started; it will never run")]
    NotStarted,
    /// The deadline passed while the job ran. A running call cannot be
    /// interrupted: it finishes on the owner, and its result is dropped
    /// there.
    #[error("the deadline passed while the job was running; its result will be dropped")]
    Running,
    /// The worker refused the job before it entered the queue (closed,
    /// broken, ...): here it is, with the reason.
    #[error("the worker refused the job: {1}")]
    Refused(F, Error),
    /// The job was accepted and ended in an error (it panicked, or the
    /// worker shut down before it ran).
    #[error(transparent)]
    Failed(Error),
}

impl<F> DeadlineError<F> {
    /// The job, if it never entered the queue.
    ///
    /// ```
    /// use pinned_ffi::{DeadlineError, PinnedWorker};
    /// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// w.close()?;
    /// let e = w.run_deadline(|_| 7, std::time::Instant::now()).unwrap_err();
    /// assert!(matches!(e, DeadlineError::Refused(_, pinned_ffi::Error::Closed)));
    /// assert_eq!(e.into_job().map(|job| job(&mut ())), Some(7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_job(self) -> Option<F> {
        match self {
            Self::QueueFull(f) | Self::Refused(f, _) => Some(f),
            _ => None,
        }
    }
}

impl<F> std::fmt::Debug for DeadlineError<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::QueueFull(_) => f.write_str("QueueFull(..)"),
            Self::NotStarted => f.write_str("NotStarted"),
            Self::Running => f.write_str("Running"),
            Self::Refused(_, e) => write!(f, "Refused(.., {e:?})"),
            Self::Failed(e) => write!(f, "Failed({e:?})"),
        }
    }
}

/// How a ticket's outcome reads under a deadline.
fn outcome<R, F>(r: Result<R, Error>) -> Result<R, DeadlineError<F>> {
    r.map_err(|e| match e {
        Error::TimedOut { started: false } => DeadlineError::NotStarted,
        Error::TimedOut { started: true } => DeadlineError::Running,
        e => DeadlineError::Failed(e),
    })
}

/// How a refused admission reads under a deadline.
fn refused<F>(e: TrySubmitError<F>) -> DeadlineError<F> {
    match e {
        TrySubmitError::Full(f) => DeadlineError::QueueFull(f),
        TrySubmitError::Refused(f, e) => DeadlineError::Refused(f, e),
    }
}

impl<S: 'static> PinnedWorker<S> {
    /// Runs `f` on the owner and waits for its result, all before
    /// `deadline`: waiting for room in the queue, waiting in it, and
    /// running. Where the time ran out, the error says: before the job
    /// entered the queue (the job comes back), while it was queued (it is
    /// withdrawn and never runs) or while it ran (it finishes; its result
    /// is dropped). `f` is `'static` because the caller may leave before
    /// the owner is done with it.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use pinned_ffi::{DeadlineError, PinnedWorker};
    /// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(2u64))?;
    /// let soon = Instant::now() + Duration::from_secs(5);
    /// assert_eq!(w.run_deadline(|n| *n * 21, soon)?, 42);
    ///
    /// let busy = w.submit(|_| std::thread::sleep(Duration::from_millis(200)))?;
    /// let e = w.run_deadline(|n| *n, Instant::now() + Duration::from_millis(20)).unwrap_err();
    /// assert!(matches!(e, DeadlineError::NotStarted)); // withdrawn: it never runs
    /// busy.wait()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// See [`DeadlineError`].
    pub fn run_deadline<R, F>(&self, f: F, deadline: Instant) -> Result<R, DeadlineError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        let ticket = self.submit_with(f, Wait::Until(deadline)).map_err(refused)?;
        outcome(ticket.wait_deadline(deadline))
    }

    /// The async form of [`run_deadline`](Self::run_deadline), for any
    /// executor: it waits for room and for the result without blocking
    /// the thread, and its deadline is kept by the library's timer thread
    /// (no runtime needed). Cancel-safe as [`call`](Self::call) is.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(2u64))?;
    /// let r = rt.block_on(w.call_deadline(|n| *n + 1, Instant::now() + Duration::from_secs(5)))?;
    /// assert_eq!(r, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// See [`DeadlineError`].
    pub async fn call_deadline<R, F>(&self, f: F, deadline: Instant) -> Result<R, DeadlineError<F>>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        let mut sleep = Sleep::until(deadline);
        let mut admit = Some(Admit::new(self, f));
        // Room first; the deadline may pass while waiting for it.
        let admitted = poll_fn(|cx| {
            let a = admit.as_mut().expect("polled after completion");
            if let Poll::Ready(r) = Pin::new(a).poll(cx) {
                return Poll::Ready(Some(r));
            }
            match Pin::new(&mut sleep).poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let mut ticket: Ticket<R> = match admitted {
            Some(r) => r.map_err(refused)?,
            None => {
                let f = admit.take().and_then(Admit::into_job);
                return Err(f.map_or(DeadlineError::NotStarted, DeadlineError::QueueFull));
            }
        };
        drop(admit);
        // Then the result, against the same deadline.
        let done = poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut ticket).poll(cx) {
                return Poll::Ready(Some(r));
            }
            match Pin::new(&mut sleep).poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match done {
            Some(r) => outcome(r),
            None => outcome(ticket.give_up()),
        }
    }
}
