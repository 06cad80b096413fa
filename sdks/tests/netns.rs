//! Linux network namespaces per thread: the raw failure (a thread that
//! unshares is alone in its namespace; an async task that unshares and
//! awaits resumes in another one, and the runtime thread it left stays in
//! the new one), then owners each in their own namespace with zero wrong
//! results, the switcher, and what each panic policy does to the owner's
//! namespace.
//!
//! Needs root (`CAP_SYS_ADMIN`); without it every test prints a SKIPPED
//! line. Namespaces are compared by inode number (`net:[N]`), which works
//! even on a host whose only interface is `lo`. Threads moved by the raw
//! tests are throwaway: spawned for the test (or a runtime's, ended with
//! it), or moved back.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use pinned_ffi::{PanicPolicy, PinnedWorker, Pool};
use pinned_ffi_sdks::netns::{raw, Namespace, NetnsError};
use pinned_ffi_sdks::skipped;

/// The host namespace's inode and interfaces, or `None` (and a SKIPPED
/// line) when this process may not make namespaces.
fn host(test: &str) -> Option<(u64, Vec<String>)> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    // A throwaway thread tries it: the namespace ends with the thread.
    let probe = PROBE.get_or_init(|| match thread::spawn(raw::unshare_here).join().unwrap() {
        Ok(()) => Ok(()),
        Err(e @ NetnsError::NotPermitted { .. }) => Err(e.to_string()),
        Err(e) => panic!("unshare(CLONE_NEWNET) failed unexpectedly: {e}"),
    });
    if let Err(why) = probe {
        skipped(test, why);
        return None;
    }
    // Test threads are never moved, so this one is in the host namespace.
    Some((raw::inode_here().unwrap(), raw::interfaces_here().unwrap()))
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

// ---------------------------------------------------------------------------
// The raw failure, observed.
// ---------------------------------------------------------------------------

#[test]
fn raw_a_thread_that_unshares_is_alone_in_its_namespace() {
    let Some((host_ns, host_ifaces)) = host("raw_a_thread_that_unshares_is_alone_in_its_namespace") else {
        return;
    };
    let (id, before, inside, ifaces, back) = thread::spawn(|| {
        let before = raw::inode_here().unwrap();
        let origin = raw::open_here().unwrap();
        raw::unshare_here().unwrap();
        let inside = (raw::inode_here().unwrap(), raw::interfaces_here().unwrap());
        // Come back, and check that we did.
        raw::setns_here(&origin).unwrap();
        (
            thread::current().id(),
            before,
            inside.0,
            inside.1,
            raw::inode_here().unwrap(),
        )
    })
    .join()
    .unwrap();
    assert_ne!(id, thread::current().id());
    assert_eq!(before, host_ns);
    assert_ne!(
        inside, host_ns,
        "the thread that unshared has a namespace of its own"
    );
    assert_eq!(ifaces, ["lo"], "with nothing but lo in it");
    assert_eq!(back, host_ns, "setns on the saved fd brings it back");
    // This thread never moved, and sees the host's interfaces.
    assert_eq!(raw::inode_here().unwrap(), host_ns);
    assert_eq!(raw::interfaces_here().unwrap(), host_ifaces);
}

