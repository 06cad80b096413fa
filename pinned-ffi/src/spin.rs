//! How waiting threads spin: the choice between burning a core for a fast
//! hand-off and giving the core away.
//!
//! A hand-off that lands while the waiter spins costs a cache-line transfer;
//! one that lands after it parked costs a futex wake (tens of µs on a VM).
//! So waiters spin first. But a spinning thread holds a core: when the
//! threads taking part in hand-offs outnumber the cores, the one that has
//! the work (often the owner) may be waiting for the very core a spinner
//! holds. Then spinners must yield on every round. When they fit, yielding
//! only adds a system call to every wait that outlasts a few spins (on a VM
//! whose cores are far apart, that is every wait).
//!
//! The rule: count the threads *engaged* in hand-offs (owners while awake;
//! callers once per worker they have called through its mailboxes, while
//! both live); while they fit in the cores the process may use, spin
//! without yielding; otherwise yield after a few spins. A caller of several
//! workers counts once for each, which errs towards yielding.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::sync;

/// Threads engaged in hand-offs now (see the module's doc).
static ENGAGED: AtomicUsize = AtomicUsize::new(0);

/// Counts its thread as engaged while it lives.
#[derive(Debug)]
pub(crate) struct Engaged(());

impl Engaged {
    pub(crate) fn new() -> Self {
        // ORDERING: a heuristic count; nothing is published through it.
        ENGAGED.fetch_add(1, Ordering::Relaxed);
        Engaged(())
    }
}

impl Drop for Engaged {
    fn drop(&mut self) {
        // ORDERING: as in `new`.
        ENGAGED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The cores this process may use.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether the engaged threads fit in the cores, so spinners need not yield.
fn roomy() -> bool {
    // Under loom every wait must yield for the model to make progress.
    if cfg!(pinned_loom) {
        return false;
    }
    // ORDERING: as in `Engaged::new`.
    ENGAGED.load(Ordering::Relaxed) <= cores()
}

/// Spins on `done` for up to `budget` (and not past `deadline`); `true` as
/// soon as it is, `false` when time is up. The first rounds are pure spins
/// (a hot hand-off lands within them); after that, if the engaged threads
/// outnumber the cores, every round yields the core. (Without the yield, a
/// pool of 2 owners with 2 callers on 2 vCPUs cost ~8 µs a call instead of
/// ~2 µs; with it, one caller on one owner paid a system call on most
/// calls when its cores were far apart.)
pub(crate) fn spin_until_done(
    mut done: impl FnMut() -> bool,
    budget: Duration,
    deadline: Option<Instant>,
) -> bool {
    const PURE_SPINS: u32 = 16;
    const CLOCK_EVERY: u32 = 64;
    if budget.is_zero() {
        return done();
    }
    // The clock is read only once spinning has gone on for a while: a hot
    // hand-off completes within the first rounds and never pays for it.
    let mut until: Option<Option<Instant>> = None;
    // Decided once the pure spins run out (fast hand-offs never ask).
    let mut yielding: Option<bool> = None;
    let mut i: u32 = 0;
    loop {
        if done() {
            return true;
        }
        i = i.wrapping_add(1);
        if i < PURE_SPINS || !*yielding.get_or_insert_with(|| !roomy()) {
            sync::spin_loop();
        } else {
            sync::yield_now();
        }
        if i.is_multiple_of(CLOCK_EVERY) {
            let now = Instant::now();
            // A budget past the clock's range ends only at the deadline
            // (or when done): saturate rather than overflow, since a panic
            // here would unwind a waiter whose frame the owner may use.
            let end = *until.get_or_insert_with(|| {
                let end = now.checked_add(budget);
                match (end, deadline) {
                    (Some(e), Some(d)) => Some(e.min(d)),
                    (e, None) => e,
                    (None, d) => d,
                }
            });
            if end.is_some_and(|end| now >= end) {
                return done();
            }
        }
    }
}

#[cfg(all(test, not(pinned_loom)))]
mod tests {
    use super::*;

    #[test]
    fn engaged_threads_are_counted_while_their_guards_live() {
        // Other tests engage threads concurrently: compare with a margin.
        let before = ENGAGED.load(Ordering::Relaxed);
        let guards: Vec<_> = (0..1000).map(|_| Engaged::new()).collect();
        assert!(ENGAGED.load(Ordering::Relaxed) >= before + 1000 - 64);
        assert!(!roomy(), "a thousand engaged threads do not fit");
        drop(guards);
        assert!(ENGAGED.load(Ordering::Relaxed) < before + 64);
    }

    #[test]
    fn spinning_stops_at_the_budget_or_when_done() {
        let t = Instant::now();
        assert!(!spin_until_done(|| false, Duration::from_millis(5), None));
        assert!(t.elapsed() >= Duration::from_millis(5));
        let mut n = 0;
        assert!(spin_until_done(
            || {
                n += 1;
                n == 100
            },
            Duration::from_secs(5),
            None
        ));
        let mut n = 0;
        assert!(
            spin_until_done(
                || {
                    n += 1;
                    n == 1000
                },
                Duration::MAX,
                None
            ),
            "a budget past the clock's range spins until done"
        );
        let deadline = Instant::now() + Duration::from_millis(2);
        assert!(!spin_until_done(|| false, Duration::MAX, Some(deadline)));
        let deadline = Instant::now() + Duration::from_millis(2);
        assert!(!spin_until_done(|| false, Duration::from_secs(5), Some(deadline)));
        assert!(Instant::now() >= deadline);
    }
}
