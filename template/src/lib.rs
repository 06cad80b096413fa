//! A copyable template for wrapping a thread-affine SDK with `pinned-ffi`.
//!
//! Copy this crate, replace the bundled `affine` library with your SDK, and
//! follow the numbered steps; `README.md` beside this file walks through
//! them and lists the traps. The crate root wraps our own C library (so CI
//! tests every step); [`cuda`] applies the same steps to the CUDA driver
//! API.
//!
//! The result, for a user of your wrapper:
//!
//! ```
//! use pinned_ffi_template::{Devices, SessionConfig};
//!
//! let devices = Devices::open(2, SessionConfig::default())?; // one owner thread per device
//! let tenant = "tenant-42";
//! let a = devices.call(tenant, 10)?; // same key, same device, same session
//! let b = devices.call(tenant, 11)?;
//! assert_ne!(a, b);
//! let buf = devices.alloc(tenant, 4)?; // an SDK object, owner-bound
//! devices.fill(tenant, &buf, 7)?;
//! assert_eq!(devices.read(tenant, &buf)?, vec![7; 4]);
//! drop(buf); // freed on its owner thread, whichever thread drops it
//! # Ok::<(), pinned_ffi_template::SdkError>(())
//! ```

pub mod cuda;

use std::ffi::CStr;
use std::marker::PhantomData;
use std::ptr::NonNull;

use pinned_ffi::{Bound, Pool, SpawnError};

// ---------------------------------------------------------------------------
// Step 1: raw bindings. Here: `ffi-sys`, bindgen output of `affine.h`,
// committed. Yours: a -sys crate of your SDK's header (see ffi-sys/), or
// symbols loaded at run time (see `cuda`).
// ---------------------------------------------------------------------------

use ffi::{aff_config, aff_ctx};

// ---------------------------------------------------------------------------
// Step 3 (used by step 2): errors are read on the failing thread, right
// after the failing call, and cleared. One function does it for every call.
// ---------------------------------------------------------------------------

/// An error from the SDK, or from the executor around it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdkError {
    /// The SDK refused a call: its status code and message.
    #[error("SDK error {code}: {message}")]
    Sdk {
        /// The SDK's status code.
        code: i32,
        /// The SDK's message, read on the owner thread.
        message: String,
    },
    /// The owner thread could not run the call (closed, panicked, ...).
    #[error(transparent)]
    Executor(#[from] pinned_ffi::Error),
}

/// Status → `Result`, reading the thread-local last error *now*, on this
/// thread. Called only on owner threads, so the error is always ours.
fn check(rc: i32) -> Result<(), SdkError> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the SDK's message for this thread's last failure; copied out
    // before the clear below invalidates it.
    let message = unsafe { CStr::from_ptr(ffi::aff_last_error_message()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: clears only this thread's error, so no stale error leaks
    // into the next job on this owner.
    unsafe { ffi::aff_clear_error() };
    Err(SdkError::Sdk { code: rc, message })
}

// ---------------------------------------------------------------------------
// Step 2: the session: a `!Send` type that owns the SDK context, created,
// used and destroyed on one owner thread.
// ---------------------------------------------------------------------------

/// How to open a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Simulated set-up cost of the context.
    pub init_work: u32,
    /// Base seed; device `i` uses `seed + i`.
    pub seed: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            init_work: 1_000,
            seed: 1,
        }
    }
}

/// One SDK context on one device. `!Send + !Sync` (the marker): the
/// compiler keeps it on the thread that created it.
#[derive(Debug)]
pub struct Session {
    ctx: NonNull<aff_ctx>,
    _owner_thread_only: PhantomData<*const ()>,
}

