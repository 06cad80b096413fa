//! The safe layer over `affine`, the small thread-affine C library that
//! the `pinned-ffi` workspace uses to demonstrate and prove the
//! single-owner pattern.
//!
//! The C library keeps, per OS thread, a "current" context, that context's
//! call state and an errno-style last error, like OpenGL, CUDA or
//! OpenSSL's error queue. This crate wraps it:
//!
//! - [`Context`]: one C context, `!Send + !Sync` so it cannot leave the
//!   thread that created it; every error is read on the failing thread
//!   right after the call; dropping it destroys the context.
//! - [`Model`]: a pure Rust reference that predicts every output of a
//!   call sequence, so a wrong thread shows up as a wrong value.
//! - [`Stats`]: the library's process-wide counters (contexts created and
//!   destroyed, calls, rejections, switches).
//!
//! ```
//! use affine::{Config, Context, Model};
//!
//! let mut ctx = Context::new(&Config::with_seed(9))?;
//! let mut model = Model::new(9);
//! assert_eq!(ctx.op(5)?, model.op(5).unwrap());
//! # Ok::<(), affine::AffError>(())
//! ```
//!
//! To reach a `Context` from many threads or async tasks, own it in a
//! `pinned_ffi::PinnedWorker`.

mod context;
mod error;
mod model;

pub use context::{BatchError, Config, Context, Stats, MAX_INPUT};
pub use error::{AffError, ErrorCode};
pub use model::{mix64, Model};
