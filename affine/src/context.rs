//! [`Context`]: the safe wrapper over one context of the thread-affine C
//! library. It cannot leave the thread that created it (`!Send + !Sync`),
//! reads every error on that thread right after the failing call, and
//! destroys the context on drop. Use it directly on one thread, or own it
//! in a `pinned_ffi::PinnedWorker` and reach it from anywhere.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::os::raw::{c_int, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use crate::error::{AffError, ErrorCode};

/// Largest valid input to [`Context::op`]; larger inputs are rejected.
pub const MAX_INPUT: u64 = ffi::AFF_MAX_INPUT;

/// Configuration of a new context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Rounds of simulated initialisation work (`AFF_DEFAULT_INIT_WORK` by
    /// default: tens of microseconds).
    pub init_work: u32,
    /// Seed of the call state; must be non-zero.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            init_work: ffi::AFF_DEFAULT_INIT_WORK,
            seed: 1,
        }
    }
}

impl Config {
    /// A default configuration with this seed.
    ///
    /// ```
    /// let c = affine::Config::with_seed(5);
    /// assert_eq!((c.seed, c.init_work), (5, affine::Config::default().init_work));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_seed(seed: u64) -> Self {
        Config {
            seed,
            ..Config::default()
        }
    }
}

/// Converts a C status into a `Result`, reading the calling thread's last
/// error right away and clearing it so no stale error leaks into the next
/// call. The one place status codes become errors.
pub(crate) fn cvt(rc: c_int) -> Result<(), AffError> {
    if rc == ffi::AFF_OK {
        return Ok(());
    }
    // SAFETY: aff_last_error_message never returns NULL and the buffer stays
    // valid until this thread's next failing call or clear; we copy it out
    // before calling aff_clear_error.
    let message = unsafe { CStr::from_ptr(ffi::aff_last_error_message()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: touches only this thread's error storage.
    unsafe { ffi::aff_clear_error() };
    Err(AffError {
        code: ErrorCode::from_raw(rc),
        message,
    })
}

/// One context of the C library, owned by the thread that created it.
///
/// `Context` is neither `Send` nor `Sync`: the compiler refuses to move or
/// share it across threads, which is exactly the C library's rule.
///
/// ```compile_fail
/// let ctx = affine::Context::new(&affine::Config::default()).unwrap();
/// std::thread::spawn(move || drop(ctx)); // error: `*const ()` cannot be sent between threads
/// ```
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// let ctx = affine::Context::new(&affine::Config::default()).unwrap();
/// shared(&ctx); // error: `*const ()` cannot be shared between threads
/// ```
///
/// # Example
/// ```
/// use affine::{Config, Context, Model};
///
/// let mut ctx = Context::new(&Config::with_seed(7))?;
/// let mut model = Model::new(7);
/// assert_eq!(ctx.op(42)?, model.op(42).unwrap());
/// assert_eq!(ctx.calls()?, 1);
/// # Ok::<(), affine::AffError>(())
/// ```
#[derive(Debug)]
pub struct Context {
    raw: NonNull<ffi::aff_ctx>,
    _not_send: PhantomData<*const ()>,
}

impl Context {
    /// Creates a context on the calling thread (expensive) and makes it
    /// current there.
    ///
    /// # Errors
    /// `InvalidArg` for a zero seed or too much `init_work`, with the C
    /// library's message; `NoMem`. `InCallback` when called from inside a
    /// [`visit`](Self::visit) callback: making the new context current would
    /// release the visited one. The context created before that failure is
    /// destroyed again (it was never current, so the C library allows it),
    /// so nothing leaks.
    pub fn new(config: &Config) -> Result<Context, AffError> {
        let cfg = ffi::aff_config {
            init_work: config.init_work,
            seed: config.seed,
        };
        let mut raw = ptr::null_mut();
        // SAFETY: both pointers are valid for the call; on success the C
        // library hands us a context that this thread now owns.
        cvt(unsafe { ffi::aff_ctx_create(&cfg, &mut raw) })?;
        let raw = NonNull::new(raw).expect("aff_ctx_create returned AFF_OK with a NULL context");
        let ctx = Context {
            raw,
            _not_send: PhantomData,
        };
        // On failure (`InCallback` inside a visit) `ctx` is dropped here,
        // while not current: a destroy the C library always allows.
        ctx.make_current()?;
        Ok(ctx)
    }

    /// Makes this context current on this thread (a no-op when it already
    /// is). Every call below does it first, so two contexts on one thread
    /// never read each other's state.
    ///
    /// # Errors
    /// `Busy` if it is current on another thread (only possible through
    /// [`as_ptr`](Self::as_ptr)). `InCallback` when called from inside the
    /// [`visit`](Self::visit) callback of another context: the C library
    /// pins the visited context as current until the visit returns, so
    /// nothing is changed.
    ///
    /// ```
    /// let (mut a, mut b) = (affine::Context::new(&affine::Config::with_seed(1))?, affine::Context::new(&affine::Config::with_seed(2))?);
    /// b.make_current()?; // b was already current; a's calls re-bind a first
    /// assert_eq!(a.op(1)?, affine::Model::new(1).op(1).unwrap());
    /// # let _ = b.op(1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn make_current(&self) -> Result<(), AffError> {
        // SAFETY: self.raw is a live context owned by this thread (`Context`
        // is !Send), so binding it here is within the C contract.
        cvt(unsafe { ffi::aff_make_current(self.raw.as_ptr()) })
    }

    /// One call: advances the call state with `input` and returns the new
    /// state, exactly as [`Model::op`](crate::Model::op) predicts.
    ///
    /// # Errors
    /// `InvalidArg` when `input > MAX_INPUT` (the state is unchanged).
    /// `InCallback` from inside another context's [`visit`](Self::visit)
    /// callback (see [`make_current`](Self::make_current)); no call is made.
    #[inline]
    pub fn op(&mut self, input: u64) -> Result<u64, AffError> {
        self.make_current()?;
        let mut out = 0u64;
        // SAFETY: `out` is a valid u64 for the call; this context is current
        // on this thread (just ensured).
        cvt(unsafe { ffi::aff_op(input, &mut out) })?;
        Ok(out)
    }

    /// Many calls in one C call: `out[i] = op(inputs[i])`.
    ///
    /// # Errors
    /// At the first invalid input: the error, with `done` the number of
    /// outputs written before it. `InCallback` with `done == 0` from inside
    /// another context's [`visit`](Self::visit) callback.
    ///
    /// # Panics
    /// If `out` is shorter than `inputs`.
    ///
    /// ```
    /// let mut ctx = affine::Context::new(&affine::Config::with_seed(1))?;
    /// let mut out = [0; 3];
    /// ctx.op_batch(&[1, 2, 3], &mut out)?;
    /// let err = ctx.op_batch(&[4, u64::MAX], &mut out).unwrap_err();
    /// assert_eq!(err.done, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn op_batch(&mut self, inputs: &[u64], out: &mut [u64]) -> Result<(), BatchError> {
        assert!(out.len() >= inputs.len(), "op_batch: out is shorter than inputs");
        self.make_current()
            .map_err(|error| BatchError { done: 0, error })?;
        let mut done = 0usize;
        // SAFETY: both slices are valid for inputs.len() elements (checked
        // above); the context is current on this thread.
        let rc = unsafe { ffi::aff_op_batch(inputs.as_ptr(), out.as_mut_ptr(), inputs.len(), &mut done) };
        cvt(rc).map_err(|error| BatchError { done, error })
    }

    /// Successful calls made on this context so far (explicit-context call).
    ///
    /// # Errors
    /// None in practice: `Context` stays on its owner thread.
    ///
    /// ```
    /// let mut ctx = affine::Context::new(&affine::Config::with_seed(1))?;
    /// ctx.op(1)?;
    /// assert_eq!(ctx.calls()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn calls(&self) -> Result<u64, AffError> {
        let mut calls = 0u64;
        // SAFETY: live context, valid out pointer, called on the owner thread.
        cvt(unsafe { ffi::aff_ctx_info(self.raw.as_ptr(), &mut calls) })?;
        Ok(calls)
    }

    /// Runs `n` calls with inputs `0..n`, handing each `(index, value)` to
    /// `visit` from inside the C library, on this thread. Return
    /// `ControlFlow::Break(())` to stop early (an `AFF_E_CALLBACK` error).
    ///
    /// A panic in `visit` never unwinds through C: it is caught, the visit
    /// is stopped, and the panic resumes here once C has returned.
    ///
    /// The callback cannot pull this context out from under the visit: it
    /// borrows `self` mutably for the whole visit, so the callback cannot
    /// use or drop it, and until the visit returns the C library refuses on
    /// this thread anything that would make another context current or
    /// release this one. From the callback, on other contexts of this
    /// thread, [`Context::new`], [`op`](Self::op),
    /// [`op_batch`](Self::op_batch), [`make_current`](Self::make_current) and
    /// a nested `visit` therefore fail with
    /// [`ErrorCode::InCallback`] and change nothing, while
    /// [`calls`](Self::calls) and dropping them work as usual. The visit goes
    /// on with this context's own values either way.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use affine::{Config, Context, ErrorCode};
    /// let mut other = Context::new(&Config::with_seed(2))?;
    /// let mut ctx = Context::new(&Config::with_seed(1))?;
    /// ctx.visit(1, |_, _| {
    ///     assert_eq!(other.op(1).unwrap_err().code, ErrorCode::InCallback);
    ///     assert_eq!(Context::new(&Config::with_seed(3)).unwrap_err().code, ErrorCode::InCallback);
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!(other.calls()?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Callback` when `visit` stopped the visit. `InCallback` when called
    /// from inside another context's visit callback (nothing is visited).
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// let mut ctx = affine::Context::new(&affine::Config::with_seed(1))?;
    /// let mut seen = 0;
    /// let r = ctx.visit(10, |i, _v| { seen += 1; if i == 4 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) } });
    /// assert_eq!(r.unwrap_err().code, affine::ErrorCode::Callback);
    /// assert_eq!(seen, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn visit<F>(&mut self, n: u64, visit: F) -> Result<(), AffError>
    where
        F: FnMut(u64, u64) -> ControlFlow<()>,
    {
        struct State<F> {
            visit: F,
            panic: Option<Box<dyn std::any::Any + Send>>,
        }
        extern "C" fn trampoline<F: FnMut(u64, u64) -> ControlFlow<()>>(
            user: *mut c_void,
            index: u64,
            value: u64,
        ) -> c_int {
            // SAFETY: `user` is the `&mut State<F>` passed to aff_visit
            // below, alive and unaliased for the whole visit; C calls back on
            // the same thread, one call at a time.
            let state = unsafe { &mut *user.cast::<State<F>>() };
            match panic::catch_unwind(AssertUnwindSafe(|| (state.visit)(index, value))) {
                Ok(ControlFlow::Continue(())) => 0,
                Ok(ControlFlow::Break(())) => 1,
                Err(payload) => {
                    state.panic = Some(payload);
                    1
                }
            }
        }

        self.make_current()?;
        let mut state = State { visit, panic: None };
        // SAFETY: the trampoline matches aff_visit_cb and never unwinds;
        // `state` outlives the call, which does not keep `user`.
        let rc = unsafe {
            ffi::aff_visit(
                n,
                Some(trampoline::<F>),
                (&mut state as *mut State<F>).cast::<c_void>(),
            )
        };
        let result = cvt(rc);
        if let Some(payload) = state.panic {
            panic::resume_unwind(payload);
        }
        result
    }

    /// The raw context, for calls this wrapper does not cover. It stays
    /// owned by this `Context`: do not destroy it, and release it from any
    /// thread you make it current on before this `Context` is dropped.
    ///
    /// ```
    /// let ctx = affine::Context::new(&affine::Config::default())?;
    /// let mut calls = 0;
    /// // SAFETY: a live context, queried on its owner thread.
    /// let rc = unsafe { ffi::aff_ctx_info(ctx.as_ptr(), &mut calls) };
    /// assert_eq!((rc, calls), (0, 0));
    /// # Ok::<(), affine::AffError>(())
    /// ```
    pub fn as_ptr(&self) -> *mut ffi::aff_ctx {
        self.raw.as_ptr()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // Through the safe API this destroy cannot fail, so the assertion
        // below never fires (and nothing leaks):
        // - AFF_E_INVALID_ARG: `raw` is non-null.
        // - AFF_E_WRONG_THREAD: `Context` is !Send, so it is dropped on the
        //   thread that created it.
        // - AFF_E_BUSY: the safe API only ever binds the context on its owner
        //   thread; binding it elsewhere takes `as_ptr` and unsafe code,
        //   whose contract is to release it there first.
        // - AFF_E_IN_CALLBACK: needs this context to be the thread's current
        //   one while an aff_visit runs on this thread. `visit` makes its
        //   own context current before calling C, the C library then refuses
        //   every switch until the visit returns, so the current context is
        //   the visited one, which `visit` borrows mutably for the whole
        //   visit: the callback cannot drop it. Any other `Context` dropped
        //   from a callback is not current, and destroying it is allowed
        //   (this includes the one a failed `Context::new` drops).
        // SAFETY: we own the context and are on its owner thread (!Send);
        // it is never used again.
        let result = cvt(unsafe { ffi::aff_ctx_destroy(self.raw.as_ptr()) });
        debug_assert!(result.is_ok(), "aff_ctx_destroy failed: {result:?}");
    }
}

