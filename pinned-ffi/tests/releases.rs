//! Owner-bound values are freed promptly: before any job submitted after
//! the handle was dropped (through the queue or a blocking call), and
//! within one job's time however busy the queue is kept.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
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

/// Stands for an SDK object (a GPU buffer, an HSM session): records its
/// destruction, which must happen on the owner thread.
struct Buffer(Arc<AtomicUsize>);
impl Drop for Buffer {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_dropped_handle_is_freed_before_the_next_job_of_the_thread_that_dropped_it() {
    within(120, || {
        let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(())).unwrap();
        let freed = Arc::new(AtomicUsize::new(0));
        let mut late = 0;
        for i in 0..5_000usize {
            let f = Arc::clone(&freed);
            let handle = w.bind(move |_| Buffer(f)).unwrap();
            drop(handle);
            let seen = if i % 2 == 0 {
                // Through the queue.
                let f = Arc::clone(&freed);
                w.submit(move |_| f.load(Ordering::SeqCst))
                    .unwrap()
                    .wait()
                    .unwrap()
            } else {
                // A blocking call, through this thread's mailbox.
                w.run(|_| freed.load(Ordering::SeqCst)).unwrap()
            };
            if seen != i + 1 {
                late += 1;
            }
        }
        assert_eq!(late, 0, "destructors not yet run when the next job started");
    });
}

#[test]
fn releases_are_not_starved_by_a_queue_that_is_never_empty() {
    within(60, || {
        let w = Arc::new(
            PinnedWorker::builder()
                .capacity(64)
                .spawn(|| Ok::<_, std::convert::Infallible>(()))
                .unwrap(),
        );
        let freed = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let f = Arc::clone(&freed);
                w.bind(move |_| Buffer(f)).unwrap()
            })
            .collect();
        // Keep the queue full: every job takes a moment, and producers
        // refill it as fast as it drains.
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (w, stop) = (Arc::clone(&w), Arc::clone(&stop));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let _ = w
                            .submit(|_| std::thread::sleep(Duration::from_micros(200)))
                            .map(pinned_ffi::Ticket::detach);
                    }
                })
            })
            .collect();
        while w.queue_len() < 32 {
            std::thread::yield_now();
        }
        let t0 = Instant::now();
        drop(handles); // from this thread, which submits nothing
        while freed.load(Ordering::SeqCst) < 100 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "only {} of 100 freed with the queue busy",
                freed.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(w.queue_len() > 0, "the queue was still busy when all were freed");
        stop.store(true, Ordering::SeqCst);
        for p in producers {
            p.join().unwrap();
        }
    });
}
