//! OpenSSL 3's per-thread error queue: read on the wrong thread (raw, and
//! from async tasks that hop), then through the owner thread, where every
//! caller gets exactly its own outcome. Skipped where `libcrypto.so.3`
//! cannot be opened.

use std::collections::HashSet;
use std::ffi::c_ulong;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use pinned_ffi::{PanicPolicy, PinnedWorker};
use pinned_ffi_sdks::openssl::{self, Crypto, Libcrypto, SslError};
use pinned_ffi_sdks::skipped;

/// A self-signed P-256 certificate, `/CN=pinned`, valid until 2126.
const CERT: &[u8] = b"-----BEGIN CERTIFICATE-----
MIIBeDCCAR+gAwIBAgIUJCWYDQq5yD4pZsJhjikGww0vyfcwCgYIKoZIzj0EAwIw
ETEPMA0GA1UEAwwGcGlubmVkMCAXDTI2MTIwMjE1MDkwMloYDzIxMjYxMTA4MTUw
OTAyWjARMQ8wDQYDVQQDDAZwaW5uZWQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAQNd/ZIXFDGnCsnY/mcyA4pUr52l4GRHKlcLxHrP7b1OeWASd8hyjU2AmPLpbeB
GV50U8ZoIvBKkopGjSJyek48o1MwUTAdBgNVHQ4EFgQUKWC6zvF8ybOVYOaaPWOe
KGn4nGMwHwYDVR0jBBgwFoAUKWC6zvF8ybOVYOaaPWOeKGn4nGMwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiAJOlNSXk0bw6JaU3yLFrzLtFGYUPbP
LDkgPEuKaRansQIgcPMSdVuK9B8pjXtUcmJEEv8Rp4Hq4j0tdoOINYKC4H4=
-----END CERTIFICATE-----
";

/// The certificate's private key (PKCS#8, unencrypted).
const KEY: &[u8] = b"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVhd94KwEqJMRRh1X
i7mAEZCPcgKbmOCy/zbuY5b3pKChRANCAAQNd/ZIXFDGnCsnY/mcyA4pUr52l4GR
HKlcLxHrP7b1OeWASd8hyjU2AmPLpbeBGV50U8ZoIvBKkopGjSJyek48
-----END PRIVATE KEY-----
";

/// Not PEM at all: `no start line`.
const JUNK: &[u8] = b"this is not a certificate\n";

/// A PEM frame around bytes that are not a certificate: an error of
/// another library than PEM's.
const BAD_BODY: &[u8] = b"-----BEGIN CERTIFICATE-----
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
-----END CERTIFICATE-----
";

/// The workload's inputs, by kind: every caller knows which outcome is its own.
const INPUTS: [&[u8]; 3] = [CERT, JUNK, BAD_BODY];

fn lib(test: &str) -> Option<Arc<Libcrypto>> {
    match Libcrypto::load() {
        Ok(lib) => Some(Arc::new(lib)),
        // Only a library that cannot be opened is a skip; one that opens
        // but lacks an entry point is a failure.
        Err(e) if e.is_unavailable() => {
            skipped(test, &e.to_string());
            None
        }
        Err(e) => panic!("Libcrypto::load: {e}"),
    }
}

/// What each kind's parse gives alone, on a fresh thread: the outcome
/// every caller must get.
fn reference(lib: &Arc<Libcrypto>) -> Vec<Result<String, SslError>> {
    let w = openssl::worker(lib).unwrap();
    let out: Vec<_> = INPUTS
        .iter()
        .map(|pem| w.run(|c| c.cert_subject(pem)).unwrap())
        .collect();
    assert_eq!(out[0].as_deref(), Ok("/CN=pinned"));
    for (kind, o) in out.iter().enumerate().skip(1) {
        let e = o.as_ref().expect_err("junk must not parse");
        assert!(!e.codes().is_empty(), "kind {kind} queued no error");
    }
    assert_ne!(out[1], out[2], "the two failures must be told apart");
    out
}

