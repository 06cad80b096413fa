//! The template applied to glibc's `errno`: a last-error value per OS
//! thread (`__errno_location()` returns the calling thread's slot).
//!
//! A failing call sets the calling thread's `errno`; anything else that
//! runs on that thread afterwards may overwrite it, and another thread has
//! its own. Code that fails a call, `.await`s, and then reads `errno` reads
//! whichever thread it resumed on, after whatever that thread last did (a
//! runtime's own futex and epoll calls included). The cure is the same as
//! for every errno-style error: read it in the same job as the call, right
//! after it, on the same thread. [`Sys`] does that for each of its
//! operations and returns a typed [`Errno`]; [`worker`] and [`pool`] run
//! those jobs on owner threads, which matters when the library that sets
//! `errno` is itself thread-affine.
//!
//! ```
//! use pinned_ffi_sdks::errno::{self, Errno};
//!
//! let worker = errno::worker()?;
//! let missing = c"/nonexistent-pinned-ffi/file";
//! let err = worker.run(|sys| sys.open(missing, libc::O_RDONLY).map(drop))?.unwrap_err();
//! assert_eq!(err, Errno(libc::ENOENT));
//! assert_eq!(err.name(), Some("ENOENT"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::thread::{self, ThreadId};

use pinned_ffi::{PinnedWorker, Pool, SpawnError};

// ---------------------------------------------------------------------------
// Step 1: raw bindings: libc's, and the calling thread's errno slot.
// ---------------------------------------------------------------------------

/// The calling thread's `errno`.
pub fn errno() -> c_int {
    // SAFETY: __errno_location returns a valid pointer to the calling
    // thread's errno for the thread's whole life; we read it at once.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno` (to 0 before calls, such as
/// `strtol`, that report errors only through it).
pub fn set_errno(value: c_int) {
    // SAFETY: as in `errno`: the calling thread's own slot.
    unsafe { *libc::__errno_location() = value }
}

// ---------------------------------------------------------------------------
// Step 3: errno read right after the call, on the same thread.
// ---------------------------------------------------------------------------

/// An `errno` value, read on the thread that made the failing call, right
/// after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{}", describe(*.0))]
pub struct Errno(pub c_int);

/// `ENOENT: No such file or directory (os error 2)`.
fn describe(code: c_int) -> String {
    let e = Errno(code);
    match e.name() {
        Some(name) => format!("{name}: {}", e.message()),
        None => e.message(),
    }
}

impl Errno {
    /// The symbolic name of the values this module's operations give
    /// (`ENOENT`, `EBADF`, `EINVAL`, `ENOTDIR`, `ERANGE`...), if known.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::EINTR => "EINTR",
            libc::EBADF => "EBADF",
            libc::EAGAIN => "EAGAIN",
            libc::EACCES => "EACCES",
            libc::EEXIST => "EEXIST",
            libc::ENOTDIR => "ENOTDIR",
            libc::EISDIR => "EISDIR",
            libc::EINVAL => "EINVAL",
            libc::ESPIPE => "ESPIPE",
            libc::ERANGE => "ERANGE",
            libc::ETIMEDOUT => "ETIMEDOUT",
            _ => return None,
        })
    }

    /// The OS's text for it (`strerror`), as [`std::io::Error`] gives it.
    pub fn message(self) -> String {
        std::io::Error::from_raw_os_error(self.0).to_string()
    }

    /// Step 3's one place: `failed` is the call's own failure test (`-1`,
    /// a null pointer...); `errno` is read here, so call it immediately
    /// after the call, in the same job, with nothing in between.
    #[inline]
    pub fn check(failed: bool) -> Result<(), Errno> {
        if failed {
            Err(Errno(errno()))
        } else {
            Ok(())
        }
    }
}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.0)
    }
}

/// Failing calls, each with its own `errno`: the workload that shows
/// whose `errno` a reader gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Failure {
    /// `open` of a path that does not exist: `ENOENT`.
    MissingFile,
    /// `close(-1)`: `EBADF`.
    BadFd,
    /// `lseek` on `/dev/null` with an invalid `whence`: `EINVAL`.
    BadWhence,
    /// `open("/dev/null/x")`, a path through a non-directory: `ENOTDIR`.
    NotADirectory,
    /// `strtol` of a number past `i64`: `ERANGE`.
    OutOfRange,
}

const MISSING: &CStr = c"/nonexistent-pinned-ffi/file";
const THROUGH_FILE: &CStr = c"/dev/null/x";
const DEV_NULL: &CStr = c"/dev/null";
const TOO_BIG: &CStr = c"99999999999999999999999999";
const BAD_WHENCE: c_int = 12345;

impl Failure {
    /// Every failure, each with a different errno.
    pub const ALL: [Failure; 5] = [
        Failure::MissingFile,
        Failure::BadFd,
        Failure::BadWhence,
        Failure::NotADirectory,
        Failure::OutOfRange,
    ];

    /// The errno this failure sets.
    pub fn expected(self) -> Errno {
        Errno(match self {
            Failure::MissingFile => libc::ENOENT,
            Failure::BadFd => libc::EBADF,
            Failure::BadWhence => libc::EINVAL,
            Failure::NotADirectory => libc::ENOTDIR,
            Failure::OutOfRange => libc::ERANGE,
        })
    }

    /// Makes the failing call and **leaves the calling thread's errno as
    /// the call left it**, unread: the raw call, for showing what a later
    /// read gets. Use [`Sys::attempt`] instead.
    pub fn provoke(self) {
        let mut sys = Sys::new();
        // The value is the point of `attempt`; here only errno's side
        // effect is wanted, and `attempt` reads errno without changing it.
        let _ = sys.attempt(self);
    }
}

