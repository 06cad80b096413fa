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
//! The rule has two inputs. Ours: the threads *engaged* in hand-offs
//! (owners while awake; callers once per worker they have called through
//! its mailboxes, while both live). Everyone else's: the cores other
//! processes kept busy lately ([`load`](crate::load)). A hand-off that
//! lands within the first few spins never asks; a wait that goes on
//! follows the [`Policy`]:
//!
//! - ours and theirs fit in the cores this process may use: spin, without
//!   yielding, for the spin budget;
//! - ours alone outnumber the cores: yield on every round (the core goes
//!   to one of our own threads, often the very partner we wait for);
//! - other processes hold the cores: park at once. A spinner there burns
//!   the time slice its partner needs, a yield hands the core to a
//!   stranger for a whole slice (milliseconds), and a preempted partner
//!   cannot answer however long we spin; a parked thread is woken promptly.
//!
//! Two more pieces of evidence end a spin early. A spinner that finds it
//! was off the CPU between two looks at the clock was preempted: the
//! machine is busier than the estimate says, so it parks. And each worker
//! keeps a [`History`] of its waits: a worker whose waits keep outlasting
//! the budget spins less (down to 1/64 of it), and earns the budget back
//! when they get short again, as adaptive mutexes do. A caller of several
//! workers counts once for each, which errs towards yielding.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
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

/// What a waiter does once its first, pure spins have not seen the
/// hand-off (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Our threads and everyone else's fit in the cores: keep spinning.
    Spin,
    /// Our own threads outnumber the cores and nobody else needs them:
    /// yield on every round, handing the core to a partner of ours.
    Yield,
    /// Other processes hold the cores: a yield would hand ours to a
    /// stranger for a time slice, and a partner that was preempted cannot
    /// answer however long we spin. Park now; the scheduler wakes a thread
    /// that slept ahead of the ones that ran.
    Park,
}

/// Foreign load under half a core is noise (a shell, a timer, our own
/// sampling error): it does not change the policy.
const FOREIGN_NOISE_MILLICORES: u32 = 500;

/// The policy from the threads engaged here and the load of other processes.
pub(crate) fn policy() -> Policy {
    // Under loom every wait must yield for the model to make progress.
    if cfg!(pinned_loom) {
        return Policy::Yield;
    }
    // ORDERING: as in `Engaged::new`.
    let engaged = ENGAGED.load(Ordering::Relaxed) as u64;
    policy_for(engaged, crate::load::foreign_millicores(), cores())
}

fn policy_for(engaged: u64, foreign_millicores: u32, cores: usize) -> Policy {
    let foreign = if foreign_millicores < FOREIGN_NOISE_MILLICORES {
        0
    } else {
        u64::from(foreign_millicores)
    };
    if engaged * 1000 + foreign <= cores as u64 * 1000 {
        Policy::Spin
    } else if foreign == 0 {
        Policy::Yield
    } else {
        Policy::Park
    }
}

/// How a worker's recent waits went: the spin budget it has earned.
///
/// Each wait that ran out its spin and parked adds to `misses` when the
/// whole wait outlasted the full budget (spinning longer would not have
/// helped) and takes from it when it ended within half of it (a longer
/// spin would have caught it). The budget is the configured one halved
/// per miss, down to 1/64 of it: a worker whose jobs take longer than the
/// window stops burning a core on every call, and one whose jobs get
/// short again earns its budget back.
#[derive(Debug, Default)]
pub(crate) struct History {
    misses: AtomicU8,
}

impl History {
    const MOST_MISSES: u8 = 6;

    pub(crate) const fn new() -> Self {
        History {
            misses: AtomicU8::new(0),
        }
    }

    /// The budget this history allows out of `full`.
    fn budget(&self, full: Duration) -> Duration {
        // ORDERING: a heuristic; nothing is published through it.
        full / (1u32 << self.misses.load(Ordering::Relaxed).min(Self::MOST_MISSES))
    }

    /// A parked wait that began spinning at `since` ended now.
    fn learn(&self, since: Instant, full: Duration) {
        let took = since.elapsed();
        // ORDERING: as in `budget`. Racing updates lose a step, which the
        // next wait makes up.
        let m = self.misses.load(Ordering::Relaxed);
        let next = if took <= full / 2 {
            m.saturating_sub(1)
        } else if took > full {
            (m + 1).min(Self::MOST_MISSES)
        } else {
            m
        };
        if next != m {
            self.misses.store(next, Ordering::Relaxed);
        }
    }
}

/// A wait whose spin ran out: the caller parks while it lives, and its
/// drop teaches the worker's [`History`] how long the whole wait took.
#[must_use = "hold it while parked: its drop records how long the wait took"]
pub(crate) struct Missed<'h> {
    learn: Option<(&'h History, Instant, Duration)>,
}

impl Missed<'_> {
    const NOTHING: Missed<'static> = Missed { learn: None };
}

impl Drop for Missed<'_> {
    fn drop(&mut self) {
        if let Some((history, since, full)) = self.learn {
            history.learn(since, full);
        }
    }
}

/// Spins on `done` for up to `budget` (and not past `deadline`); `true` as
/// soon as it is, `false` when time is up. See [`spin_with`].
pub(crate) fn spin_until_done(
    done: impl FnMut() -> bool,
    budget: Duration,
    deadline: Option<Instant>,
) -> bool {
    spin_with(done, budget, deadline, None).is_ok()
}

/// A spinner that was off the CPU for this long between two looks at the
/// clock (64 rounds, a microsecond or two when it runs) lost its core to
/// someone: the partner may be waiting for a core too. Stop spinning.
const PREEMPTED: Duration = Duration::from_micros(200);

