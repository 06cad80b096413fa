//! Where owner threads run: the machine's NUMA nodes and their CPUs (read
//! from sysfs), and [`Placement`] policies a pool applies to its owners:
//! spread across nodes, pack onto the first, or stay near a PCI device
//! (a GPU's node, so its owner's memory traffic stays local).
//!
//! Plans use only the CPUs the process may run on (its affinity, as set
//! by `taskset`, cgroups' cpusets or a container runtime), and a [`Plan`]
//! says, as [`Shortfall`]s, where a policy could not be honoured within
//! them; no owner is ever pinned outside the allowed set.

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

/// The CPU sets a [`Placement`] gives a pool's owners, and where the
/// policy could not be honoured within the allowed CPUs.
///
/// ```
/// use pinned_ffi::placement::{Placement, Reason, Topology};
/// # let root = std::env::temp_dir().join(format!("pinned-plan-{}", std::process::id()));
/// # std::fs::create_dir_all(root.join("devices/system/node/node0"))?;
/// # std::fs::write(root.join("devices/system/node/node0/cpulist"), "0-3\n")?;
/// // A four-CPU node, a process allowed CPUs 1 and 2, three owners.
/// let t = Topology::read_from(&root)?;
/// let plan = Placement::Pack.plan_within(&t, 3, &[1, 2])?;
/// assert_eq!(plan.cpus, vec![Some(vec![1]), Some(vec![2]), Some(vec![1])]);
/// assert!(!plan.is_honoured());
/// assert_eq!(plan.shortfalls[0].workers, vec![2]); // owner 2 shares CPU 1
/// assert_eq!(plan.shortfalls[0].reason, Reason::TooFewCpus { allowed: 2 });
/// # std::fs::remove_dir_all(&root)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Plan {
    /// The CPU set of each owner, by index (`None`: not pinned; it runs
    /// where the thread that starts it may). Every CPU named is allowed.
    pub cpus: Vec<Option<Vec<usize>>>,
    /// Where the policy was not honoured, and why; empty when it was.
    pub shortfalls: Vec<Shortfall>,
}

impl Plan {
    /// Whether every owner is placed as the policy asks.
    ///
    /// ```
    /// # use pinned_ffi::placement::{Placement, Topology};
    /// # if let Ok(t) = Topology::read() {
    /// assert!(Placement::Anywhere.plan(&t, 2)?.is_honoured());
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_honoured(&self) -> bool {
        self.shortfalls.is_empty()
    }
}

/// Owners a [`Plan`] could not place as its policy asks, and why.
///
/// ```
/// use pinned_ffi::{placement::Placement, Pool};
/// # if pinned_ffi::placement::Topology::read().is_err() { return Ok(()); }
/// let pool = Pool::builder(2).placement(Placement::Pack).spawn(|_| Ok::<_, std::io::Error>(()))?;
/// for s in pool.placement_shortfalls() {
///     // e.g. "owners [1]: only 1 allowed CPUs, so these owners share a CPU"
///     eprintln!("placement: {s}");
///     assert!(s.workers.iter().all(|&w| w < pool.len()));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shortfall {
    /// The owners (indices into [`Plan::cpus`]) not placed as asked.
    pub workers: Vec<usize>,
    /// Why, and what they got instead.
    pub reason: Reason,
}

