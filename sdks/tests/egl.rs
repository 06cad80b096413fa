//! EGL + OpenGL ES 2 on Mesa (surfaceless, llvmpipe): the raw failures
//! observed, and the pinned owner that removes them.
//!
//! Every test opens the real libraries; where they or a surfaceless display
//! are missing it prints `SKIPPED: ...` and returns.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use pinned_ffi::{Error, PanicPolicy, PinnedWorker, Pool, SpawnError};
use pinned_ffi_sdks::egl::{
    gl_pool, gl_worker, GlContext, GlError, GlTexture, Teardown, TeardownLog, Texture, EGL_BAD_ACCESS,
    GL_COLOR_BUFFER_BIT, GL_NO_ERROR, GL_RENDERER, GL_RGBA, GL_UNSIGNED_BYTE,
};
use pinned_ffi_sdks::skipped;

/// What a readback that wrote nothing leaves in the buffer.
const SENTINEL: [u8; 4] = [0xAB, 0xCD, 0xEF, 0x12];

fn open_or_skip(test: &str) -> Option<GlContext> {
    match GlContext::open() {
        Ok(ctx) => Some(ctx),
        Err(e) if e.is_unavailable() => {
            skipped(test, &e.to_string());
            None
        }
        Err(e) => panic!("GlContext::open: {e}"),
    }
}

fn spawned_or_skip<T>(test: &str, r: Result<T, SpawnError<GlError>>) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(SpawnError::Init(e)) if e.is_unavailable() => {
            skipped(test, &e.to_string());
            None
        }
        Err(e) => panic!("spawning the GL owner: {e}"),
    }
}

/// A colour no other (caller, call) pair uses.
fn colour(caller: u64, call: u64) -> [u8; 4] {
    let n = caller * 1_000 + call;
    [
        (n & 0xFF) as u8,
        ((n >> 8) & 0xFF) as u8,
        ((n >> 16) & 0xFF) as u8,
        255,
    ]
}

#[test]
fn raw_calls_on_another_thread_reach_no_context() {
    let Some(mut ctx) = open_or_skip("raw_calls_on_another_thread_reach_no_context") else {
        return;
    };
    let a = thread::current().id();
    assert!(!ctx.renderer().expect("renderer on A").is_empty());
    assert_eq!(
        ctx.clear_and_read([10, 20, 30, 255]).expect("clear on A"),
        [10, 20, 30, 255]
    );
    let (egl, raw) = (ctx.egl(), ctx.raw());

    let on_b = thread::spawn(move || {
        let raw = raw; // the whole (Send) handle set, not its raw fields
        let b = thread::current().id();
        // SAFETY: all of these are valid calls on any thread; without a
        // current context GL's dispatch makes them no-ops (that is what is
        // observed), and the readback targets a 4-byte buffer.
        unsafe {
            let renderer = (egl.gl_get_string)(GL_RENDERER);
            // An invalid bit: GL_INVALID_VALUE in a context, nothing here.
            (egl.gl_clear)(!0);
            let error = (egl.gl_get_error)();
            (egl.gl_clear_color)(1.0, 0.0, 0.0, 1.0);
            (egl.gl_clear)(GL_COLOR_BUFFER_BIT);
            let mut px = SENTINEL;
            (egl.gl_read_pixels)(0, 0, 1, 1, GL_RGBA, GL_UNSIGNED_BYTE, px.as_mut_ptr().cast());
            let current_before = egl.current_context();
            let made = (egl.egl_make_current)(raw.display, raw.surface, raw.surface, raw.context);
            let code = (egl.egl_get_error)();
            (
                b,
                renderer.is_null(),
                error,
                px,
                current_before.is_null(),
                made,
                code,
            )
        }
    });
    let (b, renderer_null, error, px, had_none, made, code) = on_b.join().expect("thread B");

    assert_ne!(a, b, "the calls must have run on another thread");
    assert!(had_none, "B has no current context");
    assert!(renderer_null, "glGetString(GL_RENDERER) on B returns NULL");
    assert_eq!(error, GL_NO_ERROR, "glGetError on B reports nothing");
    assert_eq!(px, SENTINEL, "glReadPixels on B wrote nothing");
    assert_eq!(made, 0, "eglMakeCurrent of A's context on B fails");
    assert_eq!(
        code, EGL_BAD_ACCESS,
        "with EGL_BAD_ACCESS (0x3002), got 0x{code:04X}"
    );
    // Nothing B did reached A's context: A's colour and error state stand.
    assert_eq!(ctx.read_pixel().expect("read on A"), [10, 20, 30, 255]);
    assert_eq!(ctx.error(), Ok(()));
}

