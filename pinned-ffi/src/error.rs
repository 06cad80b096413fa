//! Errors: [`Error`] for the executor's outcomes, [`TrySubmitError`] and
//! [`SpawnError`] for operations that refuse work or fail to start, and
//! [`Panic`], a panic caught on an owner thread with its original payload.

use std::any::Any;
use std::fmt;

use crate::unwind::drop_carried_payload;

/// Why the executor could not give a job's result.
///
/// Every accepted job ends in exactly one outcome: its result or one of
/// these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job panicked on the owner thread: the panic's message and its
    /// original payload (see [`Panic`]).
    #[error("job panicked on the owner thread: {0}")]
    Panicked(Panic),
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
    /// `init` panicked on the owner thread: the panic's message and its
    /// original payload (see [`Panic`]).
    #[error("init panicked on the owner thread: {0}")]
    InitPanicked(Panic),
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

/// A panic caught on an owner thread: its message and, carried to the
/// caller, its original payload, which can be downcast, taken, or re-raised
/// with [`resume_unwind`](Self::resume_unwind).
///
/// The message is the payload's when it is a `&str` or a `String`, and
/// `"non-string panic payload"` otherwise.
///
/// A payload is user code: if its destructor panics, that panic is caught
/// (and reported by the panic hook) wherever the `Panic` is dropped, so
/// dropping one never unwinds. A `Clone` has the message and no payload
/// (a payload cannot be cloned); `==` compares messages only. A `Panic`
/// is `Send + Sync`, so [`Error`] stays both: a payload that is not `Sync`
/// is reached by value ([`take_payload`](Self::take_payload)) or through
/// `&mut` ([`downcast_mut`](Self::downcast_mut)).
///
/// ```
/// use pinned_ffi::{Error, PinnedWorker};
///
/// #[derive(Debug)]
/// struct Code(u32);
///
/// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
/// match w.run(|_| -> () { std::panic::panic_any(Code(42)) }) {
///     Err(Error::Panicked(p)) => {
///         assert_eq!(p.downcast_ref::<Code>().map(|c| c.0), Some(42));
///         assert_eq!(p.message(), "non-string panic payload");
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Panic {
    message: String,
    payload: Option<Payload>,
}

/// A panic payload behind a wall that only `&mut` or ownership crosses,
/// which makes it `Sync` whatever its type (as `sync_wrapper` does).
struct Payload(Box<dyn Any + Send>);

// SAFETY: a shared `&Payload` gives no access to the value inside except in
// `Panic::downcast_ref`, which asks the value's type (`Any::type_id` reads
// no data) and only then hands out a `&T` for a `T: Sync`, which may be
// shared between threads. Everything else goes through `&mut` or by value,
// which `Send` covers.
unsafe impl Sync for Payload {}

// A payload is what a panic left behind, there to be inspected or re-raised
// after the panic: as `String` was before payloads were kept, `Error` stays
// usable across `catch_unwind`.
impl std::panic::UnwindSafe for Payload {}
impl std::panic::RefUnwindSafe for Payload {}

impl Panic {
    /// A caught panic, from its payload.
    pub(crate) fn new(payload: Box<dyn Any + Send>) -> Self {
        Panic {
            message: panic_message(&*payload),
            payload: Some(Payload(payload)),
        }
    }

