//! `Pool<S>`: dispatch, stickiness, broadcast and per-worker counts.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;

use affine::{Config, Context, Model};

use pinned_ffi::{Dispatch, Pool};

fn ctx_pool(n: usize, dispatch: Dispatch) -> Pool<Context> {
    Pool::builder(n)
        .name("ctx")
        .dispatch(dispatch)
        .spawn(|i| Context::new(&Config::with_seed(i as u64 + 1)))
        .unwrap()
}

#[test]
fn round_robin_spreads_evenly() {
    let pool = ctx_pool(3, Dispatch::RoundRobin);
    for i in 0..30 {
        pool.run(|ctx| ctx.op(i).unwrap()).unwrap();
    }
    let per_worker: Vec<u64> = pool.metrics().iter().map(|m| m.completed).collect();
    assert_eq!(per_worker, vec![10, 10, 10]);
    let calls: Vec<u64> = pool
        .broadcast(|ctx| ctx.calls().unwrap())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(calls, vec![10, 10, 10]);
}

#[test]
fn keyed_dispatch_is_sticky_and_exact() {
    let pool = Arc::new(ctx_pool(4, Dispatch::RoundRobin));
    // Each key's calls form one sequence on one context. With keys spread
    // over workers, a worker's context interleaves several keys, so check
    // stickiness by the worker's identity.
    let mut handles = Vec::new();
    for t in 0..8 {
        let pool = Arc::clone(&pool);
        handles.push(thread::spawn(move || {
            let key = format!("tenant-{}", t % 3);
            let names: HashSet<String> = (0..200)
                .map(|_| {
                    pool.run_keyed(&key, |_| thread::current().name().unwrap().to_owned())
                        .unwrap()
                })
                .collect();
            (key, names)
        }));
    }
    let mut by_key: std::collections::HashMap<String, HashSet<String>> = Default::default();
    for h in handles {
        let (key, names) = h.join().unwrap();
        assert_eq!(names.len(), 1, "{key} ran on {names:?}");
        by_key.entry(key).or_default().extend(names);
    }
    for (key, names) in by_key {
        assert_eq!(names.len(), 1, "{key} moved between workers: {names:?}");
        assert_eq!(pool.for_key(&key).name(), names.iter().next().unwrap());
    }
}

#[test]
fn a_key_alone_on_its_worker_follows_the_model() {
    let pool = ctx_pool(2, Dispatch::RoundRobin);
    let key = 12345u64;
    let index = pool
        .workers()
        .iter()
        .position(|w| std::ptr::eq(w, pool.for_key(&key)))
        .unwrap();
    let mut m = Model::new(index as u64 + 1);
    for i in 0..100 {
        assert_eq!(
            pool.run_keyed(&key, |ctx| ctx.op(i).unwrap()).unwrap(),
            m.op(i).unwrap()
        );
    }
}

#[test]
fn least_loaded_avoids_a_busy_worker() {
    let pool = ctx_pool(2, Dispatch::LeastLoaded);
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let busy = pool
        .worker(0)
        .submit(move |_| {
            started_tx.send(()).unwrap();
            hold.recv().ok();
        })
        .unwrap();
    started.recv().unwrap();
    let queued: Vec<_> = (0..3).map(|_| pool.worker(0).submit(|_| ()).unwrap()).collect();
    for _ in 0..10 {
        assert_eq!(
            pool.run(|_| thread::current().name().unwrap().to_owned())
                .unwrap(),
            "ctx-1"
        );
    }
    release.send(()).unwrap();
    busy.wait().unwrap();
    for t in queued {
        t.wait().unwrap();
    }
}

#[test]
fn least_loaded_sees_blocking_calls_in_flight() {
    // A blocking `run` travels through a mailbox, not the queue: the pool
    // must count it to send the next call elsewhere.
    let pool = Arc::new(ctx_pool(2, Dispatch::LeastLoaded));
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<String>();
    let busy = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || {
            pool.run(move |_| {
                started_tx
                    .send(thread::current().name().unwrap().to_owned())
                    .unwrap();
                hold.recv().ok();
            })
            .unwrap()
        })
    };
    let busy_owner = started.recv().unwrap();
    let other = if busy_owner == "ctx-0" { "ctx-1" } else { "ctx-0" };
    for _ in 0..10 {
        assert_eq!(
            pool.run(|_| thread::current().name().unwrap().to_owned())
                .unwrap(),
            other
        );
    }
    release.send(()).unwrap();
    busy.join().unwrap();
    // Nothing in flight any more: ties go to the first worker.
    assert_eq!(
        pool.run(|_| thread::current().name().unwrap().to_owned())
            .unwrap(),
        "ctx-0"
    );
}

#[test]
fn broadcast_reaches_every_worker_once() {
    let pool = ctx_pool(3, Dispatch::RoundRobin);
    let names: Vec<String> = pool
        .broadcast(|_| thread::current().name().unwrap().to_owned())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(names, vec!["ctx-0", "ctx-1", "ctx-2"]);
}