/// A batch stopped at an invalid input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch stopped after {done} calls: {error}")]
pub struct BatchError {
    /// Calls that succeeded (outputs written) before the failure.
    pub done: usize,
    /// The failure.
    pub error: AffError,
}

/// The C library's process-wide counters (`aff_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Contexts created.
    pub created: u64,
    /// Contexts destroyed.
    pub destroyed: u64,
    /// Successful calls.
    pub calls: u64,
    /// Calls rejected with `AFF_E_NO_CONTEXT`.
    pub no_context: u64,
    /// Calls rejected with `AFF_E_WRONG_THREAD`.
    pub wrong_thread: u64,
    /// Make-current rejected with `AFF_E_BUSY`.
    pub busy: u64,
    /// Successful make-current bindings.
    pub switches: u64,
}

impl Stats {
    /// Reads the counters now.
    ///
    /// ```
    /// let before = affine::Stats::now();
    /// let ctx = affine::Context::new(&affine::Config::default()).unwrap();
    /// assert!(affine::Stats::now().created > before.created);
    /// # drop(ctx);
    /// ```
    pub fn now() -> Stats {
        let mut s = ffi::aff_stats {
            created: 0,
            destroyed: 0,
            calls: 0,
            no_context: 0,
            wrong_thread: 0,
            busy: 0,
            switches: 0,
        };
        // SAFETY: `s` is a valid aff_stats; the counters are atomics.
        unsafe { ffi::aff_stats_get(&mut s) };
        Stats {
            created: s.created,
            destroyed: s.destroyed,
            calls: s.calls,
            no_context: s.no_context,
            wrong_thread: s.wrong_thread,
            busy: s.busy,
            switches: s.switches,
        }
    }

    /// Counter-wise difference `self - earlier`.
    ///
    /// ```
    /// let before = affine::Stats::now();
    /// let mut ctx = affine::Context::new(&affine::Config::with_seed(1))?;
    /// ctx.op(1)?;
    /// assert!(affine::Stats::now().since(&before).calls >= 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            created: self.created - earlier.created,
            destroyed: self.destroyed - earlier.destroyed,
            calls: self.calls - earlier.calls,
            no_context: self.no_context - earlier.no_context,
            wrong_thread: self.wrong_thread - earlier.wrong_thread,
            busy: self.busy - earlier.busy,
            switches: self.switches - earlier.switches,
        }
    }
}
