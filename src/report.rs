//! Runs the scenarios and strategies and renders the results as a table,
//! JSON and an SVG bar chart.

use std::fmt::Write as _;

use crate::scenarios::{self, Outcome};
use crate::strategies::{Measured, Strategy};

/// How long a report run may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A few seconds: CI's smoke run.
    Quick,
    /// The default: more calls and trials, still well under a minute.
    Full,
}

/// One strategy's line of the cost table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Strategy name.
    pub name: String,
    /// Median over trials of ns per call.
    pub ns_per_call: f64,
    /// `ns_per_call` over the direct call's.
    pub ratio_to_direct: f64,
    /// Contexts created per trial.
    pub contexts_created: u64,
    /// OS threads started per trial.
    pub os_threads: u64,
    /// Wrong outputs in all trials (`None`: not checkable).
    pub wrong_results: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The corruption scenarios.
    pub scenarios: Vec<Outcome>,
    /// The cost table.
    pub rows: Vec<Row>,
    /// Queue wait of one worker as callers and idle owners grow.
    pub queue_latency: Vec<LatencyRow>,
    /// CPU an idle worker's owner thread used, in percent of one core
    /// (`None` where per-thread CPU time cannot be read).
    pub idle_cpu_percent: Option<f64>,
    /// The strategies again with one hog per core (`None`: not run).
    pub busy: Option<crate::busy::Busy>,
}

/// One line of the queue-latency table.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyRow {
    /// Threads calling the one worker.
    pub callers: usize,
    /// Extra owners started and left idle (parked) meanwhile.
    pub idle_owners: usize,
    /// Queue wait: median.
    pub p50: std::time::Duration,
    /// Queue wait: 99th percentile.
    pub p99: std::time::Duration,
    /// Jobs sampled for the histogram.
    pub samples: u64,
}

/// Queue wait (submission to start) of one worker as callers grow, and as
/// idle owners are added beyond the core count: how much a busy single
/// owner makes callers wait, and whether parked owners cost anything.
pub fn queue_latency(calls_per_caller: u64) -> Vec<LatencyRow> {
    use affine::{Config, Context};
    use pinned_ffi::PinnedWorker;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    let cases = [1, 4, 16, 64]
        .map(|c| (c, 0))
        .into_iter()
        .chain([(4, cores * 2), (4, cores * 8)]);
    for (callers, idle_owners) in cases {
        let idle: Vec<_> = (0..idle_owners)
            .map(|_| PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(())).expect("idle owner"))
            .collect();
        let w = PinnedWorker::spawn(|| Context::new(&Config::with_seed(1))).expect("worker");
        std::thread::scope(|s| {
            for c in 0..callers as u64 {
                let w = &w;
                s.spawn(move || {
                    for i in 0..calls_per_caller / callers as u64 {
                        w.run(|ctx| ctx.op(crate::scenarios::input(c, i)).expect("op"))
                            .expect("run");
                    }
                });
            }
        });
        let m = w.metrics();
        rows.push(LatencyRow {
            callers,
            idle_owners,
            p50: m.queue_wait.p50,
            p99: m.queue_wait.p99,
            samples: m.queue_wait.count,
        });
        drop(idle);
    }
    rows
}

/// Measures an idle worker: after one job and its spin window, how much of
/// a core does the parked owner use over `window`?
pub fn idle_cpu_percent(window: std::time::Duration) -> Option<f64> {
    use pinned_ffi::{threads, PinnedWorker};
    let w = PinnedWorker::spawn(|| Ok::<_, std::convert::Infallible>(())).ok()?;
    w.run(|_| ()).ok()?;
    std::thread::sleep(std::time::Duration::from_millis(50)); // past the owner's spin window
    let tid = w.owner_tid();
    let before = threads::thread_cpu_time(tid)?;
    std::thread::sleep(window);
    let used = threads::thread_cpu_time(tid)? - before;
    Some(used.as_secs_f64() / window.as_secs_f64() * 100.0)
}

/// What machine the figures come from.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs available.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads it from `/proc` (Linux; "unknown" elsewhere).
    pub fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Machine { cpu, cpus, kernel }
    }
}

