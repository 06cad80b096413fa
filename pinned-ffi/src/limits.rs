//! How big a job may be: the closure and result sizes a worker takes by
//! value, checked before anything runs, so that no input can overflow the
//! owner's stack.

use crate::error::Error;
use crate::shared::DEFAULT_OWNER_STACK;
use crate::ticket::BOX_PAST;
use crate::worker::PinnedWorker;

impl<S: 'static> PinnedWorker<S> {
    /// The largest result this worker's jobs may return by value (see
    /// [`MAX_RESULT`](Self::MAX_RESULT)).
    fn result_limit(&self) -> usize {
        self.shared.config.stack_size.unwrap_or(DEFAULT_OWNER_STACK) / 8
    }

    /// Refuses a job whose closure (its captures) or result is too large
    /// for the owner's stack, rather than letting it overflow the stack and
    /// abort the process. `F` is what the owner calls, `R` what it makes
    /// there (a result, or a value to bind).
    #[inline]
    pub(crate) fn check_sizes<F, R>(&self) -> Result<(), Error> {
        let (job, result) = (std::mem::size_of::<F>(), std::mem::size_of::<R>());
        if job <= BOX_PAST && result <= BOX_PAST {
            return Ok(()); // the common case, decided at compile time
        }
        let limit = self.result_limit();
        if result > limit {
            return Err(Error::ResultTooLarge { size: result, limit });
        }
        let limit = limit / 4;
        if job > limit {
            return Err(Error::JobTooLarge { size: job, limit });
        }
        Ok(())
    }

    /// The largest job result taken by value with the default owner stack
    /// (1 MiB); with [`Builder::stack_size`](crate::Builder::stack_size) the limit is an eighth of the
    /// stack. Results past 1 KiB travel boxed, but the job's closure still
    /// returns its result on the owner's stack and a debug build copies it
    /// a few times there; a larger one fails with [`Error::ResultTooLarge`]
    /// before anything runs, instead of overflowing the stack. Return a
    /// `Box` or a `Vec` for bigger data. The caller's own stack receives
    /// the result too (a thread spawned by std has 2 MiB by default).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// use pinned_ffi::{Error, PinnedWorker};
    /// let big = w.submit(|_| [1u8; PinnedWorker::<()>::MAX_RESULT])?.wait()?;
    /// assert_eq!(big.len(), 1 << 20);
    /// let too_big = w.submit(|_| [1u8; PinnedWorker::<()>::MAX_RESULT + 1]).err();
    /// assert!(matches!(too_big, Some(Error::ResultTooLarge { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const MAX_RESULT: usize = DEFAULT_OWNER_STACK / 8;

    /// The largest closure a job may have with the default owner stack
    /// (256 KiB of captures; with [`Builder::stack_size`](crate::Builder::stack_size), a thirty-second
    /// of the stack): the owner moves the closure a few times on its stack
    /// before it runs (more in debug builds). A larger one fails with
    /// [`Error::JobTooLarge`] before anything runs; capture a `Box` or a
    /// `Vec` (or a reference, with [`run`](Self::run)) instead.
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// use pinned_ffi::{Error, PinnedWorker};
    /// let big = [7u8; PinnedWorker::<()>::MAX_JOB + 1];
    /// assert!(matches!(w.run(move |_| big[0]), Err(Error::JobTooLarge { .. })));
    /// assert_eq!(w.run(|_| big[0])?, 7); // borrowed, not captured: fine
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const MAX_JOB: usize = DEFAULT_OWNER_STACK / 32;
}