/// The first code each kind leaves on a clean queue (0: none).
fn first_codes(reference: &[Result<String, SslError>]) -> Vec<c_ulong> {
    reference
        .iter()
        .map(|o| o.as_ref().err().map_or(0, |e| e.codes()[0]))
        .collect()
}

#[test]
fn a_raw_error_queued_on_one_thread_is_absent_on_another() {
    let Some(lib) = lib("a_raw_error_queued_on_one_thread_is_absent_on_another") else {
        return;
    };
    let (a_tx, a_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let lib_a = Arc::clone(&lib);
    let thread_a = thread::spawn(move || {
        lib_a.clear_error();
        assert!(lib_a.raw_parse_cert(JUNK).is_none());
        a_tx.send((thread::current().id(), lib_a.peek_error())).unwrap();
        go_rx.recv().unwrap(); // B reads while A's error is still queued
        let mine = lib_a.drain();
        (mine.codes(), mine.0[0].reason.clone())
    });
    let (a_id, a_peek) = a_rx.recv().unwrap();
    let lib_b = Arc::clone(&lib);
    let (b_id, b_read) = thread::spawn(move || (thread::current().id(), lib_b.get_error()))
        .join()
        .unwrap();
    go_tx.send(()).unwrap();
    let (a_codes, a_reason) = thread_a.join().unwrap();

    assert_ne!(a_id, b_id, "the two reads must be on different threads");
    assert_ne!(a_peek, 0, "thread A sees its error");
    assert_eq!(b_read, 0, "thread B must not see thread A's error");
    assert_eq!(a_codes[0], a_peek, "A still has its error after B read");
    assert_eq!(a_reason.as_deref(), Some("no start line"));
    println!("raw: A {a_id:?} peeked {a_peek:#x}; B {b_id:?} read {b_read}");
}

/// One raw async task: clear, parse, await, then read the queue, as code
/// that keeps "the last error" across an `.await` does.
/// Returns whether it hopped, and whether it lost its own error (read 0
/// after a failure) and whether it read a foreign one (an error after a
/// success, or another kind's).
async fn raw_task(lib: Arc<Libcrypto>, i: usize, expected: Vec<c_ulong>) -> (bool, bool, bool) {
    let kind = i % INPUTS.len();
    let before = thread::current().id();
    lib.clear_error();
    let _ = lib.raw_parse_cert(INPUTS[kind]);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1 + (i % 3) as u64)).await;
    let read = lib.get_error();
    lib.clear_error();
    let hopped = thread::current().id() != before;
    let lost = expected[kind] != 0 && read == 0;
    let foreign = read != 0 && read != expected[kind];
    (hopped, lost, foreign)
}

#[test]
fn b_raw_async_tasks_lose_their_errors_and_read_each_others() {
    let Some(lib) = lib("b_raw_async_tasks_lose_their_errors_and_read_each_others") else {
        return;
    };
    let expected = first_codes(&reference(&lib));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    const TASKS: usize = 300;
    let (mut hops, mut lost, mut foreign, mut wrong, mut wrong_hopped) = (0, 0, 0, 0, 0);
    let mut rounds = 0;
    // Hops are the scheduler's choice: run rounds until some happened
    // (nearly always the first), and fail clearly if none ever does.
    while rounds < 10 && (hops == 0 || wrong == 0) {
        rounds += 1;
        let results = rt.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|i| tokio::spawn(raw_task(Arc::clone(&lib), i, expected.clone())))
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        for (hopped, l, f) in results {
            let bad = l || f;
            hops += usize::from(hopped);
            lost += usize::from(l);
            foreign += usize::from(f);
            wrong += usize::from(bad);
            wrong_hopped += usize::from(hopped && bad);
        }
    }
    println!(
        "raw async: {} tasks in {rounds} round(s): {hops} hopped threads, {wrong} wrong: {lost} lost \
         their error, {foreign} read one not theirs ({wrong_hopped} of the wrong after a hop)",
        TASKS * rounds
    );
    assert!(
        hops > 0,
        "no task changed threads in {rounds} rounds: the hazard was not exercised"
    );
    assert!(wrong > 0, "{hops} tasks hopped yet none read a wrong error");
}

