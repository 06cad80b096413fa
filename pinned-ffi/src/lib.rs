//! Use thread-affine C libraries safely and fast from multi-threaded and
//! async Rust.
//!
//! Many C libraries and vendor SDKs keep state per OS thread: a "current"
//! context, an errno-style last error. Called from a thread pool or from
//! async tasks that hop threads, they silently read the wrong thread's
//! state. The cure is the single-owner pattern: one dedicated OS thread owns
//! the context and runs every call on it. This crate provides, in order:
//!
//! 1. [`Context`]: a `!Send` safe wrapper over one context of the bundled
//!    thread-affine C library, with errors read on the failing thread;
//!    [`Model`] predicts its every output.
//! 2. [`PinnedWorker<S>`]: one owner thread for any state `S`, with blocking
//!    [`run`](PinnedWorker::run) (borrows allowed), [`submit`](PinnedWorker::submit)
//!    → [`Ticket`] (also a `Future`), a bounded queue, cancellation, panic
//!    policies with a circuit breaker, owner-bound values and metrics.
//! 3. [`Pool<S>`]: N owners with least-loaded, round-robin and keyed
//!    dispatch.
//!
//! ```
//! use pinned_ffi::{Config, Context, Model, PinnedWorker};
//!
//! let worker = PinnedWorker::spawn(|| Context::new(&Config::with_seed(9)))?;
//! let mut model = Model::new(9);
//! std::thread::scope(|s| {
//!     // Any thread may submit; every call runs on the owner thread.
//!     s.spawn(|| worker.run(|ctx| ctx.op(5)).unwrap().unwrap());
//! });
//! assert_eq!(worker.run(|ctx| ctx.op(6))??, { model.op(5); model.op(6).unwrap() });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bound;
mod close;
mod config;
mod context;
mod doorbell;
mod error;
mod job;
mod labels;
mod lane;
mod limits;
mod mailbox;
mod metrics;
mod model;
mod owner;
pub mod placement;
mod pool;
mod shared;
mod slot;
mod spawn;
mod spin;
mod sync;
pub mod threads;
mod unwind;
mod waits;
mod watch;
mod worker;

pub use bound::Bound;
pub use config::{Breaker, Builder, PanicPolicy};
pub use context::{BatchError, Config, Context, Stats, MAX_INPUT};
pub use error::{AffError, Error, ErrorCode, SpawnError, TrySubmitError};
pub use labels::with_label;
pub use metrics::{MetricsSnapshot, Summary};
pub use model::{mix64, Model};
pub use pool::{Dispatch, Pool, PoolBuilder};
pub use slot::Ticket;
pub use watch::{Alarm, ThreadWatch, WatchConfig};
pub use worker::{owners_started, PinnedWorker, TIMED_ONE_JOB_IN};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
