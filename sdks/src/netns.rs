//! Linux network namespaces per thread (`unshare`, `setns`), pinned to an
//! owner.
//!
//! A network namespace belongs to a *thread*: `unshare(CLONE_NEWNET)` moves
//! only the calling thread into a fresh namespace (which has nothing but a
//! down `lo`), and every socket, `ioctl` and `/proc/thread-self/net` read on
//! that thread sees it. An async task that unshares and then awaits may
//! resume on a thread still in the host namespace, and the runtime thread
//! it left stays in the new one for unrelated tasks. Go programs hit the
//! same hazard with goroutines and use a "namespace switcher" on a locked
//! OS thread; [`Namespace`] is that, as the template's step 2: a `!Send`
//! state whose `init` unshares (or joins a namespace) on the owner thread,
//! whose operations run there, and whose `Drop` moves the thread back to
//! the namespace it came from.
//!
//! ```
//! use pinned_ffi::{PinnedWorker, SpawnError};
//! use pinned_ffi_sdks::netns::{Namespace, NetnsError};
//!
//! let worker = match PinnedWorker::spawn(Namespace::unshare) {
//!     Ok(w) => w,
//!     // Not root (CAP_SYS_ADMIN is needed).
//!     Err(SpawnError::Init(NetnsError::NotPermitted { .. })) => return Ok(()),
//!     Err(e) => return Err(e.into()),
//! };
//! assert_eq!(worker.run(|ns| ns.interfaces())??, ["lo"]);
//! worker.run(|ns| ns.set_up("lo"))??;
//! assert!(worker.run(|ns| ns.is_up("lo"))??);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`raw`] holds the same calls on whatever thread calls them, for the
//! tests that show what goes wrong without an owner.

use std::ffi::{c_int, c_short};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// This thread's network namespace, as procfs names it.
const THREAD_NS: &str = "/proc/thread-self/ns/net";

/// The interfaces this thread's namespace has, one line each.
const THREAD_NET_DEV: &str = "/proc/thread-self/net/dev";

// ---------------------------------------------------------------------------
// Step 3: one place where failures become typed errors, with errno read on
// the thread that made the call, right after it.
// ---------------------------------------------------------------------------

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// The kernel refused (`EPERM`): `unshare`/`setns` of a network
    /// namespace and `SIOCSIFFLAGS` need `CAP_SYS_ADMIN`/`CAP_NET_ADMIN`.
    /// Tests skip on it.
    #[error("{op}: not permitted (needs CAP_SYS_ADMIN: run as root)")]
    NotPermitted {
        /// The call refused.
        op: &'static str,
    },
    /// Another system error.
    #[error("{op}: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// Its `errno`.
        source: io::Error,
    },
    /// A namespace file could not be opened (e.g. the other owner's thread
    /// has ended, so its `/proc/<pid>/task/<tid>/ns/net` is gone).
    #[error("{}: {source}", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why it could not be opened.
        source: io::Error,
    },
    /// The owner thread is not in the namespace this state says: a job
    /// called `unshare` or `setns` itself. The operation was not done.
    #[error("the owner thread is in network namespace {found}, not {expected}: a job moved it")]
    Moved {
        /// The namespace's inode this state keeps the thread in.
        expected: u64,
        /// The namespace's inode the thread is in.
        found: u64,
    },
    /// An interface name longer than `IFNAMSIZ - 1` bytes, or with a NUL.
    #[error("bad interface name {0:?}")]
    BadName(String),
}

impl From<io::Error> for NetnsError {
    fn from(source: io::Error) -> Self {
        NetnsError::Os { op: "procfs", source }
    }
}

/// A `-1` status becomes an error, with this thread's `errno`.
fn cvt(rc: c_int, op: &'static str) -> Result<c_int, NetnsError> {
    if rc != -1 {
        return Ok(rc);
    }
    let source = io::Error::last_os_error();
    Err(if source.raw_os_error() == Some(libc::EPERM) {
        NetnsError::NotPermitted { op }
    } else {
        NetnsError::Os { op, source }
    })
}

