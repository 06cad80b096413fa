//! The calling thread as the owner: [`Builder::on_this_thread`] makes the
//! thread that calls it a worker's owner and hands back the `Send + Sync`
//! [`PinnedWorker`] with an [`OwnerLoop`] that this thread drives until the
//! worker closes; [`Builder::run_here`] wraps both around a body that runs
//! on a scoped thread. For SDKs that must be called on the process's main
//! thread (macOS AppKit and Metal set-up, several GUI and game SDKs).
//!
//! The loop is the spawned owner's loop (`owner::owner_thread`), with one
//! difference: a re-initialisation happens in place, on this thread, since
//! the thread never changing is the point.

use std::fmt::Display;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel as channel;

use crate::config::Builder;
use crate::error::{Error, SpawnError};
use crate::job::OwnerState;
use crate::mailbox::{Mailboxes, Scanner};
use crate::owner::{drain_rejecting, owner_thread, Core};
use crate::shared::{Shared, DEFAULT_OWNER_STACK};
use crate::unwind::{catch, catch_panic};
use crate::waits;
use crate::worker::PinnedWorker;

/// The owner loop of a worker whose owner is the thread that created it
/// (see [`Builder::on_this_thread`]). It holds the state `S` and cannot
/// leave that thread (`!Send`): call [`run`](Self::run) there to serve the
/// worker's jobs until it closes.
///
/// Dropped without `run`, it serves nothing: jobs already accepted are
/// answered [`Error::Shutdown`] without running, later calls get
/// [`Error::Closed`], and the state is dropped on this thread. Nothing
/// waits forever on it, except a `close` racing a loop that is
/// [forgotten](std::mem::forget) rather than dropped: the loop is what a
/// close waits for.
///
/// ```
/// let (worker, owner_loop) = pinned_ffi::PinnedWorker::builder()
///     .on_this_thread(|| Ok::<_, std::io::Error>(std::rc::Rc::new(5u32)))?;
/// let t = worker.submit(|n| **n + 1)?;
/// drop(owner_loop); // never run: the queued job is answered, the Rc dropped here
/// assert_eq!(t.wait(), Err(pinned_ffi::Error::Shutdown));
/// assert_eq!(worker.run(|n| **n), Err(pinned_ffi::Error::Closed));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// It stays on its thread:
///
/// ```compile_fail
/// let (worker, owner_loop) = pinned_ffi::PinnedWorker::builder()
///     .on_this_thread(|| Ok::<_, std::io::Error>(()))?;
/// std::thread::spawn(move || owner_loop.run()); // OwnerLoop is !Send
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct OwnerLoop<S: 'static> {
    /// `None` once `run` took it.
    core: Option<Core<S>>,
    owner: Option<OwnerState<S>>,
    id: u64,
    /// Neither `Send` nor `Sync`: the state and the owner marks belong to
    /// this thread.
    _here: PhantomData<*const ()>,
}

impl<S: 'static> std::fmt::Debug for OwnerLoop<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerLoop")
            .field("worker", &self.id)
            .field("ran", &self.core.is_none())
            .finish()
    }
}

