//! Attack tests for `pinned_ffi_sdks::openssl` (reviewer h-rev14).

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use pinned_ffi::{Error, PanicPolicy, PinnedWorker};
use pinned_ffi_sdks::openssl::{self, Crypto, Libcrypto};
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

const JUNK: &[u8] = b"this is not a certificate\n";

/// Fixed: `load_from` is an `unsafe fn` now; the child below calls it in
/// an unsafe block, and the parent checks that is how it got there.
///
/// Was: `Libcrypto::load_from` is a *safe* fn that dlopens any path and calls
/// its symbols with OpenSSL 3's prototypes (what `libloading::Library::new`
/// and `get` are `unsafe` for). A library that exports the same names with
/// other behaviour turns safe calls into UB: here `ERR_reason_error_string`
/// returns a wild pointer and the safe `Libcrypto::reason` reads it.
/// Run in a child process; the test fails when the child crashes.
#[test]
fn attack_safe_load_from_trusts_any_library() {
    const CHILD: &str = "ATTACK_OPENSSL_LOAD_FROM_CHILD";
    if let Ok(path) = std::env::var(CHILD) {
        // load_from is `unsafe` now: a library that is not libcrypto 3 is
        // the caller's broken promise, so the crash below is reachable only
        // through this unsafe block, never from safe code.
        println!("entering the unsafe load_from");
        // SAFETY: deliberately broken: the fake is not libcrypto 3. This
        // child exists to show the crash needs this unsafe block.
        let lib = unsafe { Libcrypto::load_from(path) }.expect("fake loads");
        // Only safe calls below.
        let r = lib.reason(1);
        println!("reason: {r:?}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("attack-openssl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("fake.c");
    let so = dir.join("libfakecrypto.so");
    let mut c = String::from(
        "const char *ERR_reason_error_string(unsigned long e) { (void)e; return (const char *)16; }\n",
    );
    for name in [
        "ERR_get_error",
        "ERR_peek_error",
        "ERR_clear_error",
        "ERR_error_string_n",
        "BIO_new_mem_buf",
        "BIO_free",
        "PEM_read_bio_X509",
        "X509_free",
        "X509_get_subject_name",
        "X509_NAME_oneline",
        "PEM_read_bio_PrivateKey",
        "EVP_PKEY_get_bits",
        "EVP_PKEY_free",
    ] {
        c.push_str(&format!("long {name}(void) {{ return 0; }}\n"));
    }
    std::fs::write(&src, c).unwrap();
    match std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => {}
        other => {
            skipped(
                "attack_safe_load_from_trusts_any_library",
                &format!("no C compiler: {other:?}"),
            );
            return;
        }
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "attack_safe_load_from_trusts_any_library",
            "--nocapture",
        ])
        .env(CHILD, &so)
        .output()
        .unwrap();
    // The fixed design: `load_from` is `unsafe fn` (a safe call is
    // E0133, see the compile_fail doctest on it), so the child reaches the
    // fake only by breaking an unsafe promise. Whatever the child does
    // after that (it crashes) is on that unsafe block, not on safe code.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("entering the unsafe load_from"),
        "the child did not get to the fake through the unsafe block: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("child (fake via unsafe load_from): {:?}", out.status);
}

/// The guide's panic claims: under Keep the panicked job's error is still
/// queued for the next job, while `Crypto`'s own operations stay exact;
/// under Reinit the next job has an empty queue on a new thread and old
/// handles are stale.
#[test]
fn attack_panic_policies_and_the_queue() {
    watchdog("policies", 60, || {
        let lib = match Libcrypto::load() {
            Ok(l) => Arc::new(l),
            Err(e) if e.is_unavailable() => {
                skipped("attack_panic_policies_and_the_queue", &e.to_string());
                return;
            }
            Err(e) => panic!("Libcrypto::load: {e}"),
        };
        for policy in [PanicPolicy::Keep, PanicPolicy::Reinit] {
            let l = Arc::clone(&lib);
            let w = PinnedWorker::builder()
                .panic_policy(policy)
                .spawn(move || Ok::<_, std::convert::Infallible>(Crypto::open(Arc::clone(&l))))
                .unwrap();
            let before = w.run(|c| c.owner()).unwrap();
            let junk = openssl::bind_cert(&w, JUNK).unwrap();
            assert!(junk.is_err());
            let alone = w.run(|c| c.parse_cert(JUNK).map(drop)).unwrap().unwrap_err();
            let r = w.run(|c| {
                assert!(c.lib().raw_parse_cert(JUNK).is_none());
                panic!("between the call and its drain")
            });
            assert!(matches!(r, Err(Error::Panicked(_))), "{r:?}");
            let (after, peek) = w.run(|c| (c.owner(), c.lib().peek_error())).unwrap();
            let again = w.run(|c| c.parse_cert(JUNK).map(drop)).unwrap().unwrap_err();
            assert_eq!(
                again.codes(),
                alone.codes(),
                "{policy:?}: a Crypto op reported a stale error"
            );
            let left = w.run(|c| c.lib().peek_error()).unwrap();
            assert_eq!(left, 0, "{policy:?}: the op left the queue non-empty");
            match policy {
                PanicPolicy::Keep => {
                    assert_eq!(after, before);
                    assert_ne!(
                        peek, 0,
                        "Keep: the guide says the panicked job's error is still queued"
                    );
                }
                _ => {
                    assert_ne!(after, before, "Reinit: a fresh owner thread");
                    assert_eq!(peek, 0, "Reinit: a fresh, empty queue");
                }
            }
        }
    });
}
