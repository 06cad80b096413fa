//! A job's panic keeps its payload: the caller gets the original value
//! (downcast, taken, or re-raised) on every road a job takes (`run` by the
//! mailbox and through the queue, `submit().wait()`, a pool), and a
//! payload whose destructor panics is contained wherever it is dropped,
//! without harming the owner.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Once};
use std::thread;
use std::time::Duration;

use pinned_ffi::{Error, Panic, PinnedWorker, Pool, SpawnError};

/// A custom payload with a field to read back.
#[derive(Debug, PartialEq)]
struct Code {
    code: u32,
    why: &'static str,
}

/// A payload whose destructor panics, counting its drops.
struct Bomb(Arc<AtomicUsize>);

impl Drop for Bomb {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
        panic!("payloads: a bomb went off");
    }
}

/// Keeps this file's provoked panics out of the output.
fn quiet() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let p = info.payload();
            let ours = p.downcast_ref::<Code>().is_some()
                || p.downcast_ref::<Bomb>().is_some()
                || p.downcast_ref::<&str>()
                    .is_some_and(|s| s.starts_with("payloads:"))
                || p.downcast_ref::<String>()
                    .is_some_and(|s| s.starts_with("payloads:"));
            if !ours {
                previous(info);
            }
        }));
    });
}

fn worker() -> PinnedWorker<u64> {
    quiet();
    PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64)).unwrap()
}

/// The panic of a job's outcome; fails the test on any other outcome.
fn panic_of<R: std::fmt::Debug>(r: Result<R, Error>) -> Panic {
    match r {
        Err(Error::Panicked(p)) => p,
        other => panic!("expected a panic, got {other:?}"),
    }
}

fn code_job(code: u32) -> impl FnOnce(&mut u64) -> u64 + Send + 'static {
    move |_| {
        std::panic::panic_any(Code {
            code,
            why: "payloads: custom",
        })
    }
}

