//! Hostile wakers: a waker whose drop panics, and an executor that polls
//! the woken task inline from `wake`, on the owner thread, outside any job.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Wake, Waker};
use std::time::{Duration, Instant};

use pinned_ffi::PinnedWorker;

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

static ARMED: AtomicBool = AtomicBool::new(false);
static DROPS: AtomicUsize = AtomicUsize::new(0);

unsafe fn w_clone(_: *const ()) -> RawWaker {
    RawWaker::new(std::ptr::null(), &VTABLE)
}
unsafe fn w_wake(_: *const ()) {
    DROPS.fetch_add(1, Ordering::SeqCst);
    if ARMED.load(Ordering::SeqCst)
        && !std::thread::panicking()
        && std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("pinned-"))
    {
        panic!("waker drop (via wake) panics");
    }
}
unsafe fn w_wake_by_ref(_: *const ()) {}
unsafe fn w_drop(_: *const ()) {
    DROPS.fetch_add(1, Ordering::SeqCst);
    if ARMED.load(Ordering::SeqCst)
        && !std::thread::panicking()
        && std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("pinned-"))
    {
        panic!("waker drop panics");
    }
}
static VTABLE: RawWakerVTable = RawWakerVTable::new(w_clone, w_wake, w_wake_by_ref, w_drop);

/// A waker whose drop panics, dropped on the owner: contained.
#[test]
fn a_waker_whose_drop_panics_is_contained() {
    within(20, || {
        let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(0u64)).unwrap();
        // SAFETY: the vtable's functions ignore the data pointer (null) and
        // only touch statics, so any clone/wake/drop sequence is sound.
        let waker = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) };
        let (go_tx, go) = mpsc::channel::<()>();
        let mut f = Box::pin(w.call(move |n| {
            let _ = go.recv();
            *n + 1
        }));
        assert!(f.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        ARMED.store(true, Ordering::SeqCst);
        go_tx.send(()).unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        let r = loop {
            if let Poll::Ready(r) = f.as_mut().poll(&mut Context::from_waker(&waker)) {
                break r;
            }
            assert!(Instant::now() < end, "no result");
            std::thread::sleep(Duration::from_millis(2));
        };
        ARMED.store(false, Ordering::SeqCst);
        assert_eq!(r.unwrap(), 1);
        assert_eq!(w.run(|n| *n).unwrap(), 0, "owner died");
        std::mem::forget(waker);
    });
}

type Task = Arc<Mutex<Option<Pin<Box<dyn Future<Output = Result<u64, pinned_ffi::Error>> + Send>>>>>;

struct Inline {
    task: Task,
    out: Arc<Mutex<Option<Result<u64, pinned_ffi::Error>>>>,
    me: Mutex<Option<Waker>>,
}
impl Wake for Inline {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        // an executor that polls right away, on whatever thread wakes
        let waker = self.me.lock().unwrap().clone().unwrap();
        let mut slot = match self.task.try_lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        if let Some(f) = slot.as_mut() {
            if let Poll::Ready(r) = f.as_mut().poll(&mut Context::from_waker(&waker)) {
                *self.out.lock().unwrap() = Some(r);
                *slot = None;
            }
        }
    }
}

