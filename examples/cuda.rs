//! The template on a real thread-affine SDK: the CUDA driver API.
//!
//! `cargo run --release --example cuda`. Needs an NVIDIA driver at run
//! time, not to build: without one it says so and exits 0.
//!
//! It shows (1) the failure the single-owner pattern prevents: a thread
//! without the context gets `CUDA_ERROR_INVALID_CONTEXT`; (2) real work
//! through the owner: device buffers as owner-bound handles, a verified
//! host→device→host copy, the buffer freed on the owner thread when its
//! handle is dropped elsewhere; (3) the per-call cost of `cuCtxGetDevice`
//! four ways, and of a context per request.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use pinned_ffi_template::cuda::{gpu_pool, DeviceBuffer, Driver, CUDA_ERROR_INVALID_CONTEXT};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A context pointer moved between threads under a lock (the rebinding
/// wrappers' approach, measured for comparison).
struct Shared(*mut std::ffi::c_void);
// SAFETY: only used under the Mutex, pushed on the using thread and popped
// before unlocking, which is how the driver lets a context move.
unsafe impl Send for Shared {}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let driver = match Driver::load() {
        Ok(d) => Arc::new(d),
        Err(e) => {
            println!("SKIPPED: no CUDA driver on this machine ({e}); nothing to show");
            return Ok(());
        }
    };
    let (version, count) = match driver.init() {
        Ok(v) => v,
        Err(e) => {
            println!("SKIPPED: the CUDA driver loaded but cuInit failed: {e}");
            return Ok(());
        }
    };
    if count == 0 {
        println!("SKIPPED: CUDA driver {version} but no GPU");
        return Ok(());
    }
    let pool = gpu_pool(&driver, count as usize)?;
    let names: Vec<String> = pool
        .broadcast(|g| format!("{} (device {})", g.name, g.device))
        .into_iter()
        .collect::<Result<_, _>>()?;
    println!(
        "CUDA driver API {}.{}, {} GPU(s): {}",
        version / 1000,
        (version % 1000) / 10,
        count,
        names.join(", ")
    );

    // (1) The failure: a thread without the context.
    let foreign = {
        let d = Arc::clone(&driver);
        thread::spawn(move || d.mem_alloc(1 << 20))
            .join()
            .expect("thread")
    };
    match &foreign {
        Err(e) if e.code == CUDA_ERROR_INVALID_CONTEXT => {
            println!("foreign thread cuMemAlloc: {e}  <- the bug")
        }
        other => println!("foreign thread cuMemAlloc: unexpected {other:?}"),
    }
    let dev = pool.worker(0).run(|g| g.driver().ctx_get_device())??;
    println!("same call through the owner: cuCtxGetDevice = {dev}");

    // (2) Real work through the owner, with an owner-bound buffer.
    let n = 64 << 20;
    let freed_on = Arc::new(Mutex::new(None));
    let owner_thread = pool.worker(0).run(|_| thread::current().id())?;
    let probe = Arc::clone(&freed_on);
    let buf = pool
        .worker(0)
        .try_bind(move |g| DeviceBuffer::alloc(g, n, probe))??;
    let host: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
    let mut back = vec![0u8; n];
    let t = Instant::now();
    pool.worker(0).with(&buf, |_, b| b.upload(&host))??;
    pool.worker(0).with(&buf, |_, b| b.download(&mut back))??;
    let copy = t.elapsed();
    assert_eq!(host, back, "device round trip changed the bytes");
    println!(
        "{} MiB host->device->host through the owner: verified, {:.2} ms",
        n >> 20,
        copy.as_secs_f64() * 1e3
    );
    thread::spawn(move || drop(buf)).join().expect("thread"); // dropped elsewhere...
    pool.worker(0).run(|_| ())?; // ...and freed by the owner, in order
    let freed = *freed_on.lock().unwrap();
    println!(
        "buffer handle dropped on another thread, freed on the owner thread: {}",
        freed == Some(owner_thread)
    );

    // (3) Per-call cost of a cheap driver call, four ways, interleaved trials.
    const CALLS: usize = 200_000;
    const BATCH: usize = 256;
    let w = pool.worker(0);
    let ctx = Mutex::new(Shared(w.run(|g| g.raw() as usize)? as *mut std::ffi::c_void));
    let (mut direct, mut pinned, mut batched, mut rebind) = (vec![], vec![], vec![], vec![]);
    for _ in 0..5 {
        direct.push(w.run(|g| {
            let t = Instant::now();
            for _ in 0..CALLS {
                std::hint::black_box(g.driver().ctx_get_device().expect("call"));
            }
            t.elapsed().as_nanos() as f64 / CALLS as f64
        })?);
        let t = Instant::now();
        for _ in 0..CALLS / 10 {
            w.run(|g| g.driver().ctx_get_device())??;
        }
        pinned.push(t.elapsed().as_nanos() as f64 / (CALLS / 10) as f64);
        let t = Instant::now();
        for _ in 0..CALLS / BATCH {
            w.run(|g| {
                for _ in 0..BATCH {
                    std::hint::black_box(g.driver().ctx_get_device().expect("call"));
                }
            })?;
        }
        batched.push(t.elapsed().as_nanos() as f64 / (CALLS / BATCH * BATCH) as f64);
        // Rebind: 4 arbitrary threads, each call pushes the context, calls,
        // pops, under a lock (a context is current on one thread at a time).
        let per = CALLS / 10 / 4;
        let t = Instant::now();
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..per {
                        let g = ctx.lock().expect("lock");
                        let mut popped = std::ptr::null_mut();
                        // SAFETY: under the lock no other thread has it;
                        // pushed here, popped before unlocking.
                        unsafe {
                            driver.check((driver.cu_ctx_push_current)(g.0)).expect("push");
                            std::hint::black_box(driver.ctx_get_device().expect("call"));
                            driver
                                .check((driver.cu_ctx_pop_current)(&mut popped))
                                .expect("pop");
                        }
                    }
                });
            }
        });
        rebind.push(t.elapsed().as_nanos() as f64 / (per * 4) as f64);
    }
    let mut create = vec![];
    for _ in 0..5 {
        let d = Arc::clone(&driver);
        let t = Instant::now();
        thread::spawn(move || drop(pinned_ffi_template::cuda::Gpu::new(d, 0).expect("context")))
            .join()
            .expect("thread");
        create.push(t.elapsed().as_nanos() as f64);
    }
    let d = median(direct.clone());
    println!("\ncuCtxGetDevice, median of 5 trials (same run):");
    println!("  {:<48} {:>12} {:>8}", "strategy", "per call", "x direct");
    for (name, v) in [
        ("direct on the owner thread", median(direct)),
        ("pinned worker round trip, 1 call/job", median(pinned)),
        ("pinned worker, 256 calls/job", median(batched)),
        ("push+call+pop from 4 threads (rebind)", median(rebind)),
        ("context created+destroyed per request", median(create)),
    ] {
        let shown = if v >= 1e6 {
            format!("{:.1} ms", v / 1e6)
        } else {
            format!("{v:.1} ns")
        };
        println!("  {name:<48} {shown:>12} {:>8.1}", v / d);
    }
    pool.close().unwrap();
    Ok(())
}