#[test]
fn raw_async_tasks_leave_their_namespace_behind_when_they_hop() {
    let Some((host_ns, host_ifaces)) = host("raw_async_tasks_leave_their_namespace_behind_when_they_hop")
    else {
        return;
    };
    // A throwaway runtime: its threads end, with their namespaces, when it
    // is dropped at the end of the test. Eight workers, so the threads
    // tasks land on include some that no earlier task moved.
    let rt = runtime(8);
    const TASKS: usize = 30;
    let host_count = host_ifaces.len();
    let report = rt.block_on(async move {
        // The namespace each runtime thread was last left in.
        let mut left = HashMap::new();
        let (mut hops, mut wrong, mut in_host, mut host_ifaces_seen) = (0, 0, 0, 0);
        // One task at a time, so the thread a task lands on can only have
        // been moved by an earlier task.
        for _ in 0..TASKS {
            let outcome = tokio::spawn(async {
                let from = thread::current().id();
                raw::unshare_here().unwrap();
                let mine = raw::inode_here().unwrap();
                // Await until the runtime moves the task (or give up).
                for _ in 0..200 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if thread::current().id() != from {
                        break;
                    }
                }
                let now = (raw::inode_here().unwrap(), raw::interfaces_here().unwrap());
                (from, mine, thread::current().id(), now.0, now.1)
            })
            .await
            .unwrap();
            let (from, mine, on, now, ifaces) = outcome;
            left.insert(from, mine);
            if on != from {
                hops += 1;
                if now != mine {
                    wrong += 1;
                }
                if now == host_ns {
                    in_host += 1;
                    assert_eq!(ifaces, host_ifaces, "back in the host namespace after the hop");
                    host_ifaces_seen += usize::from(ifaces.len() > 1);
                }
            }
        }
        // Unrelated tasks that never touch namespaces: fifty, and more
        // until one runs on a thread a task left in its own namespace.
        let (mut tries, mut on_left, mut not_host) = (0, 0, 0);
        while tries < 50 || (on_left == 0 && tries < 10_000) {
            tries += 1;
            let (id, ns, ifaces) = tokio::spawn(async {
                (
                    thread::current().id(),
                    raw::inode_here().unwrap(),
                    raw::interfaces_here().unwrap(),
                )
            })
            .await
            .unwrap();
            not_host += usize::from(ns != host_ns);
            if let Some(&ns_left) = left.get(&id) {
                on_left += 1;
                assert_eq!(ns, ns_left, "the runtime thread is still where a task left it");
                assert_eq!(ifaces, ["lo"], "so an unrelated task there sees only lo");
            }
        }
        (hops, wrong, in_host, host_ifaces_seen, tries, on_left, not_host)
    });
    let (hops, wrong, in_host, host_ifaces_seen, tries, on_left, not_host) = report;
    println!(
        "raw async netns: {hops} of {TASKS} tasks hopped, {wrong} resumed in another namespace \
         ({in_host} in the host's, {host_ifaces_seen} seeing its {} interfaces); \
         {not_host} of {tries} unrelated tasks ran outside the host namespace",
        host_count
    );
    assert!(
        hops > 0,
        "no task changed threads across an await in {TASKS} tries: the raw failure could not be shown"
    );
    assert_eq!(
        wrong, hops,
        "every task that hopped resumed outside the namespace it made"
    );
    assert!(
        in_host > 0,
        "the first task to hop lands on a thread nobody moved"
    );
    assert!(
        on_left > 0,
        "no unrelated task ran on a moved runtime thread in {tries} tries"
    );
    assert!(not_host > 0);
}

// ---------------------------------------------------------------------------
// Pinned: exact.
// ---------------------------------------------------------------------------

#[test]
fn pinned_owners_each_in_their_own_namespace_are_exact() {
    let Some((host_ns, _)) = host("pinned_owners_each_in_their_own_namespace_are_exact") else {
        return;
    };
    let pool = Arc::new(Pool::builder(2).spawn(|_| Namespace::unshare()).unwrap());
    let inodes: Vec<u64> = pool
        .broadcast(|ns| ns.inode())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let inodes = [inodes[0], inodes[1]];
    assert_ne!(inodes[0], inodes[1], "two owners, two namespaces");
    assert!(!inodes.contains(&host_ns));
    // Bring lo up in owner 0's namespace only.
    pool.to(0).run(|ns| ns.set_up("lo")).unwrap().unwrap();
    let up = [true, false];

    const THREADS: usize = 4;
    const PER_THREAD: usize = 200;
    const TASKS: usize = 50;
    const PER_TASK: usize = 8;
    // What a call on owner `i` sees, checked against what it should.
    let probe = |ns: &mut Namespace| {
        (
            raw::inode_here().unwrap(),
            ns.interfaces().unwrap(),
            ns.is_up("lo").unwrap(),
        )
    };
    let wrong_of = move |i: usize, got: (u64, Vec<String>, bool)| {
        usize::from(got.0 != inodes[i] || got.1 != ["lo"] || got.2 != up[i])
    };
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                // A throwaway caller in a namespace of its own must not matter.
                if t % 2 == 0 {
                    raw::unshare_here().unwrap();
                }
                let mut wrong = 0;
                for k in 0..PER_THREAD {
                    let i = (t + k) % 2;
                    wrong += wrong_of(i, pool.to(i).run(probe).unwrap());
                }
                wrong
            })
        })
        .collect();
    let rt = runtime(4);
    let task_wrong = rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    let mut wrong = 0;
                    for k in 0..PER_TASK {
                        let i = (t + k) % 2;
                        wrong += wrong_of(i, pool.to(i).call(probe).await.unwrap());
                        tokio::task::yield_now().await;
                    }
                    wrong
                })
            })
            .collect();
        let mut wrong = 0;
        for t in tasks {
            wrong += t.await.unwrap();
        }
        wrong
    });
    let wrong = task_wrong + threads.into_iter().map(|t| t.join().unwrap()).sum::<usize>();
    let calls = THREADS * PER_THREAD + TASKS * PER_TASK;
    println!("pinned netns pool of 2: {wrong} wrong of {calls}");
    assert_eq!(wrong, 0);
    // The callers' side never moved.
    assert_eq!(raw::inode_here().unwrap(), host_ns);
}