/// Wake polls the future inline, on the owner thread: no deadlock, result
/// delivered, owner fine.
#[test]
fn an_inline_polling_executor_on_the_owner_thread() {
    within(20, || {
        let w = Arc::new(
            PinnedWorker::builder()
                .capacity(1)
                .spawn(|| Ok::<_, std::convert::Infallible>(0u64))
                .unwrap(),
        );
        for round in 0..50u64 {
            let (go_tx, go) = mpsc::channel::<()>();
            let busy = w
                .submit(move |_| {
                    let _ = go.recv();
                })
                .unwrap();
            let w2 = w.clone();
            let ran = Arc::new(AtomicUsize::new(0));
            let (r1, r2) = (ran.clone(), ran.clone());
            let stage = Arc::new(Mutex::new(String::new()));
            let st = stage.clone();
            let task: Task = Arc::new(Mutex::new(Some(Box::pin(async move {
                // waits for room (capacity 1, held), then for the result
                let a = w2
                    .call(move |n| {
                        r1.fetch_add(1, Ordering::SeqCst);
                        *n + round
                    })
                    .await
                    .inspect_err(|e| {
                        *st.lock().unwrap() = format!("call: {e:?} on {:?}", std::thread::current().name())
                    })?;
                let t = w2
                    .submit_async(move |n| {
                        r2.fetch_add(1, Ordering::SeqCst);
                        *n + 1
                    })
                    .await
                    .inspect_err(|e| {
                        *st.lock().unwrap() =
                            format!("submit_async: {e:?} on {:?}", std::thread::current().name())
                    })?;
                let b = t.await.inspect_err(|e| {
                    *st.lock().unwrap() = format!("ticket: {e:?} on {:?}", std::thread::current().name())
                })?;
                Ok(a + b)
            }))));
            let out = Arc::new(Mutex::new(None));
            let inline = Arc::new(Inline {
                task: task.clone(),
                out: out.clone(),
                me: Mutex::new(None),
            });
            let waker = Waker::from(inline.clone());
            *inline.me.lock().unwrap() = Some(waker.clone());
            waker.wake_by_ref(); // first poll
            go_tx.send(()).unwrap();
            busy.wait().unwrap();
            let end = Instant::now() + Duration::from_secs(5);
            while out.lock().unwrap().is_none() {
                assert!(Instant::now() < end, "round {round}: never completed");
                waker.wake_by_ref();
                std::thread::sleep(Duration::from_millis(1));
            }
            w.run(|_| ()).unwrap();
            let got = out.lock().unwrap().take().unwrap();
            assert_eq!(
                got,
                Ok(round + 1),
                "round {round}: {} ; jobs that ran: {}",
                stage.lock().unwrap(),
                ran.load(Ordering::SeqCst)
            );
            *inline.me.lock().unwrap() = None; // break the cycle
        }
        assert_eq!(w.run(|n| *n).unwrap(), 0);
        assert_eq!(w.metrics().contained_panics, 0);
    });
}

/// As above with room always free: only the result wake polls inline.
#[test]
fn an_inline_polling_executor_on_the_owner_thread_room_never_full() {
    within(20, || {
        let w = Arc::new(
            PinnedWorker::builder()
                .capacity(64)
                .spawn(|| Ok::<_, std::convert::Infallible>(0u64))
                .unwrap(),
        );
        for round in 0..50u64 {
            let (go_tx, go) = mpsc::channel::<()>();
            let busy = w
                .submit(move |_| {
                    let _ = go.recv();
                })
                .unwrap();
            let w2 = w.clone();
            let ran = Arc::new(AtomicUsize::new(0));
            let (r1, r2) = (ran.clone(), ran.clone());
            let stage = Arc::new(Mutex::new(String::new()));
            let st = stage.clone();
            let task: Task = Arc::new(Mutex::new(Some(Box::pin(async move {
                // waits for room (capacity 1, held), then for the result
                let a = w2
                    .call(move |n| {
                        r1.fetch_add(1, Ordering::SeqCst);
                        *n + round
                    })
                    .await
                    .inspect_err(|e| {
                        *st.lock().unwrap() = format!("call: {e:?} on {:?}", std::thread::current().name())
                    })?;
                let t = w2
                    .submit_async(move |n| {
                        r2.fetch_add(1, Ordering::SeqCst);
                        *n + 1
                    })
                    .await
                    .inspect_err(|e| {
                        *st.lock().unwrap() =
                            format!("submit_async: {e:?} on {:?}", std::thread::current().name())
                    })?;
                let b = t.await.inspect_err(|e| {
                    *st.lock().unwrap() = format!("ticket: {e:?} on {:?}", std::thread::current().name())
                })?;
                Ok(a + b)
            }))));
            let out = Arc::new(Mutex::new(None));
            let inline = Arc::new(Inline {
                task: task.clone(),
                out: out.clone(),
                me: Mutex::new(None),
            });
            let waker = Waker::from(inline.clone());
            *inline.me.lock().unwrap() = Some(waker.clone());
            waker.wake_by_ref(); // first poll
            go_tx.send(()).unwrap();
            busy.wait().unwrap();
            let end = Instant::now() + Duration::from_secs(5);
            while out.lock().unwrap().is_none() {
                assert!(Instant::now() < end, "round {round}: never completed");
                waker.wake_by_ref();
                std::thread::sleep(Duration::from_millis(1));
            }
            w.run(|_| ()).unwrap();
            let got = out.lock().unwrap().take().unwrap();
            assert_eq!(
                got,
                Ok(round + 1),
                "round {round}: {} ; jobs that ran: {}",
                stage.lock().unwrap(),
                ran.load(Ordering::SeqCst)
            );
            *inline.me.lock().unwrap() = None; // break the cycle
        }
        assert_eq!(w.run(|n| *n).unwrap(), 0);
        assert_eq!(w.metrics().contained_panics, 0);
    });
}
