//! The report's real-SDK section: what a pinned owner costs, and what the
//! raw way gets wrong, for EGL + OpenGL ES 2 on Mesa (surfaceless,
//! llvmpipe), opened at run time through `pinned_ffi_sdks::egl`.
//!
//! Two cheap GL operations, `glGetError` and a clear + one-pixel readback,
//! each measured direct on the owner, through a pinned round trip, batched,
//! rebinding the context around every call from two threads (a lock and
//! `eglMakeCurrent` in, the call, `eglMakeCurrent(NONE)` out), and with a
//! context created per call. Trials are interleaved like the main table's,
//! and each trial's call count is sized to a time budget, so the section
//! takes about the same time on any machine. Where GL cannot be opened the
//! section says so and is skipped.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pinned_ffi_sdks::egl::{self, Display, Egl, GlContext, GL_COLOR_BUFFER_BIT, GL_RGBA, GL_UNSIGNED_BYTE};

use crate::report::{median, write_rows, Mode, Row};
use crate::strategies::{warm_up, Measured};

/// The GL operation timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `glGetError`, drained.
    GetError,
    /// `glClearColor` + `glClear` + a 1×1 RGBA `glReadPixels`, checked.
    ClearRead,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::GetError => "glGetError",
            Op::ClearRead => "clear + 1-pixel readback",
        }
    }
}

/// How the operation reaches the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// On the thread where the context is current: the floor.
    Direct,
    /// `PinnedWorker::run`, one call per job.
    Pinned,
    /// `PinnedWorker::run`, `k` calls per job.
    Batched(u64),
    /// `callers` threads, each call under a lock between
    /// `eglMakeCurrent(ctx)` and `eglMakeCurrent(NONE)`.
    Rebind(usize),
    /// A context (and pbuffer) created, made current, used once and
    /// destroyed per call; the display stays initialised.
    ContextPerCall,
}

impl Way {
    fn name(self) -> String {
        match self {
            Way::Direct => "direct on the owner (floor)".into(),
            Way::Pinned => "pinned worker, 1 call/job".into(),
            Way::Batched(k) => format!("pinned worker, batched {k} calls/job"),
            Way::Rebind(c) => format!("rebind per call (lock+make-current), {c} threads"),
            Way::ContextPerCall => "context created per call".into(),
        }
    }
}

/// The rows in report order.
pub fn cases() -> Vec<(Op, Way)> {
    let ways = [
        Way::Direct,
        Way::Pinned,
        Way::Batched(64),
        Way::Rebind(2),
        Way::ContextPerCall,
    ];
    [Op::GetError, Op::ClearRead]
        .into_iter()
        .flat_map(|op| ways.map(|w| (op, w)))
        .collect()
}

/// The raw async case: tasks on a two-thread tokio runtime, each runtime
/// thread with its own current context, each task clearing to its colour,
/// awaiting, and reading back on whichever thread it resumed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawAsync {
    /// Readbacks made.
    pub readbacks: u64,
    /// Readbacks that returned another task's colour.
    pub wrong: u64,
    /// Readbacks that wrote nothing (no context on the thread resumed on).
    pub failed: u64,
    /// Awaits after which the task ran on another thread.
    pub hops: u64,
}

/// What the GL section measured.
#[derive(Debug, Clone)]
pub struct GlFigures {
    /// `glGetString(GL_RENDERER)`.
    pub renderer: String,
    /// `eglQueryString(EGL_VENDOR)`.
    pub vendor: String,
    /// The EGL version.
    pub egl_version: (i32, i32),
    /// Cost rows; `ratio_to_direct` is against the same operation's direct
    /// row, `wrong_results` counts GL errors or wrong pixels.
    pub rows: Vec<Row>,
    /// The raw async case.
    pub raw_async: RawAsync,
}

/// The real-SDK section: measured, or why not.
#[derive(Debug, Clone)]
pub enum RealSdks {
    /// EGL + GLES ran.
    Gl(GlFigures),
    /// GL could not be opened here; the reason.
    Skipped(String),
}

