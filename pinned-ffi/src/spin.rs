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
//! Three more pieces of evidence end a spin early. A waiter whose partner
//! last ran on the waiter's own CPU (the [`Partner`] each side notes in
//! the slow path) gives way at once: that partner runs only once we
//! leave the CPU, so under load it parks, and otherwise it yields. A
//! spinner that finds it was off the CPU between two looks at the clock
//! was preempted: the machine is busier than the estimate says, so it
//! parks. And each worker
//! keeps a [`History`] of its waits: a worker whose waits keep outlasting
//! the budget spins less (down to 1/64 of it), and earns the budget back
//! when they get short again, as adaptive mutexes do. A caller of several
//! workers counts once for each, which errs towards yielding.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::sync;

/// The CPU that the thread a wait depends on (its *partner*: the owner
/// for a caller, the last caller that parked for an idle owner) was last
/// seen on. A hint: a stale one costs one needless park or one spin that
/// does not help, and is corrected by the next slow wait.
///
/// When caller and owner share a CPU while other processes hold the
/// others (the scheduler leaves them there: each CPU is equally busy),
/// a spinner keeps its partner off the only CPU it may run on until the
/// time slice ends: tens of µs a call, against one wake-up for a waiter
/// that parks at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Partner(pub(crate) u32);

impl Partner {
    /// Nothing known: the wait follows the policy alone.
    pub(crate) const UNKNOWN: Partner = Partner(u32::MAX);

    /// Whether the partner was last seen on the CPU this thread runs on.
    fn is_here(self) -> bool {
        self != Self::UNKNOWN && current_cpu() == self.0
    }
}

/// The CPU this thread runs on now (`u32::MAX` if unknown; always under
/// loom, whose threads are not the OS's). glibc reads it from the rseq
/// area: no system call.
pub(crate) fn current_cpu() -> u32 {
    if cfg!(pinned_loom) {
        return u32::MAX;
    }
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on error.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).unwrap_or(u32::MAX)
}

thread_local! {
    /// On an owner thread: where the caller it last answered went off to
    /// wait (parked, or for an awaited ticket, where its executor thread
    /// registered the waker); `UNKNOWN` when that caller caught its
    /// answer spinning.
    static PARKED_POSTER: Cell<Partner> = const { Cell::new(Partner::UNKNOWN) };
}

/// Owner, after answering a post or completing a ticket: where its
/// waiter waited, if it stopped spinning (see [`Partner`]).
pub(crate) fn note_poster(parked_on: Partner) {
    // Gone only while this thread exits: then no wait follows.
    let _ = PARKED_POSTER.try_with(|p| p.set(parked_on));
}