    /// The panic's message.
    ///
    /// ```
    /// use pinned_ffi::{Error, PinnedWorker};
    /// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let Err(Error::Panicked(p)) = w.run(|_| -> () { panic!("boom {}", 7) }) else { unreachable!() };
    /// assert_eq!(p.message(), "boom 7");
    /// assert_eq!(p.to_string(), "boom 7");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The payload, if it is a `T` (and has not been taken).
    ///
    /// `T: Sync` because a `Panic` may be shared between threads; reach a
    /// payload that is not `Sync` with [`downcast_mut`](Self::downcast_mut)
    /// or [`take_payload`](Self::take_payload).
    ///
    /// ```
    /// use pinned_ffi::{Error, PinnedWorker};
    /// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let Err(Error::Panicked(p)) = w.run(|_| -> () { panic!("static") }) else { unreachable!() };
    /// assert_eq!(p.downcast_ref::<&str>(), Some(&"static"));
    /// assert!(p.downcast_ref::<String>().is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn downcast_ref<T: Any + Sync>(&self) -> Option<&T> {
        self.payload.as_ref()?.0.downcast_ref::<T>()
    }

    /// The payload, mutably, if it is a `T` (and has not been taken).
    ///
    /// ```
    /// use pinned_ffi::{Error, PinnedWorker};
    /// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let Err(Error::Panicked(mut p)) = w.run(|_| -> () { std::panic::panic_any(std::cell::Cell::new(1u8)) })
    /// else { unreachable!() };
    /// let cell = p.downcast_mut::<std::cell::Cell<u8>>().expect("a Cell");
    /// assert_eq!(cell.get(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn downcast_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.payload.as_mut()?.0.downcast_mut::<T>()
    }

    /// Takes the original payload out (`None` if it was taken already, or
    /// for a `Panic` that never had one: a clone, or one made from a
    /// message). The message stays.
    ///
    /// ```
    /// use pinned_ffi::{Error, PinnedWorker};
    /// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let Err(Error::Panicked(mut p)) = w.run(|_| -> () { std::panic::panic_any(5u64) }) else { unreachable!() };
    /// let payload = p.take_payload().expect("the payload");
    /// assert_eq!(payload.downcast_ref::<u64>(), Some(&5));
    /// assert!(p.take_payload().is_none(), "taken once");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn take_payload(&mut self) -> Option<Box<dyn Any + Send>> {
        self.payload.take().map(|p| p.0)
    }

    /// Re-raises the panic on this thread with its original payload, as
    /// [`std::panic::resume_unwind`] does (the panic hook is not called
    /// again). Without a payload, the payload is the message as a `String`.
    ///
    /// ```
    /// use pinned_ffi::{Error, PinnedWorker};
    /// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let Err(Error::Panicked(p)) = w.run(|_| -> () { std::panic::panic_any(9i32) }) else { unreachable!() };
    /// let again = std::panic::catch_unwind(move || p.resume_unwind()).unwrap_err();
    /// assert_eq!(again.downcast_ref::<i32>(), Some(&9));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resume_unwind(mut self) -> ! {
        let payload = match self.take_payload() {
            Some(payload) => payload,
            None => Box::new(std::mem::take(&mut self.message)),
        };
        drop(self);
        std::panic::resume_unwind(payload)
    }
}

/// A `Panic` with this message and no payload (to report a panic caught
/// elsewhere, or to compare with one, since `==` compares messages).
///
/// ```
/// use pinned_ffi::{Error, Panic, PinnedWorker};
/// let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
/// assert_eq!(w.run(|_| -> () { panic!("boom") }), Err(Error::Panicked(Panic::from("boom"))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl From<String> for Panic {
    fn from(message: String) -> Self {
        Panic {
            message,
            payload: None,
        }
    }
}

/// A `Panic` with this message and no payload; see `From<String>`.
impl From<&str> for Panic {
    fn from(message: &str) -> Self {
        Panic::from(message.to_owned())
    }
}

/// A `Panic` from a payload that [`std::panic::catch_unwind`] or
/// [`std::thread::JoinHandle::join`] returned.
///
/// ```
/// use pinned_ffi::Panic;
/// let caught = std::panic::catch_unwind(|| -> () { std::panic::panic_any(3u8) }).unwrap_err();
/// let p = Panic::from(caught);
/// assert_eq!(p.downcast_ref::<u8>(), Some(&3));
/// ```
impl From<Box<dyn Any + Send>> for Panic {
    fn from(payload: Box<dyn Any + Send>) -> Self {
        Panic::new(payload)
    }
}

/// The message only: a payload cannot be cloned, so the clone has none.
impl Clone for Panic {
    fn clone(&self) -> Self {
        Panic::from(self.message.clone())
    }
}

/// Compares the messages (payloads cannot be compared).
impl PartialEq for Panic {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for Panic {}

impl fmt::Debug for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Panic")
            .field("message", &self.message)
            .field("payload", &self.payload.as_ref().map(|_| ..))
            .finish()
    }
}

/// The message.
impl fmt::Display for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Drop for Panic {
    fn drop(&mut self) {
        // The payload's destructor is user code: under a catch, on
        // whichever thread drops this (an owner dropping an unclaimed
        // result, or the caller).
        if let Some(Payload(payload)) = self.payload.take() {
            drop_carried_payload(payload);
        }
    }
}
