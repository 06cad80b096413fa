//! The end of it all: every owner thread goes away once its worker is
//! dropped, proved in a child process of its own (this binary, re-run on
//! this one test), so no other test's threads blur the count.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use pinned_ffi::threads::{thread_count, thread_names};
use pinned_ffi::PanicPolicy;

use crate::jobs::{
    case_cancelled_captures, case_orphaned_result, case_panic_payload, case_rejected_at_close_timeout,
    case_rejected_when_broken, case_rejected_when_stopped, case_waker,
};
use crate::lifecycle::{
    case_bound_drop, case_bound_drop_at_reinit, case_breaker_reinit, case_init_panics, case_reinit_panics,
    case_state_drop_at_close, case_state_drop_at_reinit,
};
use crate::stress::{rounds, run_round};
use crate::{exclusive, within, POLICIES};

// ---------------------------------------------------------------------------
// Threads: all owner threads go away
// ---------------------------------------------------------------------------

const CHILD: &str = "PINNED_FFI_FAULTS_THREAD_COUNT_CHILD";

/// In the child process, where nothing else runs: every case of the
/// `lifecycle` and `jobs` modules and a smaller stress, then the thread
/// count must be back where it started.
fn thread_count_child() {
    let Some(baseline) = thread_count() else {
        return; // not Linux: no /proc to count from
    };
    for policy in POLICIES {
        case_init_panics(policy);
        case_state_drop_at_close(policy);
        case_bound_drop(policy);
        case_cancelled_captures(policy);
        case_rejected_at_close_timeout(policy);
        case_panic_payload(policy);
        case_orphaned_result(policy);
        case_waker(policy);
    }
    for policy in [PanicPolicy::Keep, PanicPolicy::Reinit] {
        case_breaker_reinit(policy);
        case_rejected_when_broken(policy);
    }
    case_reinit_panics(true);
    case_state_drop_at_reinit();
    case_bound_drop_at_reinit();
    case_rejected_when_stopped();
    for round in rounds() {
        run_round(&round, 3, 60);
    }
    let t = Instant::now();
    while thread_count() != Some(baseline) && t.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        thread_count(),
        Some(baseline),
        "threads left behind: {:?}",
        thread_names()
    );
}

#[test]
fn owner_threads_all_go_away_once_the_workers_are_dropped() {
    // The full path of this test: the child runs it alone, with `--exact`.
    const NAME: &str = "threads::owner_threads_all_go_away_once_the_workers_are_dropped";
    if std::env::var_os(CHILD).is_some() {
        return within(
            "thread count (child)",
            Duration::from_secs(90),
            thread_count_child,
        );
    }
    let _g = exclusive();
    let exe = std::env::current_exe().expect("this test binary");
    let mut child = Command::new(exe)
        .args([NAME, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        Some(s) if s.success() && out.contains("1 passed") => {}
        Some(s) => panic!("the child failed ({s}):\n{out}\n{err}"),
        None => panic!("the child hung; killed:\n{out}\n{err}"),
    }
}
