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
//! (owners while awake; a caller once it has called a worker through its
//! mailbox, while the thread and such a worker live, counted once however
//! many workers it calls). Everyone else's: the cores other
//! processes kept busy lately ([`load`](crate::load)). A hand-off that
//! lands within the first few spins never asks; a wait that goes on
//! follows the [`Policy`]:
//!
//! - ours and theirs fit in the cores this process may use: spin, without
//!   yielding, for the spin budget;
//! - ours alone outnumber the cores: yield on every round (the core goes
//!   to one of our own threads, often the very partner we wait for); an
//!   idle owner does so only while another owner is awake or its partner
//!   was last seen on its CPU, since a lone owner is the partner every
//!   crowding caller waits for (it still parks, like any spinner, once
//!   it finds it was preempted or its window ends);
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
//! parks. And each worker keeps a [`History`] of its waits: a worker whose waits keep outlasting
//! the budget spins less (down to 1/64 of it), and earns the budget back
//! when they get short again, as adaptive mutexes do.

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

/// Where one side of a hand-off was last seen, for the other side's next
/// wait (see [`Partner`]). A plain std atomic, never a loom one: its value
/// decides only how long a wait spins, never what the wait sees.
#[derive(Debug)]
pub(crate) struct CpuHint(std::sync::atomic::AtomicU32);

impl CpuHint {
    pub(crate) const fn new() -> Self {
        CpuHint(std::sync::atomic::AtomicU32::new(Partner::UNKNOWN.0))
    }

    /// Notes the CPU the calling thread runs on now.
    pub(crate) fn note_here(&self) {
        // ORDERING: a hint (see the type). Where the other side must see
        // it, the noting side's next read-modify-write on the hand-off's
        // state word carries it.
        self.0.store(current_cpu(), Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Partner {
        // ORDERING: as in `note_here`.
        Partner(self.0.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    pub(crate) fn set(&self, p: Partner) {
        self.0.store(p.0, Ordering::Relaxed);
    }
}

/// The CPU this thread runs on now (`u32::MAX` if unknown; always under
/// loom, whose threads are not the OS's, and under Miri, which has no
/// CPUs). glibc reads it from the rseq area: no system call.
fn current_cpu() -> u32 {
    if cfg!(any(pinned_loom, miri)) {
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
/// The awake owners among them.
static OWNERS: AtomicUsize = AtomicUsize::new(0);

/// Counts its thread as engaged while it lives.
#[derive(Debug)]
pub(crate) struct Engaged {
    owner: bool,
}

impl Engaged {
    /// A calling thread: one guard, shared by its mailboxes with every
    /// worker it calls (see `mailbox::engaged_here`).
    pub(crate) fn new() -> Self {
        Self::counted(false)
    }

    /// An awake owner thread.
    pub(crate) fn owner() -> Self {
        Self::counted(true)
    }

    fn counted(owner: bool) -> Self {
        // ORDERING: heuristic counts; nothing is published through them.
        ENGAGED.fetch_add(1, Ordering::Relaxed);
        if owner {
            OWNERS.fetch_add(1, Ordering::Relaxed);
        }
        Engaged { owner }
    }
}

impl Drop for Engaged {
    fn drop(&mut self) {
        // ORDERING: as in `counted`.
        ENGAGED.fetch_sub(1, Ordering::Relaxed);
        if self.owner {
            OWNERS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Who waits in [`spin_with`]: the policy treats an idle owner apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiter {
    /// A caller waiting for an answer (or an owner waiting on another
    /// worker's job, as a caller).
    Caller,
    /// An owner with nothing to do, waiting for work.
    IdleOwner,
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

/// Under [`Policy::Yield`], whether a wait yields on every round: a
/// caller's always; an idle owner's only while its partner was last seen
/// on its CPU or another owner is awake, whose work may wait for the core
/// this one holds (two owners and their callers on two cores). A lone
/// owner keeps spinning on its core: the callers crowding the cores are
/// its own, each one it yields to has nothing posted yet and soon yields
/// back, and the posts of the callers on the other cores wait for the
/// owner's return. It still parks like any spinner when it finds it was
/// preempted or its window ends, and the partner hint is read once per
/// wait (a caller that lands on its CPU later waits for the scheduler to
/// preempt the owner, or for its park). Under loom every wait yields.
fn yields_when_crowded(waiter: Waiter, partner_here: bool, awake_owners: usize) -> bool {
    cfg!(pinned_loom) || waiter == Waiter::Caller || partner_here || awake_owners > 1
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
    // ORDERING: as in `Engaged::counted`.
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
    spin_with(done, budget, deadline, None, || Partner::UNKNOWN, Waiter::Caller).is_ok()
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
/// round, and parking; under `Yield` an idle owner (`waiter`) yields only
/// while another owner is awake or its partner shares its CPU
/// ([`yields_when_crowded`]). (Without the yield, a
/// pool of 2 owners with 2 callers on 2 vCPUs cost ~8 µs a call instead of
/// ~2 µs; yielding to other processes' threads instead cost milliseconds a
/// call. A lone owner's yields were 9 in 10 of all the yields of 8 callers
/// on one worker, and keeping its core cut the call by about a fifth.)
pub(crate) fn spin_with<'h>(
    mut done: impl FnMut() -> bool,
    full: Duration,
    deadline: Option<Instant>,
    history: Option<&'h History>,
    partner: impl FnOnce() -> Partner,
    waiter: Waiter,
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
            // A partner on this CPU runs only once this thread leaves it.
            let partner_here = partner.take().is_some_and(|p| p().is_here());
            match policy() {
                Policy::Spin => yielding = partner_here,
                Policy::Yield => {
                    // ORDERING: as in `Engaged::counted`.
                    let awake_owners = OWNERS.load(Ordering::Relaxed);
                    yielding = yields_when_crowded(waiter, partner_here, awake_owners);
                }
                Policy::Park => {
                    // The estimate may be stale: refresh it (rate-limited).
                    crate::load::refresh(cores());
                    // ORDERING: as in `Engaged::counted`.
                    if partner_here || (forced().is_none() && ENGAGED.load(Ordering::Relaxed) > cores()) {
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
#[path = "spin_tests.rs"]
mod tests;