/// Why a [`Placement`] could not be honoured within the allowed CPUs.
///
/// ```
/// use pinned_ffi::placement::Reason;
/// let r = Reason::DeviceNodeNotAllowed { device: "0000:3b:00.0".into(), node: 1 };
/// assert!(r.to_string().contains("node 1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// [`Pack`](Placement::Pack) or [`Spread`](Placement::Spread): a CPU
    /// per owner, but only `allowed` CPUs are allowed; these owners share
    /// a CPU with an earlier owner (the allowed CPUs in the same order,
    /// again).
    TooFewCpus {
        /// How many CPUs the policy could use.
        allowed: usize,
    },
    /// [`Spread`](Placement::Spread): these nodes have no allowed CPU, so
    /// these owners share a node with an earlier owner although the
    /// machine has nodes no owner uses.
    NodesNotAllowed {
        /// The nodes without an allowed CPU.
        nodes: Vec<usize>,
    },
    /// [`NearDevice`](Placement::NearDevice): no CPU of the device's node
    /// is allowed; the owners may run on every allowed CPU instead.
    DeviceNodeNotAllowed {
        /// The PCI address.
        device: String,
        /// Its NUMA node.
        node: usize,
    },
    /// [`Pack`](Placement::Pack) or [`Spread`](Placement::Spread): no CPU
    /// of the topology is allowed; the owners may run on every allowed CPU
    /// instead.
    NoAllowedCpu,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::TooFewCpus { allowed } => {
                write!(f, "only {allowed} allowed CPUs, so these owners share a CPU")
            }
            Reason::NodesNotAllowed { nodes } => write!(
                f,
                "no allowed CPU on nodes {nodes:?}, so these owners share a node"
            ),
            Reason::DeviceNodeNotAllowed { device, node } => write!(
                f,
                "no allowed CPU on node {node} of {device}, so these owners run on any allowed CPU"
            ),
            Reason::NoAllowedCpu => write!(
                f,
                "no CPU of the NUMA topology is allowed, so these owners run on any allowed CPU"
            ),
        }
    }
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "owners {:?}: {}", self.workers, self.reason)
    }
}

/// `Pack`/`Spread`: one CPU of `order` each, wrapping around (and saying
/// so) when there are fewer CPUs than owners.
fn one_each(order: &[usize], workers: usize, allowed: &[usize]) -> Plan {
    if order.is_empty() && workers > 0 {
        return Plan {
            cpus: vec![Some(allowed.to_vec()); workers],
            shortfalls: vec![Shortfall {
                workers: (0..workers).collect(),
                reason: Reason::NoAllowedCpu,
            }],
        };
    }
    let mut shortfalls = Vec::new();
    if workers > order.len() {
        shortfalls.push(Shortfall {
            workers: (order.len()..workers).collect(),
            reason: Reason::TooFewCpus { allowed: order.len() },
        });
    }
    Plan {
        cpus: (0..workers).map(|i| Some(vec![order[i % order.len()]])).collect(),
        shortfalls,
    }
}

impl Placement {
    /// The plan for `workers` owners within the CPUs the calling thread
    /// may run on (`sched_getaffinity`: for a process started under
    /// `taskset` or in a cpuset, the process's set); see
    /// [`plan_within`](Self::plan_within).
    ///
    /// ```
    /// use pinned_ffi::placement::{Placement, Topology};
    /// if let Ok(t) = Topology::read() {
    ///     let plan = Placement::Pack.plan(&t, 2)?;
    ///     assert_eq!(plan.cpus.len(), 2);
    ///     let allowed = pinned_ffi::threads::current_affinity()?;
    ///     assert!(plan.cpus.iter().flatten().flatten().all(|c| allowed.contains(c)));
    ///     for s in &plan.shortfalls {
    ///         eprintln!("placement: {s}");
    ///     }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`plan_within`](Self::plan_within), and the OS error if the
    /// affinity cannot be read (`Unsupported` off Linux) for any policy but
    /// `Anywhere`.
    pub fn plan(&self, topology: &Topology, workers: usize) -> io::Result<Plan> {
        let allowed = match self {
            Placement::Anywhere => Vec::new(),
            _ => crate::threads::current_affinity()?,
        };
        self.plan_within(topology, workers, &allowed)
    }

