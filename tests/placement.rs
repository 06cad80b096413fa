//! Placement: CPU lists and NUMA layout from sysfs, the spread / pack /
//! near-device plans (on a fake two-node sysfs), and the affinity owners
//! really get (checked with sched_getaffinity on this machine).

use std::fs;
use std::path::PathBuf;

use pinned_ffi::placement::{parse_cpulist, Placement, Topology};
use pinned_ffi::{threads, Pool};

/// Every CPU of the fake machine, for plans that must not depend on this
/// machine's affinity.
const ALL: [usize; 4] = [0, 1, 2, 3];

fn fake_sysfs() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake-sysfs");
    let _ = fs::remove_dir_all(&root);
    for (node, cpus) in [(0, "0,2"), (1, "1,3")] {
        let d = root.join(format!("devices/system/node/node{node}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("cpulist"), format!("{cpus}\n")).unwrap();
    }
    fs::write(root.join("devices/system/node/online"), "0-1\n").unwrap();
    for (pci, node) in [("0000:3b:00.0", "1"), ("0000:00:02.0", "-1")] {
        let d = root.join("bus/pci/devices").join(pci);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("numa_node"), format!("{node}\n")).unwrap();
    }
    root
}

#[test]
fn cpu_lists_parse_like_the_kernel_writes_them() {
    assert_eq!(
        parse_cpulist("0-3,8,10-11\n").unwrap(),
        vec![0, 1, 2, 3, 8, 10, 11]
    );
    assert_eq!(parse_cpulist("5").unwrap(), vec![5]);
    assert_eq!(parse_cpulist("").unwrap(), Vec::<usize>::new());
    assert!(parse_cpulist("a-b").is_err());
}

#[test]
fn plans_on_a_two_node_machine() {
    let t = Topology::read_from(fake_sysfs()).unwrap();
    assert_eq!(
        t.nodes.iter().map(|n| (n.id, n.cpus.clone())).collect::<Vec<_>>(),
        vec![(0, vec![0, 2]), (1, vec![1, 3])]
    );
    let one = |v: &[usize]| v.iter().map(|&c| Some(vec![c])).collect::<Vec<_>>();
    assert_eq!(
        Placement::Spread.plan_within(&t, 4, &ALL).unwrap().cpus,
        one(&[0, 1, 2, 3]),
        "alternate nodes"
    );
    assert_eq!(
        Placement::Pack.plan_within(&t, 4, &ALL).unwrap().cpus,
        one(&[0, 2, 1, 3]),
        "fill node 0 first"
    );
    assert_eq!(
        Placement::Pack.plan_within(&t, 5, &ALL).unwrap().cpus[4],
        Some(vec![0]),
        "wraps around"
    );
    assert_eq!(
        Placement::NearDevice("0000:3b:00.0".into())
            .plan_within(&t, 2, &ALL)
            .unwrap()
            .cpus,
        vec![Some(vec![1, 3]); 2]
    );
    let e = Placement::NearDevice("0000:00:02.0".into())
        .plan_within(&t, 1, &ALL)
        .unwrap_err();
    assert!(e.to_string().contains("no NUMA node"), "{e}");
    assert!(
        Placement::NearDevice("0000:ff:00.0".into())
            .plan_within(&t, 1, &ALL)
            .is_err(),
        "unknown device"
    );
    assert_eq!(Placement::Anywhere.plan(&t, 2).unwrap().cpus, vec![None, None]);
}

#[test]
fn owners_get_the_planned_affinity() {
    let Ok(t) = Topology::read() else {
        eprintln!("SKIPPED: no NUMA information in /sys on this machine");
        return;
    };
    for placement in [Placement::Spread, Placement::Pack] {
        let plan = placement.plan(&t, 2).unwrap().cpus;
        let pool = Pool::builder(2)
            .placement(placement.clone())
            .spawn(|_| Ok::<_, std::io::Error>(()))
            .unwrap();
        let got: Vec<_> = pool
            .broadcast(|_| threads::current_affinity().unwrap())
            .into_iter()
            .map(|r| Some(r.unwrap()))
            .collect();
        assert_eq!(got, plan, "{placement:?}");
    }
}

#[test]
fn near_a_real_device_or_a_visible_skip() {
    let Ok(t) = Topology::read() else {
        eprintln!("SKIPPED: no NUMA information in /sys on this machine");
        return;
    };
    let devices: Vec<String> = fs::read_dir("/sys/bus/pci/devices")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let Some((pci, node)) = devices
        .iter()
        .find_map(|d| t.device_node(d).ok().flatten().map(|n| (d.clone(), n)))
    else {
        eprintln!("SKIPPED: no PCI device here reports a NUMA node");
        return;
    };
    let pool = Pool::builder(1)
        .placement(Placement::NearDevice(pci))
        .spawn(|_| Ok::<_, std::io::Error>(()))
        .unwrap();
    let cpus = pool
        .worker(0)
        .run(|_| threads::current_affinity().unwrap())
        .unwrap();
    assert_eq!(cpus, t.nodes.iter().find(|n| n.id == node).unwrap().cpus);
}