/// Opens a namespace file read-only (what `setns` needs).
fn open_ns(path: &Path) -> Result<OwnedFd, NetnsError> {
    let file = std::fs::File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    Ok(OwnedFd::from(file))
}

/// The inode number that identifies the namespace behind `fd`.
fn inode_of(fd: BorrowedFd<'_>) -> Result<u64, NetnsError> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live fd and a valid out pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, "fstat")?;
    Ok(st.st_ino)
}

/// `setns(fd, CLONE_NEWNET)` on the calling thread.
fn setns(fd: BorrowedFd<'_>) -> Result<(), NetnsError> {
    // SAFETY: a live fd; setns changes only the calling thread's namespace.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    cvt(rc, "setns").map(drop)
}

/// `unshare(CLONE_NEWNET)` on the calling thread.
fn unshare() -> Result<(), NetnsError> {
    // SAFETY: unshare(CLONE_NEWNET) moves only the calling thread into a
    // fresh network namespace; no memory is involved.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) }, "unshare").map(drop)
}

/// An `ifreq` naming `name`.
fn ifreq(name: &str) -> Result<libc::ifreq, NetnsError> {
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) || bytes.is_empty() {
        return Err(NetnsError::BadName(name.to_owned()));
    }
    // SAFETY: an all-zero `ifreq` is a valid value of this plain C struct
    // (a NUL-filled name and zero in every union member).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = b as libc::c_char;
    }
    Ok(req)
}