#[test]
fn gl_errors_are_read_on_the_owner_and_cleared() {
    let Some(w) = spawned_or_skip("gl_errors_are_read_on_the_owner_and_cleared", gl_worker()) else {
        return;
    };
    let err = w
        .run(|ctx| {
            // SAFETY: glClear with invalid bits is a defined GL error.
            unsafe { (ctx.egl().gl_clear)(!0) };
            ctx.check("glClear")
        })
        .expect("run");
    assert!(
        matches!(&err, Err(GlError::Gl { call: "glClear", codes }) if codes == &[0x0501]),
        "{err:?}"
    );
    // Cleared: the next job sees no stale error.
    assert_eq!(w.run(|ctx| ctx.error()).expect("run"), Ok(()));
}

thread_local! {
    /// The raw way to async GL: each runtime thread opens a context of its
    /// own the first time a task draws there, current for the thread's life.
    static THREAD_CTX: RefCell<Option<GlContext>> = const { RefCell::new(None) };
}

#[derive(Debug, Default)]
struct AsyncTally {
    readbacks: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
    hops: AtomicU64,
}

/// Tasks that clear to their own colour, await, and read back with raw
/// calls on whichever thread they resume on.
fn raw_async_round(tasks: u64, rounds: u64) -> Arc<AsyncTally> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let tally = Arc::new(AsyncTally::default());
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let tally = Arc::clone(&tally);
                tokio::spawn(async move {
                    for r in 0..rounds {
                        let want = colour(t, r);
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
                        let after = thread::current().id();
                        let mut px = SENTINEL;
                        THREAD_CTX.with(|c| {
                            if let Some(ctx) = c.borrow().as_ref() {
                                let egl = ctx.egl();
                                // SAFETY: this thread's own current context
                                // (or none); a 4-byte buffer for one pixel.
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
                        // ORDERING: counters read after the runtime joined
                        // every task.
                        tally.readbacks.fetch_add(1, Ordering::Relaxed);
                        if before != after {
                            tally.hops.fetch_add(1, Ordering::Relaxed);
                        }
                        if px == SENTINEL {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                        } else if px != want {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
    });
    drop(rt); // the runtime threads drop their contexts on their way out
    tally
}

#[test]
fn raw_async_tasks_read_other_tasks_pixels() {
    let Some(probe) = open_or_skip("raw_async_tasks_read_other_tasks_pixels") else {
        return;
    };
    drop(probe);
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let t = raw_async_round(32, 20);
        // ORDERING: the runtime and its tasks are done.
        let (n, wrong, failed, hops) = (
            t.readbacks.load(Ordering::Relaxed),
            t.wrong.load(Ordering::Relaxed),
            t.failed.load(Ordering::Relaxed),
            t.hops.load(Ordering::Relaxed),
        );
        println!("attempt {attempt}: {n} readbacks, {wrong} wrong, {failed} wrote nothing, {hops} hops");
        assert_eq!(n, 32 * 20);
        if hops == 0 {
            continue;
        }
        assert!(
            wrong + failed > 0,
            "{hops} hops between threads, yet every readback was right"
        );
        return;
    }
    panic!("no task resumed on another runtime thread in {ATTEMPTS} attempts of 640 awaits: the hop was never observed");
}

/// Mixed callers on one dispatch: `threads` std threads calling `run` and
/// `tasks` tokio tasks awaiting `call`, each job a clear + readback of the
/// caller's own colour. Returns (jobs, wrong pixels, owner tids seen).
fn pinned_mixed<D>(dispatch: Arc<D>) -> (u64, u64, HashSet<u64>)
where
    D: Dispatch + Send + Sync + 'static,
{
    const THREADS: u64 = 4;
    const TASKS: u64 = 16;
    const CALLS: u64 = 40;
    let wrong = Arc::new(AtomicU64::new(0));
    let tids = Arc::new(Mutex::new(HashSet::new()));
    let mut jobs = 0;
    thread::scope(|s| {
        for c in 0..THREADS {
            let (d, wrong, tids) = (Arc::clone(&dispatch), Arc::clone(&wrong), Arc::clone(&tids));
            s.spawn(move || {
                for i in 0..CALLS {
                    let want = colour(c, i);
                    let (got, tid) = d.run_clear(want);
                    tids.lock().unwrap().insert(tid);
                    if got.expect("clear and read") != want {
                        // ORDERING: read after the scope joined.
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let handles: Vec<_> = (0..TASKS)
                .map(|t| {
                    let (d, wrong, tids) = (Arc::clone(&dispatch), Arc::clone(&wrong), Arc::clone(&tids));
                    tokio::spawn(async move {
                        for i in 0..CALLS {
                            let want = colour(THREADS + t, i);
                            let (got, tid) = d.call_clear(want).await;
                            tids.lock().unwrap().insert(tid);
                            if got.expect("clear and read") != want {
                                // ORDERING: read after every task joined.
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.expect("task");
            }
        });
        jobs += (THREADS + TASKS) * CALLS;
    });
    // ORDERING: every caller was joined above.
    let wrong = wrong.load(Ordering::Relaxed);
    let tids = Arc::try_unwrap(tids).expect("callers done").into_inner().unwrap();
    (jobs, wrong, tids)
}

type Cleared = (Result<[u8; 4], GlError>, u64);

fn clear_job(ctx: &mut GlContext, want: [u8; 4]) -> Cleared {
    (ctx.clear_and_read(want), pinned_ffi::threads::current_tid())
}

/// A clear + readback job, blocking and awaited, for a worker and a pool.
trait Dispatch {
    fn run_clear(&self, want: [u8; 4]) -> Cleared;
    fn call_clear(&self, want: [u8; 4]) -> impl std::future::Future<Output = Cleared> + Send;
}

impl Dispatch for PinnedWorker<GlContext> {
    fn run_clear(&self, want: [u8; 4]) -> Cleared {
        self.run(|ctx| clear_job(ctx, want)).expect("run")
    }

    async fn call_clear(&self, want: [u8; 4]) -> Cleared {
        self.call(move |ctx| clear_job(ctx, want)).await.expect("call")
    }
}

impl Dispatch for Pool<GlContext> {
    fn run_clear(&self, want: [u8; 4]) -> Cleared {
        self.run(|ctx| clear_job(ctx, want)).expect("run")
    }

    async fn call_clear(&self, want: [u8; 4]) -> Cleared {
        self.call(move |ctx| clear_job(ctx, want)).await.expect("call")
    }
}

#[test]
fn pinned_worker_gives_every_caller_its_own_pixels() {
    let Some(w) = spawned_or_skip("pinned_worker_gives_every_caller_its_own_pixels", gl_worker()) else {
        return;
    };
    let owner = w.owner_tid();
    let (jobs, wrong, tids) = pinned_mixed(Arc::new(w));
    assert_eq!(jobs, 20 * 40);
    assert_eq!(wrong, 0, "wrong pixels through one pinned worker");
    assert_eq!(tids, HashSet::from([owner]), "every job ran on the owner");
}

#[test]
fn pinned_pool_keeps_two_contexts_apart() {
    let Some(pool) = spawned_or_skip("pinned_pool_keeps_two_contexts_apart", gl_pool(2)) else {
        return;
    };
    let pool = Arc::new(pool);
    let owners: HashSet<u64> = pool.owner_tids().into_iter().collect();
    assert_eq!(owners.len(), 2);
    let (jobs, wrong, tids) = pinned_mixed(Arc::clone(&pool));
    assert_eq!(jobs, 20 * 40);
    assert_eq!(wrong, 0, "wrong pixels through the pool");
    assert!(
        tids.is_subset(&owners),
        "every job ran on an owner: {tids:?} vs {owners:?}"
    );

    // Each context keeps its own state across jobs and callers: clear each
    // once, then read them from many threads and tasks without clearing.
    let per_worker = [[200, 0, 0, 255], [0, 0, 200, 255]];
    for (i, c) in per_worker.iter().enumerate() {
        pool.to(i).run(|ctx| ctx.clear(*c)).expect("run").expect("clear");
    }
    thread::scope(|s| {
        for t in 0..4 {
            let pool = &pool;
            s.spawn(move || {
                for k in 0..50 {
                    let i = (t + k) % 2;
                    let px = pool
                        .to(i)
                        .run(|ctx| ctx.read_pixel())
                        .expect("run")
                        .expect("read");
                    assert_eq!(px, per_worker[i], "worker {i}'s context");
                }
            });
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    for k in 0..25 {
                        let i = (t + k) % 2;
                        let px = pool
                            .to(i)
                            .call(|ctx| ctx.read_pixel())
                            .await
                            .expect("call")
                            .expect("read");
                        assert_eq!(px, per_worker[i], "worker {i}'s context");
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
    });
}

#[test]
fn bound_texture_dropped_elsewhere_is_deleted_on_the_owner() {
    let Some(w) = spawned_or_skip(
        "bound_texture_dropped_elsewhere_is_deleted_on_the_owner",
        gl_worker(),
    ) else {
        return;
    };
    let log = TeardownLog::default();
    let l = Arc::clone(&log);
    w.run(move |ctx| ctx.set_teardown_log(l)).expect("run");
    let owner = w.run(|_| thread::current().id()).expect("run");
    let tex: GlTexture = w
        .try_bind(|ctx| Texture::create(ctx, 4))
        .expect("bind")
        .expect("texture");
    let name = w.with(&tex, |_, t| t.name()).expect("with");
    assert!(w.run(move |ctx| ctx.is_texture(name)).expect("run"));

    let dropper = thread::spawn(move || {
        drop(tex);
        thread::current().id()
    })
    .join()
    .expect("dropping thread");
    assert_ne!(dropper, owner);
    // Freed before the next job, in its own context.
    assert!(!w.run(move |ctx| ctx.is_texture(name)).expect("run"));
    assert_eq!(
        *log.lock().unwrap(),
        vec![Teardown::Texture {
            name,
            thread: owner,
            context_alive: true,
            context_current: true,
            was_texture: true,
        }]
    );
}

#[test]
fn shutdown_frees_textures_then_releases_and_destroys_the_context() {
    let Some(w) = spawned_or_skip(
        "shutdown_frees_textures_then_releases_and_destroys_the_context",
        gl_worker(),
    ) else {
        return;
    };
    let log = TeardownLog::default();
    let l = Arc::clone(&log);
    w.run(move |ctx| ctx.set_teardown_log(l)).expect("run");
    let owner = w.run(|_| thread::current().id()).expect("run");
    let texes: Vec<GlTexture> = (0..3)
        .map(|_| {
            w.try_bind(|ctx| Texture::create(ctx, 4))
                .expect("bind")
                .expect("texture")
        })
        .collect();
    let names: Vec<u32> = texes
        .iter()
        .map(|t| w.with(t, |_, t| t.name()).expect("with"))
        .collect();
    w.close().expect("close");
    let steps = log.lock().unwrap().clone();
    assert_eq!(steps.len(), 4, "{steps:?}");
    let mut freed: Vec<u32> = steps[..3]
        .iter()
        .map(|s| match s {
            Teardown::Texture {
                name,
                thread,
                context_alive: true,
                context_current: true,
                was_texture: true,
            } if *thread == owner => *name,
            other => panic!("a texture deleted on the owner with its context current first: {other:?}"),
        })
        .collect();
    freed.sort_unstable();
    let mut want = names.clone();
    want.sort_unstable();
    assert_eq!(freed, want);
    assert!(
        matches!(
            steps[3],
            Teardown::Context {
                thread,
                released: true,
                surface_destroyed: true,
                context_destroyed: true,
                ..
            } if thread == owner
        ),
        "then the context, released and destroyed on the owner: {:?}",
        steps[3]
    );
    // The handles outlive the worker: using one is an error, dropping is fine.
    assert!(w.with(&texes[0], |_, t| t.name()).is_err());
    drop(texes);
}

#[test]
fn reinit_gives_a_fresh_context_and_stales_old_textures() {
    let spawned = PinnedWorker::builder()
        .name("gl")
        .panic_policy(PanicPolicy::Reinit)
        .spawn(GlContext::open);
    let Some(w) = spawned_or_skip("reinit_gives_a_fresh_context_and_stales_old_textures", spawned) else {
        return;
    };
    let log = TeardownLog::default();
    let l = Arc::clone(&log);
    w.run(move |ctx| ctx.set_teardown_log(l)).expect("run");
    let first_owner = w.owner_tid();
    let tex = w
        .try_bind(|ctx| Texture::create(ctx, 4))
        .expect("bind")
        .expect("texture");
    let r = w.run(|ctx| {
        ctx.clear([1, 2, 3, 255]).expect("clear");
        panic!("a job panics");
    });
    assert!(matches!(r, Err(Error::Panicked(_))), "{r:?}");
    // A fresh context on a fresh owner thread, without the old state.
    assert!(!w
        .run(|ctx| ctx.renderer())
        .expect("run")
        .expect("renderer")
        .is_empty());
    assert_ne!(
        w.run(|_| pinned_ffi::threads::current_tid()).expect("run"),
        first_owner
    );
    assert_eq!(
        w.run(|ctx| ctx.clear_and_read([9, 8, 7, 255])).expect("run"),
        Ok([9, 8, 7, 255])
    );
    assert!(matches!(w.with(&tex, |_, t| t.name()), Err(Error::StaleHandle)));
    // The old texture went before the old context, both on the old owner.
    let steps = log.lock().unwrap().clone();
    assert!(
        matches!(
            steps.as_slice(),
            [
                Teardown::Texture {
                    context_current: true,
                    was_texture: true,
                    ..
                },
                Teardown::Context {
                    released: true,
                    context_destroyed: true,
                    ..
                },
            ]
        ),
        "{steps:?}"
    );
}

#[test]
fn two_contexts_on_one_thread_each_keep_their_pixels() {
    let Some(mut a) = open_or_skip("two_contexts_on_one_thread_each_keep_their_pixels") else {
        return;
    };
    let mut b = GlContext::open().expect("second context");
    // b was made current last; a's calls make a current again, and back.
    assert_eq!(a.clear_and_read([255, 0, 0, 255]), Ok([255, 0, 0, 255]));
    assert_eq!(b.clear_and_read([0, 0, 255, 255]), Ok([0, 0, 255, 255]));
    assert_eq!(a.read_pixel(), Ok([255, 0, 0, 255]));
    assert_eq!(b.read_pixel(), Ok([0, 0, 255, 255]));
    drop(b);
    assert_eq!(a.read_pixel(), Ok([255, 0, 0, 255]));
}