#[test]
fn the_switcher_moves_an_owner_into_another_owners_namespace() {
    let Some((host_ns, _)) = host("the_switcher_moves_an_owner_into_another_owners_namespace") else {
        return;
    };
    let pool = Pool::builder(2).spawn(|_| Namespace::unshare()).unwrap();
    let (target, target_ns) = pool.to(0).run(|ns| (ns.path(), ns.inode())).unwrap();
    assert_eq!(raw::inode_of(&target).unwrap(), target_ns);
    pool.to(0).run(|ns| ns.set_up("lo")).unwrap().unwrap();

    let home = pool.to(1).run(|ns| ns.home_inode()).unwrap();
    assert_ne!(home, target_ns);
    assert!(!pool.to(1).run(|ns| ns.is_up("lo")).unwrap().unwrap());
    let moved = pool.to(1).run(move |ns| ns.switch_to(&target)).unwrap().unwrap();
    assert_eq!(moved, target_ns);
    let (now, state, lo_up) = pool
        .to(1)
        .run(|ns| (raw::inode_here().unwrap(), ns.inode(), ns.is_up("lo").unwrap()))
        .unwrap();
    assert_eq!(
        (now, state),
        (target_ns, target_ns),
        "owner 1 is in owner 0's namespace"
    );
    assert!(lo_up, "and sees the lo owner 0 brought up");

    pool.to(1).run(|ns| ns.switch_home()).unwrap().unwrap();
    let (now, lo_up) = pool
        .to(1)
        .run(|ns| (raw::inode_here().unwrap(), ns.is_up("lo").unwrap()))
        .unwrap();
    assert_eq!(now, home);
    assert!(!lo_up);

    // An owner can also start in another owner's namespace.
    let path = pool.to(0).run(|ns| ns.path()).unwrap();
    let joiner = PinnedWorker::spawn(move || Namespace::enter(&path)).unwrap();
    assert_eq!(joiner.run(|_| raw::inode_here().unwrap()).unwrap(), target_ns);
    // A path that is not there is a typed error, and the owner stays put.
    let gone = pool
        .to(1)
        .run(|ns| ns.switch_to("/proc/self/task/0/ns/net"))
        .unwrap();
    assert!(matches!(gone, Err(NetnsError::Open { .. })), "{gone:?}");
    assert!(pool.to(1).run(|ns| ns.verify().is_ok()).unwrap());
    assert_eq!(raw::inode_here().unwrap(), host_ns, "the caller never moved");
}

// ---------------------------------------------------------------------------
// Panics, and Drop.
// ---------------------------------------------------------------------------