/// The workload through owners: `n` tokio tasks (`call(..).await`, with
/// awaits before and after) and 4 std threads (`run`), each checking its
/// own outcome against the reference. Returns the wrong count.
fn pinned_workload(
    run: impl Fn(usize) -> Result<String, SslError> + Send + Sync,
    call: impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, SslError>> + Send>>,
    reference: &[Result<String, SslError>],
) -> (usize, usize) {
    const TASKS: usize = 300;
    const THREADS: usize = 4;
    const PER_THREAD: usize = 75;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    let futures: Vec<_> = (0..TASKS).map(&call).collect();
    thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let run = &run;
                s.spawn(move || {
                    (0..PER_THREAD)
                        .filter(|j| {
                            let i = t * PER_THREAD + j;
                            run(i) != reference[i % INPUTS.len()]
                        })
                        .count()
                })
            })
            .collect();
        let async_wrong = rt.block_on(async {
            let tasks: Vec<_> = futures
                .into_iter()
                .enumerate()
                .map(|(i, f)| {
                    tokio::spawn(async move {
                        tokio::task::yield_now().await;
                        let out = f.await;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        (i, out)
                    })
                })
                .collect();
            let mut wrong = 0;
            for t in tasks {
                let (i, out) = t.await.unwrap();
                wrong += usize::from(out != reference[i % INPUTS.len()]);
            }
            wrong
        });
        let thread_wrong: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        (async_wrong + thread_wrong, TASKS + THREADS * PER_THREAD)
    })
}

#[test]
fn c_through_a_worker_and_a_pool_every_caller_gets_exactly_its_own_outcome() {
    let Some(lib) = lib("c_through_a_worker_and_a_pool_every_caller_gets_exactly_its_own_outcome") else {
        return;
    };
    let reference = reference(&lib);

    let worker = Arc::new(openssl::worker(&lib).unwrap());
    let w = Arc::clone(&worker);
    let (wrong, callers) = pinned_workload(
        |i| worker.run(|c| c.cert_subject(INPUTS[i % INPUTS.len()])).unwrap(),
        move |i| {
            let w = Arc::clone(&w);
            Box::pin(async move {
                w.call(move |c| c.cert_subject(INPUTS[i % INPUTS.len()]))
                    .await
                    .unwrap()
            })
        },
        &reference,
    );
    println!("worker: {callers} callers, {wrong} wrong");
    assert_eq!(wrong, 0, "through one worker");

    let pool = Arc::new(openssl::pool(&lib, 2).unwrap());
    let p = Arc::clone(&pool);
    let (wrong, callers) = pinned_workload(
        |i| pool.run(|c| c.cert_subject(INPUTS[i % INPUTS.len()])).unwrap(),
        move |i| {
            let p = Arc::clone(&p);
            Box::pin(async move {
                p.call(move |c| c.cert_subject(INPUTS[i % INPUTS.len()]))
                    .await
                    .unwrap()
            })
        },
        &reference,
    );
    println!("pool of 2: {callers} callers, {wrong} wrong");
    assert_eq!(wrong, 0, "through a pool of 2");
    // Both owners did work, and both queues are empty after it.
    let owners: HashSet<_> = pool
        .broadcast(|c| c.owner())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(owners.len(), 2);
    assert!(pool
        .broadcast(|c| c.lib().peek_error())
        .into_iter()
        .all(|e| e.unwrap() == 0));
}

