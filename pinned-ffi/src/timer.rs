//! Deadlines for futures without a runtime: one process-wide timer thread,
//! started on first use, wakes the futures whose deadline has come. It
//! sleeps on a condition variable (no CPU while idle) and holds only
//! wakers.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

struct Timers {
    /// Deadline and id → the waker to wake then.
    due: Mutex<BTreeMap<(Instant, u64), Waker>>,
    changed: Condvar,
}

static TIMERS: OnceLock<Timers> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(1);

fn timers() -> &'static Timers {
    TIMERS.get_or_init(|| {
        // If the thread cannot start, deadlines are still checked whenever
        // a future is polled; they are only not woken on time.
        let _ = std::thread::Builder::new()
            .name("pinned-ffi-timer".into())
            .stack_size(64 << 10)
            .spawn(run);
        Timers {
            due: Mutex::new(BTreeMap::new()),
            changed: Condvar::new(),
        }
    })
}

/// The timer thread: wakes what is due, sleeps until the next deadline.
fn run() {
    let t = timers();
    let mut due = t.due.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        let mut woken = Vec::new();
        while let Some(entry) = due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            woken.push(entry.remove());
        }
        if !woken.is_empty() {
            drop(due);
            for w in woken {
                // A waker is an executor's code: contain its panic here.
                let _ = crate::unwind::catch(move || w.wake());
            }
            due = t.due.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        due = match due.keys().next().map(|k| k.0) {
            None => t.changed.wait(due).unwrap_or_else(|e| e.into_inner()),
            Some(next) => {
                t.changed
                    .wait_timeout(due, next.saturating_duration_since(now))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

/// A future that is ready at `deadline` (any executor).
pub(crate) struct Sleep {
    deadline: Instant,
    /// Set while registered with the timer thread.
    id: Option<u64>,
}

impl Sleep {
    pub(crate) fn until(deadline: Instant) -> Self {
        Sleep { deadline, id: None }
    }

    pub(crate) fn is_due(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_due() {
            self.unregister();
            return Poll::Ready(());
        }
        let t = timers();
        // ORDERING: only uniqueness matters.
        let id = *self
            .id
            .get_or_insert_with(|| NEXT.fetch_add(1, Ordering::Relaxed));
        let mut due = t.due.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = due.keys().next().is_none_or(|k| k.0 > self.deadline);
        match due.get_mut(&(self.deadline, id)) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => *w = cx.waker().clone(),
            None => {
                due.insert((self.deadline, id), cx.waker().clone());
            }
        }
        drop(due);
        if earliest {
            t.changed.notify_one();
        }
        Poll::Pending
    }
}

impl Sleep {
    fn unregister(&mut self) {
        if let Some(id) = self.id.take() {
            if let Some(t) = TIMERS.get() {
                t.due
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(self.deadline, id));
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(all(test, not(pinned_loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_sleep_wakes_its_task_at_the_deadline_and_a_dropped_one_is_forgotten() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let t0 = Instant::now();
        rt.block_on(Sleep::until(t0 + Duration::from_millis(30)));
        assert!(t0.elapsed() >= Duration::from_millis(30));
        // Dropped before it is due: no entry is left behind.
        let mut s = Box::pin(Sleep::until(Instant::now() + Duration::from_secs(60)));
        let waker = Waker::noop();
        assert!(s.as_mut().poll(&mut Context::from_waker(waker)).is_pending());
        let key = (s.deadline, s.id.unwrap());
        assert!(timers().due.lock().unwrap().contains_key(&key));
        drop(s);
        assert!(!timers().due.lock().unwrap().contains_key(&key));
    }
}
