//! The proof, part 4: random call sequences, with invalid inputs and
//! several callers at once, give exactly the model's outputs and errors
//! through every correct strategy.

use std::collections::HashMap;
use std::sync::Mutex;

use affine::{Config, Context, ErrorCode, Model, MAX_INPUT};

use pinned_ffi::{PinnedWorker, Pool};
use proptest::prelude::*;

/// One step of a caller's sequence.
#[derive(Debug, Clone)]
enum Step {
    Op(u64),
    Batch(Vec<u64>),
}

fn input() -> impl Strategy<Value = u64> {
    prop_oneof![9 => 0..=MAX_INPUT, 1 => (MAX_INPUT + 1)..=u64::MAX]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![3 => input().prop_map(Step::Op), 1 => prop::collection::vec(input(), 0..20).prop_map(Step::Batch)]
}

/// What a caller observes: each call's value or error code, flattened.
type Trace = Vec<Result<u64, ErrorCode>>;

fn model_trace(seed: u64, steps: &[Step]) -> Trace {
    let mut m = Model::new(seed);
    let mut t = Vec::new();
    for s in steps {
        match s {
            Step::Op(i) => t.push(m.op(*i).ok_or(ErrorCode::InvalidArg)),
            Step::Batch(is) => {
                for i in is {
                    match m.op(*i) {
                        Some(v) => t.push(Ok(v)),
                        None => {
                            t.push(Err(ErrorCode::InvalidArg));
                            break; // a batch stops at its first invalid input
                        }
                    }
                }
            }
        }
    }
    t
}

fn apply(ctx: &mut Context, s: &Step, t: &mut Trace) {
    match s {
        Step::Op(i) => t.push(ctx.op(*i).map_err(|e| e.code)),
        Step::Batch(is) => {
            let mut out = vec![0; is.len()];
            match ctx.op_batch(is, &mut out) {
                Ok(()) => t.extend(out.into_iter().map(Ok)),
                Err(e) => {
                    t.extend(out[..e.done].iter().map(|&v| Ok(v)));
                    t.push(Err(e.error.code));
                }
            }
        }
    }
}

/// One step on the context kept for `seed` in an owner's map (created on
/// first use), as the owner-side strategies run it.
fn apply_keyed(contexts: &mut HashMap<u64, Context>, seed: u64, s: &Step) -> Trace {
    let mut t = Vec::new();
    apply(contexts.entry(seed).or_insert_with(|| ctx(seed)), s, &mut t);
    t
}

fn ctx(seed: u64) -> Context {
    Context::new(&Config { init_work: 0, seed }).unwrap()
}

/// A raw context moved between threads under a lock (the rebind strategy).
struct Rebound(*mut ffi::aff_ctx);
// SAFETY: used only under the Mutex, bound to the using thread before use
// and released after, which is how the C library lets a context move.
unsafe impl Send for Rebound {}

fn rebind_step(ctx: &Mutex<Rebound>, s: &Step, t: &mut Trace) {
    let g = ctx.lock().unwrap();
    let call = |i: u64| {
        let mut out = 0;
        // SAFETY: the context is bound to this thread for the call, under
        // the lock, and released below.
        let rc = unsafe { ffi::aff_op(i, &mut out) };
        if rc == 0 {
            Ok(out)
        } else {
            // SAFETY: read and clear this thread's error right away.
            unsafe { ffi::aff_clear_error() };
            Err(ErrorCode::from_raw(rc))
        }
    };
    // SAFETY: under the lock nobody else has it current.
    assert_eq!(unsafe { ffi::aff_make_current(g.0) }, 0);
    match s {
        Step::Op(i) => t.push(call(*i)),
        Step::Batch(is) => {
            for i in is {
                let r = call(*i);
                let stop = r.is_err();
                t.push(r);
                if stop {
                    break;
                }
            }
        }
    }
    // SAFETY: releases what we bound above.
    assert_eq!(unsafe { ffi::aff_release_current() }, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_correct_strategy_equals_the_model(callers in prop::collection::vec(prop::collection::vec(step(), 0..40), 1..5)) {
        let expected: Vec<Trace> = callers.iter().enumerate().map(|(c, s)| model_trace(c as u64 + 1, s)).collect();

        // Direct, one context per caller on this thread.
        let direct: Vec<Trace> = callers.iter().enumerate().map(|(c, steps)| {
            let mut x = ctx(c as u64 + 1);
            let mut t = Vec::new();
            steps.iter().for_each(|s| apply(&mut x, s, &mut t));
            t
        }).collect();
        prop_assert_eq!(&direct, &expected);

        // One worker owning every caller's context; callers on their own
        // threads, concurrently, half with `run` and half with `submit`.
        let worker = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(HashMap::<u64, Context>::new())).unwrap();
        let pinned: Vec<Trace> = std::thread::scope(|s| {
            let hs: Vec<_> = callers.iter().enumerate().map(|(c, steps)| {
                let (worker, seed) = (&worker, c as u64 + 1);
                s.spawn(move || {
                    let mut t = Vec::new();
                    for st in steps {
                        let st2 = st.clone();
                        let part = if c % 2 == 0 {
                            worker.run(|m| apply_keyed(m, seed, &st2)).unwrap()
                        } else {
                            worker.submit(move |m| apply_keyed(m, seed, &st2)).unwrap().wait().unwrap()
                        };
                        t.extend(part);
                    }
                    t
                })
            }).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        prop_assert_eq!(&pinned, &expected);

        // A pool keyed by caller.
        let pool = Pool::builder(2).spawn(|_| Ok::<_, std::convert::Infallible>(HashMap::<u64, Context>::new())).unwrap();
        let pooled: Vec<Trace> = std::thread::scope(|s| {
            let hs: Vec<_> = callers.iter().enumerate().map(|(c, steps)| {
                let (pool, seed) = (&pool, c as u64 + 1);
                s.spawn(move || {
                    let mut t = Vec::new();
                    for st in steps {
                        t.extend(pool.run_keyed(&seed, |m| apply_keyed(m, seed, st)).unwrap());
                    }
                    t
                })
            }).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        prop_assert_eq!(&pooled, &expected);

        // Rebind: each caller's context moves between threads under a lock;
        // each step runs on a fresh thread.
        let raws: Vec<(Mutex<Rebound>, Context)> = (0..callers.len()).map(|c| {
            let x = ctx(c as u64 + 1);
            // SAFETY: releases it from this thread so others may bind it.
            assert_eq!(unsafe { ffi::aff_release_current() }, 0);
            (Mutex::new(Rebound(x.as_ptr())), x)
        }).collect();
        let rebound: Vec<Trace> = callers.iter().zip(&raws).map(|(steps, (m, _))| {
            let mut t = Vec::new();
            for st in steps {
                t.extend(std::thread::scope(|s| s.spawn(|| { let mut p = Vec::new(); rebind_step(m, st, &mut p); p }).join().unwrap()));
            }
            t
        }).collect();
        prop_assert_eq!(&rebound, &expected);
    }
}