// ---------------------------------------------------------------------------
// Step 2: the !Send state, created on the owner thread.
// ---------------------------------------------------------------------------

/// The owner thread's handle on libc calls that report through `errno`.
/// The marker makes it `!Send`: the errno its operations read is the one
/// their calls set, on this thread.
///
/// ```compile_fail
/// fn send<T: Send>() {}
/// send::<pinned_ffi_sdks::errno::Sys>();
/// ```
#[derive(Debug)]
pub struct Sys {
    owner: ThreadId,
    _not_send: PhantomData<*const ()>,
}

impl Default for Sys {
    fn default() -> Self {
        Sys::new()
    }
}

impl Sys {
    /// Takes the calling thread. This is the `init` closure of [`worker`]
    /// and [`pool`].
    pub fn new() -> Sys {
        Sys {
            owner: thread::current().id(),
            _not_send: PhantomData,
        }
    }

    /// The thread this state belongs to.
    pub fn owner(&self) -> ThreadId {
        self.owner
    }

    /// `open(path, flags)`; the descriptor is closed when dropped.
    ///
    /// # Errors
    /// The call's errno (`ENOENT`, `ENOTDIR`, `EACCES`...).
    pub fn open(&mut self, path: &CStr, flags: c_int) -> Result<OwnedFd, Errno> {
        // SAFETY: `path` is NUL-terminated and lives through the call.
        let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
        Errno::check(fd < 0)?;
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// `close(fd)` of a raw descriptor the caller owns and gives up.
    ///
    /// # Safety
    /// `fd` must be closed by nobody else (no `OwnedFd` or `File` holds
    /// it); a negative or already closed `fd` is fine (it fails `EBADF`).
    ///
    /// # Errors
    /// The call's errno (`EBADF`, `EIO`...).
    pub unsafe fn close(&mut self, fd: RawFd) -> Result<(), Errno> {
        // SAFETY: the caller gives up `fd` (contract); closing an invalid
        // one only fails.
        let rc = unsafe { libc::close(fd) };
        Errno::check(rc < 0)
    }

    /// `lseek(fd, offset, whence)`, returning the new offset.
    ///
    /// # Errors
    /// The call's errno (`EINVAL` for a bad `whence`, `ESPIPE` on a pipe).
    pub fn lseek(&mut self, fd: &OwnedFd, offset: i64, whence: c_int) -> Result<u64, Errno> {
        use std::os::fd::AsRawFd;
        // SAFETY: a descriptor we hold open for the call; lseek has no
        // memory effects.
        let at = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
        Errno::check(at < 0)?;
        Ok(at as u64)
    }

    /// `strtol(s, &end, base)`: the whole of `s` as a number. `errno` is
    /// zeroed first: strtol reports overflow only through it, and on an
    /// owner thread it holds whatever the executor's own waits left.
    ///
    /// # Errors
    /// `ERANGE` past `i64`; `EINVAL` when `s` is not entirely a number
    /// (glibc sets nothing then; POSIX allows `EINVAL`, and we give it).
    pub fn strtol(&mut self, s: &CStr, base: c_int) -> Result<i64, Errno> {
        let mut end: *mut c_char = std::ptr::null_mut();
        set_errno(0);
        // SAFETY: `s` is NUL-terminated and lives through the call; `end`
        // is a valid out pointer.
        let v = unsafe { libc::strtol(s.as_ptr(), &mut end, base) };
        Errno::check(errno() != 0)?;
        // SAFETY: strtol sets `end` within `s` (at most its NUL).
        let rest = unsafe { CStr::from_ptr(end) };
        if s.is_empty() || !rest.is_empty() {
            return Err(Errno(libc::EINVAL));
        }
        Ok(v)
    }

    /// Makes `failure`'s call through the operations above and returns
    /// their error, read in this same job.
    ///
    /// # Errors
    /// `failure`'s errno ([`Failure::expected`]), if the call failed as
    /// meant; another errno if it failed otherwise.
    pub fn attempt(&mut self, failure: Failure) -> Result<(), Errno> {
        match failure {
            Failure::MissingFile => self.open(MISSING, libc::O_RDONLY).map(drop),
            // SAFETY: -1 is nobody's descriptor; closing it only fails.
            Failure::BadFd => unsafe { self.close(-1) },
            Failure::BadWhence => {
                let fd = self.open(DEV_NULL, libc::O_RDONLY)?;
                let out = self.lseek(&fd, 0, BAD_WHENCE).map(drop);
                // Closing `/dev/null` succeeds and leaves errno alone in
                // glibc; keep it exact anyway: errno is this call's.
                let saved = errno();
                drop(fd);
                set_errno(saved);
                out
            }
            Failure::NotADirectory => self.open(THROUGH_FILE, libc::O_RDONLY).map(drop),
            Failure::OutOfRange => self.strtol(TOO_BIG, 10).map(drop),
        }
    }
}

// ---------------------------------------------------------------------------
// Step 4: owners that run each call and its errno read in one job.
// ---------------------------------------------------------------------------

/// Starts one owner thread for `errno`-reporting calls.
///
/// # Errors
/// When the thread cannot be started.
pub fn worker() -> Result<PinnedWorker<Sys>, SpawnError<std::convert::Infallible>> {
    PinnedWorker::builder().name("errno").spawn(|| Ok(Sys::new()))
}

/// Starts `n` owner threads for `errno`-reporting calls.
///
/// # Errors
/// When a thread cannot be started.
pub fn pool(n: usize) -> Result<Pool<Sys>, SpawnError<std::convert::Infallible>> {
    Pool::builder(n).name("errno").spawn(|_| Ok(Sys::new()))
}
