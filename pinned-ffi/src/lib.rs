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
//!    [`run`](PinnedWorker::run) (borrows allowed; it blocks the calling
//!    thread, so async code uses [`call`](PinnedWorker::call) and
//!    [`submit_async`](PinnedWorker::submit_async), cancel-safe, any
//!    executor), [`submit`](PinnedWorker::submit) → [`Ticket`] (also a
//!    `Future`; [`detach`](Ticket::detach) to fire and forget), one
//!    deadline over queueing and start ([`run_deadline`](PinnedWorker::run_deadline),
//!    [`call_deadline`](PinnedWorker::call_deadline)), an exact bounded
//!    queue, cancellation, panic policies with a circuit breaker,
//!    owner-bound values ([`Bound`]), a watchdog for hung owners
//!    ([`Builder::hang_limit`]), deadlock detection and metrics.
//! 2. The calling thread as the owner, for SDKs that must be called on the
//!    process's main thread: [`Builder::on_this_thread`] returns the
//!    worker and an [`OwnerLoop`] that the thread runs until the worker
//!    closes; [`PinnedWorker::run_here`] runs a body on a scoped thread
//!    meanwhile (see "The main thread as owner" below).
//! 3. [`Pool<S>`]: N owners with least-loaded, round-robin and keyed
//!    ([`KeyRouting`]) dispatch, every submission form through the
//!    dispatch or a [`Route`] (by key or index).
//! 4. Operations: [`threads`], [`placement`], [`ThreadWatch`] (the
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
//!
//! # The main thread as owner
//!
//! Some SDKs must be called on the process's main thread (macOS AppKit and
//! Metal set-up, several GUI and game SDKs), so no spawned owner will do.
//! [`Builder::on_this_thread`] makes the *calling* thread the owner: it
//! runs `init` there and returns the usual `Send + Sync` handle with an
//! [`OwnerLoop`], which must stay on that thread and serves the jobs from
//! [`OwnerLoop::run`] until the worker is closed. Panic policies, closing,
//! [`Bound`] values, metrics and the deadlock detector hold as on a
//! spawned owner; a re-initialisation drops the state and runs `init`
//! again on the same thread, which is never renamed or re-pinned.
//!
//! ```
//! use std::sync::Arc;
//! use pinned_ffi::PinnedWorker;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (sdk, owner_loop) = PinnedWorker::builder()
//!         .name("appkit")
//!         .on_this_thread(|| Ok::<_, std::io::Error>(std::rc::Rc::new(0u32)))?; // `!Send` state
//!     let sdk = Arc::new(sdk);
//!     let app = {
//!         let sdk = Arc::clone(&sdk);
//!         std::thread::spawn(move || {
//!             let rt = tokio::runtime::Runtime::new().unwrap();
//!             let n = rt.block_on(async { sdk.call(|s| **s + 1).await }).unwrap();
//!             sdk.close().unwrap(); // the app is done: the main loop returns
//!             n
//!         })
//!     };
//!     owner_loop.run(); // main serves the SDK calls, then drops the state here
//!     assert_eq!(app.join().unwrap(), 1);
//!     Ok(())
//! }
//! ```

mod admit;
mod bound;
mod close;
mod config;
mod deadline;
mod doorbell;
mod error;
mod health;
mod here;
mod intake;
mod job;
mod keys;
mod labels;
mod lane;
mod limits;
mod load;
mod mailbox;
mod metrics;
mod owner;
pub mod placement;
mod pool;
mod room;
mod route;
mod shared;
mod slot;
mod spawn;
mod spin;
mod submit;
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
pub use health::Hang;
pub use here::OwnerLoop;
pub use keys::KeyRouting;
pub use labels::with_label;
pub use metrics::{MetricsSnapshot, Summary};
pub use pool::{Dispatch, Pool, PoolBuilder};
pub use route::Route;
pub use ticket::Ticket;
pub use watch::{Alarm, ThreadWatch, WatchConfig};
pub use worker::{owners_started, PinnedWorker, TIMED_ONE_JOB_IN};

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
