//! Unit tests of how waiters wait (see `spin.rs`): the policy, the
//! history, the partner hint and the spin loop itself.

use super::*;

/// Held by the tests that engage hundreds of guards at once: each one
/// compares the global counts with a margin that covers the few threads
/// other tests engage, not another test's hundreds.
static MANY_GUARDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn many_guards() -> std::sync::MutexGuard<'static, ()> {
    MANY_GUARDS.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn engaged_threads_are_counted_while_their_guards_live() {
    let _alone = many_guards();
    // Other tests engage threads concurrently: compare with a margin.
    let before = ENGAGED.load(Ordering::Relaxed);
    let guards: Vec<_> = (0..1000).map(|_| Engaged::new()).collect();
    assert!(ENGAGED.load(Ordering::Relaxed) >= before + 1000 - 64);
    assert_ne!(policy(), Policy::Spin, "a thousand engaged threads do not fit");
    drop(guards);
    assert!(ENGAGED.load(Ordering::Relaxed) < before + 64);
}

#[test]
fn a_caller_of_many_workers_counts_once() {
    use crate::mailbox::Mailboxes;
    let _alone = many_guards();
    // Other tests engage threads concurrently: compare with a margin.
    let before = ENGAGED.load(Ordering::Relaxed);
    let registries: Vec<_> = (0..500).map(|_| Mailboxes::<u64>::new()).collect();
    for (k, registry) in (0u64..).zip(&registries) {
        // SAFETY: each key (far above any worker's id) is used with its
        // own registry only.
        unsafe { registry.mine(u64::MAX - k, || k) }.expect("registered");
    }
    let during = ENGAGED.load(Ordering::Relaxed);
    assert!(
        during < before + 64,
        "500 mailboxes of one thread: {before} -> {during}"
    );
    drop(registries);
    assert!(ENGAGED.load(Ordering::Relaxed) < before + 64);
}

#[test]
fn owners_are_counted_apart_and_a_lone_idle_owner_keeps_its_core_when_crowded() {
    let _alone = many_guards();
    // Other tests engage owners concurrently: compare with a margin.
    let before = OWNERS.load(Ordering::Relaxed);
    let callers: Vec<_> = (0..1000).map(|_| Engaged::new()).collect();
    assert!(
        OWNERS.load(Ordering::Relaxed) < before + 64,
        "callers are not owners"
    );
    let owners: Vec<_> = (0..1000).map(|_| Engaged::owner()).collect();
    assert!(OWNERS.load(Ordering::Relaxed) >= before + 1000 - 64);
    drop((callers, owners));
    assert!(OWNERS.load(Ordering::Relaxed) < before + 64);

    // A caller always yields when our threads crowd the cores.
    assert!(yields_when_crowded(Waiter::Caller, false, 1));
    assert!(yields_when_crowded(Waiter::Caller, false, 0));
    // A lone idle owner does not, unless its partner shares its CPU...
    assert!(!yields_when_crowded(Waiter::IdleOwner, false, 1));
    assert!(yields_when_crowded(Waiter::IdleOwner, true, 1));
    // ...or another owner is awake and may need the core.
    assert!(yields_when_crowded(Waiter::IdleOwner, false, 2));
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
            let missed = spin_with(
                || false,
                budget,
                None,
                Some(&h),
                || Partner::UNKNOWN,
                Waiter::Caller,
            )
            .expect_err("never done");
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
            if let Err(missed) = spin_with(
                answered,
                budget,
                None,
                Some(&h),
                || Partner::UNKNOWN,
                Waiter::Caller,
            ) {
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
            Waiter::Caller,
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
            Waiter::Caller,
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
#[cfg_attr(miri, ignore)] // Miri has no CPUs: no partner is ever here
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
