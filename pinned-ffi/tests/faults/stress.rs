//! Everything at once: the stress test mixes every bomb from several
//! callers while `close` and `close_timeout` race them, and checks each
//! outcome against what the job did.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use pinned_ffi::threads::thread_names;
use pinned_ffi::{
    Bound, Breaker, Builder, Error, MetricsSnapshot, PanicPolicy, PinnedWorker, Ticket, TrySubmitError,
};

use crate::{
    block_on, eventually, exclusive, poll_once, within, Bomb, Fuse, State, TestWaker, LONG, MARK, NEXT_NAME,
    OWNER,
};

// ---------------------------------------------------------------------------
// Stress: many callers, every bomb, a racing close
// ---------------------------------------------------------------------------

/// A small xorshift generator: deterministic choices from a fixed seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Round {
    name: &'static str,
    policy: PanicPolicy,
    breaker: Option<Breaker>,
    /// Every fourth re-init panics (with a bomb payload).
    init_panics: bool,
    /// A closer uses `close_timeout` (else only `close`).
    close_timeout: bool,
    /// A drawn panicking operation panics one time in this many (else it
    /// is a plain `run`).
    panic_one_in: u64,
    seed: u64,
}

pub(crate) fn rounds() -> [Round; 4] {
    let quick = |max_panics, window| Breaker::new(max_panics, window, Duration::from_millis(20));
    [
        Round {
            name: "keep",
            policy: PanicPolicy::Keep,
            breaker: None,
            init_panics: false,
            close_timeout: true,
            panic_one_in: 1,
            seed: 1,
        },
        Round {
            name: "reinit",
            policy: PanicPolicy::Reinit,
            breaker: Some(quick(1000, Duration::from_secs(1))),
            init_panics: true,
            close_timeout: false,
            panic_one_in: 1,
            seed: 2,
        },
        Round {
            name: "stop",
            policy: PanicPolicy::Stop,
            breaker: None,
            init_panics: false,
            close_timeout: true,
            panic_one_in: 20,
            seed: 3,
        },
        Round {
            name: "breaker",
            policy: PanicPolicy::Keep,
            breaker: Some(quick(2, Duration::from_millis(200))),
            init_panics: true,
            close_timeout: false,
            panic_one_in: 1,
            seed: 4,
        },
    ]
}

/// What one round's jobs did, seen from inside them.
struct Ctx {
    fuse: Arc<Fuse>,
    /// Job bodies that started.
    bodies: AtomicU64,
    /// Job bodies that panicked.
    panicked: AtomicU64,
    /// Operations done, all callers together (the closer waits for some).
    ops_done: AtomicUsize,
}

/// A job's progress: 0 not started, 1 started, 2 returned.
type Progress = Arc<AtomicU8>;

fn begin(ctx: &Ctx, p: &Progress) {
    p.store(1, SeqCst);
    ctx.bodies.fetch_add(1, SeqCst);
}

/// A job that returns `id`, maybe after spinning, defusing its bomb.
fn ok_job(
    ctx: &Arc<Ctx>,
    p: &Progress,
    id: u64,
    spin: Duration,
    bomb: bool,
) -> impl FnOnce(&mut State) -> u64 + Send + 'static {
    let (ctx, p) = (Arc::clone(ctx), Arc::clone(p));
    let bomb = bomb.then(|| ctx.fuse.bomb());
    move |s| {
        begin(&ctx, &p);
        if let Some(b) = bomb {
            b.defuse();
        }
        let t = Instant::now();
        while t.elapsed() < spin {
            std::hint::spin_loop();
        }
        s.n += 1;
        p.store(2, SeqCst);
        id
    }
}

/// A job that panics: with a message, or with a bomb as its payload.
fn panic_job(ctx: &Arc<Ctx>, p: &Progress, payload: bool) -> impl FnOnce(&mut State) -> u64 + Send + 'static {
    let (ctx, p) = (Arc::clone(ctx), Arc::clone(p));
    move |_| {
        begin(&ctx, &p);
        ctx.panicked.fetch_add(1, SeqCst);
        if payload {
            std::panic::panic_any(ctx.fuse.bomb());
        }
        panic!("{MARK}: a job panics");
    }
}

/// One operation's outcome, checked once the worker is closed.
struct Record {
    op: &'static str,
    id: u64,
    progress: Progress,
    /// `None`: the caller gave up on it (dropped the ticket or future).
    outcome: Option<Result<u64, Error>>,
    panics: bool,
    timed: bool,
    elapsed: Duration,
}

