//! Where owner threads run: the machine's NUMA nodes and their CPUs (read
//! from sysfs), and [`Placement`] policies a pool applies to its owners:
//! spread across nodes, pack onto the first, or stay near a PCI device
//! (a GPU's node, so its owner's memory traffic stays local).

use std::io;
use std::path::{Path, PathBuf};

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Node {
    /// The node number.
    pub id: usize,
    /// Its CPUs, ascending.
    pub cpus: Vec<usize>,
}

/// The NUMA nodes of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Topology {
    /// Nodes with at least one CPU, by id.
    pub nodes: Vec<Node>,
    sysfs: PathBuf,
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
///
/// ```
/// assert_eq!(pinned_ffi::placement::parse_cpulist("0-2,5").unwrap(), vec![0, 1, 2, 5]);
/// assert!(pinned_ffi::placement::parse_cpulist("3-1").is_err());
/// ```
///
/// # Errors
/// `InvalidData` for anything that is not a CPU list.
pub fn parse_cpulist(s: &str) -> io::Result<Vec<usize>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("not a CPU list: {s:?}"));
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
            None => {
                let c: usize = part.parse().map_err(|_| bad())?;
                (c, c)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

impl Topology {
    /// Reads `/sys/devices/system/node`.
    ///
    /// ```
    /// if let Ok(t) = pinned_ffi::placement::Topology::read() {
    ///     assert!(!t.nodes.is_empty());
    /// }
    /// ```
    ///
    /// # Errors
    /// `NotFound` where the kernel exposes no NUMA information.
    pub fn read() -> io::Result<Topology> {
        Topology::read_from("/sys")
    }

    /// Reads a sysfs tree rooted at `sysfs` (tests use a fake one).
    ///
    /// # Errors
    /// As [`read`](Self::read).
    ///
    /// ```
    /// // A sysfs-like tree with one node (tests use this to fake machines).
    /// let root = std::env::temp_dir().join(format!("pinned-sysfs-{}", std::process::id()));
    /// std::fs::create_dir_all(root.join("devices/system/node/node0"))?;
    /// std::fs::write(root.join("devices/system/node/node0/cpulist"), "0-3\n")?;
    /// let t = pinned_ffi::placement::Topology::read_from(&root)?;
    /// assert_eq!(t.nodes[0].cpus, vec![0, 1, 2, 3]);
    /// # std::fs::remove_dir_all(&root)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn read_from(sysfs: impl AsRef<Path>) -> io::Result<Topology> {
        let sysfs = sysfs.as_ref().to_path_buf();
        let mut nodes = Vec::new();
        for entry in std::fs::read_dir(sysfs.join("devices/system/node"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("node").and_then(|n| n.parse().ok()) else {
                continue;
            };
            let cpus = parse_cpulist(&std::fs::read_to_string(entry.path().join("cpulist"))?)?;
            if !cpus.is_empty() {
                nodes.push(Node { id, cpus });
            }
        }
        if nodes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no NUMA node with CPUs in sysfs",
            ));
        }
        nodes.sort_by_key(|n| n.id);
        Ok(Topology { nodes, sysfs })
    }

    /// The NUMA node of a PCI device (e.g. `0000:3b:00.0`, a GPU), or
    /// `None` where the platform reports none (`numa_node` is -1).
    ///
    /// # Errors
    /// `NotFound` for an unknown device.
    ///
    /// ```
    /// if let Ok(t) = pinned_ffi::placement::Topology::read() {
    ///     // Unknown devices are an error; known ones may have no node (None).
    ///     assert!(t.device_node("0000:ff:1f.7").is_err());
    /// }
    /// ```
    pub fn device_node(&self, pci_address: &str) -> io::Result<Option<usize>> {
        let path = self
            .sysfs
            .join("bus/pci/devices")
            .join(pci_address)
            .join("numa_node");
        let raw = std::fs::read_to_string(&path)?;
        let node: i64 = raw
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, raw.clone()))?;
        Ok(usize::try_from(node).ok())
    }
}

/// How a pool places its owner threads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Placement {
    /// No pinning: the OS decides (the default).
    #[default]
    Anywhere,
    /// One CPU per owner, alternating nodes: owners share no node while
    /// nodes remain (bandwidth, isolation).
    Spread,
    /// One CPU per owner, filling node after node (locality between owners).
    Pack,
    /// Every owner on the CPUs of the node of this PCI device.
    NearDevice(String),
}

impl Placement {
    /// The CPU set for each of `workers` owners (`None`: unpinned).
    ///
    /// ```
    /// use pinned_ffi::placement::{Placement, Topology};
    /// if let Ok(t) = Topology::read() {
    ///     let plan = Placement::Pack.plan(&t, 2)?;
    ///     assert_eq!(plan.len(), 2);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// For `NearDevice`: the device is unknown, or the platform gives it no
    /// NUMA node.
    pub fn plan(&self, topology: &Topology, workers: usize) -> io::Result<Vec<Option<Vec<usize>>>> {
        let one_each = |order: Vec<usize>| (0..workers).map(|i| Some(vec![order[i % order.len()]])).collect();
        Ok(match self {
            Placement::Anywhere => vec![None; workers],
            Placement::Pack => one_each(
                topology
                    .nodes
                    .iter()
                    .flat_map(|n| n.cpus.iter().copied())
                    .collect(),
            ),
            Placement::Spread => {
                let widest = topology.nodes.iter().map(|n| n.cpus.len()).max().unwrap_or(0);
                one_each(
                    (0..widest)
                        .flat_map(|k| topology.nodes.iter().filter_map(move |n| n.cpus.get(k).copied()))
                        .collect(),
                )
            }
            Placement::NearDevice(pci) => {
                let node = topology.device_node(pci)?.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("the platform reports no NUMA node for {pci}"),
                    )
                })?;
                let cpus = topology
                    .nodes
                    .iter()
                    .find(|n| n.id == node)
                    .map(|n| n.cpus.clone())
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, format!("node {node} has no CPUs"))
                    })?;
                vec![Some(cpus); workers]
            }
        })
    }
}