/// Runs `f` on another thread with the owner busy and a job queued, so a
/// blocking `run` in `f` queues behind it instead of taking the mailbox.
fn through_the_queue<R: Send>(w: &PinnedWorker<u64>, f: impl FnOnce(&PinnedWorker<u64>) -> R + Send) -> R {
    let (started, wait) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let busy = w
        .submit(move |_| {
            started.send(()).unwrap();
            let _ = released.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
    wait.recv().unwrap();
    let filler = w.submit(|_| ()).unwrap();
    let r = thread::scope(|s| {
        let call = s.spawn(|| f(w));
        let t = std::time::Instant::now();
        while w.queue_len() < 2 && t.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(w.queue_len(), 2, "the blocking call is queued");
        release.send(()).unwrap();
        call.join().unwrap()
    });
    busy.wait().unwrap();
    filler.wait().unwrap();
    r
}

#[test]
fn a_custom_payload_comes_back_to_the_caller_on_every_road() {
    let w = worker();
    let pool = Pool::builder(2)
        .spawn(|_| Ok::<_, std::convert::Infallible>(0u64))
        .unwrap();
    let roads: Vec<(&str, Result<u64, Error>)> = vec![
        ("run", w.run(code_job(1))),
        (
            "run through the queue",
            through_the_queue(&w, |w| w.run(code_job(2))),
        ),
        ("submit().wait()", w.submit(code_job(3)).unwrap().wait()),
        ("pool run", pool.run(code_job(4))),
        ("pool submit().wait()", pool.submit(code_job(5)).unwrap().wait()),
    ];
    for (i, (road, r)) in roads.into_iter().enumerate() {
        let mut p = panic_of(r);
        let code = p
            .downcast_ref::<Code>()
            .unwrap_or_else(|| panic!("{road}: not a Code: {p:?}"));
        assert_eq!(code.code, i as u32 + 1, "{road}");
        assert_eq!(code.why, "payloads: custom", "{road}");
        assert_eq!(p.message(), "non-string panic payload", "{road}");
        assert!(p.downcast_ref::<String>().is_none(), "{road}: only its own type");
        let taken = p.take_payload().expect("the payload, once");
        assert_eq!(
            taken.downcast_ref::<Code>().map(|c| c.code),
            Some(i as u32 + 1),
            "{road}"
        );
        assert!(p.take_payload().is_none(), "{road}: taken once");
        assert!(p.downcast_ref::<Code>().is_none(), "{road}: gone after the take");
    }
    for (i, r) in pool
        .broadcast(|_| -> u64 {
            std::panic::panic_any(Code {
                code: 9,
                why: "payloads: all",
            })
        })
        .into_iter()
        .enumerate()
    {
        let p = panic_of(r);
        assert_eq!(
            p.downcast_ref::<Code>().map(|c| (c.code, c.why)),
            Some((9, "payloads: all")),
            "broadcast #{i}"
        );
    }
    assert_eq!(w.run(|n| *n + 1), Ok(1), "the worker carries on");
    assert_eq!(pool.run(|n| *n + 1), Ok(1), "the pool carries on");
    w.close().unwrap();
    pool.close().unwrap();
}

#[test]
fn str_and_string_payloads_give_the_message_and_stay_downcastable() {
    let w = worker();
    let p = panic_of(w.run(|_| -> u64 { panic!("payloads: static") }));
    assert_eq!(p.message(), "payloads: static");
    assert_eq!(p.downcast_ref::<&str>(), Some(&"payloads: static"));
    assert_eq!(p.to_string(), "payloads: static");
    let e = Error::Panicked(p.clone());
    assert!(e.to_string().contains("payloads: static"), "{e}");

    let n = 7;
    let p = panic_of(
        w.submit(move |_| -> u64 { panic!("payloads: formatted {n}") })
            .unwrap()
            .wait(),
    );
    assert_eq!(p.message(), "payloads: formatted 7");
    assert_eq!(
        p.downcast_ref::<String>().map(String::as_str),
        Some("payloads: formatted 7")
    );
    assert!(format!("{p:?}").contains("payloads: formatted 7"), "{p:?}");

    // A clone has the message and no payload; equality is by message.
    let mut clone = p.clone();
    assert_eq!(clone, p);
    assert_eq!(clone.message(), p.message());
    assert!(clone.take_payload().is_none(), "a clone has no payload");
    assert!(p.downcast_ref::<String>().is_some(), "the original keeps it");
    assert_eq!(
        Error::Panicked(p),
        Error::Panicked(Panic::from("payloads: formatted 7"))
    );
    w.close().unwrap();
}

#[test]
fn resume_unwind_re_raises_the_original_payload_on_the_caller() {
    let w = worker();
    let roads: Vec<(&str, Result<u64, Error>)> = vec![
        ("run", w.run(code_job(11))),
        ("submit().wait()", w.submit(code_job(12)).unwrap().wait()),
    ];
    for (i, (road, r)) in roads.into_iter().enumerate() {
        let p = panic_of(r);
        let caller = thread::current().id();
        let again = std::panic::catch_unwind(move || {
            assert_eq!(thread::current().id(), caller);
            p.resume_unwind()
        })
        .expect_err("resume_unwind unwinds");
        let code = again
            .downcast::<Code>()
            .unwrap_or_else(|_| panic!("{road}: not the Code"));
        assert_eq!(
            *code,
            Code {
                code: 11 + i as u32,
                why: "payloads: custom"
            },
            "{road}"
        );
    }
    // With the payload taken, the message is raised instead.
    let mut p = panic_of(w.run(|_| -> u64 { panic!("payloads: message") }));
    drop(p.take_payload());
    let again = std::panic::catch_unwind(move || p.resume_unwind()).unwrap_err();
    assert_eq!(
        again.downcast_ref::<String>().map(String::as_str),
        Some("payloads: message")
    );
    w.close().unwrap();
}

#[test]
fn a_payload_whose_destructor_panics_harms_neither_the_owner_nor_the_caller() {
    let w = worker();
    let pool = Pool::builder(2)
        .spawn(|_| Ok::<_, std::convert::Infallible>(0u64))
        .unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let bomb = |drops: &Arc<AtomicUsize>| {
        let d = Arc::clone(drops);
        move |_: &mut u64| -> u64 { std::panic::panic_any(Bomb(d)) }
    };
    let roads: Vec<(&str, Result<u64, Error>)> = vec![
        ("run", w.run(bomb(&drops))),
        (
            "run through the queue",
            through_the_queue(&w, |w| w.run(bomb(&drops))),
        ),
        ("submit().wait()", w.submit(bomb(&drops)).unwrap().wait()),
        ("pool run", pool.run(bomb(&drops))),
        ("pool submit().wait()", pool.submit(bomb(&drops)).unwrap().wait()),
    ];
    assert_eq!(drops.load(SeqCst), 0, "every payload came back whole");
    for (i, (road, r)) in roads.into_iter().enumerate() {
        let p = panic_of(r);
        assert!(p.downcast_ref::<Bomb>().is_some(), "{road}");
        // Dropped here: the destructor's panic is contained, not raised.
        drop(p);
        assert_eq!(drops.load(SeqCst), i + 1, "{road}: dropped once");
    }
    // The owners are alive and well, and contained nothing of the callers'.
    assert_eq!(w.run(|n| *n + 1), Ok(1), "the worker carries on");
    assert_eq!(pool.run(|n| *n + 1), Ok(1), "the pool carries on");
    assert_eq!(w.metrics().contained_panics, 0, "{}", w.metrics());
    assert_eq!(w.metrics().panicked, 3, "{}", w.metrics());

    // A payload whose caller has gone is dropped by the owner, under a
    // catch, and counted as contained there.
    let (started, wait) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let d = Arc::clone(&drops);
    let ticket = w
        .submit(move |_| -> u64 {
            started.send(()).unwrap();
            let _ = released.recv_timeout(Duration::from_secs(10));
            std::panic::panic_any(Bomb(d))
        })
        .unwrap();
    wait.recv().unwrap();
    drop(ticket);
    release.send(()).unwrap();
    assert_eq!(w.run(|n| *n + 1), Ok(1), "the next job works");
    assert_eq!(drops.load(SeqCst), 6, "the orphaned payload was dropped once");
    let m = w.metrics();
    assert_eq!((m.panicked, m.contained_panics), (4, 1), "{m}");
    w.close().unwrap();
    pool.close().unwrap();
}

#[test]
fn a_panicking_init_gives_its_payload_to_the_spawner() {
    quiet();
    let spawned = PinnedWorker::builder().spawn(|| -> Result<(), std::convert::Infallible> {
        std::panic::panic_any(Code {
            code: 21,
            why: "payloads: init",
        })
    });
    let p = match spawned {
        Err(SpawnError::InitPanicked(p)) => p,
        Err(other) => panic!("expected InitPanicked, got {other:?}"),
        Ok(_) => panic!("expected InitPanicked, got a worker"),
    };
    assert_eq!(p.downcast_ref::<Code>().map(|c| c.code), Some(21));

    let drops = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&drops);
    let spawned = PinnedWorker::builder().spawn(move || -> Result<(), std::convert::Infallible> {
        std::panic::panic_any(Bomb(Arc::clone(&d)))
    });
    assert!(matches!(&spawned, Err(SpawnError::InitPanicked(p)) if p.downcast_ref::<Bomb>().is_some()));
    drop(spawned);
    assert_eq!(drops.load(SeqCst), 1, "dropped once, by the spawner, contained");
}
