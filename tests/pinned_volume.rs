//! The proof, part 2: through the single-owner pattern there is no
//! corruption at volume. 16 callers (8 OS threads, 8 tokio tasks on a
//! multi-thread runtime) make 1,048,576 C calls between them, each caller
//! its own session with its own context on the owner thread(s); every
//! output must equal the reference model and every error carry its own
//! message.

use std::collections::HashMap;
use std::sync::Arc;

use affine::{Config, Context, MAX_INPUT};

use pinned_ffi::{Dispatch, Pool};
use pinned_ffi_demo::scenarios::{score, sequence};

const CALLERS: u64 = 16;
const CALLS_PER_CALLER: u64 = 65_536; // 16 × 65,536 = 1,048,576
const CHUNK: usize = 256;

type Sessions = HashMap<u64, Context>;

/// One session's calls as jobs of up to CHUNK calls; a chunk stops at an
/// invalid input (the batch call's contract), so that input is sent alone.
fn job(sessions: &mut Sessions, caller: u64, inputs: &[u64]) -> (Vec<Result<u64, i32>>, Vec<String>) {
    let ctx = sessions
        .entry(caller)
        .or_insert_with(|| Context::new(&Config::with_seed(caller + 1)).unwrap());
    let mut out = Vec::with_capacity(inputs.len());
    let mut messages = Vec::new();
    let mut buf = vec![0u64; inputs.len()];
    let mut rest = inputs;
    while !rest.is_empty() {
        let n = rest.len();
        match ctx.op_batch(rest, &mut buf[..n]) {
            Ok(()) => {
                out.extend(buf[..n].iter().map(|&v| Ok(v)));
                rest = &[];
            }
            Err(e) => {
                out.extend(buf[..e.done].iter().map(|&v| Ok(v)));
                out.push(Err(e.error.code.raw()));
                messages.push(e.error.message.clone());
                rest = &rest[e.done + 1..];
            }
        }
    }
    (out, messages)
}

fn check(caller: u64, inputs: &[u64], observed: &[Result<u64, i32>], messages: &[String]) -> (u64, u64) {
    let wrong = score(caller + 1, inputs, observed);
    let expected: Vec<String> = inputs
        .iter()
        .enumerate()
        .filter(|(_, &i)| i > MAX_INPUT)
        .map(|(k, &i)| format!("aff_op_batch: input[{}] = {i} exceeds AFF_MAX_INPUT", k % CHUNK))
        .collect();
    let bad_messages = expected.iter().zip(messages).filter(|(e, m)| e != m).count() as u64
        + expected.len().abs_diff(messages.len()) as u64;
    (wrong, bad_messages)
}

#[test]
fn a_million_calls_from_threads_and_tasks_match_the_model_exactly() {
    let pool = Arc::new(
        Pool::builder(2)
            .name("volume")
            .dispatch(Dispatch::RoundRobin)
            .spawn(|_| Ok::<_, std::convert::Infallible>(Sessions::new()))
            .unwrap(),
    );
    let run_caller = |pool: &Pool<Sessions>, caller: u64| -> (u64, u64, u64) {
        let inputs = sequence(caller, CALLS_PER_CALLER, 997);
        let mut observed = Vec::with_capacity(inputs.len());
        let mut messages = Vec::new();
        for (k, chunk) in inputs.chunks(CHUNK).enumerate() {
            // Mix the paths: keyed run, and (every 7th chunk) submit+wait.
            let (o, m) = if k % 7 == 0 {
                let chunk = chunk.to_vec();
                pool.for_key(&caller)
                    .submit(move |s| job(s, caller, &chunk))
                    .unwrap()
                    .wait()
                    .unwrap()
            } else {
                pool.run_keyed(&caller, |s| job(s, caller, chunk)).unwrap()
            };
            observed.extend(o);
            messages.extend(m);
        }
        let (wrong, bad) = check(caller, &inputs, &observed, &messages);
        (observed.len() as u64, wrong, bad)
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let (mut calls, mut wrong, mut bad_messages) = (0, 0, 0);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..CALLERS / 2)
            .map(|c| {
                s.spawn({
                    let pool = &pool;
                    move || run_caller(pool, c)
                })
            })
            .collect();
        let tasks: Vec<_> = (CALLERS / 2..CALLERS)
            .map(|c| {
                let pool = Arc::clone(&pool);
                rt.spawn(async move {
                    // Async callers await tickets; checked the same way.
                    let inputs = sequence(c, CALLS_PER_CALLER, 997);
                    let mut observed = Vec::with_capacity(inputs.len());
                    let mut messages = Vec::new();
                    for chunk in inputs.chunks(CHUNK) {
                        let chunk = chunk.to_vec();
                        let (o, m) = pool
                            .for_key(&c)
                            .submit(move |s| job(s, c, &chunk))
                            .unwrap()
                            .await
                            .unwrap();
                        observed.extend(o);
                        messages.extend(m);
                        tokio::task::yield_now().await; // let the task migrate
                    }
                    let (w, b) = check(c, &inputs, &observed, &messages);
                    (observed.len() as u64, w, b)
                })
            })
            .collect();
        for t in threads {
            let (c, w, b) = t.join().unwrap();
            calls += c;
            wrong += w;
            bad_messages += b;
        }
        for t in tasks {
            let (c, w, b) = rt.block_on(t).unwrap();
            calls += c;
            wrong += w;
            bad_messages += b;
        }
    });
    println!(
        "pinned: {calls} calls from {CALLERS} callers, {wrong} wrong, {bad_messages} wrong error messages"
    );
    assert_eq!(calls, CALLERS * CALLS_PER_CALLER);
    assert_eq!(wrong, 0);
    assert_eq!(bad_messages, 0);
    let contexts: usize = pool.broadcast(|s| s.len()).into_iter().map(Result::unwrap).sum();
    assert_eq!(contexts as u64, CALLERS, "one context per session, on the owners");
}