/// Runs the section, calling `progress` before each step.
pub fn run(mode: Mode, mut progress: impl FnMut(&str)) -> RealSdks {
    progress("real SDK: EGL + GLES");
    let (renderer, vendor, egl_version) = match GlContext::open().and_then(|c| {
        let d = c.display();
        Ok((c.renderer()?, d.vendor(), d.version()))
    }) {
        Ok(info) => info,
        Err(e) => return RealSdks::Skipped(e.to_string()),
    };
    let (trials, budget, tasks, rounds) = match mode {
        Mode::Quick => (3, Duration::from_millis(15), 32, 20),
        Mode::Full => (5, Duration::from_millis(80), 64, 50),
    };
    let list = cases();
    let sizes: Vec<u64> = list
        .iter()
        .map(|&(op, way)| {
            progress(&format!("sizing: {} / {}", op.name(), way.name()));
            calls_for(op, way, budget)
        })
        .collect();
    let mut samples: Vec<Vec<Measured>> = vec![Vec::new(); list.len()];
    for trial in 0..trials {
        for (i, &(op, way)) in list.iter().enumerate() {
            progress(&format!(
                "GL trial {}/{trials}: {} / {}",
                trial + 1,
                op.name(),
                way.name()
            ));
            samples[i].push(measure(op, way, sizes[i]));
        }
    }
    let ns = |m: &Measured| m.elapsed.as_nanos() as f64 / m.calls as f64;
    let medians: Vec<f64> = samples
        .iter()
        .map(|ms| median(ms.iter().map(ns).collect()))
        .collect();
    let rows = list
        .iter()
        .zip(&samples)
        .zip(&medians)
        .map(|((&(op, way), ms), &med)| {
            let direct = list
                .iter()
                .position(|&c| c == (op, Way::Direct))
                .expect("each op has a direct row");
            Row {
                name: format!("{}: {}", op.name(), way.name()),
                ns_per_call: med,
                ratio_to_direct: med / medians[direct],
                contexts_created: ms[0].contexts,
                os_threads: ms[0].os_threads,
                wrong_results: ms.iter().map(|m| m.wrong).sum(),
            }
        })
        .collect();
    progress("GL: raw async tasks");
    RealSdks::Gl(GlFigures {
        renderer,
        vendor,
        egl_version,
        rows,
        raw_async: raw_async(tasks, rounds),
    })
}

/// Calls per trial that take about `budget`, from a short pilot run.
fn calls_for(op: Op, way: Way, budget: Duration) -> u64 {
    let pilot = if way == Way::ContextPerCall { 3 } else { 256 };
    let m = measure(op, way, pilot);
    let per = m.elapsed.as_secs_f64() / m.calls as f64;
    let (lo, hi) = if way == Way::ContextPerCall {
        (5, 2_000)
    } else {
        (2_000, 2_000_000)
    };
    ((budget.as_secs_f64() / per.max(1e-9)) as u64).clamp(lo, hi)
}

/// A colour for call `i`: consecutive calls differ.
fn colour(i: u64) -> [u8; 4] {
    [(i & 0xFF) as u8, ((i >> 8) & 0xFF) as u8, 0x5A, 255]
}

/// One call through the safe context; whether it came out wrong.
fn op_on(ctx: &mut GlContext, op: Op, i: u64) -> bool {
    match op {
        Op::GetError => ctx.error().is_err(),
        Op::ClearRead => ctx.clear_and_read(colour(i)) != Ok(colour(i)),
    }
}

/// One call with raw entry points on whatever context is current here;
/// whether it came out wrong.
///
/// # Safety
/// Any thread may call it: without a current context GL's calls do
/// nothing. The caller makes sure no other thread uses the context current
/// here at the same time.
unsafe fn op_raw(egl: &Egl, op: Op, i: u64) -> bool {
    match op {
        // SAFETY: glGetError takes nothing.
        Op::GetError => (unsafe { (egl.gl_get_error)() }) != egl::GL_NO_ERROR,
        Op::ClearRead => {
            let want = colour(i);
            let [r, g, b, a] = want.map(|c| f32::from(c) / 255.0);
            let mut px = [0u8; 4];
            // SAFETY: plain GL calls; one RGBA8 pixel fits the buffer.
            unsafe {
                (egl.gl_clear_color)(r, g, b, a);
                (egl.gl_clear)(GL_COLOR_BUFFER_BIT);
                (egl.gl_read_pixels)(0, 0, 1, 1, GL_RGBA, GL_UNSIGNED_BYTE, px.as_mut_ptr().cast());
            }
            px != want
        }
    }
}

