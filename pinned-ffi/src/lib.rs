#![cfg_attr(docsrs, feature(doc_cfg))]
//! Run thread-affine C libraries and SDKs safely, and fast, from
//! multi-threaded and async Rust.
//!
//! Many C libraries and vendor SDKs keep state per OS thread: a "current"
//! context (OpenGL/EGL, CUDA), an errno-style last error (OpenSSL's error
//! queue, glibc), a per-thread locale or namespace. Called from a thread
//! pool or from async tasks that hop threads, they silently read the wrong
//! thread's state. The cure is the single-owner pattern: one dedicated OS
//! thread owns the context and runs every call on it. This crate is that
//! owner, for any state `S`, `Send` or not:
//!
//! 1. [`PinnedWorker<S>`]: one owner thread, with blocking
//!    [`run`](PinnedWorker::run) (borrows allowed), [`submit`](PinnedWorker::submit)
//!    → [`Ticket`] (also a `Future`, any runtime), a bounded queue,
//!    cancellation, panic policies with a circuit breaker, owner-bound
//!    values ([`Bound`]), deadlock detection and metrics.
//! 2. [`Pool<S>`]: N owners with least-loaded, round-robin and keyed
//!    dispatch.
//! 3. Operations: [`threads`], [`placement`], [`ThreadWatch`] (the
//!    accidental-pinning detector), optional `tracing` spans and `metrics`
//!    export.
//!
//! ```
//! use std::cell::RefCell;
//! use pinned_ffi::PinnedWorker;
//!
//! // Stands for an SDK's context: state that must stay on one thread.
//! thread_local!(static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) });
//! struct Sdk { calls: u64 }
//! impl Sdk {
//!     fn call(&mut self, x: u64) -> Result<u64, String> {
//!         self.calls += 1;
//!         if x == 0 {
//!             LAST_ERROR.with(|e| *e.borrow_mut() = Some("zero".into()));
//!             return Err(LAST_ERROR.with(|e| e.borrow().clone().unwrap())); // read on the same thread
//!         }
//!         Ok(x * 2)
//!     }
//! }
//!
//! let worker = PinnedWorker::spawn(|| Ok::<_, std::io::Error>(Sdk { calls: 0 }))?;
//! std::thread::scope(|s| {
//!     // Any thread may call; every call runs on the owner thread.
//!     s.spawn(|| assert_eq!(worker.run(|sdk| sdk.call(21)).unwrap(), Ok(42)));
//! });
//! assert_eq!(worker.run(|sdk| sdk.call(0))?, Err("zero".to_string()));
//! assert_eq!(worker.run(|sdk| sdk.calls)?, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod admit;
mod bound;
mod close;
mod config;
mod deadline;
mod doorbell;
mod error;
mod job;
mod labels;
mod lane;
mod limits;
mod mailbox;
mod metrics;
mod owner;
pub mod placement;
mod pool;
mod room;
mod shared;
mod slot;
mod spawn;
mod spin;
mod sync;
pub mod threads;
mod ticket;
mod timer;
mod unwind;
mod waits;
mod watch;
mod worker;

pub use bound::Bound;
pub use close::CloseReport;
pub use config::{Breaker, Builder, PanicPolicy};
pub use deadline::DeadlineError;
pub use error::{Error, Panic, SpawnError, TrySubmitError};
pub use labels::with_label;
pub use metrics::{MetricsSnapshot, Summary};
pub use pool::{Dispatch, Pool, PoolBuilder};
pub use ticket::Ticket;
pub use watch::{Alarm, ThreadWatch, WatchConfig};
pub use worker::{owners_started, PinnedWorker, TIMED_ONE_JOB_IN};

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