/// A datagram socket in the calling thread's namespace, for interface
/// `ioctl`s there.
fn control_socket() -> Result<OwnedFd, NetnsError> {
    // SAFETY: plain socket creation; no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let fd = cvt(fd, "socket")?;
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `SIOCGIFFLAGS` for `name` in the calling thread's namespace.
fn flags_here(sock: BorrowedFd<'_>, name: &str) -> Result<(libc::ifreq, c_short), NetnsError> {
    let mut req = ifreq(name)?;
    // SAFETY: a live socket and a valid `ifreq` the kernel fills in.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) };
    cvt(rc, "ioctl(SIOCGIFFLAGS)")?;
    // SAFETY: SIOCGIFFLAGS wrote the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok((req, flags))
}

// ---------------------------------------------------------------------------
// Step 2: the !Send state, created on the owner thread.
// ---------------------------------------------------------------------------

/// An owner thread's network namespace: the namespace it works in, the one
/// it was created in or joined ("home"), and the one it came from (the
/// host's, restored in `Drop`).
///
/// Created inside a worker's `init` by [`unshare`](Self::unshare) or
/// [`enter`](Self::enter). The marker makes it `!Send`, so it is used and
/// dropped on that thread only; [`switch_to`](Self::switch_to) is the
/// switcher that moves the owner into another namespace by path.
///
/// ```compile_fail
/// fn needs_send<T: Send>() {}
/// needs_send::<pinned_ffi_sdks::netns::Namespace>();
/// ```
#[derive(Debug)]
pub struct Namespace {
    /// Where the thread was before `init`: `Drop` goes back there.
    origin: OwnedFd,
    /// The namespace `init` made or joined: [`switch_home`](Self::switch_home) goes back there.
    home: OwnedFd,
    home_inode: u64,
    /// The namespace the thread is meant to be in now.
    inode: u64,
    tid: u64,
    _not_send: PhantomData<*const ()>,
}

impl Namespace {
    /// Moves the calling (owner) thread into a fresh network namespace,
    /// which has only a down `lo`. This is the `init` closure of a worker.
    ///
    /// # Errors
    /// [`NetnsError::NotPermitted`] when not root (tests skip on it), or
    /// the system's error.
    pub fn unshare() -> Result<Namespace, NetnsError> {
        let origin = open_ns(Path::new(THREAD_NS))?;
        unshare()?;
        Namespace::settled(origin)
    }

    /// Moves the calling (owner) thread into the namespace at `path` (e.g.
    /// another owner's [`path`](Self::path), or a bind mount under
    /// `/run/netns`), and makes it this state's home. An `init` closure.
    ///
    /// # Errors
    /// [`NetnsError::Open`] when `path` cannot be opened,
    /// [`NetnsError::NotPermitted`] when not root, or the system's error.
    pub fn enter(path: impl AsRef<Path>) -> Result<Namespace, NetnsError> {
        let origin = open_ns(Path::new(THREAD_NS))?;
        let target = open_ns(path.as_ref())?;
        setns(target.as_fd())?;
        Namespace::settled(origin)
    }

    /// The state, once the thread is in its new home.
    fn settled(origin: OwnedFd) -> Result<Namespace, NetnsError> {
        let settled = open_ns(Path::new(THREAD_NS)).and_then(|home| {
            let home_inode = inode_of(home.as_fd())?;
            Ok((home, home_inode))
        });
        match settled {
            Ok((home, home_inode)) => Ok(Namespace {
                origin,
                home,
                home_inode,
                inode: home_inode,
                tid: pinned_ffi::threads::current_tid(),
                _not_send: PhantomData,
            }),
            Err(e) => {
                // Don't leave the thread where it cannot be described.
                let _ = setns(origin.as_fd());
                Err(e)
            }
        }
    }

    /// The inode number of the namespace this owner works in now (what
    /// `readlink /proc/<tid>/ns/net` shows as `net:[N]`).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The inode number of the namespace `init` made or joined.
    pub fn home_inode(&self) -> u64 {
        self.home_inode
    }

    /// The owner thread's namespace file, `/proc/<pid>/task/<tid>/ns/net`:
    /// what another owner passes to [`switch_to`](Self::switch_to) or
    /// [`enter`](Self::enter) to join this namespace while this owner lives.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/task/{}/ns/net", std::process::id(), self.tid))
    }

    /// Checks that the owner thread is still in [`inode`](Self::inode).
    ///
    /// # Errors
    /// [`NetnsError::Moved`] when a job moved the thread (`unshare` or
    /// `setns` of its own), or the system's error reading procfs.
    pub fn verify(&self) -> Result<(), NetnsError> {
        let found = raw::inode_here()?;
        if found == self.inode {
            Ok(())
        } else {
            Err(NetnsError::Moved {
                expected: self.inode,
                found,
            })
        }
    }

    /// The switcher: moves the owner thread into the namespace at `path`
    /// and returns its inode number. Calls after it work there until the
    /// next switch; [`switch_home`](Self::switch_home) comes back.
    ///
    /// # Errors
    /// [`NetnsError::Open`] when `path` cannot be opened (the thread stays
    /// where it was), [`NetnsError::NotPermitted`], the system's error.
    pub fn switch_to(&mut self, path: impl AsRef<Path>) -> Result<u64, NetnsError> {
        let target = open_ns(path.as_ref())?;
        let inode = inode_of(target.as_fd())?;
        setns(target.as_fd())?;
        self.inode = inode;
        Ok(inode)
    }

    /// Moves the owner thread back into the namespace `init` made or joined
    /// (also after a job moved it).
    ///
    /// # Errors
    /// The system's error.
    pub fn switch_home(&mut self) -> Result<(), NetnsError> {
        setns(self.home.as_fd())?;
        self.inode = self.home_inode;
        Ok(())
    }

    /// The interfaces this namespace has, by name, in the kernel's order
    /// (`["lo"]` for a fresh one).
    ///
    /// # Errors
    /// [`NetnsError::Moved`] when a job moved the thread, or the system's
    /// error reading procfs.
    pub fn interfaces(&self) -> Result<Vec<String>, NetnsError> {
        self.verify()?;
        Ok(raw::interfaces_here()?)
    }

    /// Whether interface `name` is up (`IFF_UP`) in this namespace.
    ///
    /// # Errors
    /// [`NetnsError::Moved`], [`NetnsError::BadName`], the system's error
    /// (`ENODEV` for an interface this namespace lacks).
    pub fn is_up(&self, name: &str) -> Result<bool, NetnsError> {
        self.verify()?;
        let sock = control_socket()?;
        let (_, flags) = flags_here(sock.as_fd(), name)?;
        Ok(flags & libc::IFF_UP as c_short != 0)
    }

    /// Brings interface `name` up in this namespace (`SIOCSIFFLAGS` with
    /// `IFF_UP`), as `ip link set lo up` does.
    ///
    /// # Errors
    /// As [`is_up`](Self::is_up), and [`NetnsError::NotPermitted`].
    pub fn set_up(&self, name: &str) -> Result<(), NetnsError> {
        self.verify()?;
        let sock = control_socket()?;
        let (mut req, flags) = flags_here(sock.as_fd(), name)?;
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as c_short;
        // SAFETY: a live socket and an `ifreq` naming the interface, its
        // flags member just written.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) };
        cvt(rc, "ioctl(SIOCSIFFLAGS)").map(drop)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // The value is !Send, so this is the owner thread. Going back lets
        // the namespace go once nothing else holds it, and leaves the
        // thread as `init` found it for whatever runs on it until it ends.
        // A failure cannot be reported from Drop; the thread then ends in
        // the namespace it was in (a pinned-ffi owner ends right after).
        let _ = setns(self.origin.as_fd());
    }
}