impl Record {
    /// `Ok` if the outcome is a documented one and agrees with what the job
    /// did (exactly one outcome: a result only from a job that returned, a
    /// refusal only for one that never ran).
    fn check(&self, round: &Round) -> Result<(), String> {
        let p = self.progress.load(SeqCst);
        let never_ran = p == 0;
        let may_break = round.breaker.is_some() || round.init_panics;
        let may_reinit = round.policy == PanicPolicy::Reinit || may_break;
        let fine = match &self.outcome {
            None => !self.panics || p != 2,
            Some(Ok(v)) => *v == self.id && p == 2 && !self.panics,
            Some(Err(Error::Panicked(_))) => self.panics && p == 1,
            Some(Err(Error::TimedOut { started: false })) => self.timed && never_ran,
            Some(Err(Error::TimedOut { started: true })) => self.timed && !never_ran,
            Some(Err(Error::Closed)) => never_ran,
            Some(Err(Error::Stopped)) => round.policy == PanicPolicy::Stop && never_ran,
            Some(Err(Error::Broken(_))) => may_break && never_ran,
            Some(Err(Error::Shutdown)) => round.close_timeout && never_ran,
            Some(Err(Error::StaleHandle)) => self.op == "with" && may_reinit && never_ran,
            Some(Err(_)) => false,
        };
        if fine {
            Ok(())
        } else {
            Err(format!(
                "{} #{:x}: outcome {:?} with progress {p} (panics: {}, timed: {})",
                self.op, self.id, self.outcome, self.panics, self.timed
            ))
        }
    }
}