impl Session {
    /// Opens the context on the calling thread (the owner) and makes it
    /// current there. This is the `init` closure the pool runs.
    ///
    /// # Errors
    /// The SDK's error.
    pub fn open(config: SessionConfig, device: usize) -> Result<Session, SdkError> {
        let cfg = aff_config {
            init_work: config.init_work,
            seed: config.seed + device as u64,
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid pointers; on success we own the context.
        check(unsafe { ffi::aff_ctx_create(&cfg, &mut raw) })?;
        let ctx = NonNull::new(raw).expect("SDK returned success with a NULL context");
        let session = Session {
            ctx,
            _owner_thread_only: PhantomData,
        };
        // SAFETY: our context, bound to this (the owner) thread.
        check(unsafe { ffi::aff_make_current(ctx.as_ptr()) })?;
        Ok(session)
    }

    /// One SDK call (uses the thread's current context, like OpenGL/CUDA).
    ///
    /// # Errors
    /// The SDK's error (e.g. an invalid input).
    pub fn call(&mut self, input: u64) -> Result<u64, SdkError> {
        let mut out = 0;
        // SAFETY: valid out pointer; this session's context is current on
        // this thread (made so in `open`, and a session never moves).
        check(unsafe { ffi::aff_op(input, &mut out) })?;
        Ok(out)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: destroyed on its owner thread (a Session never moves),
        // after every owner-bound object (pinned-ffi drops those first).
        let _ = check(unsafe { ffi::aff_ctx_destroy(self.ctx.as_ptr()) });
    }
}

// ---------------------------------------------------------------------------
// Step 5: SDK objects (buffers, handles, sessions) as owner-bound values.
// Created on the owner, used through the owner, destroyed on the owner.
// ---------------------------------------------------------------------------

/// A device-side object. Here a plain buffer standing in for an SDK
/// allocation; yours would hold the SDK handle and free it in `Drop`.
#[derive(Debug)]
pub struct DeviceBuffer {
    bytes: Vec<u8>,
    _owner_thread_only: PhantomData<*const ()>,
}

/// The `Send` handle callers hold.
pub type Buffer = Bound<DeviceBuffer>;

// ---------------------------------------------------------------------------
// Step 4: the pool, one owner per device, keyed so that one tenant's
// calls always reach the same device and session.
// ---------------------------------------------------------------------------

/// Every device of the SDK, each behind its own owner thread.
#[derive(Debug)]
pub struct Devices {
    pool: Pool<Session>,
}

impl Devices {
    /// Opens `n` devices: `n` owner threads, each opening its session.
    ///
    /// # Errors
    /// The first device that failed to open (the others are closed).
    pub fn open(n: usize, config: SessionConfig) -> Result<Devices, SdkError> {
        let pool = Pool::builder(n)
            .name("device")
            .spawn(move |i| Session::open(config, i))
            .map_err(|e| match e {
                SpawnError::Init(e) => e,
                other => SdkError::Sdk {
                    code: -1,
                    message: other.to_string(),
                },
            })?;
        Ok(Devices { pool })
    }

    /// One call on the tenant's device. The closure runs on the owner
    /// thread; errors are read there and come back typed.
    ///
    /// # Errors
    /// The SDK's error, or the executor's.
    pub fn call(&self, tenant: &str, input: u64) -> Result<u64, SdkError> {
        self.pool.run_keyed(tenant, |s| s.call(input))?
    }

    /// Allocates `len` bytes on the tenant's device.
    ///
    /// # Errors
    /// The executor's error.
    pub fn alloc(&self, tenant: &str, len: usize) -> Result<Buffer, SdkError> {
        Ok(self.pool.for_key(tenant).bind(move |_| DeviceBuffer {
            bytes: vec![0; len],
            _owner_thread_only: PhantomData,
        })?)
    }

    /// Fills a buffer on its device.
    ///
    /// # Errors
    /// `StaleHandle` if the buffer belongs to another tenant's device.
    pub fn fill(&self, tenant: &str, buf: &Buffer, value: u8) -> Result<(), SdkError> {
        Ok(self.pool.for_key(tenant).with(buf, |_, b| b.bytes.fill(value))?)
    }

    /// Reads a buffer back.
    ///
    /// # Errors
    /// As [`fill`](Self::fill).
    pub fn read(&self, tenant: &str, buf: &Buffer) -> Result<Vec<u8>, SdkError> {
        Ok(self.pool.for_key(tenant).with(buf, |_, b| b.bytes.clone())?)
    }

    /// The pool, for anything the helpers above do not cover.
    pub fn pool(&self) -> &Pool<Session> {
        &self.pool
    }
}

// ---------------------------------------------------------------------------
// Step 6: shutting down. Dropping `Devices` closes every owner: queued calls
// finish, buffers are freed, then sessions destroyed, each on its owner.
// ---------------------------------------------------------------------------
