//! The same strategies on a busy machine: one CPU-bound hog process per
//! core, started and stopped here, while each strategy runs for a bounded
//! time. Real services share their cores with other processes; a hand-off
//! that spins on the assumption that its partner is running collapses
//! there, and this section shows whether it does.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::report::{median, Mode, Row};
use crate::strategies::{Fixture, Measured, Strategy};

/// CPU-bound load from outside the library: one busy-looping process per
/// core (`sh -c 'while :; do :; done'`), or threads of this process where
/// no shell can be started. Stopped (killed and reaped) on drop.
#[derive(Debug)]
pub struct Hogs {
    children: Vec<Child>,
    threads: Vec<thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Hogs {
    /// Starts `n` hogs: processes, or threads if a process cannot start.
    ///
    /// ```
    /// let hogs = pinned_ffi_demo::busy::Hogs::start(1);
    /// assert_eq!(hogs.count(), 1);
    /// drop(hogs); // killed and reaped
    /// ```
    pub fn start(n: usize) -> Hogs {
        let mut hogs = Hogs {
            children: Vec::new(),
            threads: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            match child {
                Ok(c) => hogs.children.push(c),
                Err(_) => {
                    let stop = Arc::clone(&hogs.stop);
                    // ORDERING: a stop flag; nothing is published through it.
                    hogs.threads.push(thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    }));
                }
            }
        }
        hogs
    }

    /// Hogs running.
    pub fn count(&self) -> usize {
        self.children.len() + self.threads.len()
    }

    /// What the hogs are, for the report's heading.
    pub fn kind(&self) -> &'static str {
        if self.threads.is_empty() {
            "processes"
        } else {
            "threads (no shell to start processes)"
        }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // ORDERING: as in `start`.
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One strategy's line of the busy table.
#[derive(Debug, Clone, PartialEq)]
pub struct BusyRow {
    /// The strategy's report name.
    pub name: String,
    /// Median ns per call with the machine loaded; `None` when the
    /// section's time ran out before this row.
    pub ns_per_call: Option<f64>,
    /// The same strategy's quiet figure from the same report run.
    pub quiet_ns: Option<f64>,
    /// The peer this row is held against (same callers), if any.
    pub peer: Option<String>,
    /// Wrong outputs in all trials (`None`: not checkable).
    pub wrong_results: Option<u64>,
}

/// The busy-machine section.
#[derive(Debug, Clone)]
pub struct Busy {
    /// Hogs that ran (one per core).
    pub hogs: usize,
    /// What they were.
    pub hog_kind: &'static str,
    /// One line per strategy.
    pub rows: Vec<BusyRow>,
    /// Wall time the section took.
    pub took: Duration,
}

/// The budgets of the busy section: per trial and in all.
fn budgets(mode: Mode) -> (u32, Duration, Duration) {
    match mode {
        Mode::Quick => (3, Duration::from_millis(20), Duration::from_secs(30)),
        Mode::Full => (5, Duration::from_millis(100), Duration::from_secs(120)),
    }
}

/// Times one trial of about `target`: a short probe sizes it, so a
/// strategy that costs milliseconds a call under load still takes about
/// `target` (plus the probe).
pub fn bounded_trial(fixture: &mut Fixture, probe_calls: u64, target: Duration) -> Measured {
    let probe = fixture.run(probe_calls);
    let per_call = probe.elapsed.as_secs_f64() / probe.calls.max(1) as f64;
    let calls = (target.as_secs_f64() / per_call.max(1e-9)) as u64;
    fixture.run(calls.clamp(probe_calls, 50 * probe_calls.max(1000)))
}