/// The strategies in report order.
pub fn strategies() -> Vec<Strategy> {
    vec![
        Strategy::SpinPingPong,
        Strategy::BareSlot,
        Strategy::Direct,
        Strategy::Pinned,
        Strategy::PinnedBatch(16),
        Strategy::PinnedBatch(256),
        Strategy::Pool {
            workers: 2,
            callers: 1,
        },
        Strategy::Pool {
            workers: 2,
            callers: 2,
        },
        Strategy::Pool {
            workers: 2,
            callers: 8,
        },
        Strategy::PinnedCallers(8),
        Strategy::AsyncSubmit,
        Strategy::AsyncOneshot,
        Strategy::SpawnBlocking,
        Strategy::LocalPool,
        Strategy::CrossbeamNaive,
        Strategy::CrossbeamCallers(2),
        Strategy::CrossbeamCallers(8),
        Strategy::Rebind,
        Strategy::ThreadLocal(2),
        Strategy::ContextPerCall,
        Strategy::ThreadPerCall,
    ]
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Runs everything, calling `progress` before each step.
pub fn run(mode: Mode, busy: bool, mut progress: impl FnMut(&str)) -> Report {
    let (scenario_calls, trials, fast_calls, slow_calls) = match mode {
        Mode::Quick => (2_000, 3, 20_000, 100),
        Mode::Full => (20_000, 5, 100_000, 100),
    };
    progress("corruption scenarios");
    let scenarios = vec![
        scenarios::raw_thread_pool(4, scenario_calls),
        scenarios::raw_async_tasks(8, scenario_calls / 8),
        scenarios::pinned_thread_pool(4, scenario_calls),
        scenarios::pinned_async_tasks(8, scenario_calls / 8),
    ];

    let list = strategies();
    let mut samples: Vec<Vec<Measured>> = vec![Vec::new(); list.len()];
    // Trials are interleaved across strategies so drift on a shared machine
    // hits them all alike.
    for trial in 0..trials {
        for (s, strategy) in list.iter().enumerate() {
            progress(&format!("trial {}/{trials}: {}", trial + 1, strategy.name()));
            let calls = if strategy.is_slow() {
                slow_calls
            } else if strategy.parks_per_call() {
                fast_calls / 50
            } else {
                fast_calls
            };
            samples[s].push(strategy.run(calls));
        }
    }
    let ns = |m: &Measured| m.elapsed.as_nanos() as f64 / m.calls as f64;
    let direct = list
        .iter()
        .position(|s| *s == Strategy::Direct)
        .expect("direct is listed");
    let direct_ns = median(samples[direct].iter().map(ns).collect());
    let rows = list
        .iter()
        .zip(&samples)
        .map(|(strategy, ms)| {
            let med = median(ms.iter().map(ns).collect());
            Row {
                name: strategy.name(),
                ns_per_call: med,
                ratio_to_direct: med / direct_ns,
                contexts_created: ms[0].contexts,
                os_threads: ms[0].os_threads,
                wrong_results: ms.iter().map(|m| m.wrong).sum(),
            }
        })
        .collect::<Vec<Row>>();
    let busy = busy.then(|| crate::busy::run(mode, &list, &rows, &mut progress));
    progress("queue latency under pressure");
    let queue_latency = queue_latency(match mode {
        Mode::Quick => 16_000,
        Mode::Full => 128_000,
    });
    progress("idle worker CPU");
    let window = match mode {
        Mode::Quick => std::time::Duration::from_millis(200),
        Mode::Full => std::time::Duration::from_secs(1),
    };
    Report {
        machine: Machine::detect(),
        scenarios,
        rows,
        queue_latency,
        idle_cpu_percent: idle_cpu_percent(window),
        busy,
    }
}

pub(crate) fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

impl Report {
    /// The two tables as text.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "machine: {} ({} CPUs), Linux {}\n", m.cpu, m.cpus, m.kernel);
        let _ = writeln!(
            s,
            "Correctness: one call sequence per caller, checked against the reference model"
        );
        let _ = writeln!(
            s,
            "{:<58} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "scenario", "calls", "wrong", "failed", "lost err", "contexts"
        );
        for o in &self.scenarios {
            let _ = writeln!(
                s,
                "{:<58} {:>8} {:>8} {:>8} {:>8} {:>8}",
                o.name, o.calls, o.wrong, o.failed_calls, o.lost_errors, o.contexts
            );
        }
        let _ = writeln!(s, "\nCost per call (median of trials, same run)");
        write_rows(&mut s, "strategy", 42, &self.rows);
        let _ = writeln!(
            s,
            "\nQueue wait of one worker (submission to start; sampled: each caller's first job, then 1 in {})",
            pinned_ffi::TIMED_ONE_JOB_IN
        );
        let _ = writeln!(
            s,
            "{:>8} {:>12} {:>12} {:>12} {:>9}",
            "callers", "idle owners", "p50", "p99", "samples"
        );
        for r in &self.queue_latency {
            let _ = writeln!(
                s,
                "{:>8} {:>12} {:>12} {:>12} {:>9}",
                r.callers,
                r.idle_owners,
                fmt_ns(r.p50.as_nanos() as f64),
                fmt_ns(r.p99.as_nanos() as f64),
                r.samples
            );
        }
        if let Some(b) = &self.busy {
            b.write(&mut s);
        }
        match self.idle_cpu_percent {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "\nIdle worker (parked after its spin window): {p:.3}% of one core"
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "\nIdle worker CPU: not measurable here (no /proc/self/task/*/schedstat)"
                );
            }
        }
        s
    }

    /// The report as JSON.
    pub fn json(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut s = String::new();
        let m = &self.machine;
        let _ = write!(
            s,
            "{{\"machine\": {{\"cpu\": \"{}\", \"cpus\": {}, \"kernel\": \"{}\"}}, ",
            esc(&m.cpu),
            m.cpus,
            esc(&m.kernel)
        );
        s.push_str("\"scenarios\": [");
        for (i, o) in self.scenarios.iter().enumerate() {
            let _ = write!(
                s,
                "{}{{\"name\": \"{}\", \"calls\": {}, \"wrong\": {}, \"failed_calls\": {}, \"lost_errors\": {}, \"contexts\": {}}}",
                if i > 0 { ", " } else { "" },
                esc(&o.name),
                o.calls,
                o.wrong,
                o.failed_calls,
                o.lost_errors,
                o.contexts
            );
        }
        s.push_str("], \"strategies\": [");
        for (i, r) in self.rows.iter().enumerate() {
            let wrong = r.wrong_results.map_or("null".to_owned(), |w| w.to_string());
            let _ = write!(
                s,
                "{}{{\"name\": \"{}\", \"ns_per_call\": {:.2}, \"ratio_to_direct\": {:.3}, \"contexts_created\": {}, \"os_threads\": {}, \"wrong_results\": {}}}",
                if i > 0 { ", " } else { "" },
                esc(&r.name),
                r.ns_per_call,
                r.ratio_to_direct,
                r.contexts_created,
                r.os_threads,
                wrong
            );
        }
        s.push_str("], \"queue_latency\": [");
        for (i, r) in self.queue_latency.iter().enumerate() {
            let _ = write!(
                s,
                "{}{{\"callers\": {}, \"idle_owners\": {}, \"p50_ns\": {}, \"p99_ns\": {}, \"samples\": {}}}",
                if i > 0 { ", " } else { "" },
                r.callers,
                r.idle_owners,
                r.p50.as_nanos(),
                r.p99.as_nanos(),
                r.samples
            );
        }
        let idle = self
            .idle_cpu_percent
            .map_or("null".to_owned(), |p| format!("{p:.4}"));
        let busy = self.busy.as_ref().map_or("null".to_owned(), |b| b.json());
        let _ = writeln!(s, "], \"idle_worker_cpu_percent\": {idle}, \"busy\": {busy}}}");
        s
    }

    /// The cost table as a horizontal bar chart, log scale.
    pub fn svg(&self) -> String {
        let (w, left, bar_h, gap, top) = (900.0, 330.0, 18.0, 6.0, 40.0);
        let h = top + self.rows.len() as f64 * (bar_h + gap) + 40.0;
        let max = self.rows.iter().map(|r| r.ns_per_call).fold(10.0, f64::max);
        let lo = 1.0f64; // 1 ns
        let scale =
            |ns: f64| (ns.max(lo).log10() - lo.log10()) / (max.log10() - lo.log10()) * (w - left - 90.0);
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let mut s = String::new();
        let _ = writeln!(s, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">");
        let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"22\" font-size=\"14\">ns per call, log scale — {}</text>",
            esc(&self.machine.cpu)
        );
        let mut decade = 1.0;
        while decade <= max * 10.0 {
            let x = left + scale(decade);
            if x <= w - 80.0 {
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
                    h - 30.0
                );
                let _ = writeln!(
                    s,
                    "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#666\">{}</text>",
                    h - 15.0,
                    fmt_ns(decade)
                );
            }
            decade *= 10.0;
        }
        for (i, r) in self.rows.iter().enumerate() {
            let y = top + i as f64 * (bar_h + gap);
            let colour = if r.name.starts_with("pinned") || r.name.starts_with("pool") {
                "#2b7bba"
            } else {
                "#999"
            };
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left - 8.0,
                y + 13.0,
                esc(&r.name)
            );
            let bw = scale(r.ns_per_call).max(1.0);
            let _ = writeln!(
                s,
                "<rect x=\"{left}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bar_h}\" fill=\"{colour}\"/>"
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                left + bw + 5.0,
                y + 13.0,
                fmt_ns(r.ns_per_call)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Writes a cost table: a header, then one line per row, the name column
/// `width` wide.
pub(crate) fn write_rows(s: &mut String, first: &str, width: usize, rows: &[Row]) {
    let _ = writeln!(
        s,
        "{first:<width$} {:>12} {:>10} {:>9} {:>8} {:>7}",
        "per call", "x direct", "contexts", "threads", "wrong"
    );
    for r in rows {
        let wrong = r.wrong_results.map_or("-".to_owned(), |w| w.to_string());
        let _ = writeln!(
            s,
            "{:<width$} {:>12} {:>10.1} {:>9} {:>8} {:>7}",
            r.name,
            fmt_ns(r.ns_per_call),
            r.ratio_to_direct,
            r.contexts_created,
            r.os_threads,
            wrong
        );
    }
}
