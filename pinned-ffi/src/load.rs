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
//! The estimate: over the last window (at least [`WINDOW`]), the cores
//! this process may use ([`available_parallelism`], which counts the
//! affinity mask and a cgroup quota) less the ones it could have had: the
//! idle time (idle and iowait, from `/proc/stat`) of the CPUs in the
//! process's affinity mask plus the CPU time this process used
//! (`CLOCK_PROCESS_CPUTIME_ID`). Stolen time counts as busy: a vCPU the
//! host took away is as unavailable as one a neighbour holds. Each window
//! is averaged with the one before, so one noisy window does not flip the
//! policy (the first is taken whole). The first reading is taken when a
//! worker is spawned, so the first window ends one [`WINDOW`] later; after
//! that it is refreshed only from waits that already left the fast path,
//! at most once per window and by one thread at a time, so a hot
//! hand-off never pays for it. Where `/proc/stat` cannot be read the
//! estimate stays at zero: the library then decides from its own threads
//! alone.
//!
//! Limits: a cgroup quota that throttles this process is not seen (its
//! CPUs look idle); the affinity mask is read once, from the process's
//! main thread; a `/proc` served by FUSE (lxcfs) may make the read slow.
//!
//! [`available_parallelism`]: std::thread::available_parallelism

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The shortest window an estimate covers. `/proc/stat` counts in clock
/// ticks (10 ms where USER_HZ is 100), so a window of 100 ms resolves a
/// tenth of a core per CPU.
pub(crate) const WINDOW: Duration = Duration::from_millis(100);

/// Cores (in thousandths) of the ones this process may use that it could
/// not have had lately: held by other processes or stolen by the host.
static FOREIGN_MILLICORES: AtomicU32 = AtomicU32::new(0);
/// When the next refresh is due, in ns after `base()`.
static NEXT_REFRESH_NS: AtomicU64 = AtomicU64::new(0);

/// The last reading, the open `/proc/stat` (`None` once it failed) and
/// the CPUs whose idle time counts.
struct Sampler {
    stat: Option<File>,
    mask: Vec<bool>,
    /// One clock tick, in ns.
    tick_ns: u64,
    buf: Vec<u8>,
    last: Option<Reading>,
    /// Whether a window has been estimated yet: the first is taken whole.
    estimated: bool,
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
        // SAFETY: sysconf takes no memory; it returns -1 on failure.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Mutex::new(Sampler {
            stat: File::open("/proc/stat").ok(),
            mask: affinity_mask(),
            tick_ns: 1_000_000_000 / u64::try_from(hz).unwrap_or(100).max(1),
            buf: Vec::new(),
            last: None,
            estimated: false,
        })
    })
}

