//! Async all the way: awaiting room in the queue without blocking the
//! executor's thread (under tokio and under `futures-executor`), cancel
//! safety of every async form, fire-and-forget tickets, and a bounded
//! queue that does not count jobs whose callers gave up. Each test runs
//! under a watchdog, so a hang fails instead of blocking the suite.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::task::LocalSpawnExt;
use pinned_ffi::{Error, PinnedWorker, TrySubmitError};

fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("did not finish within {secs} s: a hang"),
    }
}

/// A worker with a queue of `capacity` whose owner is held busy until the
/// returned sender is dropped (or sent to).
fn held(capacity: usize) -> (Arc<PinnedWorker<u64>>, mpsc::Sender<()>, pinned_ffi::Ticket<()>) {
    let w = Arc::new(
        PinnedWorker::builder()
            .capacity(capacity)
            .spawn(|| Ok::<_, std::convert::Infallible>(0u64))
            .unwrap(),
    );
    let (release, hold) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    let busy = w
        .submit(move |_| {
            started_tx.send(()).unwrap();
            let _ = hold.recv();
        })
        .unwrap();
    started.recv().unwrap();
    (w, release, busy)
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

#[test]
fn submit_async_waits_for_room_without_blocking_a_current_thread_runtime() {
    within(30, || {
        let (w, release, busy) = held(1);
        w.try_submit(|n| *n += 1).unwrap().detach(); // the one place
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(async {
            let waiting = {
                let w = Arc::clone(&w);
                tokio::spawn(async move { w.submit_async(|n| *n + 10).await?.await })
            };
            // This task runs on the same (only) thread: it could not if
            // `submit_async` blocked it.
            let releaser = tokio::spawn(async move {
                tokio::task::yield_now().await;
                release.send(()).unwrap();
            });
            releaser.await.unwrap();
            waiting.await.unwrap()
        });
        assert_eq!(got, Ok(11));
        busy.wait().unwrap();
    });
}

#[test]
fn call_works_under_a_second_executor_with_many_tasks_waiting_for_room() {
    within(30, || {
        let (w, release, busy) = held(2);
        let mut pool = futures::executor::LocalPool::new();
        let done = Arc::new(AtomicUsize::new(0));
        let spawner = pool.spawner();
        for i in 0..20u64 {
            let (w, done) = (Arc::clone(&w), Arc::clone(&done));
            spawner
                .spawn_local(async move {
                    let got = w
                        .call(move |n| {
                            *n += 1;
                            i
                        })
                        .await;
                    assert_eq!(got, Ok(i));
                    done.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap();
        }
        pool.run_until_stalled(); // all 20 queued or in line; none blocked the thread
        assert_eq!(w.queue_len(), 2, "the queue is full, the rest wait in line");
        release.send(()).unwrap();
        pool.run(); // every task finishes
        assert_eq!(done.load(Ordering::SeqCst), 20);
        assert_eq!(w.run(|n| *n).unwrap(), 20);
        busy.wait().unwrap();
    });
}

#[test]
fn a_dropped_submit_async_gives_up_its_place_in_line_and_runs_nothing() {
    within(30, || {
        let (w, release, busy) = held(1);
        w.try_submit(|_| ()).unwrap().detach(); // the one place
        let ran = Arc::new(AtomicUsize::new(0));
        let (r1, r2) = (Arc::clone(&ran), Arc::clone(&ran));
        let mut first = Box::pin(w.submit_async(move |_| {
            r1.fetch_add(1, Ordering::SeqCst);
        }));
        let mut second = Box::pin(w.submit_async(move |_| {
            r2.fetch_add(100, Ordering::SeqCst);
        }));
        // Both in line, first ahead.
        assert!(first.as_mut().poll(&mut noop_cx()).is_pending());
        assert!(second.as_mut().poll(&mut noop_cx()).is_pending());
        // A waker that records its wake, for the second in line.
        let woken = Arc::new(Flag::default());
        let waker = Waker::from(Arc::clone(&woken));
        assert!(second
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(first); // gives up: nothing of it may run
        release.send(()).unwrap(); // the owner frees the place...
        busy.wait().unwrap();
        // ...and the wake goes to the second in line, not to the dropped one.
        let t0 = std::time::Instant::now();
        while !woken.0.load(Ordering::SeqCst) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the second waiter was never woken"
            );
            std::thread::yield_now();
        }
        let ticket = match second.as_mut().poll(&mut noop_cx()) {
            Poll::Ready(t) => t.unwrap(),
            Poll::Pending => panic!("woken but still no room"),
        };
        ticket.wait().unwrap();
        w.run(|_| ()).unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 100, "only the second job ran");
    });
}

#[derive(Default)]
struct Flag(std::sync::atomic::AtomicBool);
impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_dropped_call_withdraws_its_queued_job_and_frees_its_place_at_once() {
    within(30, || {
        let (w, release, busy) = held(2);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let mut call = Box::pin(w.call(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        assert!(call.as_mut().poll(&mut noop_cx()).is_pending()); // queued, waiting for the result
        assert_eq!(w.queue_len(), 1);
        drop(call);
        assert_eq!(w.queue_len(), 0, "the withdrawn job holds no place");
        // Both places are free again, though the job is still in the channel.
        let a = w.try_submit(|_| ()).unwrap();
        let b = w.try_submit(|_| ()).unwrap();
        assert!(matches!(w.try_submit(|_| ()), Err(TrySubmitError::Full(_))));
        release.send(()).unwrap();
        busy.wait().unwrap();
        a.wait().unwrap();
        b.wait().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the withdrawn job never ran");
        let m = w.metrics();
        assert_eq!((m.cancelled, m.queue_depth), (1, 0), "{m}");
    });
}

#[test]
fn tickets_given_up_in_a_full_queue_never_block_new_work() {
    within(30, || {
        let (w, release, busy) = held(4);
        // Callers that give up over and over while the owner is stuck (up
        // to four per place; past that admission waits for the owner to
        // skip some, which bounds their memory).
        for _ in 0..16 {
            let t = w.try_submit(|_| ()).expect("given-up jobs hold no place");
            drop(t);
        }
        assert_eq!(w.queue_len(), 0);
        let kept: Vec<_> = (0..4).map(|_| w.try_submit(|n| *n).unwrap()).collect();
        assert!(matches!(w.try_submit(|_| 0), Err(TrySubmitError::Full(_))));
        release.send(()).unwrap();
        busy.wait().unwrap();
        for t in kept {
            assert_eq!(t.wait(), Ok(0));
        }
        assert_eq!(w.metrics().cancelled, 16);
    });
}

#[test]
fn a_detached_job_runs_and_its_outcome_reaches_the_metrics() {
    within(30, || {
        let (w, release, busy) = held(8);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        w.submit(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap()
        .detach();
        w.submit(|_| panic!("a detached job panics")).unwrap().detach();
        // Dropping instead would have cancelled it: compare.
        drop(w.submit(|_| unreachable!("cancelled")).unwrap());
        release.send(()).unwrap();
        busy.wait().unwrap();
        w.run(|_| ()).unwrap(); // after the queue
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        let m = w.metrics();
        assert_eq!((m.completed, m.panicked, m.cancelled), (3, 1, 1), "{m}");
    });
}

#[test]
fn callers_blocked_on_a_full_queue_are_refused_when_it_closes() {
    within(30, || {
        let (w, release, busy) = held(1);
        w.try_submit(|_| ()).unwrap().detach();
        let blocked: Vec<_> = (0..3)
            .map(|_| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || w.submit(|_| ()).map(|_| ()))
            })
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let waiting_async = {
            let w = Arc::clone(&w);
            rt.spawn(async move { w.submit_async(|_| ()).await.map(|_| ()) })
        };
        std::thread::sleep(Duration::from_millis(50)); // they are waiting
        let closer = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || w.close())
        };
        for b in blocked {
            assert_eq!(b.join().unwrap(), Err(Error::Closed));
        }
        assert_eq!(rt.block_on(waiting_async).unwrap(), Err(Error::Closed));
        release.send(()).unwrap();
        busy.wait().unwrap();
        closer.join().unwrap().unwrap();
    });
}