impl Builder {
    /// Makes the calling thread the owner of a new worker: runs `init` here
    /// now, and returns the worker, a `Send + Sync` handle to share with
    /// other threads and tasks, and the [`OwnerLoop`] that this thread
    /// then [runs](OwnerLoop::run) to serve them. Use it where an SDK must
    /// be called on one particular thread, usually the process's main
    /// thread; [`run_here`](Self::run_here) is the same with the body on a
    /// scoped thread.
    ///
    /// Everything holds as on a spawned owner: every job runs on this
    /// thread, one at a time, under a catch; [`Bound`](crate::Bound)
    /// values live and are dropped here; closing, metrics, the deadlock
    /// detector, tickets and the async forms work unchanged. The
    /// differences:
    /// - The thread is the caller's: it is not renamed (the worker's
    ///   [`name`](PinnedWorker::name) is still the builder's, for metrics
    ///   and traces), [`cpus`](Self::cpus) is not applied (its placement is
    ///   the caller's business), and [`stack_size`](Self::stack_size)
    ///   cannot size it: the job and result limits
    ///   ([`MAX_RESULT`](PinnedWorker::MAX_RESULT)) follow this thread's
    ///   stack size (on Linux, to 64 KiB; a main thread's is its `ulimit
    ///   -s`) when that is smaller than the size set or the default 8 MiB.
    ///   As on a spawned owner, they assume the loop runs near the top of
    ///   the stack: call [`run`](OwnerLoop::run) from a shallow frame.
    /// - A re-initialisation ([`PanicPolicy::Reinit`](crate::PanicPolicy::Reinit),
    ///   or the [`Breaker`](crate::Breaker) after its cooldown) drops the
    ///   state and runs `init` again *on this thread*: there is no fresh
    ///   thread, so `__thread` storage that the library keeps is not
    ///   renewed, and [`owners_started`](crate::owners_started) counts this
    ///   owner once.
    /// - Until its loop returns, this thread is the owner: its own blocking
    ///   calls on the worker (`run`, `close`, waiting on a ticket) are
    ///   refused with [`Error::Reentrant`], since only this thread could
    ///   serve them. A `close` here stops intake all the same, and dropping
    ///   the handle here is a close that does not wait: the loop, when run,
    ///   serves what was accepted and returns.
    ///
    /// A thread owns one worker at a time.
    ///
    /// ```
    /// use pinned_ffi::PinnedWorker;
    /// use pinned_ffi::threads::current_tid;
    ///
    /// let here = current_tid();
    /// let (worker, owner_loop) = PinnedWorker::builder()
    ///     .name("ui")
    ///     .on_this_thread(|| Ok::<_, std::io::Error>(std::rc::Rc::new(std::cell::Cell::new(0u32))))?;
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         // Any thread or task calls; every call runs on the thread that owns the loop.
    ///         for _ in 0..3 {
    ///             assert_eq!(worker.run(|n| { n.set(n.get() + 1); current_tid() }).unwrap(), here);
    ///         }
    ///         worker.close().unwrap(); // makes `run` below return
    ///     });
    ///     owner_loop.run(); // serves until the worker is closed, then drops the state here
    /// });
    /// assert_eq!(worker.metrics().completed, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`SpawnError::Init`] with `init`'s error and
    /// [`SpawnError::InitPanicked`]; [`SpawnError::Os`] (kind
    /// [`ResourceBusy`](std::io::ErrorKind::ResourceBusy)) when this thread
    /// already owns a worker, spawned or not, whose loop has not returned.
    pub fn on_this_thread<S, E, F>(self, init: F) -> Result<(PinnedWorker<S>, OwnerLoop<S>), SpawnError<E>>
    where
        S: 'static,
        E: Display + 'static,
        F: FnMut() -> Result<S, E> + Send + 'static,
    {
        if let Some(other) = waits::owner_of_current_thread() {
            return Err(SpawnError::Os(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("this thread already owns worker {other}: one owner loop per thread at a time"),
            )));
        }
        let mut config = self;
        let configured = config.stack_size.unwrap_or(DEFAULT_OWNER_STACK);
        // To 64 KiB: a main thread's stack is its limit less a guard page,
        // and should take what a default owner's 8 MiB takes.
        let size = this_stack_size()
            .map(|size| size.saturating_add(STACK_ROUNDING - 1) / STACK_ROUNDING * STACK_ROUNDING);
        config.stack_size = Some(size.map_or(configured, |size| size.min(configured)));
        // As in `spawn`: the queue's bound is the worker's `Room`.
        let (tx, rx) = channel::unbounded();
        let handle_rx = rx.clone();
        let (release_tx, release_rx) = channel::unbounded();
        let mailboxes = Mailboxes::new();
        let shared = Arc::new(Shared::new(config));
        let id = shared.id;
        shared.mark_owner_thread();
        let mut init = init;
        let first = match catch_panic(&mut init) {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                leave(&shared);
                return Err(SpawnError::Init(e));
            }
            Err(panic) => {
                leave(&shared);
                return Err(SpawnError::InitPanicked(panic));
            }
        };
        let mut core = Core::new(
            Arc::clone(&shared),
            rx,
            release_rx,
            Scanner::new(Arc::clone(&mailboxes)),
            Box::new(move || init().map_err(|e| e.to_string())),
        );
        core.in_place = true;
        crate::health::watch(&shared);
        let worker = PinnedWorker {
            shared,
            tx,
            rx: handle_rx,
            releases: release_tx,
            mailboxes,
            _state: PhantomData,
        };
        let owner_loop = OwnerLoop {
            core: Some(core),
            owner: Some(OwnerState::new(first)),
            id,
            _here: PhantomData,
        };
        Ok((worker, owner_loop))
    }

    /// Runs a worker's owner loop on the calling thread while `body` runs
    /// on a scoped thread with the worker; closes the worker when `body`
    /// returns and returns `body`'s result once the loop has dropped the
    /// state here. See [`on_this_thread`](Self::on_this_thread) for what
    /// an owner on the caller's thread guarantees, and use it directly
    /// where the worker must outlive a scope (an `Arc` in `'static`
    /// tasks). A panic in `body` closes the worker and is resumed here.
    ///
    /// ```
    /// use pinned_ffi::{PanicPolicy, PinnedWorker};
    /// let main_tid = pinned_ffi::threads::current_tid();
    /// let sum = PinnedWorker::builder().panic_policy(PanicPolicy::Reinit).run_here(
    ///     || Ok::<_, std::io::Error>(0u64),
    ///     |worker| {
    ///         // `body` runs on another thread; the jobs run on the calling thread.
    ///         assert_ne!(pinned_ffi::threads::current_tid(), main_tid);
    ///         let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    ///         rt.block_on(async {
    ///             for i in 1..=4 {
    ///                 worker.call(move |n| { *n += i; assert_eq!(pinned_ffi::threads::current_tid(), main_tid) }).await.unwrap();
    ///             }
    ///         });
    ///         worker.run(|n| *n).unwrap()
    ///     },
    /// )?;
    /// assert_eq!(sum, 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`on_this_thread`](Self::on_this_thread), and [`SpawnError::Os`]
    /// when the thread for `body` cannot be created (nothing ran then:
    /// the state is dropped here).
    pub fn run_here<S, E, F, B, R>(self, init: F, body: B) -> Result<R, SpawnError<E>>
    where
        S: 'static,
        E: Display + 'static,
        F: FnMut() -> Result<S, E> + Send + 'static,
        B: FnOnce(&PinnedWorker<S>) -> R + Send,
        R: Send,
    {
        let (worker, owner_loop) = self.on_this_thread(init)?;
        std::thread::scope(|scope| {
            // The handle goes with `body`: dropped when `body` returns or
            // unwinds, it closes the worker and waits for the loop below
            // to return.
            let body_thread = std::thread::Builder::new().spawn_scoped(scope, move || {
                let worker = worker;
                body(&worker)
            });
            let body_thread = match body_thread {
                Ok(t) => t,
                // The closure and its handle were dropped here, on the
                // owner: a close that does not wait. The loop's drop
                // answers and tears down.
                Err(e) => return Err(SpawnError::Os(e)),
            };
            owner_loop.run();
            match body_thread.join() {
                Ok(r) => Ok(r),
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }
}

impl<S: 'static> PinnedWorker<S> {
    /// Makes the calling thread the owner of a worker with the defaults;
    /// see [`Builder::on_this_thread`].
    ///
    /// ```
    /// let (w, owner_loop) = pinned_ffi::PinnedWorker::on_this_thread(|| Ok::<_, std::io::Error>(1u8))?;
    /// let t = w.submit(|n| *n + 1)?;
    /// drop(w); // on the owner: closes without waiting
    /// owner_loop.run(); // runs the accepted job, then returns
    /// assert_eq!(t.wait()?, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Builder::on_this_thread`].
    pub fn on_this_thread<E, F>(init: F) -> Result<(Self, OwnerLoop<S>), SpawnError<E>>
    where
        E: Display + 'static,
        F: FnMut() -> Result<S, E> + Send + 'static,
    {
        Builder::default().on_this_thread(init)
    }

    /// Runs `body` with a worker whose owner is the calling thread, with
    /// the defaults; see [`Builder::run_here`].
    ///
    /// ```
    /// let here = pinned_ffi::threads::current_tid();
    /// let there = pinned_ffi::PinnedWorker::run_here(
    ///     || Ok::<_, std::io::Error>(()),
    ///     |w| w.run(|_| pinned_ffi::threads::current_tid()).unwrap(),
    /// )?;
    /// assert_eq!(there, here);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Builder::run_here`].
    pub fn run_here<E, F, B, R>(init: F, body: B) -> Result<R, SpawnError<E>>
    where
        E: Display + 'static,
        F: FnMut() -> Result<S, E> + Send + 'static,
        B: FnOnce(&PinnedWorker<S>) -> R + Send,
        R: Send,
    {
        Builder::default().run_here(init, body)
    }
}

impl<S: 'static> OwnerLoop<S> {
    /// Serves the worker's jobs on this thread until the worker is closed
    /// ([`close`](PinnedWorker::close), [`close_timeout`](PinnedWorker::close_timeout),
    /// or dropping the handle), or stopped by a panic under
    /// [`PanicPolicy::Stop`](crate::PanicPolicy::Stop); then drops the
    /// state here and returns. A close waits for this, so a close from
    /// another thread returns once `run` does (`close_timeout`, past its
    /// deadline, returns first).
    ///
    /// Panics in jobs are contained as on any worker: the job's caller gets
    /// [`Error::Panicked`], and the panic policy decides what follows
    /// (`Keep` goes on; `Reinit` drops the state and re-runs `init` here,
    /// on this thread; `Stop` refuses later jobs and returns once the
    /// queue is answered and no caller is being refused at that moment;
    /// at the latest when the worker is closed or its handle dropped).
    ///
    /// Afterwards this thread is no longer an owner: it may call on the
    /// worker (which refuses: it is closed), on other workers, or own
    /// another worker. Why the loop ended is what later calls on the
    /// worker return ([`Error::Closed`], [`Error::Stopped`], or
    /// [`Error::OwnerDied`] if the loop itself failed).
    ///
    /// ```
    /// use pinned_ffi::{Error, PanicPolicy, PinnedWorker};
    /// let (w, owner_loop) = PinnedWorker::builder()
    ///     .panic_policy(PanicPolicy::Stop)
    ///     .on_this_thread(|| Ok::<_, std::io::Error>(()))?;
    /// let boom = w.submit(|_| panic!("boom"))?;
    /// owner_loop.run(); // returns: the panic stopped the worker
    /// assert!(matches!(boom.wait(), Err(Error::Panicked(_))));
    /// assert_eq!(w.run(|_| ()), Err(Error::Stopped));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run(mut self) {
        let Some(core) = self.core.take() else {
            return;
        };
        let owner = self.owner.take();
        // `self`'s drop, after the loop (or while unwinding out of it, if
        // the loop itself failed), clears this thread's owner mark.
        owner_thread(core, owner, None);
    }
}