#[test]
fn d_bound_certs_and_keys_dropped_elsewhere_are_freed_on_the_owner() {
    let Some(lib) = lib("d_bound_certs_and_keys_dropped_elsewhere_are_freed_on_the_owner") else {
        return;
    };
    let worker = openssl::worker(&lib).unwrap();
    let frees = worker.run(|c| c.frees()).unwrap();
    let certs: Vec<_> = (0..8)
        .map(|_| openssl::bind_cert(&worker, CERT).unwrap().unwrap())
        .collect();
    let keys: Vec<_> = (0..5)
        .map(|_| openssl::bind_key(&worker, KEY).unwrap().unwrap())
        .collect();
    assert_eq!(worker.with(&certs[3], |_, c| c.subject()).unwrap(), "/CN=pinned");
    assert_eq!(worker.with(&keys[0], |_, k| k.bits()).unwrap(), 256);
    let junk = openssl::bind_cert(&worker, JUNK).unwrap();
    assert!(matches!(junk, Err(SslError::Ssl(_))), "{junk:?}");
    assert_eq!((frees.certs(), frees.keys()), (0, 0));

    // Handles are Send: drop them on other threads.
    thread::spawn(move || drop(certs)).join().unwrap();
    thread::scope(|s| {
        for k in keys {
            s.spawn(move || drop(k));
        }
    });
    worker.run(|_| ()).unwrap(); // releases are processed before the next job
    assert_eq!(frees.certs(), 8, "X509_free ran once per certificate");
    assert_eq!(frees.keys(), 5, "EVP_PKEY_free ran once per key");
    assert_eq!(frees.off_owner(), 0, "every free ran on the owner thread");
}

#[test]
fn e_keep_leaves_a_raw_error_queued_on_the_owner_reinit_starts_empty() {
    let Some(lib) = lib("e_keep_leaves_a_raw_error_queued_on_the_owner_reinit_starts_empty") else {
        return;
    };
    let want = openssl::worker(&lib)
        .unwrap()
        .run(|c| c.parse_cert(JUNK).map(|_| ()))
        .unwrap()
        .unwrap_err();
    for policy in [PanicPolicy::Keep, PanicPolicy::Reinit] {
        let l = Arc::clone(&lib);
        let w = PinnedWorker::builder()
            .panic_policy(policy)
            .spawn(move || Ok::<_, std::convert::Infallible>(Crypto::open(Arc::clone(&l))))
            .unwrap();
        // A raw job fails a parse and panics before it drains the queue.
        let r = w.run(|c: &mut Crypto| {
            let _ = c.lib().raw_parse_cert(JUNK);
            panic!("a job panicked between the call and its error check");
        });
        assert!(r.is_err());
        let stale = w.run(|c| c.lib().peek_error()).unwrap();
        match policy {
            PanicPolicy::Keep => assert_ne!(stale, 0, "Keep: the error stays queued on the owner"),
            _ => assert_eq!(stale, 0, "Reinit: a fresh owner thread, an empty queue"),
        }
        // Either way the next checked operation sees only its own errors.
        assert_eq!(
            w.run(|c| c.parse_cert(JUNK).map(|_| ())).unwrap().unwrap_err(),
            want
        );
        assert_eq!(
            w.run(|c| c.cert_subject(CERT)).unwrap().as_deref(),
            Ok("/CN=pinned")
        );
    }
}

#[test]
fn f_a_fresh_rsa_certificate_from_the_openssl_tool_parses_on_the_owner() {
    let Some(lib) = lib("f_a_fresh_rsa_certificate_from_the_openssl_tool_parses_on_the_owner") else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openssl-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=pinned-cli",
            "-days",
            "1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match made {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("openssl req failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            skipped(
                "f_a_fresh_rsa_certificate_from_the_openssl_tool_parses_on_the_owner",
                &format!("no openssl command: {e}"),
            );
            return;
        }
    }
    let (cert, key) = (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap());
    let worker = openssl::worker(&lib).unwrap();
    let c = openssl::bind_cert(&worker, &cert).unwrap().unwrap();
    let k = openssl::bind_key(&worker, &key).unwrap().unwrap();
    assert_eq!(worker.with(&c, |_, c| c.subject()).unwrap(), "/CN=pinned-cli");
    assert_eq!(worker.with(&k, |_, k| k.bits()).unwrap(), 2048);
    // A truncated copy fails with this parse's own errors only.
    let cut = &cert[..cert.len() / 2];
    let err = worker
        .run(|c| c.parse_cert(cut).map(|_| ()))
        .unwrap()
        .unwrap_err();
    assert!(!err.codes().is_empty(), "{err}");
    assert_eq!(worker.run(|c| c.lib().peek_error()).unwrap(), 0, "drained");
}
