//! Placement within the CPUs the process may use: on a fake two-node sysfs
//! with a given allowed set, every policy places only on allowed CPUs or
//! says why it could not; and for real, a child process of this test
//! restricted to one CPU (as `taskset -c N` would) runs its `Pack` owners
//! on that CPU only.

use std::fs;
use std::path::PathBuf;

use pinned_ffi::placement::{Placement, Plan, Reason, Shortfall, Topology};

/// Node 0: CPUs 0 and 2; node 1: CPUs 1 and 3. Devices on node 1, on
/// node 0, and one the platform gives no node.
fn fake_sysfs(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("placement-{name}"));
    let _ = fs::remove_dir_all(&root);
    for (node, cpus) in [(0, "0,2"), (1, "1,3")] {
        let d = root.join(format!("devices/system/node/node{node}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("cpulist"), format!("{cpus}\n")).unwrap();
    }
    for (pci, node) in [
        ("0000:3b:00.0", "1"),
        ("0000:5e:00.0", "0"),
        ("0000:00:02.0", "-1"),
    ] {
        let d = root.join("bus/pci/devices").join(pci);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("numa_node"), format!("{node}\n")).unwrap();
    }
    root
}

fn one(cpus: &[usize]) -> Vec<Option<Vec<usize>>> {
    cpus.iter().map(|&c| Some(vec![c])).collect()
}

fn shortfall(workers: &[usize], reason: Reason) -> (Vec<usize>, Reason) {
    (workers.to_vec(), reason)
}

/// A plan's shortfalls as (owners, reason).
fn why(plan: &Plan) -> Vec<(Vec<usize>, Reason)> {
    plan.shortfalls
        .iter()
        .map(|s: &Shortfall| (s.workers.clone(), s.reason.clone()))
        .collect()
}

fn policies() -> Vec<Placement> {
    vec![
        Placement::Anywhere,
        Placement::Pack,
        Placement::Spread,
        Placement::NearDevice("0000:3b:00.0".into()),
        Placement::NearDevice("0000:5e:00.0".into()),
    ]
}

#[test]
fn with_every_cpu_allowed_the_plans_are_the_policies() {
    let t = Topology::read_from(fake_sysfs("all")).unwrap();
    let all = [0, 1, 2, 3];
    let honoured = |policy: Placement, workers| {
        let p = policy.plan_within(&t, workers, &all).unwrap();
        assert!(p.is_honoured(), "{policy:?}: {p:?}");
        p.cpus
    };
    assert_eq!(
        honoured(Placement::Spread, 4),
        one(&[0, 1, 2, 3]),
        "alternate nodes"
    );
    assert_eq!(
        honoured(Placement::Pack, 4),
        one(&[0, 2, 1, 3]),
        "fill node 0 first"
    );
    assert_eq!(
        honoured(Placement::NearDevice("0000:3b:00.0".into()), 2),
        vec![Some(vec![1, 3]); 2]
    );
    assert_eq!(honoured(Placement::Anywhere, 2), vec![None; 2]);
    // More owners than CPUs: they wrap around, and the plan says so.
    let p = Placement::Pack.plan_within(&t, 5, &all).unwrap();
    assert_eq!(p.cpus[4], Some(vec![0]));
    assert_eq!(why(&p), vec![shortfall(&[4], Reason::TooFewCpus { allowed: 4 })]);
}

#[test]
fn allowed_only_cpu_1_every_policy_places_on_it_or_says_why_not() {
    let t = Topology::read_from(fake_sysfs("cpu1")).unwrap();
    let allowed = [1];

    let p = Placement::Pack.plan_within(&t, 1, &allowed).unwrap();
    assert_eq!(p.cpus, one(&[1]), "the first allowed CPU, not CPU 0");
    assert!(p.is_honoured());

    let p = Placement::Pack.plan_within(&t, 3, &allowed).unwrap();
    assert_eq!(p.cpus, one(&[1, 1, 1]));
    assert_eq!(
        why(&p),
        vec![shortfall(&[1, 2], Reason::TooFewCpus { allowed: 1 })]
    );

    let p = Placement::Spread.plan_within(&t, 2, &allowed).unwrap();
    assert_eq!(p.cpus, one(&[1, 1]), "node 0 has no allowed CPU");
    assert_eq!(
        why(&p),
        vec![
            shortfall(&[1], Reason::NodesNotAllowed { nodes: vec![0] }),
            shortfall(&[1], Reason::TooFewCpus { allowed: 1 }),
        ]
    );

    let p = Placement::NearDevice("0000:3b:00.0".into())
        .plan_within(&t, 2, &allowed)
        .unwrap();
    assert_eq!(p.cpus, vec![Some(vec![1]); 2], "node 1 cut to its allowed CPU");
    assert!(p.is_honoured());

    let p = Placement::NearDevice("0000:5e:00.0".into())
        .plan_within(&t, 2, &allowed)
        .unwrap();
    assert_eq!(p.cpus, vec![Some(vec![1]); 2], "node 0 has none: the allowed set");
    assert_eq!(
        why(&p),
        vec![shortfall(
            &[0, 1],
            Reason::DeviceNodeNotAllowed {
                device: "0000:5e:00.0".into(),
                node: 0
            }
        )]
    );
    assert!(
        p.shortfalls[0].to_string().contains("owners [0, 1]"),
        "{}",
        p.shortfalls[0]
    );

    let p = Placement::Anywhere.plan_within(&t, 2, &allowed).unwrap();
    assert_eq!(p.cpus, vec![None, None]);
    assert!(p.is_honoured());

    // Whatever the policy and the number of owners: only CPU 1, and a
    // plan that pins an owner to less than its policy asks says so.
    for policy in policies() {
        for workers in 1..=5 {
            let p = policy.plan_within(&t, workers, &allowed).unwrap();
            assert_eq!(p.cpus.len(), workers);
            for cpus in p.cpus.iter().flatten() {
                assert_eq!(cpus, &vec![1], "{policy:?} × {workers}: {p:?}");
            }
            let pinned_each = matches!(policy, Placement::Pack | Placement::Spread);
            if pinned_each && workers > 1 {
                assert!(!p.is_honoured(), "{policy:?} × {workers} share CPU 1: {p:?}");
            }
        }
    }
}

