//! The synchronisation primitives the completion slot and the mailboxes
//! are built from: std's,
//! or loom's when built with `--cfg pinned_loom` so the slot's protocol can
//! be model-checked (`RUSTFLAGS="--cfg pinned_loom" cargo test -p pinned-ffi
//! --lib --release loom`).

#[cfg(pinned_loom)]
pub(crate) use loom::{
    hint::spin_loop,
    sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize},
    sync::{Condvar, Mutex},
    thread::{current, park, yield_now, Thread},
};
#[cfg(not(pinned_loom))]
pub(crate) use std::{
    hint::spin_loop,
    sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize},
    sync::{Condvar, Mutex},
    thread::{current, park, yield_now, Thread},
};

/// What a SeqCst access followed by a SeqCst access to another location
/// guarantees in C++20 (they are ordered in the single total order), given
/// to loom, which treats SeqCst accesses as AcqRel (its README,
/// "Unsupported features"): a SeqCst fence under loom, nothing otherwise.
/// Placed between the two accesses of each Dekker handshake.
#[inline(always)]
pub(crate) fn seqcst_handshake() {
    #[cfg(pinned_loom)]
    fence(std::sync::atomic::Ordering::SeqCst);
}

// The owner's queues are crossbeam channels, which loom cannot see: a job
// sent through one carries data (its slot, a pointer into the caller's
// frame) whose Release/Acquire pairing is crossbeam's own. Under loom,
// `channel_send` and `channel_recv` stand for that pairing: a sender calls
// the first just before sending, the owner the second just after a
// receive. The owner's read-modify-write reads the latest count, so it
// synchronises with every send made before its receive. Outside loom they
// compile to nothing.
#[cfg(pinned_loom)]
loom::lazy_static! {
    static ref CHANNEL_EDGES: AtomicUsize = AtomicUsize::new(0);
}

/// Before a send on one of the owner's queues (see above).
#[inline(always)]
pub(crate) fn channel_send() {
    #[cfg(pinned_loom)]
    CHANNEL_EDGES.fetch_add(1, std::sync::atomic::Ordering::Release);
}

/// After a receive from one of the owner's queues (see above).
#[inline(always)]
pub(crate) fn channel_recv() {
    #[cfg(pinned_loom)]
    CHANNEL_EDGES.fetch_add(0, std::sync::atomic::Ordering::Acquire);
}

/// An `UnsafeCell` with loom's closure-based access, so loom can track
/// every access to the slot's result.
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(
    #[cfg(pinned_loom)] loom::cell::UnsafeCell<T>,
    #[cfg(not(pinned_loom))] std::cell::UnsafeCell<T>,
);

impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        #[cfg(pinned_loom)]
        return UnsafeCell(loom::cell::UnsafeCell::new(value));
        #[cfg(not(pinned_loom))]
        return UnsafeCell(std::cell::UnsafeCell::new(value));
    }

    /// Runs `f` with a raw pointer to the value. Dereferencing it is the
    /// caller's `unsafe`, with the caller's proof of exclusive access.
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(pinned_loom)]
        return self.0.with_mut(f);
        #[cfg(not(pinned_loom))]
        return f(self.0.get());
    }
}

/// Parks with a time-out. Loom has no clock; a time-out that lapses is a
/// wake-up nobody sent, which loom models as a yield: the caller looks
/// again later, as it would after the time-out.
pub(crate) fn park_timeout(d: std::time::Duration) {
    #[cfg(pinned_loom)]
    {
        let _ = d;
        yield_now();
    }
    #[cfg(not(pinned_loom))]
    std::thread::park_timeout(d);
}