/// Owner, before an idle wait: the partner noted by [`note_poster`].
pub(crate) fn parked_poster() -> Partner {
    PARKED_POSTER.try_with(Cell::get).unwrap_or(Partner::UNKNOWN)
}

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
pub(crate) fn cores() -> usize {
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
    if let Some(p) = forced() {
        return p;
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

#[cfg(test)]
thread_local! {
    /// A policy this thread's waits follow whatever the machine does, with
    /// no preemption check and no count of engaged threads: for tests of
    /// the spin loop itself.
    static FORCED: std::cell::Cell<Option<Policy>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
fn forced() -> Option<Policy> {
    FORCED.with(std::cell::Cell::get)
}

#[cfg(not(test))]
#[inline(always)]
fn forced() -> Option<Policy> {
    None
}

/// How a worker's callers' recent waits went: the spin budget they have
/// earned, as adaptive mutexes keep one.
///
/// A wait that spun its whole budget and parked adds a miss when the
/// whole wait took over twice the full budget (spinning longer would not
/// have helped), and takes one away when it ended within the full budget
/// (the full spin would have caught it). The budget is the configured one
/// halved per miss, down to 1/64 of it. While it is short, every eighth
/// wait probes with the full budget and takes a miss away if it catches
/// the answer, so a worker whose jobs get short again earns its budget
/// back even when its shortened waits always park.
#[derive(Debug, Default)]
pub(crate) struct History {
    misses: AtomicU8,
    /// Waits made while `misses > 0` (counted only then), for the probes.
    shortened: AtomicU8,
}

impl History {
    const MOST_MISSES: u8 = 6;
    const PROBE_EVERY: u8 = 8;

    pub(crate) const fn new() -> Self {
        History {
            misses: AtomicU8::new(0),
            shortened: AtomicU8::new(0),
        }
    }

    /// The budget for the next wait out of `full`, and whether that wait
    /// is a probe.
    fn budget(&self, full: Duration) -> (Duration, bool) {
        // ORDERING: a heuristic; nothing is published through it. Racing
        // updates lose a step, which a later wait makes up; every value
        // stays within 0..=MOST_MISSES.
        let m = self.misses.load(Ordering::Relaxed).min(Self::MOST_MISSES);
        if m == 0 {
            return (full, false);
        }
        if self
            .shortened
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(Self::PROBE_EVERY)
        {
            return (full, true);
        }
        let nanos = u64::try_from(full.as_nanos()).unwrap_or(u64::MAX);
        (Duration::from_nanos(nanos >> m), false)
    }

    fn step(&self, up: bool) {
        // ORDERING: as in `budget`.
        let m = self.misses.load(Ordering::Relaxed);
        let next = if up {
            (m + 1).min(Self::MOST_MISSES)
        } else {
            m.saturating_sub(1)
        };
        if next != m {
            self.misses.store(next, Ordering::Relaxed);
        }
    }

    /// A wait that spun from `since` and parked has ended now.
    fn learn(&self, since: Instant, full: Duration) {
        let took = since.elapsed();
        if took <= full {
            self.step(false);
        } else if took > full.saturating_mul(2) {
            self.step(true);
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

/// One more look before a wait gives way to parking, teaching no history.
fn give_way<'h>(done: &mut impl FnMut() -> bool) -> Result<(), Missed<'h>> {
    if done() {
        Ok(())
    } else {
        Err(Missed::NOTHING)
    }
}

/// Spins on `done` for up to `budget` (and not past `deadline`), with no
/// history and no partner: `true` as soon as it is done (tests).
#[cfg(all(test, not(pinned_loom)))]
fn spin_until_done(done: impl FnMut() -> bool, budget: Duration, deadline: Option<Instant>) -> bool {
    spin_with(done, budget, deadline, None, || Partner::UNKNOWN).is_ok()
}

/// A spinner that was off the CPU for this long between two looks at the
/// clock, and eight times longer than its fastest gap between looks (64
/// rounds: a microsecond or two for a caller, more for an owner scanning
/// many mailboxes), lost its core to someone: the partner may be waiting
/// for a core too. Stop spinning.
const PREEMPTED: Duration = Duration::from_micros(200);

/// Under [`Policy::Park`], a waiter still spins this long while our
/// engaged threads fit in the cores (one caller and its owner, say): a
/// partner that is on a CPU answers within it, and a futex wake-up costs
/// more than this on a loaded VM. With more of our threads than cores it
/// parks at once.
const PARK_SPIN: Duration = Duration::from_micros(5);

/// Spins on `done` for up to `full` as `history` allows (and not past
/// `deadline`). `Ok` as soon as it is done; `Err` when the spin should
/// give way to parking: the budget ran out, the machine is held by other
/// processes ([`Policy::Park`]), the `partner` was last seen on this
/// thread's CPU (under `Park`; otherwise the wait yields), or this thread
/// was preempted while it spun. The first rounds are pure spins (a hot
/// hand-off lands within them and pays for nothing else: no clock, no policy, no history);
/// after that the [`policy`] decides between spinning on, yielding every
/// round, and parking. (Without the yield, a pool of 2 owners with 2
/// callers on 2 vCPUs cost ~8 µs a call instead of ~2 µs; yielding to
/// other processes' threads instead cost milliseconds a call.)
pub(crate) fn spin_with<'h>(
    mut done: impl FnMut() -> bool,
    full: Duration,
    deadline: Option<Instant>,
    history: Option<&'h History>,
    partner: impl FnOnce() -> Partner,
) -> Result<(), Missed<'h>> {
    const PURE_SPINS: u32 = 16;
    const CLOCK_EVERY: u32 = 64;
    if full.is_zero() {
        return give_way(&mut done);
    }
    // Set by `Policy::Park`: the most this wait spins, and then it does
    // not teach the history (the machine, not the worker, cut it short).
    let mut cap: Option<Duration> = None;
    // Decided at the first look at the clock: a hot hand-off completes
    // within the first rounds and never pays for the clock or the budget.
    let mut until: Option<Option<Instant>> = None;
    let mut probe = false;
    let (mut first_look, mut last_look, mut fastest): (Option<Instant>, Option<Instant>, Option<Duration>) =
        (None, None, None);
    // Decided once the pure spins run out (fast hand-offs never ask).
    let mut yielding = false;
    let mut partner = Some(partner);
    let mut i: u32 = 0;
    loop {
        if done() {
            if probe {
                if let Some(h) = history {
                    h.step(false); // the full budget caught it
                }
            }
            return Ok(());
        }
        i = i.wrapping_add(1);
        if i == PURE_SPINS {
            let policy = policy();
            if partner.take().is_some_and(|p| p().is_here()) {
                if policy == Policy::Park {
                    // The estimate may be stale, and these waits may be
                    // all that would refresh it.
                    crate::load::refresh(cores());
                    return give_way(&mut done);
                }
                yielding = true;
            }
            match policy {
                Policy::Spin => {}
                Policy::Yield => yielding = true,
                Policy::Park => {
                    // The estimate may be stale: refresh it (rate-limited).
                    crate::load::refresh(cores());
                    // ORDERING: as in `Engaged::new`.
                    if forced().is_none() && ENGAGED.load(Ordering::Relaxed) > cores() {
                        return give_way(&mut done);
                    }
                    cap = Some(PARK_SPIN);
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
                crate::load::refresh(cores());
                let budget = match (history, cap) {
                    (Some(h), None) => {
                        let (b, p) = h.budget(full);
                        probe = p;
                        b
                    }
                    (_, Some(c)) => full.min(c),
                    (None, None) => full,
                };
                let end = now.checked_add(budget);
                match (end, deadline) {
                    (Some(e), Some(d)) => Some(e.min(d)),
                    (e, None) => e,
                    (None, d) => d,
                }
            });
            let first = *first_look.get_or_insert(now);
            if let Some(last) = last_look {
                let gap = now.saturating_duration_since(last);
                let preempted = !yielding
                    && forced().is_none()
                    && gap > PREEMPTED
                    && fastest.is_some_and(|f| gap > f.saturating_mul(8));
                fastest = Some(fastest.map_or(gap, |f| f.min(gap)));
                if preempted {
                    crate::load::refresh(cores());
                    return give_way(&mut done);
                }
            }
            last_look = Some(now);
            if end.is_some_and(|end| now >= end) {
                if done() {
                    return Ok(());
                }
                let learn = history.filter(|_| cap.is_none());
                return Err(Missed {
                    learn: learn.map(|h| (h, first, full)),
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

    /// Runs `f` with this thread's waits following `p`, whatever the
    /// machine's load, and with no preemption check.
    fn forcing<T>(p: Policy, f: impl FnOnce() -> T) -> T {
        FORCED.with(|c| c.set(Some(p)));
        let out = f();
        FORCED.with(|c| c.set(None));
        out
    }

    #[test]
    fn a_history_of_long_waits_shortens_the_spin_and_short_ones_restore_it() {
        let h = History::new();
        let full = Duration::from_millis(4);
        assert_eq!(h.budget(full), (full, false));
        let long_ago = Instant::now() - Duration::from_millis(10);
        for _ in 0..10 {
            h.learn(long_ago, full);
        }
        // Shortened to 1/64, with every eighth wait a full-budget probe.
        let budgets: Vec<_> = (0..16).map(|_| h.budget(full)).collect();
        assert_eq!(budgets.iter().filter(|b| b.1).count(), 2, "{budgets:?}");
        assert!(
            budgets
                .iter()
                .all(|b| b == &(full, true) || b == &(full / 64, false)),
            "{budgets:?}"
        );
        // A wait that ended within the full budget: a full spin would have
        // caught it.
        h.learn(Instant::now(), full);
        assert!(budgets_without_probes(&h, full).contains(&(full / 32)));
        // Between one and two budgets: no change.
        h.learn(Instant::now() - full.mul_f64(1.5), full);
        assert!(budgets_without_probes(&h, full).contains(&(full / 32)));
        for _ in 0..10 {
            h.learn(Instant::now(), full);
        }
        assert_eq!(h.budget(full), (full, false));
    }

    fn budgets_without_probes(h: &History, full: Duration) -> Vec<Duration> {
        (0..8)
            .map(|_| h.budget(full))
            .filter(|b| !b.1)
            .map(|b| b.0)
            .collect()
    }

    #[test]
    fn through_spin_with_misses_shorten_the_budget_and_a_caught_probe_restores_it() {
        forcing(Policy::Spin, || {
            let h = History::new();
            let budget = Duration::from_micros(200);
            // Waits that never end inside the budget and park "long".
            for _ in 0..3 {
                let missed =
                    spin_with(|| false, budget, None, Some(&h), || Partner::UNKNOWN).expect_err("never done");
                assert!(missed.learn.is_some(), "a budget miss teaches the history");
                std::thread::sleep(Duration::from_millis(1));
                drop(missed);
            }
            assert_eq!(h.misses.load(Ordering::Relaxed), 3);
            // Answers that come after ~100 µs, and a "wake-up" that takes
            // 250 µs more: a shortened wait (25 µs) misses and, parked,
            // learns nothing (its whole wait is over the budget); a probe
            // (the full 200 µs) catches the answer and takes a miss away.
            let mut before = 3;
            for _ in 0..PROBES_TO_SEE {
                let t = Instant::now();
                let answered = || t.elapsed() > Duration::from_micros(100);
                if let Err(missed) = spin_with(answered, budget, None, Some(&h), || Partner::UNKNOWN) {
                    while t.elapsed() < Duration::from_micros(350) {
                        std::hint::spin_loop();
                    }
                    drop(missed);
                }
                let now = h.misses.load(Ordering::Relaxed);
                if now < before {
                    return;
                }
                before = now;
            }
            panic!("no probe restored the budget: misses {before}");
        });
    }

    const PROBES_TO_SEE: usize = 4 * History::PROBE_EVERY as usize;

    #[test]
    fn the_park_policy_cuts_a_spin_short_without_teaching_the_history() {
        let h = History::new();
        let t = Instant::now();
        let r = forcing(Policy::Park, || {
            spin_with(
                || false,
                Duration::from_secs(1),
                None,
                Some(&h),
                || Partner::UNKNOWN,
            )
        });
        let missed = r.expect_err("never done");
        assert!(missed.learn.is_none());
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
        drop(missed);
        assert_eq!(h.misses.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn spinning_stops_at_the_budget_or_when_done() {
        forcing(Policy::Spin, spinning_stops_at_the_budget_or_when_done_as_told);
    }

    fn spinning_stops_at_the_budget_or_when_done_as_told() {
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

    /// Runs one wait that never ends under `policy` with the partner made
    /// from this thread's CPU, and counts its looks at `done`; also
    /// whether the thread stayed on that CPU meanwhile.
    fn looks_before_giving_way(policy: Policy, partner: impl Fn(u32) -> Partner) -> (u32, bool) {
        let h = History::new();
        let cpu = current_cpu();
        let mut looks = 0;
        let r = forcing(policy, || {
            spin_with(
                || {
                    looks += 1;
                    false
                },
                Duration::from_secs(5),
                None,
                Some(&h),
                || partner(cpu),
            )
        });
        let missed = r.expect_err("never done");
        // A wait cut short by the machine teaches the worker nothing.
        assert!(missed.learn.is_none());
        drop(missed);
        assert_eq!(h.budget(Duration::from_secs(5)).0, Duration::from_secs(5));
        (looks, current_cpu() == cpu)
    }

    #[test]
    fn a_partner_on_this_cpu_makes_a_busy_wait_park_at_once() {
        assert_ne!(current_cpu(), u32::MAX, "sched_getcpu works here");
        let stayed = |(looks, same): (u32, bool)| same.then_some(looks);
        let looks = (0..20)
            .find_map(|_| stayed(looks_before_giving_way(Policy::Park, Partner)))
            .expect("the thread stayed on one CPU for one of 20 short waits");
        // The pure spins and give_way's last look: no 5 µs spin on top.
        assert!(looks <= 17, "{looks} looks: the wait spun on past its partner");
        // Elsewhere (or unknown), the same policy spins its 5 µs first, and
        // the clock is read only every 64 looks.
        let elsewhere = |cpu: u32| Partner(cpu.wrapping_add(1));
        let (looks, _) = looks_before_giving_way(Policy::Park, elsewhere);
        assert!(
            looks > 64,
            "{looks} looks: a partner elsewhere cut the spin short"
        );
        let (looks, _) = looks_before_giving_way(Policy::Park, |_| Partner::UNKNOWN);
        assert!(looks > 64, "{looks} looks: an unknown partner cut the spin short");
    }

    #[test]
    fn an_owner_remembers_where_its_last_poster_parked() {
        std::thread::spawn(|| {
            assert_eq!(parked_poster(), Partner::UNKNOWN, "nothing noted yet");
            note_poster(Partner(3));
            assert_eq!(parked_poster(), Partner(3));
            note_poster(Partner::UNKNOWN); // the next poster spun
            assert_eq!(parked_poster(), Partner::UNKNOWN);
            assert!(!Partner::UNKNOWN.is_here(), "unknown is never here");
        })
        .join()
        .unwrap();
    }
}
