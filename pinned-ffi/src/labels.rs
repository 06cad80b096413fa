//! Caller-supplied labels (a tenant, a request id) that travel with each job
//! to the owner thread, so traces and profiles can be filtered by who asked.
//! With the `tracing` feature every job runs inside a span carrying the
//! pool, the worker's index and the label; without it labels cost nothing.

#[cfg(feature = "tracing")]
use std::{cell::RefCell, sync::Arc};

#[cfg(feature = "tracing")]
thread_local! {
    static LABEL: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Runs `f` with `label` attached to every job this thread submits meanwhile
/// (labels nest: the innermost wins, the outer one is restored after).
///
/// ```
/// # let w = pinned_ffi::PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(()))?;
/// pinned_ffi::with_label("tenant-42", || w.run(|_| ()))?; // the job's span says label=tenant-42
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn with_label<R>(label: &str, f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "tracing")]
    {
        let previous = LABEL.with(|l| l.replace(Some(Arc::from(label))));
        struct Restore(Option<Arc<str>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                let _ = LABEL.try_with(|l| *l.borrow_mut() = previous);
            }
        }
        let _restore = Restore(previous);
        f()
    }
    #[cfg(not(feature = "tracing"))]
    {
        let _ = label;
        f()
    }
}

/// The calling thread's current label.
#[cfg(feature = "tracing")]
pub(crate) fn current() -> Option<Arc<str>> {
    LABEL.try_with(|l| l.borrow().clone()).ok().flatten()
}
