//! Errors: [`Error`] for the executor's outcomes, [`TrySubmitError`] and
//! [`SpawnError`] for operations that refuse work or fail to start.

use std::fmt;

/// Why the executor could not give a job's result.
///
/// Every accepted job ends in exactly one outcome: its result or one of
/// these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job panicked on the owner thread; the message is the panic's.
    #[error("job panicked on the owner thread: {0}")]
    Panicked(String),
    /// The caller gave up waiting. `started: false` means the job was never
    /// run and never will be; `true` means it was running or done (a running
    /// C call cannot be interrupted) and its result is discarded.
    #[error("timed out waiting for the job (job {})", if *.started { "had started" } else { "never ran" })]
    TimedOut {
        /// Whether the job had started when the caller gave up.
        started: bool,
    },
    /// The worker is closed (or closing) and takes no new jobs.
    #[error("the worker is closed")]
    Closed,
    /// The worker closed before this accepted job could run
    /// (`close_timeout` ran out); the job never ran.
    #[error("the worker shut down before the job ran")]
    Shutdown,
    /// A blocking wait that could never end, refused: a job waiting on its
    /// own worker, or a wait that would close a cycle of owners waiting on
    /// each other (A's job waits on B while B's job waits on A, at any
    /// depth, pool calls and broadcasts included). Nothing was queued (or
    /// the awaited job was cancelled if it had not started). Waits outside
    /// the library (a job joining a thread that calls the job's worker, a
    /// channel, a lock) cannot be seen and are not detected.
    #[error("re-entrant call: the wait would deadlock (a job waiting on its own worker, or on a worker that waits on it)")]
    Reentrant,
    /// The worker's circuit breaker is open after repeated panics, or its
    /// state could not be re-initialised; the job was not run.
    #[error("the worker is broken: {0}")]
    Broken(String),
    /// The worker stopped after a panic (`PanicPolicy::Stop`); the job was
    /// not run.
    #[error("the worker stopped after a panic")]
    Stopped,
    /// The owner thread died of a panic outside any job (a bug in the
    /// library, or in a tracing subscriber it called). The worker is
    /// closed; this job did not run (or its outcome was lost with the
    /// thread). The message is the panic's.
    #[error("the owner thread died: {0}")]
    OwnerDied(String),
    /// The job's result is too large to move through the owner thread's
    /// stack: box it (return a `Box` or a `Vec`) or raise
    /// [`Builder::stack_size`](crate::Builder::stack_size). Nothing ran.
    #[error("a {size}-byte result exceeds the {limit}-byte limit for this worker's owner stack")]
    ResultTooLarge {
        /// `size_of` the result.
        size: usize,
        /// The largest result this worker takes by value.
        limit: usize,
    },
    /// The job's closure (its captures) is too large to move through the
    /// owner thread's stack: capture a `Box`, a `Vec` or (with `run`) a
    /// reference instead, or raise
    /// [`Builder::stack_size`](crate::Builder::stack_size). Nothing ran.
    #[error("a {size}-byte job closure exceeds the {limit}-byte limit for this worker's owner stack")]
    JobTooLarge {
        /// `size_of` the closure.
        size: usize,
        /// The largest closure this worker takes.
        limit: usize,
    },
    /// The worker is running a job past its
    /// [`hang_limit`](crate::Builder::hang_limit), and the pool was built
    /// to fail fast on it ([`PoolBuilder::fail_fast_when_unhealthy`](crate::PoolBuilder::fail_fast_when_unhealthy)).
    /// Nothing was queued.
    #[error("the worker is unhealthy: a job has run for {running_for:?}, past its hang limit")]
    Unhealthy {
        /// How long the hung job had run.
        running_for: std::time::Duration,
    },
    /// An owner-bound handle whose value no longer exists on that worker
    /// (its state was re-initialised) or that belongs to another worker.
    #[error("the owner-bound value is gone or belongs to another worker")]
    StaleHandle,
}

/// [`try_submit`](crate::PinnedWorker::try_submit) refused the job; the job
/// is given back so nothing is lost.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum TrySubmitError<F> {
    /// The queue is full.
    #[error("the worker's queue is full")]
    Full(F),
    /// The worker is closed, stopped or broken; the error says which.
    #[error("the worker refused the job: {1}")]
    Refused(F, Error),
}

impl<F> TrySubmitError<F> {
    /// Gives the refused job back.
    ///
    /// ```
    /// use pinned_ffi::{PinnedWorker, TrySubmitError};
    /// let w = PinnedWorker::builder().capacity(1).spawn(|| Ok::<_, std::io::Error>(()))?;
    /// w.close()?;
    /// let job = match w.try_submit(|_| 7) {
    ///     Err(e @ TrySubmitError::Refused(..)) => e.into_job(),
    ///     other => panic!("{other:?}"),
    /// };
    /// assert_eq!(job(&mut ()), 7); // the closure came back intact
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_job(self) -> F {
        match self {
            Self::Full(f) | Self::Refused(f, _) => f,
        }
    }
}

impl<F> fmt::Debug for TrySubmitError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Refused(_, e) => write!(f, "Refused(.., {e:?})"),
        }
    }
}

/// Starting a worker failed; no thread is left behind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError<E> {
    /// `init` returned an error on the owner thread.
    #[error("init failed on the owner thread: {0}")]
    Init(E),
    /// `init` panicked on the owner thread.
    #[error("init panicked on the owner thread: {0}")]
    InitPanicked(String),
    /// The OS refused to create the thread, or the CPU set was rejected.
    #[error("cannot start the owner thread: {0}")]
    Os(#[from] std::io::Error),
}

/// Turns a panic payload into its message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