/// Warms a fresh worker up: the shared [`warm_up`], then until a run of
/// round trips stops getting faster (at most 100 ms more). On this 2-vCPU
/// machine, shared with other builds, a new owner and its caller can share
/// a core for far longer than the main table's 25 ms, and every hand-off
/// then waits for a time slice.
fn settle(w: &pinned_ffi::PinnedWorker<GlContext>, op: Op) {
    warm_up(|| drop(w.run(|ctx| op_on(ctx, op, 0))));
    let (mut best, settling) = (Duration::MAX, Instant::now());
    while settling.elapsed() < Duration::from_millis(100) {
        let t = Instant::now();
        for _ in 0..100 {
            drop(w.run(|ctx| op_on(ctx, op, 0)));
        }
        let took = t.elapsed();
        if took >= best {
            return;
        }
        best = took;
    }
}

/// Sets `way` up (untimed), warms it, and times `calls` calls.
fn measure(op: Op, way: Way, calls: u64) -> Measured {
    let measured = |elapsed, calls, wrong, contexts, os_threads| Measured {
        elapsed,
        calls,
        wrong: Some(wrong),
        contexts,
        os_threads,
    };
    match way {
        Way::Direct => thread::scope(|s| {
            s.spawn(|| {
                let mut ctx = GlContext::open().expect("GL context");
                warm_up(|| {
                    let _ = op_on(&mut ctx, op, 0);
                });
                let t = Instant::now();
                let wrong = (0..calls).filter(|&i| op_on(&mut ctx, op, i)).count() as u64;
                measured(t.elapsed(), calls, wrong, 1, 0)
            })
            .join()
            .expect("direct thread")
        }),
        Way::Pinned => {
            let w = egl::gl_worker().expect("GL worker");
            settle(&w, op);
            let t = Instant::now();
            let wrong = (0..calls)
                .filter(|&i| w.run(|ctx| op_on(ctx, op, i)).expect("run"))
                .count() as u64;
            measured(t.elapsed(), calls, wrong, 1, 1)
        }
        Way::Batched(k) => {
            let w = egl::gl_worker().expect("GL worker");
            settle(&w, op);
            let jobs = calls.div_ceil(k);
            let t = Instant::now();
            let wrong: u64 = (0..jobs)
                .map(|j| {
                    w.run(|ctx| (j * k..(j + 1) * k).filter(|&i| op_on(ctx, op, i)).count() as u64)
                        .expect("run")
                })
                .sum();
            measured(t.elapsed(), jobs * k, wrong, 1, 1)
        }
        Way::Rebind(callers) => rebind(op, callers, calls),
        Way::ContextPerCall => {
            // Held so the display is not terminated and re-initialised
            // around every call: the row is the context's cost alone.
            let _display = Display::open().expect("display");
            let t = Instant::now();
            let mut wrong = 0;
            for i in 0..calls {
                let mut ctx = GlContext::open().expect("GL context");
                wrong += u64::from(op_on(&mut ctx, op, i));
            }
            measured(t.elapsed(), calls, wrong, calls, 0)
        }
    }
}

