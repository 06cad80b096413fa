//! Starting a worker: [`Builder::spawn`] creates the queues and the
//! shared part, starts the owner thread, runs `init` there and hands back
//! the [`PinnedWorker`] once it has.

use std::marker::PhantomData;
use std::sync::Arc;

use crossbeam_channel as channel;

use crate::config::Builder;
use crate::error::SpawnError;
use crate::job::OwnerState;
use crate::mailbox::{Mailboxes, Scanner};
use crate::owner::{owner_thread, Core};
use crate::shared::Shared;
use crate::unwind::catch_panic;
use crate::worker::PinnedWorker;

impl Builder {
    /// Starts the owner thread and runs `init` on it. Returns once `init`
    /// has finished: with the worker, or with `init`'s error and the thread
    /// joined. `init` is kept to re-initialise the state on a fresh thread
    /// (see [`PanicPolicy::Reinit`](crate::PanicPolicy::Reinit) and [`Breaker`](crate::Breaker)).
    ///
    /// # Errors
    /// [`SpawnError::Init`] with `init`'s error, [`SpawnError::InitPanicked`],
    /// or [`SpawnError::Os`] when the thread or CPU set is refused.
    pub fn spawn<S, E, F>(self, init: F) -> Result<PinnedWorker<S>, SpawnError<E>>
    where
        S: 'static,
        E: std::fmt::Display + Send + 'static,
        F: FnMut() -> Result<S, E> + Send + 'static,
    {
        // Start the load estimate's first window now (rate-limited like
        // every refresh), so that the first waits under load know of it.
        if !cfg!(any(pinned_loom, miri)) {
            crate::load::refresh(crate::spin::cores());
        }
        // Unbounded: the queue's bound is the worker's `Room`.
        let (tx, rx) = channel::unbounded();
        let handle_rx = rx.clone();
        let (release_tx, release_rx) = channel::unbounded();
        let mailboxes = Mailboxes::new();
        let owner_mailboxes = Arc::clone(&mailboxes);
        let shared = Arc::new(Shared::new(self));

        let (ready_tx, ready_rx) = channel::bounded::<Result<(), SpawnError<E>>>(1);
        let mut init = init;
        let thread_shared = Arc::clone(&shared);
        let handle = shared.thread_builder().spawn(move || {
            let shared = thread_shared;
            if let Err(e) = shared.enter_owner_thread() {
                let _ = ready_tx.send(Err(SpawnError::Os(e)));
                return;
            }
            let first = match catch_panic(&mut init) {
                Ok(Ok(state)) => state,
                Ok(Err(e)) => {
                    let _ = ready_tx.send(Err(SpawnError::Init(e)));
                    return;
                }
                Err(panic) => {
                    // The payload goes to the spawner (a `Panic` drops it
                    // under a catch if the send fails).
                    let _ = ready_tx.send(Err(SpawnError::InitPanicked(panic)));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            drop(ready_tx);
            let core = Core::new(
                shared,
                rx,
                release_rx,
                Scanner::new(owner_mailboxes),
                Box::new(move || init().map_err(|e| e.to_string())),
            );
            owner_thread(core, Some(OwnerState::new(first)), None);
        })?;

        match ready_rx.recv() {
            Ok(Ok(())) => {
                shared
                    .threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(handle);
                crate::health::watch(&shared);
                Ok(PinnedWorker {
                    shared,
                    tx,
                    rx: handle_rx,
                    releases: release_tx,
                    mailboxes,
                    _state: PhantomData,
                })
            }
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => {
                let _ = handle.join();
                Err(SpawnError::InitPanicked("owner thread ended during init".into()))
            }
        }
    }
}

impl PinnedWorker<()> {
    /// A builder with the defaults; [`Builder::spawn`] fixes the state type.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<S: 'static> PinnedWorker<S> {
    /// Starts a worker with the defaults; see [`Builder::spawn`].
    ///
    /// # Errors
    /// As [`Builder::spawn`].
    pub fn spawn<E, F>(init: F) -> Result<Self, SpawnError<E>>
    where
        E: std::fmt::Display + Send + 'static,
        F: FnMut() -> Result<S, E> + Send + 'static,
    {
        Builder::default().spawn(init)
    }
}