/// One caller's operations on `w`, in an order drawn from `seed`.
fn caller(w: &PinnedWorker<State>, ctx: &Arc<Ctx>, round: &Round, seed: u64, ops: u64) -> Vec<Record> {
    let mut rng = Rng::new(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let fuse = &ctx.fuse;
    let mut kept: Vec<Bound<Bomb>> = Vec::new();
    let mut records = Vec::new();
    let err = |e: &Error| Some(Err(e.clone()));
    for i in 0..ops {
        let id = (seed << 32) | i;
        let spin = Duration::from_micros(rng.below(100));
        let t0 = Instant::now();
        let p: Progress = Arc::new(AtomicU8::new(0));
        let mut record =
            |op: &'static str, p: &Progress, outcome: Option<Result<u64, Error>>, panics, timed| {
                records.push(Record {
                    op,
                    id,
                    progress: Arc::clone(p),
                    outcome,
                    panics,
                    timed,
                    elapsed: t0.elapsed(),
                });
            };
        let mut op = rng.below(80);
        if matches!(op, 14 | 15 | 76) && rng.below(round.panic_one_in) != 0 {
            op = 0; // this round panics less often
        }
        match op {
            0..=13 => record(
                "run",
                &p,
                Some(w.run(ok_job(ctx, &p, id, spin, true))),
                false,
                false,
            ),
            14 => record(
                "run panics",
                &p,
                Some(w.run(panic_job(ctx, &p, false))),
                true,
                false,
            ),
            15 => record(
                "run panics a bomb",
                &p,
                Some(w.run(panic_job(ctx, &p, true))),
                true,
                false,
            ),
            16..=25 => {
                let r = w.submit(ok_job(ctx, &p, id, spin, true)).and_then(Ticket::wait);
                record("submit, wait", &p, Some(r), false, false);
            }
            26..=33 => {
                // Dropped unwaited: cancelled if not started; its captures
                // go off on the owner then.
                let r = w.submit(ok_job(ctx, &p, id, spin, true));
                if rng.below(2) == 0 {
                    thread::yield_now();
                }
                record("submit, drop", &p, r.err().as_ref().and_then(err), false, false);
            }
            34..=39 => {
                // A result that goes off if its ticket is gone when it lands.
                let (c, q) = (Arc::clone(ctx), Arc::clone(&p));
                let r = w.submit(move |_| {
                    begin(&c, &q);
                    q.store(2, SeqCst);
                    c.fuse.bomb()
                });
                for _ in 0..rng.below(3) {
                    thread::yield_now();
                }
                record(
                    "submit a bomb, drop",
                    &p,
                    r.err().as_ref().and_then(err),
                    false,
                    false,
                );
            }
            40..=49 => {
                let timeout = Duration::from_micros(rng.below(150));
                let r = w
                    .submit(ok_job(ctx, &p, id, spin, true))
                    .and_then(|t| t.wait_timeout(timeout));
                record("submit, wait_timeout", &p, Some(r), false, true);
            }
            50..=55 => {
                let r = w
                    .submit(ok_job(ctx, &p, id, spin, true))
                    .and_then(|t| block_on(t, Some(Arc::clone(fuse)), || {}));
                record("submit, poll loop", &p, Some(r), false, false);
            }
            56..=59 => {
                // Polled once with a panicking waker, then dropped.
                let outcome = match w.submit(ok_job(ctx, &p, id, spin, true)) {
                    Ok(mut t) => {
                        let waker = Waker::from(TestWaker::new(Some(Arc::clone(fuse))));
                        match poll_once(&mut t, &waker) {
                            Poll::Ready(r) => Some(r),
                            Poll::Pending => None,
                        }
                    }
                    Err(e) => Some(Err(e)),
                };
                record("submit, poll once, drop", &p, outcome, false, false);
            }
            60..=65 => {
                let (c, q) = (Arc::clone(ctx), Arc::clone(&p));
                let bound = w.bind(move |_| {
                    begin(&c, &q);
                    q.store(2, SeqCst);
                    c.fuse.bomb()
                });
                record(
                    "bind",
                    &p,
                    Some(bound.as_ref().map(|_| id).map_err(Clone::clone)),
                    false,
                    false,
                );
                if let Ok(b) = bound {
                    let q: Progress = Arc::new(AtomicU8::new(0));
                    let c = Arc::clone(ctx);
                    let r = w.with(&b, |_, _| {
                        begin(&c, &q);
                        q.store(2, SeqCst);
                        id
                    });
                    record("with", &q, Some(r), false, false);
                    if rng.below(3) == 0 {
                        kept.push(b); // dropped later, maybe after close
                    }
                }
            }
            66..=69 => {
                let dur = Duration::from_micros(rng.below(300));
                let outcome = match w.submit(ok_job(ctx, &p, id, spin, true)) {
                    Ok(t) => rt.block_on(async { tokio::time::timeout(dur, t).await }).ok(),
                    Err(e) => Some(Err(e)),
                };
                record("submit, tokio timeout", &p, outcome, false, false);
            }
            70..=72 => {
                let outcome = match w.try_submit(ok_job(ctx, &p, id, spin, true)) {
                    Ok(t) => Some(t.wait()),
                    Err(TrySubmitError::Refused(_, e)) => Some(Err(e)),
                    Err(_) => None, // full: the job came back and was dropped here
                };
                record("try_submit, wait", &p, outcome, false, false);
            }
            73..=75 => {
                let outcome =
                    match w.submit_timeout(ok_job(ctx, &p, id, spin, true), Duration::from_millis(50)) {
                        Ok(t) => Some(t.wait()),
                        Err(TrySubmitError::Refused(_, e)) => Some(Err(e)),
                        Err(_) => None,
                    };
                record("submit_timeout, wait", &p, outcome, false, false);
            }
            76 => {
                let r = w.submit(panic_job(ctx, &p, rng.below(2) == 0));
                record(
                    "submit panics, drop",
                    &p,
                    r.err().as_ref().and_then(err),
                    true,
                    false,
                );
            }
            _ => {
                if let Some(b) = kept.pop() {
                    drop(b);
                }
                record("drop a bound value", &p, None, false, false);
            }
        }
        if matches!(
            records.last(),
            Some(Record {
                outcome: Some(Err(Error::Broken(_))),
                ..
            })
        ) {
            thread::sleep(Duration::from_millis(1)); // back off while the breaker is open
        }
        ctx.ops_done.fetch_add(1, SeqCst);
    }
    drop(kept);
    records
}