    /// The plan for `workers` owners using only the CPUs in `allowed`
    /// (any order; CPUs not in the topology are ignored, except as a
    /// fallback), with a [`Shortfall`] for each way the policy could not
    /// be honoured:
    ///
    /// - `Pack` and `Spread` place on the topology's allowed CPUs only,
    ///   one each; fewer of them than owners is [`Reason::TooFewCpus`]
    ///   (owners share, in the same order again); none at all is
    ///   [`Reason::NoAllowedCpu`] (owners get the whole allowed set).
    ///   `Spread` skips nodes without an allowed CPU, and says
    ///   [`Reason::NodesNotAllowed`] when that makes owners share a node.
    /// - `NearDevice` uses the allowed CPUs of the device's node; none is
    ///   [`Reason::DeviceNodeNotAllowed`] (owners get the whole allowed
    ///   set).
    /// - `Anywhere` pins nothing and ignores `allowed`.
    ///
    /// ```
    /// use pinned_ffi::placement::{Placement, Reason, Topology};
    /// # let root = std::env::temp_dir().join(format!("pinned-within-{}", std::process::id()));
    /// # for (n, cpus) in [(0, "0-1"), (1, "2-3")] {
    /// #     std::fs::create_dir_all(root.join(format!("devices/system/node/node{n}")))?;
    /// #     std::fs::write(root.join(format!("devices/system/node/node{n}/cpulist")), cpus)?;
    /// # }
    /// // Two nodes {0, 1} and {2, 3}; the process may use CPUs 1 and 3.
    /// let t = Topology::read_from(&root)?;
    /// let plan = Placement::Spread.plan_within(&t, 2, &[3, 1])?;
    /// assert_eq!(plan.cpus, vec![Some(vec![1]), Some(vec![3])]);
    /// assert!(plan.is_honoured());
    /// // Allowed only CPU 1: both owners on node 0, and the plan says so.
    /// let plan = Placement::Spread.plan_within(&t, 2, &[1])?;
    /// assert_eq!(plan.cpus, vec![Some(vec![1]); 2]);
    /// assert_eq!(plan.shortfalls[0].reason, Reason::NodesNotAllowed { nodes: vec![1] });
    /// # std::fs::remove_dir_all(&root)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// `InvalidInput` for an empty `allowed` (any policy but `Anywhere`).
    /// For `NearDevice`: the device is unknown, the platform gives it no
    /// NUMA node, or the topology has no CPUs on that node.
    pub fn plan_within(&self, topology: &Topology, workers: usize, allowed: &[usize]) -> io::Result<Plan> {
        if let Placement::Anywhere = self {
            return Ok(Plan {
                cpus: vec![None; workers],
                shortfalls: Vec::new(),
            });
        }
        let mut allowed = allowed.to_vec();
        allowed.sort_unstable();
        allowed.dedup();
        if allowed.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no allowed CPU to place owners on",
            ));
        }
        let is_allowed = |c: &usize| allowed.binary_search(c).is_ok();
        // The topology cut down to the allowed CPUs; nodes left empty stay,
        // so that `Spread` can say which ones it could not use.
        let nodes: Vec<(usize, Vec<usize>)> = topology
            .nodes
            .iter()
            .map(|n| (n.id, n.cpus.iter().copied().filter(is_allowed).collect()))
            .collect();
        Ok(match self {
            Placement::Anywhere => unreachable!("returned above"),
            Placement::Pack => {
                let order: Vec<usize> = nodes.iter().flat_map(|(_, cpus)| cpus.iter().copied()).collect();
                one_each(&order, workers, &allowed)
            }
            Placement::Spread => {
                let usable: Vec<&Vec<usize>> = nodes
                    .iter()
                    .map(|(_, cpus)| cpus)
                    .filter(|c| !c.is_empty())
                    .collect();
                let widest = usable.iter().map(|c| c.len()).max().unwrap_or(0);
                let order: Vec<usize> = (0..widest)
                    .flat_map(|k| usable.iter().filter_map(move |c| c.get(k).copied()))
                    .collect();
                let mut plan = one_each(&order, workers, &allowed);
                let sharing = usable.len()..workers.min(nodes.len());
                if !order.is_empty() && !sharing.is_empty() {
                    plan.shortfalls.insert(
                        0,
                        Shortfall {
                            workers: sharing.collect(),
                            reason: Reason::NodesNotAllowed {
                                nodes: nodes
                                    .iter()
                                    .filter(|(_, cpus)| cpus.is_empty())
                                    .map(|(id, _)| *id)
                                    .collect(),
                            },
                        },
                    );
                }
                plan
            }
            Placement::NearDevice(pci) => {
                let node = topology.device_node(pci)?.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("the platform reports no NUMA node for {pci}"),
                    )
                })?;
                let cpus = nodes
                    .iter()
                    .find(|(id, _)| *id == node)
                    .map(|(_, cpus)| cpus.clone())
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, format!("node {node} has no CPUs"))
                    })?;
                if cpus.is_empty() && workers > 0 {
                    Plan {
                        cpus: vec![Some(allowed.clone()); workers],
                        shortfalls: vec![Shortfall {
                            workers: (0..workers).collect(),
                            reason: Reason::DeviceNodeNotAllowed {
                                device: pci.clone(),
                                node,
                            },
                        }],
                    }
                } else {
                    Plan {
                        cpus: vec![Some(cpus); workers],
                        shortfalls: Vec::new(),
                    }
                }
            }
        })
    }
}
