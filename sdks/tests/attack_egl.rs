//! Attack tests for `pinned_ffi_sdks::egl` (reviewer h-rev14).
//!
//! Each body runs on a watchdog thread so a hang fails instead of stalling.

use std::collections::HashSet;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use pinned_ffi::{PinnedWorker, SpawnError};
use pinned_ffi_sdks::egl::{gl_pool, gl_worker, GlContext, GlError, Teardown, TeardownLog, Texture};
use pinned_ffi_sdks::skipped;

fn watchdog(name: &str, secs: u64, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let _ = tx.send(r);
        })
        .unwrap();
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e),
        Err(_) => panic!("{name}: hung for {secs}s"),
    }
}

fn worker_or_skip(test: &str) -> Option<PinnedWorker<GlContext>> {
    match gl_worker() {
        Ok(w) => Some(w),
        Err(SpawnError::Init(e)) if e.is_unavailable() => {
            skipped(test, &e.to_string());
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// A `Texture` is not tied to its context's lifetime, and `Texture::drop`
/// decides "my context is current" by comparing `EGLContext` addresses.
/// A safe job can bind a texture whose context it then drops (a scratch
/// context opened in the job); the next context opened on the owner gets
/// the freed address back, and dropping the stale handle then deletes the
/// *new* context's texture of the same name: the "hit a stranger" the
/// guide says `Texture::drop` avoids ("otherwise leaks rather than hit a
/// stranger"; "a stale name must never be reused in the new one").
#[test]
fn attack_stale_texture_deletes_a_strangers_texture() {
    watchdog("stale_texture", 120, || {
        let Some(w) = worker_or_skip("attack_stale_texture") else {
            return;
        };
        // Stale textures: each made in a scratch context A that the same
        // (safe) job then drops.
        let mut stale = Vec::new();
        for _ in 0..8 {
            let cell = Arc::new(Mutex::new(0usize));
            let c2 = Arc::clone(&cell);
            let t = w
                .try_bind(move |_| -> Result<Texture, GlError> {
                    let mut a = GlContext::open()?;
                    *c2.lock().unwrap() = a.raw().context as usize;
                    let t = Texture::create(&mut a, 4)?;
                    drop(a);
                    Ok(t)
                })
                .unwrap()
                .unwrap();
            let addr = *cell.lock().unwrap();
            stale.push((addr, t));
        }
        // Now open scratch contexts X (each with a texture of its own, kept
        // together on the owner, current there) until one lands on some
        // A's freed address; then drop that A's stale handle.
        for round in 0..64 {
            let pair = w
                .try_bind(|_| -> Result<(GlContext, Texture), GlError> {
                    let mut x = GlContext::open()?;
                    let t = Texture::create(&mut x, 4)?;
                    Ok((x, t))
                })
                .unwrap()
                .unwrap();
            let (x_addr, x_name) = w
                .with(&pair, |_, (x, t)| (x.raw().context as usize, t.name()))
                .unwrap();
            let Some(i) = stale.iter().position(|(a, _)| *a == x_addr) else {
                drop(pair);
                continue;
            };
            let (_, st) = stale.swap_remove(i);
            let stale_name = w.with(&st, |_, t| t.name()).unwrap();
            assert!(w.with(&pair, |_, (x, t)| x.is_texture(t.name())).unwrap());
            drop(st);
            let alive = w.with(&pair, |_, (x, t)| x.is_texture(t.name())).unwrap();
            eprintln!(
                "round {round}: X at dead A's address {x_addr:#x}; stale name {stale_name}, X's name {x_name}; X's texture alive after the stale drop: {alive}"
            );
            assert!(
                alive,
                "dropping a stale texture handle deleted another live context's texture {x_name}"
            );
            return;
        }
        eprintln!("no context address was reused in 64 tries: inconclusive");
    });
}

/// "Texture::drop deletes only when its own context is current (it is, on
/// the owner)": a job that opens a scratch context on the owner (safe API)
/// leaves no context current when the scratch one drops, so the next
/// handle dropped is not deleted (leaked until its context goes).
#[test]
fn attack_texture_dropped_after_a_scratch_context_is_not_deleted() {
    watchdog("scratch_ctx", 60, || {
        let Some(w) = worker_or_skip("attack_scratch") else {
            return;
        };
        let log: TeardownLog = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&log);
        w.run(move |ctx| ctx.set_teardown_log(l)).unwrap();
        let tex = w.try_bind(|ctx| Texture::create(ctx, 4)).unwrap().unwrap();
        let name = w.with(&tex, |_, t| t.name()).unwrap();
        // A job that uses a scratch context of its own and drops it.
        w.run(|_| {
            let mut scratch = GlContext::open().unwrap();
            scratch.clear_and_read([1, 2, 3, 4]).unwrap();
        })
        .unwrap();
        thread::spawn(move || drop(tex)).join().unwrap();
        // Let the release be processed, then check the texture.
        let still = w.run(move |ctx| ctx.is_texture(name)).unwrap();
        let entries = log.lock().unwrap().clone();
        eprintln!("log: {entries:?}, texture {name} still exists: {still}");
        let current = entries
            .iter()
            .find_map(|e| match e {
                Teardown::Texture { context_current, .. } => Some(*context_current),
                _ => None,
            })
            .expect("a texture entry");
        assert!(
            current && !still,
            "texture {name} dropped with its context not current: leaked"
        );
    });
}

/// Close order with the worker closed first, handles dropped after from
/// other threads: textures freed first, on the owner, context current.
#[test]
fn attack_close_then_drop_handles_order() {
    watchdog("close_order", 60, || {
        let Some(w) = worker_or_skip("attack_close_order") else {
            return;
        };
        let log: TeardownLog = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&log);
        let owner = w.run(move |ctx| {
            ctx.set_teardown_log(l);
            thread::current().id()
        });
        let owner = owner.unwrap();
        let texes: Vec<_> = (0..5)
            .map(|_| w.try_bind(|ctx| Texture::create(ctx, 2)).unwrap().unwrap())
            .collect();
        w.close().unwrap();
        for t in texes {
            thread::spawn(move || drop(t)).join().unwrap();
        }
        drop(w);
        let entries = log.lock().unwrap().clone();
        assert_eq!(entries.len(), 6, "{entries:?}");
        for e in &entries[..5] {
            match e {
                Teardown::Texture {
                    thread,
                    context_current,
                    was_texture,
                    ..
                } => assert!(*thread == owner && *context_current && *was_texture, "{e:?}"),
                other => panic!("texture expected first: {other:?}"),
            }
        }
        assert!(
            matches!(
                entries[5],
                Teardown::Context {
                    released: true,
                    surface_destroyed: true,
                    context_destroyed: true,
                    ..
                }
            ),
            "{:?}",
            entries[5]
        );
    });
}

/// Many std threads and tokio tasks on a pool of 2 contexts: every caller
/// reads its own colour back (clear + read in one job).
#[test]
fn attack_pool_mixed_callers_get_their_own_pixels() {
    watchdog("pool_mixed", 120, || {
        let pool = match gl_pool(2) {
            Ok(p) => Arc::new(p),
            Err(SpawnError::Init(e)) if e.is_unavailable() => {
                skipped("attack_pool_mixed", &e.to_string());
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let wrong = Arc::new(Mutex::new(Vec::new()));
        let mut hs = Vec::new();
        for t in 0..4u8 {
            let (pool, wrong) = (Arc::clone(&pool), Arc::clone(&wrong));
            hs.push(thread::spawn(move || {
                for i in 0..60u8 {
                    let want = [t, i, 0x40, 255];
                    let got = pool.run(move |ctx| ctx.clear_and_read(want)).unwrap().unwrap();
                    if got != want {
                        wrong.lock().unwrap().push((want, got));
                    }
                }
            }));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut js = Vec::new();
            for t in 0..16u8 {
                let (pool, wrong) = (Arc::clone(&pool), Arc::clone(&wrong));
                js.push(tokio::spawn(async move {
                    for i in 0..10u8 {
                        let want = [0x80 | t, i, 0x99, 255];
                        let got = pool
                            .worker(usize::from(t % 2))
                            .call(move |ctx| ctx.clear_and_read(want))
                            .await
                            .unwrap()
                            .unwrap();
                        if got != want {
                            wrong.lock().unwrap().push((want, got));
                        }
                        tokio::task::yield_now().await;
                    }
                }));
            }
            for j in js {
                j.await.unwrap();
            }
        });
        for h in hs {
            h.join().unwrap();
        }
        let tids: HashSet<_> = pool.owner_tids().into_iter().collect();
        assert_eq!(tids.len(), 2);
        assert!(wrong.lock().unwrap().is_empty(), "{:?}", wrong.lock().unwrap());
    });
}