#[test]
fn allowed_cpus_outside_the_topology_and_errors() {
    let t = Topology::read_from(fake_sysfs("outside")).unwrap();
    // Allowed CPU 7 is in no node: owners get the allowed set, and why.
    let p = Placement::Pack.plan_within(&t, 2, &[7]).unwrap();
    assert_eq!(p.cpus, vec![Some(vec![7]); 2]);
    assert_eq!(why(&p), vec![shortfall(&[0, 1], Reason::NoAllowedCpu)]);
    let p = Placement::Spread.plan_within(&t, 1, &[7]).unwrap();
    assert_eq!(why(&p), vec![shortfall(&[0], Reason::NoAllowedCpu)]);
    // Order and repeats in the allowed set do not matter.
    assert_eq!(
        Placement::Pack.plan_within(&t, 2, &[3, 1, 3]).unwrap().cpus,
        one(&[1, 3])
    );
    // Nothing allowed, or a device without a node: errors, not a plan.
    let e = Placement::Pack.plan_within(&t, 1, &[]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(
        Placement::Anywhere.plan_within(&t, 1, &[]).is_ok(),
        "pins nothing"
    );
    let e = Placement::NearDevice("0000:00:02.0".into())
        .plan_within(&t, 1, &[1])
        .unwrap_err();
    assert!(e.to_string().contains("no NUMA node"), "{e}");
    assert!(Placement::NearDevice("0000:ff:00.0".into())
        .plan_within(&t, 1, &[1])
        .is_err());
}

#[test]
fn plan_uses_the_real_affinity() {
    let t = Topology::read_from(fake_sysfs("real")).unwrap();
    let Ok(allowed) = pinned_ffi::threads::current_affinity() else {
        eprintln!("SKIPPED: no CPU affinity on this platform");
        return;
    };
    for policy in policies() {
        assert_eq!(
            policy.plan(&t, 3).unwrap(),
            policy.plan_within(&t, 3, &allowed).unwrap(),
            "{policy:?}"
        );
    }
}

#[cfg(target_os = "linux")]
mod restricted {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use pinned_ffi::placement::{Placement, Reason, Topology};
    use pinned_ffi::{threads, Pool};

    const CHILD: &str = "PINNED_FFI_PLACEMENT_CHILD_CPU";
    const TEST: &str = "restricted::a_process_restricted_to_one_cpu_runs_its_pack_owners_there";

    fn sched_getcpu() -> usize {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).expect("sched_getcpu failed")
    }

    /// In the child: the process may run on `cpu` alone.
    fn child(cpu: usize) {
        assert_eq!(
            threads::current_affinity().unwrap(),
            vec![cpu],
            "the parent restricted us"
        );
        if Topology::read().is_err() {
            println!("SKIPPED: no NUMA information in /sys on this machine");
            return;
        }
        for placement in [Placement::Pack, Placement::Spread] {
            let pool = Pool::builder(2)
                .placement(placement.clone())
                .spawn(|_| Ok::<_, std::io::Error>(()))
                .unwrap();
            for _ in 0..20 {
                for got in pool.broadcast(|_| (sched_getcpu(), threads::current_affinity().unwrap())) {
                    let (on, may) = got.unwrap();
                    assert_eq!(on, cpu, "{placement:?}: an owner ran outside the allowed set");
                    assert_eq!(may, vec![cpu], "{placement:?}");
                }
            }
            // Two owners, one allowed CPU: the second shares it, and the
            // pool says so.
            let why = pool.placement_shortfalls();
            assert!(
                why.iter()
                    .any(|s| s.workers == [1] && s.reason == Reason::TooFewCpus { allowed: 1 }),
                "{placement:?}: {why:?}"
            );
        }
        println!("CHILD CHECKED on CPU {cpu}");
    }

    #[test]
    fn a_process_restricted_to_one_cpu_runs_its_pack_owners_there() {
        if let Ok(cpu) = std::env::var(CHILD) {
            child(cpu.parse().unwrap());
            return;
        }
        let allowed = threads::current_affinity().unwrap();
        if allowed.len() < 2 {
            println!("SKIPPED: this process may use only {allowed:?}; restricting it proves nothing");
            return;
        }
        // The last allowed CPU, so that "the first CPU of the machine" is
        // outside the set (the bug: a `Pack` owner on CPU 0 under `taskset -c 1`).
        let cpu = *allowed.last().unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, cpu.to_string());
        // SAFETY: the closure runs in the forked child before exec and only
        // calls sched_setaffinity (a system call, async-signal-safe) on a
        // set on its own stack; it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                // SAFETY: all-zero is the empty cpu_set_t.
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let out = cmd.output().expect("re-run this test in a child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("child stdout:\n{stdout}");
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{stderr}",
            out.status
        );
        if stdout.contains("SKIPPED") {
            return;
        }
        assert!(
            stdout.contains(&format!("CHILD CHECKED on CPU {cpu}")),
            "the child must have run the checks: {stdout}"
        );
    }
}