/// Runs `list` with one hog per core, next to the `quiet` rows measured in
/// the same report run. Bounded: each trial is sized to a fixed time and
/// rows past the section's budget are left unmeasured (and say so).
pub fn run(mode: Mode, list: &[Strategy], quiet: &[Row], mut progress: impl FnMut(&str)) -> Busy {
    let (trials, target, budget) = budgets(mode);
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    let hogs = Hogs::start(cores);
    // Let the scheduler spread the hogs before anything is timed.
    thread::sleep(Duration::from_millis(50));
    let mut samples: Vec<Vec<Measured>> = vec![Vec::new(); list.len()];
    'trials: for trial in 0..trials {
        for (s, strategy) in list.iter().enumerate() {
            if start.elapsed() > budget {
                break 'trials;
            }
            progress(&format!("busy trial {}/{trials}: {}", trial + 1, strategy.name()));
            let probe = if strategy.is_slow() { 5 } else { 100 };
            // One fixture at a time, as in the quiet section: a limit
            // peer's owner spins while it lives and would be one more hog.
            samples[s].push(bounded_trial(&mut strategy.prepare(), probe, target));
        }
    }
    let took = start.elapsed();
    let (hog_count, hog_kind) = (hogs.count(), hogs.kind());
    drop(hogs);
    let ns = |m: &Measured| m.elapsed.as_nanos() as f64 / m.calls.max(1) as f64;
    let quiet_ns = |name: &str| quiet.iter().find(|r| r.name == name).map(|r| r.ns_per_call);
    let rows = list
        .iter()
        .zip(&samples)
        .map(|(strategy, ms)| BusyRow {
            name: strategy.name(),
            ns_per_call: (!ms.is_empty()).then(|| median(ms.iter().map(ns).collect())),
            quiet_ns: quiet_ns(&strategy.name()),
            peer: strategy.peer().map(|p| p.name()),
            wrong_results: ms.iter().map(|m| m.wrong).sum(),
        })
        .collect();
    Busy {
        hogs: hog_count,
        hog_kind,
        rows,
        took,
    }
}

impl Busy {
    /// Appends the section to a report's text.
    pub fn write(&self, s: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            s,
            "\nBusy machine: the same strategies with {} CPU-bound hog {} (one per core), median of trials, {:.1} s",
            self.hogs,
            self.hog_kind,
            self.took.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "{:<42} {:>12} {:>12} {:>9}  {:<36} {:>7}",
            "strategy", "busy", "quiet", "x quiet", "vs peer (busy, same callers)", "wrong"
        );
        let fmt = |ns: Option<f64>| ns.map_or("-".to_owned(), crate::report::fmt_ns);
        for r in &self.rows {
            let ratio = match (r.ns_per_call, r.quiet_ns) {
                (Some(b), Some(q)) if q > 0.0 => format!("{:.1}", b / q),
                _ => "-".into(),
            };
            let vs = match (&r.peer, r.ns_per_call) {
                (Some(p), Some(b)) => match self
                    .rows
                    .iter()
                    .find(|x| &x.name == p)
                    .and_then(|x| x.ns_per_call)
                {
                    Some(pb) => format!("{:.2}x of {}", b / pb, fmt(Some(pb))),
                    None => "-".into(),
                },
                _ => String::new(),
            };
            let wrong = r.wrong_results.map_or("-".to_owned(), |w| w.to_string());
            let busy = r
                .ns_per_call
                .map_or("not run (time)".to_owned(), crate::report::fmt_ns);
            let _ = writeln!(
                s,
                "{:<42} {:>12} {:>12} {:>9}  {:<36} {:>7}",
                r.name,
                busy,
                fmt(r.quiet_ns),
                ratio,
                vs,
                wrong
            );
        }
    }

    /// The section as a JSON object.
    pub fn json(&self) -> String {
        use std::fmt::Write as _;
        let num = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.2}"));
        let mut s = format!(
            "{{\"hogs\": {}, \"hog_kind\": \"{}\", \"took_s\": {:.3}, \"rows\": [",
            self.hogs,
            self.hog_kind,
            self.took.as_secs_f64()
        );
        for (i, r) in self.rows.iter().enumerate() {
            let _ = write!(
                s,
                "{}{{\"name\": \"{}\", \"ns_per_call\": {}, \"quiet_ns_per_call\": {}, \"peer\": {}, \"wrong_results\": {}}}",
                if i > 0 { ", " } else { "" },
                r.name.replace('\\', "\\\\").replace('"', "\\\""),
                num(r.ns_per_call),
                num(r.quiet_ns),
                r.peer.as_ref().map_or("null".to_owned(), |p| format!("\"{p}\"")),
                r.wrong_results.map_or("null".to_owned(), |w| w.to_string())
            );
        }
        s.push_str("]}");
        s
    }
}