/// The process's affinity mask, as one flag per CPU number (empty: all).
fn affinity_mask() -> Vec<bool> {
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed;
    // getpid names this process (its main thread).
    let ok = unsafe { libc::sched_getaffinity(libc::getpid(), std::mem::size_of_val(&set), &mut set) } == 0;
    if !ok {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE, the set's capacity.
        .map(|i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// Cores (in thousandths, of the ones this process may use) that it could
/// not have had lately; 0 where it cannot be told.
pub(crate) fn foreign_millicores() -> u32 {
    // ORDERING: a heuristic estimate; nothing is published through it.
    FOREIGN_MILLICORES.load(Ordering::Relaxed)
}

/// Refreshes the estimate if a window has passed since the last one and
/// no other thread is doing it. Cheap when not due (a clock read and one
/// relaxed load). `cores`: the cores this process may use.
pub(crate) fn refresh(cores: usize) {
    let at = Instant::now().saturating_duration_since(base()).as_nanos() as u64;
    // ORDERING: a rate limit; a stale read only refreshes a little late or
    // tries the lock for nothing.
    if at < NEXT_REFRESH_NS.load(Ordering::Relaxed) {
        return;
    }
    let Ok(mut s) = sampler().try_lock() else {
        return;
    };
    NEXT_REFRESH_NS.store(at + WINDOW.as_nanos() as u64, Ordering::Relaxed);
    let Some(reading) = read(&mut s) else {
        return;
    };
    let Some(last) = s.last.replace(reading) else {
        return;
    };
    let wall = reading.at.saturating_duration_since(last.at).as_secs_f64();
    if wall < WINDOW.as_secs_f64() / 2.0 {
        return; // too short to resolve anything; the next window starts here
    }
    let idle = reading.idle.saturating_sub(last.idle).as_secs_f64() / wall;
    let ours = reading.cpu.saturating_sub(last.cpu).as_secs_f64() / wall;
    let foreign = (cores as f64 - idle - ours).max(0.0);
    let sample = (foreign * 1000.0).min(f64::from(u32::MAX / 2)) as u32;
    let before = std::mem::replace(&mut s.estimated, true).then(foreign_millicores);
    // ORDERING: as in `foreign_millicores`.
    FOREIGN_MILLICORES.store(blend(before, sample), Ordering::Relaxed);
}

/// The estimate after a window that measured `sample`: averaged with the
/// one `before`, or the sample itself for the first window (averaging it
/// with the zero the estimate starts at would halve the first evidence,
/// and a loaded machine would be taken for a quiet one for a window more).
fn blend(before: Option<u32>, sample: u32) -> u32 {
    match before {
        Some(b) => b / 2 + sample / 2,
        None => sample,
    }
}

/// Idle time of the CPUs in the mask and this process's CPU time, now.
fn read(s: &mut Sampler) -> Option<Reading> {
    let idle_ticks = read_idle_ticks(s)?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return None;
    }
    Some(Reading {
        at: Instant::now(),
        // In u64 ns: the ticks of many CPUs over a long uptime pass u32.
        idle: Duration::from_nanos(idle_ticks.saturating_mul(s.tick_ns)),
        cpu: Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        ),
    })
}

/// The idle and iowait ticks of the CPUs in the mask, summed.
fn read_idle_ticks(s: &mut Sampler) -> Option<u64> {
    let file = s.stat.as_ref()?;
    // The per-CPU lines come first; read until past them (the interrupt
    // counts after them can be long).
    s.buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match file.read_at(&mut chunk, s.buf.len() as u64) {
            Ok(n) => n,
            Err(_) => {
                s.stat = None;
                return None;
            }
        };
        s.buf.extend_from_slice(&chunk[..n]);
        let past_cpus = s
            .buf
            .split(|&b| b == b'\n')
            .skip(1)
            .any(|l| !l.starts_with(b"cpu") && !l.is_empty());
        if n == 0 || past_cpus || s.buf.len() > 1 << 20 {
            break;
        }
    }
    let text = std::str::from_utf8(&s.buf).ok()?;
    let mut idle = 0u64;
    let mut any = false;
    for line in text.lines().skip(1) {
        let Some(rest) = line.strip_prefix("cpu") else {
            break;
        };
        let mut fields = rest.split_whitespace();
        let Some(cpu) = fields.next().and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        if !s.mask.is_empty() && !s.mask.get(cpu).copied().unwrap_or(false) {
            continue;
        }
        // user nice system idle iowait ...
        let v: Vec<u64> = fields.take(5).filter_map(|f| f.parse().ok()).collect();
        if v.len() == 5 {
            idle = idle.saturating_add(v[3]).saturating_add(v[4]);
            any = true;
        }
    }
    any.then_some(idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_window_counts_whole_and_later_ones_are_averaged() {
        assert_eq!(blend(None, 1800), 1800);
        assert_eq!(blend(Some(1800), 200), 1000);
        assert_eq!(blend(Some(0), 2000), 1000);
        assert_eq!(blend(Some(u32::MAX / 2), u32::MAX / 2), u32::MAX / 2 - 1);
    }

    #[test]
    fn a_core_kept_busy_by_another_process_is_seen() {
        if File::open("/proc/stat").is_err() {
            println!("SKIPPED: no /proc/stat here, the load estimate stays at zero");
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
            refresh(cores);
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