#[test]
fn keep_policy_keeps_the_namespace_on_the_owner_after_a_panic() {
    if host("keep_policy_keeps_the_namespace_on_the_owner_after_a_panic").is_none() {
        return;
    }
    let w = PinnedWorker::builder()
        .panic_policy(PanicPolicy::Keep)
        .spawn(Namespace::unshare)
        .unwrap();
    let (tid, ns) = w
        .run(|ns| (pinned_ffi::threads::current_tid(), ns.inode()))
        .unwrap();
    assert!(w.run(|_: &mut Namespace| panic!("boom")).is_err());
    let after = w
        .run(|ns| {
            (
                pinned_ffi::threads::current_tid(),
                raw::inode_here().unwrap(),
                ns.interfaces().unwrap(),
            )
        })
        .unwrap();
    assert_eq!(
        after,
        (tid, ns, vec!["lo".to_owned()]),
        "same thread, same namespace"
    );

    // The trap: a job that moves the thread itself and panics leaves it
    // moved on the kept thread. The state notices and refuses to work in
    // the wrong namespace until it is moved home.
    assert!(w
        .run(|_: &mut Namespace| {
            raw::unshare_here().unwrap();
            panic!("moved the thread, then panicked");
        })
        .is_err());
    let moved = w.run(|ns| ns.interfaces()).unwrap();
    assert!(
        matches!(moved, Err(NetnsError::Moved { expected, found }) if expected == ns && found != ns),
        "{moved:?}"
    );
    w.run(|ns| ns.switch_home()).unwrap().unwrap();
    assert_eq!(w.run(|ns| ns.interfaces()).unwrap().unwrap(), ["lo"]);
    assert_eq!(w.run(|_| raw::inode_here().unwrap()).unwrap(), ns);
}

#[test]
fn reinit_policy_unshares_again_on_the_fresh_thread() {
    let Some((host_ns, _)) = host("reinit_policy_unshares_again_on_the_fresh_thread") else {
        return;
    };
    let w = PinnedWorker::builder()
        .panic_policy(PanicPolicy::Reinit)
        .spawn(Namespace::unshare)
        .unwrap();
    let (tid, ns) = w
        .run(|ns| (pinned_ffi::threads::current_tid(), ns.inode()))
        .unwrap();
    assert!(w
        .run(|_: &mut Namespace| {
            raw::unshare_here().unwrap();
            panic!("moved the thread, then panicked");
        })
        .is_err());
    let (new_tid, now, state, ifaces) = w
        .run(|ns| {
            (
                pinned_ffi::threads::current_tid(),
                raw::inode_here().unwrap(),
                ns.inode(),
                ns.interfaces().unwrap(),
            )
        })
        .unwrap();
    assert_ne!(new_tid, tid, "a fresh owner thread");
    assert_eq!(now, state, "init put it in its namespace");
    assert_ne!(now, ns, "a new one: the old namespace went with the old thread");
    assert_ne!(now, host_ns);
    assert_eq!(ifaces, ["lo"]);
}

#[test]
fn drop_moves_the_thread_back_where_it_came_from() {
    let Some((host_ns, _)) = host("drop_moves_the_thread_back_where_it_came_from") else {
        return;
    };
    let (inside, after) = thread::spawn(|| {
        let ns = Namespace::unshare().unwrap();
        let inside = raw::inode_here().unwrap();
        assert_eq!(inside, ns.inode());
        drop(ns);
        (inside, raw::inode_here().unwrap())
    })
    .join()
    .unwrap();
    assert_ne!(inside, host_ns);
    assert_eq!(after, host_ns);
}

#[test]
fn bad_names_are_typed_errors() {
    if host("bad_names_are_typed_errors").is_none() {
        return;
    }
    let w = PinnedWorker::spawn(Namespace::unshare).unwrap();
    let (long, nul, missing) = w
        .run(|ns| {
            (
                ns.is_up("a-name-longer-than-ifnamsiz"),
                ns.set_up("l\0o"),
                ns.is_up("eth0"),
            )
        })
        .unwrap();
    assert!(matches!(long, Err(NetnsError::BadName(_))), "{long:?}");
    assert!(matches!(nul, Err(NetnsError::BadName(_))), "{nul:?}");
    assert!(
        matches!(missing, Err(NetnsError::Os { ref source, .. }) if source.raw_os_error() == Some(libc::ENODEV)),
        "{missing:?}"
    );
}
