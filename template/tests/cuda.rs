//! The CUDA template, twice: against a stand-in driver compiled here (so
//! every machine runs the whole path), and against the real driver where
//! one exists (skipped with a message otherwise).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;

use pinned_ffi_template::cuda::{gpu_pool, DeviceBuffer, Driver, CUDA_ERROR_INVALID_CONTEXT};

fn fake_driver() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake-cuda");
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join("libcuda.so.1");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake_cuda.c");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-shared", "-fPIC", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o",
        ])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("a C compiler");
    assert!(status.success(), "compiling the stand-in driver failed");
    lib
}

/// The template's whole path: the 201 failure, the owner-bound buffer with
/// a verified copy, and the buffer freed on the owner thread.
fn exercise(driver: Arc<Driver>) {
    let (_version, count) = driver.init().expect("cuInit");
    assert!(count >= 1);
    let pool = gpu_pool(&driver, 1).expect("pool");

    let d = Arc::clone(&driver);
    let foreign = thread::spawn(move || d.mem_alloc(1024)).join().unwrap();
    let e = foreign.expect_err("a thread without the context must fail");
    assert_eq!(e.code, CUDA_ERROR_INVALID_CONTEXT);
    assert_eq!(e.name, "CUDA_ERROR_INVALID_CONTEXT");
    assert_eq!(e.to_string(), "CUDA_ERROR_INVALID_CONTEXT (201)");
    assert_eq!(
        pool.worker(0)
            .run(|g| g.driver().ctx_get_device())
            .unwrap()
            .unwrap(),
        0
    );

    let freed_on = Arc::new(Mutex::new(None));
    let owner = pool.worker(0).run(|_| thread::current().id()).unwrap();
    let probe = Arc::clone(&freed_on);
    let buf = pool
        .worker(0)
        .try_bind(move |g| DeviceBuffer::alloc(g, 4096, probe))
        .unwrap()
        .unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let mut back = vec![0u8; 4096];
    pool.worker(0)
        .with(&buf, |_, b| b.upload(&data))
        .unwrap()
        .unwrap();
    pool.worker(0)
        .with(&buf, |_, b| b.download(&mut back))
        .unwrap()
        .unwrap();
    assert_eq!(back, data);
    thread::spawn(move || drop(buf)).join().unwrap();
    pool.worker(0).run(|_| ()).unwrap(); // the release is processed in order
    assert_eq!(*freed_on.lock().unwrap(), Some(owner));
    pool.close().unwrap();
}

#[test]
fn the_template_runs_its_whole_path_on_a_stand_in_driver() {
    exercise(Arc::new(
        Driver::load_from(fake_driver()).expect("stand-in driver"),
    ));
}

#[test]
fn the_template_on_the_real_driver_or_a_visible_skip() {
    match Driver::load() {
        Err(e) => eprintln!("SKIPPED: no CUDA driver on this machine ({e})"),
        Ok(d) => match d.init() {
            Ok((_, n)) if n > 0 => exercise(Arc::new(d)),
            other => eprintln!("SKIPPED: CUDA driver present but no usable GPU ({other:?})"),
        },
    }
}
