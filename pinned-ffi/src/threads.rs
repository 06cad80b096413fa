//! OS thread facts: the calling thread's id, CPU affinity, and the process's
//! thread count and thread names (Linux `/proc`), so tests, the report and
//! operators can see exactly what a worker or pool costs in threads.

use std::io;

/// The calling thread's kernel thread id (`gettid`); 0 where unsupported.
///
/// ```
/// let here = pinned_ffi::threads::current_tid();
/// let there = std::thread::spawn(pinned_ffi::threads::current_tid).join().unwrap();
/// assert_ne!(here, there);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn current_tid() -> u64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions and cannot fail.
        let tid = unsafe { libc::gettid() };
        u64::try_from(tid).unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Pins the calling thread to `cpus` (Linux `sched_setaffinity`).
///
/// # Errors
/// `InvalidInput` for an empty set or a CPU number beyond `CPU_SETSIZE`;
/// the OS error if the kernel refuses the set; `Unsupported` off Linux.
///
/// ```
/// std::thread::spawn(|| {
///     pinned_ffi::threads::set_current_affinity(&[0]).unwrap();
///     assert_eq!(pinned_ffi::threads::current_affinity().unwrap(), vec![0]);
/// }).join().unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn set_current_affinity(cpus: &[usize]) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let max = libc::CPU_SETSIZE as usize;
        if cpus.is_empty() || cpus.iter().any(|&c| c >= max) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad CPU set {cpus:?}"),
            ));
        }
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cpus {
            // SAFETY: c < CPU_SETSIZE, checked above.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of
        // the size we pass.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpus;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "CPU affinity needs Linux",
        ))
    }
}

/// The CPUs the calling thread may run on (Linux `sched_getaffinity`).
///
/// # Errors
/// The OS error; `Unsupported` off Linux.
///
/// ```
/// assert!(!pinned_ffi::threads::current_affinity()?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn current_affinity() -> io::Result<Vec<usize>> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; `set` is writable and sized.
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `set` was filled by the kernel; indices are in range.
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "CPU affinity needs Linux",
        ))
    }
}

/// The process's OS thread count (`Threads:` in `/proc/self/status`), or
/// `None` where that file does not exist (not Linux).
///
/// ```
/// if let Some(n) = pinned_ffi::threads::thread_count() {
///     assert!(n >= 1);
/// }
/// ```
pub fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The names of the process's live threads (`/proc/self/task/*/comm`),
/// sorted, or `None` off Linux.
///
/// ```
/// let _w = pinned_ffi::PinnedWorker::builder().name("named-owner").spawn(|| Ok::<_, std::io::Error>(()))?;
/// assert!(pinned_ffi::threads::thread_names().unwrap().contains(&"named-owner".to_string()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn thread_names() -> Option<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim_end().to_owned())
        .collect();
    names.sort();
    Some(names)
}

/// CPU time the thread `tid` of this process has used so far
/// (`/proc/self/task/<tid>/schedstat`, nanosecond resolution), or `None`
/// where that file does not exist.
///
/// The kernel updates it when the thread is switched out, so read it for
/// other threads, or after this one has slept.
///
/// ```
/// use std::time::{Duration, Instant};
/// let tid = pinned_ffi::threads::current_tid();
/// std::thread::sleep(Duration::from_millis(1)); // be switched out: figure updated
/// if let Some(before) = pinned_ffi::threads::thread_cpu_time(tid) {
///     let t = Instant::now();
///     while t.elapsed() < Duration::from_millis(20) {} // use some CPU
///     std::thread::sleep(Duration::from_millis(1));
///     assert!(pinned_ffi::threads::thread_cpu_time(tid).unwrap() > before);
/// }
/// ```
pub fn thread_cpu_time(tid: u64) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_nanos(ns))
}