// ---------------------------------------------------------------------------
// Without an owner: the raw calls, on whatever thread runs them.
// ---------------------------------------------------------------------------

/// The raw per-thread calls, without an owner: what the failure tests use
/// to show the wrong results. Real code uses a [`Namespace`] on a worker;
/// never call [`unshare_here`](raw::unshare_here) on an async runtime's thread.
pub mod raw {
    use super::{NetnsError, OwnedFd, Path, THREAD_NET_DEV, THREAD_NS};
    use std::io;
    use std::os::fd::AsFd;

    /// Moves the calling thread into a fresh network namespace: it stays
    /// there, whatever runs on the thread next, until it moves again.
    ///
    /// # Errors
    /// [`NetnsError::NotPermitted`] when not root, or the system's error.
    pub fn unshare_here() -> Result<(), NetnsError> {
        super::unshare()
    }

    /// Opens the calling thread's namespace, to come back to it with
    /// [`setns_here`].
    ///
    /// # Errors
    /// [`NetnsError::Open`].
    pub fn open_here() -> Result<OwnedFd, NetnsError> {
        super::open_ns(Path::new(THREAD_NS))
    }

    /// Moves the calling thread into the namespace `fd` refers to.
    ///
    /// # Errors
    /// [`NetnsError::NotPermitted`] when not root, or the system's error.
    pub fn setns_here(fd: &OwnedFd) -> Result<(), NetnsError> {
        super::setns(fd.as_fd())
    }

    /// The inode number of the calling thread's namespace, read from
    /// `readlink /proc/thread-self/ns/net` (`net:[N]`).
    ///
    /// # Errors
    /// The error reading procfs.
    pub fn inode_here() -> io::Result<u64> {
        let link = std::fs::read_link(THREAD_NS)?;
        let link = link.to_string_lossy();
        link.strip_prefix("net:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected {THREAD_NS} link {link:?}")))
    }

    /// The inode number of the namespace file at `path` (another thread's
    /// `/proc/<pid>/task/<tid>/ns/net`, or a bind mount).
    ///
    /// # Errors
    /// The error reading its metadata.
    pub fn inode_of(path: impl AsRef<Path>) -> io::Result<u64> {
        Ok(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path)?))
    }

    /// The interfaces the calling thread's namespace has
    /// (`/proc/thread-self/net/dev`), in the kernel's order.
    ///
    /// # Errors
    /// The error reading procfs.
    pub fn interfaces_here() -> io::Result<Vec<String>> {
        let text = std::fs::read_to_string(THREAD_NET_DEV)?;
        // Two header lines, then "  name: counters..." per interface.
        Ok(text
            .lines()
            .skip(2)
            .filter_map(|line| line.split_once(':'))
            .map(|(name, _)| name.trim().to_owned())
            .collect())
    }
}
