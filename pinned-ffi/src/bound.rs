//! Owner-bound values: [`Bound`] handles to values that live on a worker's
//! owner thread, and the worker's methods that make and use them.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::error::Error;
use crate::job::OwnerState;
use crate::shared::Shared;
use crate::worker::PinnedWorker;

impl<S: 'static> PinnedWorker<S> {
    /// Creates a value on the owner thread and keeps it there, returning a
    /// `Send` handle. The value is reachable only through
    /// [`with`](Self::with); dropping the handle, from any thread, runs the
    /// value's destructor on the owner thread. Use it for SDK objects that
    /// belong to the context (device buffers, sessions).
    ///
    /// ```
    /// # let worker = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
    /// let buf = worker.bind(|_| std::rc::Rc::new(vec![1u8, 2, 3]))?; // Rc: !Send, stays put
    /// let sum = std::thread::scope(|s| s.spawn(|| worker.with(&buf, |_, v| v.iter().sum::<u8>())).join().unwrap())?;
    /// assert_eq!(sum, 6);
    /// drop(buf); // the Rc is dropped on the owner thread
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub fn bind<T, F>(&self, make: F) -> Result<Bound<T>, Error>
    where
        T: 'static,
        F: FnOnce(&mut S) -> T + Send,
    {
        self.try_bind(|s| Ok::<T, std::convert::Infallible>(make(s)))?
            .map_err(|never| match never {})
    }

    /// Like [`bind`](Self::bind) for fallible creation: `make`'s error is
    /// returned inside `Ok`.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let ok = w.try_bind(|_| "42".parse::<u32>())?;
    /// assert!(ok.is_ok());
    /// let bad = w.try_bind(|_| "x".parse::<u32>())?;
    /// assert!(bad.is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_bind<T, E, F>(&self, make: F) -> Result<Result<Bound<T>, E>, Error>
    where
        T: 'static,
        E: Send,
        F: FnOnce(&mut S) -> Result<T, E> + Send,
    {
        self.check_sizes::<F, Result<T, E>>()?;
        let id = self.shared.next_bound.fetch_add(1, Ordering::Relaxed);
        let made = self.run_owner(move |o: &mut OwnerState<S>| -> Result<(), E> {
            let value = make(&mut o.state)?;
            o.bound.insert(id, Box::new(value));
            Ok(())
        })?;
        Ok(made.map(|()| Bound {
            id,
            worker: self.shared.id,
            releases: self.releases.clone(),
            shared: Arc::clone(&self.shared),
            _value: PhantomData,
        }))
    }

    /// Runs `f` on the owner thread with the state and the owner-bound value.
    ///
    /// # Errors
    /// [`Error::StaleHandle`] if the handle belongs to another worker or its
    /// value was dropped by a re-initialisation; otherwise as
    /// [`run`](Self::run).
    ///
    /// ```
    /// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64))?;
    /// let counter = w.bind(|_| std::cell::Cell::new(0u32))?; // Cell: !Sync, lives on the owner
    /// for _ in 0..3 { w.with(&counter, |_, c| c.set(c.get() + 1))?; }
    /// assert_eq!(w.with(&counter, |_, c| c.get())?, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with<T, R, F>(&self, bound: &Bound<T>, f: F) -> Result<R, Error>
    where
        T: 'static,
        R: Send,
        F: FnOnce(&mut S, &mut T) -> R + Send,
    {
        if bound.worker != self.shared.id {
            return Err(Error::StaleHandle);
        }
        self.check_sizes::<F, R>()?;
        let id = bound.id;
        self.run_owner(move |o: &mut OwnerState<S>| {
            let value = o
                .bound
                .get_mut(&id)
                .and_then(|v| v.downcast_mut::<T>())
                .ok_or(Error::StaleHandle)?;
            Ok(f(&mut o.state, value))
        })?
    }
}

/// A `Send + Sync` handle to a value of type `T` that lives on a worker's
/// owner thread (see [`PinnedWorker::bind`]). Dropping it from any thread
/// destroys the value on the owner thread.
pub struct Bound<T> {
    pub(crate) id: u64,
    pub(crate) worker: u64,
    pub(crate) releases: Sender<u64>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) _value: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Bound<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("id", &self.id)
            .field("worker", &self.worker)
            .finish()
    }
}

impl<T> Drop for Bound<T> {
    fn drop(&mut self) {
        // Unbounded: never blocks, never full. If the worker is gone its
        // values were already destroyed on its owner thread.
        // Counted before the send and uncounted by the owner after it
        // receives, so the count is never below the messages in the
        // channel: an owner that reads 0 has no release to look for (a
        // count made after the send could be read as 0 while an earlier
        // release waits, if the owner took this one first).
        // ORDERING: Release, before the send: an owner that takes a job
        // sent after this drop sees the count and finds the message (see
        // `intake::release_pending`).
        self.shared.releases_pending.fetch_add(1, Ordering::Release);
        crate::sync::channel_send();
        if self.releases.send(self.id).is_ok() {
            self.shared.bell.ring_after_send();
        } else {
            // ORDERING: the worker is gone; nothing reads this any more.
            self.shared.releases_pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