/// The rebinding peer: one context, current nowhere between calls; each
/// of `callers` threads takes a lock, makes it current, calls, releases.
fn rebind(op: Op, callers: usize, calls: u64) -> Measured {
    let ctx = GlContext::open().expect("GL context");
    let (egl, raw) = (ctx.egl(), ctx.raw());
    // SAFETY: our context, current on this thread: released so that the
    // callers can take it in turn.
    let ok = unsafe {
        (egl.egl_make_current)(
            raw.display,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    } != 0;
    egl.egl_check("eglMakeCurrent", ok).expect("release the context");
    let lock = Mutex::new(());
    let per = calls.div_ceil(callers as u64);
    let start = Barrier::new(callers);
    let wrong = AtomicU64::new(0);
    let call = |i: u64| {
        let raw = &raw; // the whole (Sync) handle set, not its raw fields
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: under the lock the context is current on no other
        // thread; bound here, used, and released before unlocking.
        unsafe {
            let ok = (egl.egl_make_current)(raw.display, raw.surface, raw.surface, raw.context) != 0;
            egl.egl_check("eglMakeCurrent", ok).expect("bind the context");
            let bad = op_raw(egl, op, i);
            let ok = (egl.egl_make_current)(
                raw.display,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ) != 0;
            egl.egl_check("eglMakeCurrent", ok).expect("release the context");
            bad
        }
    };
    let spans: Vec<(Instant, Instant)> = thread::scope(|s| {
        let handles: Vec<_> = (0..callers as u64)
            .map(|c| {
                let (call, start, wrong) = (&call, &start, &wrong);
                s.spawn(move || {
                    let t = Instant::now();
                    while t.elapsed() < crate::strategies::WARM_UP / 2 {
                        call(0);
                    }
                    start.wait();
                    let t0 = Instant::now();
                    let bad = (c * per..(c + 1) * per).filter(|&i| call(i)).count() as u64;
                    // ORDERING: read after the scope joined the callers.
                    wrong.fetch_add(bad, Ordering::Relaxed);
                    (t0, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("caller")).collect()
    });
    let first = spans.iter().map(|s| s.0).min().expect("a caller");
    let last = spans.iter().map(|s| s.1).max().expect("a caller");
    drop(ctx); // current nowhere: destroyed at once
    Measured {
        elapsed: last - first,
        calls: per * callers as u64,
        // ORDERING: the callers were joined.
        wrong: Some(wrong.load(Ordering::Relaxed)),
        contexts: 1,
        os_threads: callers as u64,
    }
}

thread_local! {
    /// The raw way to async GL: a context per runtime thread, opened the
    /// first time a task draws there.
    static THREAD_CTX: RefCell<Option<GlContext>> = const { RefCell::new(None) };
}

/// The raw async case (see [`RawAsync`]): `tasks` tasks, `rounds` each,
/// awaiting `yield_now` and a short sleep by turns between clear and
/// readback.
pub fn raw_async(tasks: u64, rounds: u64) -> RawAsync {
    const SENTINEL: [u8; 4] = [0xAB, 0xCD, 0xEF, 0x12];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let tally = Arc::new(Mutex::new(RawAsync::default()));
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let tally = Arc::clone(&tally);
                tokio::spawn(async move {
                    for r in 0..rounds {
                        let want = colour(t * rounds + r);
                        let before = thread::current().id();
                        THREAD_CTX.with(|c| {
                            let mut c = c.borrow_mut();
                            let ctx = c.get_or_insert_with(|| GlContext::open().expect("thread context"));
                            ctx.clear(want).expect("clear");
                        });
                        if r % 2 == 0 {
                            tokio::task::yield_now().await;
                        } else {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                        let hopped = thread::current().id() != before;
                        let mut px = SENTINEL;
                        THREAD_CTX.with(|c| {
                            if let Some(ctx) = c.borrow().as_ref() {
                                let egl = ctx.egl();
                                // SAFETY: this thread's own current context
                                // (or none); one RGBA8 pixel fits the buffer.
                                unsafe {
                                    (egl.gl_read_pixels)(
                                        0,
                                        0,
                                        1,
                                        1,
                                        GL_RGBA,
                                        GL_UNSIGNED_BYTE,
                                        px.as_mut_ptr().cast(),
                                    )
                                };
                            }
                        });
                        let mut n = tally.lock().unwrap_or_else(|e| e.into_inner());
                        n.readbacks += 1;
                        n.hops += u64::from(hopped);
                        if px == SENTINEL {
                            n.failed += 1;
                        } else if px != want {
                            n.wrong += 1;
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
    });
    drop(rt); // runtime threads drop their contexts as they exit
    let n = *tally.lock().unwrap_or_else(|e| e.into_inner());
    n
}

impl RealSdks {
    /// The section as text, for after the main tables.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let g = match self {
            RealSdks::Skipped(why) => {
                let _ = writeln!(s, "\nReal SDK: EGL + OpenGL ES 2: skipped ({why})");
                return s;
            }
            RealSdks::Gl(g) => g,
        };
        let _ = writeln!(
            s,
            "\nReal SDK: EGL {}.{} + OpenGL ES 2 ({}, {}), surfaceless {}x{} pbuffer",
            g.egl_version.0,
            g.egl_version.1,
            g.vendor,
            g.renderer,
            egl::PBUFFER_SIZE,
            egl::PBUFFER_SIZE
        );
        write_rows(&mut s, "operation: strategy", 70, &g.rows);
        let a = g.raw_async;
        let _ = writeln!(
            s,
            "Raw async GL (tokio, 2 runtime threads, a context per thread; clear, await, read back):\n  \
             {} readbacks: {} wrong (another task's pixels), {} wrote nothing, {} awaits resumed on another thread",
            a.readbacks, a.wrong, a.failed, a.hops
        );
        s
    }
}