/// Spins on `done` for up to `budget` as `history` allows (and not past
/// `deadline`). `Ok` as soon as it is done; `Err` when the spin should
/// give way to parking: the budget ran out, the machine is held by other
/// processes ([`Policy::Park`]), or this thread was preempted while it
/// spun. The first rounds are pure spins (a hot hand-off lands within
/// them and pays for nothing else: no clock, no policy); after that the
/// [`policy`] decides between spinning on, yielding every round, and
/// parking. (Without the yield, a pool of 2 owners with 2 callers on 2
/// vCPUs cost ~8 µs a call instead of ~2 µs; yielding to other processes'
/// threads instead cost milliseconds a call.)
pub(crate) fn spin_with<'h>(
    mut done: impl FnMut() -> bool,
    full: Duration,
    deadline: Option<Instant>,
    history: Option<&'h History>,
) -> Result<(), Missed<'h>> {
    const PURE_SPINS: u32 = 16;
    const CLOCK_EVERY: u32 = 64;
    let budget = history.map_or(full, |h| h.budget(full));
    if budget.is_zero() {
        return if done() { Ok(()) } else { Err(Missed::NOTHING) };
    }
    // The clock is read only once spinning has gone on for a while: a hot
    // hand-off completes within the first rounds and never pays for it.
    let mut until: Option<Option<Instant>> = None;
    let (mut first_look, mut last_look): (Option<Instant>, Option<Instant>) = (None, None);
    // Decided once the pure spins run out (fast hand-offs never ask).
    let mut yielding = false;
    let mut i: u32 = 0;
    loop {
        if done() {
            return Ok(());
        }
        i = i.wrapping_add(1);
        if i == PURE_SPINS {
            match policy() {
                Policy::Spin => {}
                Policy::Yield => yielding = true,
                Policy::Park => {
                    // The estimate may be stale: refresh it (rate-limited)
                    // on the way to the park this wait pays for anyway.
                    crate::load::refresh(Instant::now(), cores());
                    return if done() { Ok(()) } else { Err(Missed::NOTHING) };
                }
            }
        }
        if yielding {
            sync::yield_now();
        } else {
            sync::spin_loop();
        }
        if i.is_multiple_of(CLOCK_EVERY) {
            let now = Instant::now();
            // A budget past the clock's range ends only at the deadline
            // (or when done): saturate rather than overflow, since a panic
            // here would unwind a waiter whose frame the owner may use.
            let end = *until.get_or_insert_with(|| {
                crate::load::refresh(now, cores());
                let end = now.checked_add(budget);
                match (end, deadline) {
                    (Some(e), Some(d)) => Some(e.min(d)),
                    (e, None) => e,
                    (None, d) => d,
                }
            });
            let first = *first_look.get_or_insert(now);
            let gap = last_look.map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
            last_look = Some(now);
            if !yielding && gap > PREEMPTED {
                crate::load::refresh(now, cores());
                return if done() { Ok(()) } else { Err(Missed::NOTHING) };
            }
            if end.is_some_and(|end| now >= end) {
                if done() {
                    return Ok(());
                }
                return Err(Missed {
                    learn: history.map(|h| (h, first, full)),
                });
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
        assert_ne!(policy(), Policy::Spin, "a thousand engaged threads do not fit");
        drop(guards);
        assert!(ENGAGED.load(Ordering::Relaxed) < before + 64);
    }

    #[test]
    fn the_policy_spins_while_all_fit_yields_to_our_own_and_parks_for_strangers() {
        assert_eq!(policy_for(2, 0, 2), Policy::Spin);
        assert_eq!(policy_for(2, 400, 2), Policy::Spin, "under half a core is noise");
        assert_eq!(
            policy_for(1, 900, 2),
            Policy::Spin,
            "one of ours fits beside one of theirs"
        );
        assert_eq!(policy_for(9, 0, 2), Policy::Yield);
        assert_eq!(policy_for(9, 200, 2), Policy::Yield);
        assert_eq!(policy_for(2, 1000, 2), Policy::Park);
        assert_eq!(policy_for(9, 2000, 2), Policy::Park);
        assert_eq!(policy_for(2, 1900, 4), Policy::Spin, "four cores hold both");
    }

    #[test]
    fn a_history_of_long_waits_shortens_the_spin_and_short_ones_restore_it() {
        let h = History::new();
        let full = Duration::from_millis(4);
        assert_eq!(h.budget(full), full);
        let long_ago = Instant::now() - Duration::from_millis(10);
        for _ in 0..10 {
            h.learn(long_ago, full);
        }
        assert_eq!(h.budget(full), full / 64, "capped at 1/64");
        // A wait that ended within half the budget: a longer spin would
        // have caught it.
        h.learn(Instant::now(), full);
        assert_eq!(h.budget(full), full / 32);
        for _ in 0..10 {
            h.learn(Instant::now(), full);
        }
        assert_eq!(h.budget(full), full);
        // Through `spin_with`: a wait that never ends inside the budget
        // misses; its `Missed` teaches the history when dropped.
        let h = History::new();
        let budget = Duration::from_micros(200);
        let missed = spin_with(|| false, budget, None, Some(&h))
            .err()
            .expect("never done");
        if missed.learn.is_none() {
            println!(
                "SKIPPED (last part): the machine is loaded ({:?}), so the spin parked early",
                policy()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(1)); // "parked" past the budget
        drop(missed);
        assert!(h.budget(budget) <= budget / 2, "{:?}", h.budget(budget));
        assert!(spin_with(|| true, budget, None, Some(&h)).is_ok());
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
