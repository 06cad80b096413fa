//! Panic discipline: where unwinding is caught, and where it must never
//! happen.
//!
//! Two rules keep the executor sound and alive:
//! - **User code runs under a catch, payload included.** Everything the
//!   owner runs that a user wrote (a job, a destructor of the state, of a
//!   bound value, of a job's captures or result, a panic payload's
//!   destructor, a waker) goes through [`catch`], [`catch_panic`] or
//!   [`drop_caught`]. A payload is user code too: it is dropped under a
//!   catch, and so is the payload of a panic in its destructor, to a fixed
//!   depth. A job's (or `init`'s) payload is carried to its caller in a
//!   [`Panic`], whose drop does the same on whichever thread drops it.
//! - **A region where another thread may hold a borrow of this frame (or
//!   this thread holds one of another's) cannot unwind**, by construction:
//!   an [`AbortOnUnwind`] guard lives across it, and if anything inside
//!   ever unwinds (a future edit, a bug), the process aborts instead of
//!   freeing memory the other side still uses. This is rayon-core's
//!   `AbortIfPanic`.

use std::any::Any;
use std::cell::Cell;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};

use crate::error::{panic_message, Panic};

/// Aborts the process if dropped: create it where a region must not unwind,
/// [`disarm`](Self::disarm) it where the region ends.
#[must_use = "the guard protects the region until it is disarmed"]
pub(crate) struct AbortOnUnwind(&'static str);

impl AbortOnUnwind {
    /// Arms the guard; `region` names it in the abort message.
    #[inline]
    pub(crate) fn new(region: &'static str) -> Self {
        AbortOnUnwind(region)
    }

    /// Ends the region normally.
    #[inline]
    pub(crate) fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for AbortOnUnwind {
    #[cold]
    fn drop(&mut self) {
        // Only reached by unwinding: every normal path disarms.
        let _ = writeln!(
            std::io::stderr(),
            "pinned-ffi: a panic unwound out of {}, where another thread may still use this \
             memory; aborting",
            self.0
        );
        std::process::abort();
    }
}

/// Drops a panic payload under a catch: `true` if its destructor panicked.
/// The payload of that panic is dropped the same way, and so on; only a
/// chain deeper than [`PAYLOAD_DEPTH`] is cut short by leaking its last
/// payload (a destructor that panics with a payload whose destructor
/// panics, again and again, would otherwise never end).
pub(crate) fn drop_payload(payload: Box<dyn Any + Send>) -> bool {
    let mut next = match panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        Ok(()) => return false,
        Err(again) => again,
    };
    for _ in 1..PAYLOAD_DEPTH {
        next = match panic::catch_unwind(AssertUnwindSafe(move || drop(next))) {
            Ok(()) => return true,
            Err(again) => again,
        };
    }
    std::mem::forget(next);
    true
}

/// How many nested payloads [`drop_payload`] drops before it leaks one.
pub(crate) const PAYLOAD_DEPTH: usize = 8;

thread_local! {
    /// Payload destructors that panicked inside a [`Panic`]'s drop on this
    /// thread (wrapping): [`drop_caught`] adds the ones that happen while
    /// it drops a value, so a payload carried in an unclaimed result still
    /// counts as contained on the owner.
    static PAYLOAD_PANICS: Cell<u32> = const { Cell::new(0) };
}

fn payload_panics() -> u32 {
    PAYLOAD_PANICS.try_with(Cell::get).unwrap_or(0)
}

/// Drops a [`Panic`]'s payload under a catch ([`drop_payload`]), noting a
/// panic of its destructor for [`drop_caught`]. Never unwinds.
pub(crate) fn drop_carried_payload(payload: Box<dyn Any + Send>) {
    if drop_payload(payload) {
        let _ = PAYLOAD_PANICS.try_with(|n| n.set(n.get().wrapping_add(1)));
    }
}

/// Runs user code under a catch. On a panic: its message, and whether the
/// payload's own destructor panicked too.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = panic_message(&*payload);
        let payload_panicked = drop_payload(payload);
        Caught {
            message,
            payload_panicked,
        }
    })
}

/// Runs a job under a catch, keeping the panic's payload for its caller
/// (a [`Panic`] drops the payload under a catch wherever it ends up).
pub(crate) fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(Panic::new)
}

/// Drops `value` under a catch; returns the panics contained (0, 1, or 2
/// when the panic's payload panicked as it was dropped), counting those of
/// payloads carried in [`Panic`]s inside `value`.
pub(crate) fn drop_caught<T>(value: T) -> u32 {
    let before = payload_panics();
    let caught = match catch(move || drop(value)) {
        Ok(()) => 0,
        Err(c) => c.panics(),
    };
    caught + payload_panics().wrapping_sub(before)
}

/// A panic that [`catch`] stopped.
#[derive(Debug)]
pub(crate) struct Caught {
    /// The panic's message.
    pub(crate) message: String,
    /// Whether dropping its payload panicked as well.
    pub(crate) payload_panicked: bool,
}

impl Caught {
    /// Panics contained: this one, and its payload's if that panicked.
    pub(crate) fn panics(&self) -> u32 {
        1 + u32::from(self.payload_panicked)
    }
}

#[cfg(all(test, not(pinned_loom)))]
mod tests {
    use super::*;

    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("bomb");
        }
    }

    #[test]
    fn a_payload_whose_destructor_panics_is_contained() {
        let caught = catch(|| std::panic::panic_any(Bomb)).unwrap_err();
        assert_eq!(caught.message, "non-string panic payload");
        assert!(caught.payload_panicked);
        assert_eq!(caught.panics(), 2);
        assert_eq!(drop_caught(Bomb), 1);
        // A payload whose destructor panics with a payload whose destructor
        // panics...: dropped to PAYLOAD_DEPTH, then the last one leaks.
        struct Chain(usize, std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Chain {
            fn drop(&mut self) {
                self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if self.0 > 0 {
                    std::panic::panic_any(Chain(self.0 - 1, std::sync::Arc::clone(&self.1)));
                }
            }
        }
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        assert!(drop_payload(Box::new(Chain(3, std::sync::Arc::clone(&dropped)))));
        assert_eq!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "every link dropped once"
        );
        assert_eq!(drop_caught(7u8), 0);
        assert_eq!(catch(|| 5).unwrap(), 5);
        // A payload carried in a `Panic` is contained by the `Panic`'s own
        // drop, and still counted by a `drop_caught` around it.
        let carried = catch_panic(|| std::panic::panic_any(Bomb)).unwrap_err();
        assert_eq!(carried.message(), "non-string panic payload");
        assert_eq!(drop_caught(Some(carried)), 1);
        drop(catch_panic(|| std::panic::panic_any(Bomb)).unwrap_err()); // never unwinds
    }
}