impl<S: 'static> Drop for OwnerLoop<S> {
    fn drop(&mut self) {
        if let Some(mut core) = self.core.take() {
            // Never run: answer everything accepted, drop the state here,
            // and let closers return.
            let shared = Arc::clone(&core.shared);
            let owner = self.owner.take();
            let closing = Arc::clone(&shared);
            let _ = catch(move || {
                // ORDERING: SeqCst, as every closer stops intake (see
                // `PinnedWorker::enter`).
                closing.closed.store(true, Ordering::SeqCst);
                crate::sync::seqcst_handshake();
                let woken = closing.room.wake_all();
                drain_rejecting(&mut core, Error::Shutdown);
                let torn = owner.map_or(0, OwnerState::teardown);
                core.contained(woken + torn);
            });
            shared.mark_exited();
        }
        waits::leave_owner_of(self.id);
    }
}

/// An init on this thread failed: it owns nothing after all.
fn leave(shared: &Shared) {
    waits::leave_owner_of(shared.id);
    shared.bell.clear_owner();
}

/// A caller's stack size is rounded up to this before it sets the job and
/// result limits (a small fraction of the margin they keep).
const STACK_ROUNDING: usize = 64 << 10;

/// The calling thread's stack size, where the OS says (Linux:
/// `pthread_getattr_np`, which knows the main thread's too: its limit).
fn this_stack_size() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `pthread_attr_t` is plain data; all-zero is a valid
        // value to hand `pthread_getattr_np`, which initialises it.
        let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
        // SAFETY: `pthread_self` is the calling thread, alive; `attr` is
        // writable and ours.
        if unsafe { libc::pthread_getattr_np(libc::pthread_self(), &mut attr) } != 0 {
            return None;
        }
        let mut size: libc::size_t = 0;
        // SAFETY: `attr` was initialised by the successful call above; the
        // out-pointer is a valid local.
        let rc = unsafe { libc::pthread_attr_getstacksize(&attr, &mut size) };
        // SAFETY: initialised above and destroyed once, here.
        unsafe { libc::pthread_attr_destroy(&mut attr) };
        (rc == 0 && size > 0).then_some(size)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}
