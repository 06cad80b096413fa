//! How much of the machine other processes use: the evidence a spinner
//! needs to know that its partner may not be running.
//!
//! The library's own threads are counted where they are (see
//! [`spin`](crate::spin)); what it cannot count is everyone else. On a
//! machine where other processes keep the cores busy, a spinning waiter
//! holds a core its partner needs, a yielding one hands its core to a
//! stranger for a whole time slice, and a partner that was preempted
//! cannot answer however long we spin. Only a parked waiter is woken
//! promptly (the scheduler favours a thread that slept).
//!
//! The estimate: over the last window (at least [`WINDOW`]), the cores the
//! machine kept busy (online CPUs less the idle time in `/proc/uptime`,
//! which counts stolen time as busy) less the cores this process used
//! (`CLOCK_PROCESS_CPUTIME_ID`), scaled to the CPUs this process may use.
//! It is refreshed only from waits that already left the fast path, at
//! most once per window and by one thread at a time, so a hot hand-off
//! never pays for it. Where `/proc/uptime` cannot be read the estimate
//! stays at zero: the library then decides from its own threads alone, as
//! it did before.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The shortest window an estimate covers. `/proc/uptime` counts idle time
/// in hundredths of a second, so a window of 40 ms resolves a quarter of a
/// core.
pub(crate) const WINDOW: Duration = Duration::from_millis(40);

/// Cores (in thousandths) other processes kept busy in the last window, as
/// a share of the CPUs this process may use.
static FOREIGN_MILLICORES: AtomicU32 = AtomicU32::new(0);
/// When the next refresh is due, in ns after `base()`.
static NEXT_REFRESH_NS: AtomicU64 = AtomicU64::new(0);

/// The last reading, and the open `/proc/uptime` (`None` once it failed).
struct Sampler {
    uptime: Option<File>,
    last: Option<Reading>,
}

#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    idle: Duration,
    cpu: Duration,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn sampler() -> &'static Mutex<Sampler> {
    static SAMPLER: OnceLock<Mutex<Sampler>> = OnceLock::new();
    SAMPLER.get_or_init(|| {
        Mutex::new(Sampler {
            uptime: File::open("/proc/uptime").ok(),
            last: None,
        })
    })
}

/// The CPUs online on the machine (what `/proc/uptime`'s idle time sums over).
fn online_cpus() -> usize {
    static ONLINE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf reads a system constant; no memory is passed.
    *ONLINE.get_or_init(|| {
        usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
            .unwrap_or(1)
            .max(1)
    })
}

/// Cores (in thousandths, of the ones this process may use) that other
/// processes kept busy in the last window; 0 where it cannot be told.
pub(crate) fn foreign_millicores() -> u32 {
    // ORDERING: a heuristic estimate; nothing is published through it.
    FOREIGN_MILLICORES.load(Ordering::Relaxed)
}

/// Refreshes the estimate if a window has passed since the last one and
/// no other thread is doing it. Cheap when not due (one relaxed load).
pub(crate) fn refresh(now: Instant, cores: usize) {
    let at = now.saturating_duration_since(base()).as_nanos() as u64;
    // ORDERING: a rate limit; a stale read only refreshes a little late or
    // tries the lock for nothing.
    if at < NEXT_REFRESH_NS.load(Ordering::Relaxed) {
        return;
    }
    let Ok(mut s) = sampler().try_lock() else {
        return;
    };
    NEXT_REFRESH_NS.store(at + WINDOW.as_nanos() as u64, Ordering::Relaxed);
    let Some(reading) = read(&mut s, now) else {
        return;
    };
    let Some(last) = s.last.replace(reading) else {
        return;
    };
    let wall = reading.at.saturating_duration_since(last.at).as_secs_f64();
    if wall < WINDOW.as_secs_f64() / 2.0 || wall > 10.0 {
        // Too short to resolve anything, or so old it says nothing of now:
        // the reading just taken starts the next window.
        return;
    }
    let idle = reading.idle.saturating_sub(last.idle).as_secs_f64() / wall;
    let ours = reading.cpu.saturating_sub(last.cpu).as_secs_f64() / wall;
    let online = online_cpus() as f64;
    let foreign = (online - idle - ours).max(0.0) * (cores as f64 / online).min(1.0);
    // ORDERING: as in `foreign_millicores`.
    FOREIGN_MILLICORES.store((foreign * 1000.0) as u32, Ordering::Relaxed);
}

/// Idle time of all CPUs and this process's CPU time, now.
fn read(s: &mut Sampler, now: Instant) -> Option<Reading> {
    let file = s.uptime.as_ref()?;
    let mut buf = [0u8; 64];
    let n = match file.read_at(&mut buf, 0) {
        Ok(n) => n,
        Err(_) => {
            s.uptime = None;
            return None;
        }
    };
    let idle: f64 = std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return None;
    }
    Some(Reading {
        at: now,
        idle: Duration::try_from_secs_f64(idle).ok()?,
        cpu: Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_kept_busy_by_another_process_is_seen() {
        if File::open("/proc/uptime").is_err() {
            println!("SKIPPED: no /proc/uptime here, the load estimate stays at zero");
            return;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // One hog per core, started as processes: the estimate must rise to
        // most of them within a few windows.
        let mut hogs: Vec<_> = (0..cores)
            .filter_map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .ok()
            })
            .collect();
        if hogs.len() < cores {
            for h in &mut hogs {
                let _ = h.kill();
                let _ = h.wait();
            }
            println!("SKIPPED: cannot start hog processes (no sh?)");
            return;
        }
        let mut seen = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(WINDOW);
            refresh(Instant::now(), cores);
            seen = seen.max(foreign_millicores());
        }
        for h in &mut hogs {
            let _ = h.kill();
            let _ = h.wait();
        }
        assert!(
            seen as usize >= cores * 1000 / 2,
            "{cores} hogs, estimate peaked at {seen} millicores"
        );
    }
}