/// One round: `callers` threads of `ops` operations each, and two closers
/// racing them; then every outcome and the counters are checked.
pub(crate) fn run_round(round: &Round, callers: u64, ops: u64) {
    let fuse = Fuse::owner_only();
    let ctx = Arc::new(Ctx {
        fuse: Arc::clone(&fuse),
        bodies: AtomicU64::new(0),
        panicked: AtomicU64::new(0),
        ops_done: AtomicUsize::new(0),
    });
    let prefix = format!("{OWNER}st{}-{}", round.seed, NEXT_NAME.fetch_add(1, SeqCst));
    let f = Arc::clone(&fuse);
    let init_panics = round.init_panics;
    let mut calls = 0u64;
    let w = Builder::default()
        .name(prefix.clone())
        .panic_policy(round.policy)
        .breaker(round.breaker)
        .capacity(64)
        .spawn(move || {
            calls += 1;
            if init_panics && calls > 1 && calls.is_multiple_of(4) {
                std::panic::panic_any(f.bomb());
            }
            Ok::<_, Infallible>(State {
                n: 0,
                _bomb: Some(f.bomb()),
            })
        })
        .expect("spawn");
    let mut rng = Rng::new(round.seed ^ 0xC105E);
    let total = (callers * ops) as usize;
    let close_at = total * (30 + rng.below(60) as usize) / 100;
    let close_timeout = Duration::from_micros(rng.below(3000));
    let records: Vec<Record> = thread::scope(|s| {
        let (w, ctx) = (&w, &ctx);
        let handles: Vec<_> = (0..callers)
            .map(|c| {
                thread::Builder::new()
                    .name(format!("fcall-{c}"))
                    .spawn_scoped(s, move || caller(w, ctx, round, round.seed * 100 + c + 1, ops))
                    .expect("spawn a caller")
            })
            .collect();
        let wait_for_ops = move |n: usize| {
            while ctx.ops_done.load(SeqCst) < n.min(total) {
                thread::sleep(Duration::from_micros(200));
            }
        };
        let first = thread::Builder::new()
            .name("fclose-1".into())
            .spawn_scoped(s, move || {
                wait_for_ops(close_at);
                if round.close_timeout {
                    w.close_timeout(close_timeout).unwrap();
                } else {
                    w.close().unwrap();
                }
            })
            .expect("spawn a closer");
        let second = thread::Builder::new()
            .name("fclose-2".into())
            .spawn_scoped(s, move || {
                wait_for_ops(close_at + 1);
                w.close().unwrap();
            })
            .expect("spawn a closer");
        let records = handles
            .into_iter()
            .flat_map(|h| h.join().expect("a caller panicked"))
            .collect();
        first.join().expect("the first closer panicked");
        second.join().expect("the second closer panicked");
        records
    });
    w.close().unwrap();
    let m: MetricsSnapshot = w.metrics();
    let what = format!("round {} ({round:?}): {m}", round.name);
    let bad: Vec<String> = records.iter().filter_map(|r| r.check(round).err()).collect();
    assert!(
        bad.is_empty(),
        "{what}\n{} of {} outcomes are wrong, e.g.:\n{}",
        bad.len(),
        records.len(),
        bad[..bad.len().min(10)].join("\n")
    );
    // What the round exercised (shown with --nocapture or on failure).
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for r in &records {
        let kind = match &r.outcome {
            None => "gave up".to_owned(),
            Some(Ok(_)) => "ok".to_owned(),
            Some(Err(e)) => format!("{e:?}")
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    eprintln!(
        "{what}\n  outcomes {kinds:?}, bombs on the owner {}",
        fuse.blasts()
    );
    let slowest = records.iter().map(|r| r.elapsed).max().unwrap_or_default();
    assert!(slowest < LONG, "{what}: a call took {slowest:?}");
    // A `with` on a value that died with its state is a job the owner ran
    // (and completed: it found no value), without calling the closure.
    let stale = records
        .iter()
        .filter(|r| matches!(r.outcome, Some(Err(Error::StaleHandle))))
        .count() as u64;
    assert_eq!(
        m.completed + m.panicked,
        ctx.bodies.load(SeqCst) + stale,
        "{what}: every job that started ended once, done or panicked ({stale} stale handles)"
    );
    assert_eq!(m.panicked, ctx.panicked.load(SeqCst), "{what}: panicked jobs");
    assert_eq!(
        m.contained_panics,
        fuse.blasts() as u64,
        "{what}: every panic outside a job on the owner was contained and counted"
    );
    drop(w);
    let comm: String = prefix.chars().take(15).collect();
    eventually(&format!("{what}: the round's owner threads are gone"), || {
        thread_names().is_none_or(|n| !n.iter().any(|t| t.starts_with(&comm)))
    });
}

#[test]
fn stress_every_bomb_from_many_callers_with_a_racing_close() {
    let _g = exclusive();
    within("stress", Duration::from_secs(60), || {
        // Each round three times, with different seeds (so different
        // mixes and close points).
        for pass in 0..3 {
            for round in rounds() {
                let seed = round.seed + 10 * pass;
                run_round(&Round { seed, ..round }, 6, 400);
            }
        }
    });
}
