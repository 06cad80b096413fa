//! glibc's per-thread locale (`newlocale` + `uselocale`), pinned to an owner.
//!
//! `uselocale` sets the locale of the *calling thread*; every locale-aware
//! C call on that thread (`snprintf`'s `%f`, `strtod`) follows it. A task
//! that sets it and then awaits may resume on another thread, which formats
//! with that thread's locale, and the thread it left keeps the locale for
//! whatever runs there next. [`Formatter`] is the template's step 2 for this
//! library: a `!Send` state whose `init` makes a locale current on the owner
//! thread, whose operations run there, and whose `Drop` puts the thread
//! back on the global locale before freeing the locale object.
//!
//! ```
//! use pinned_ffi::PinnedWorker;
//! use pinned_ffi_sdks::locale::{Formatter, LocaleError};
//!
//! let worker = match PinnedWorker::spawn(|| Formatter::new(pinned_ffi_sdks::locale::GERMAN)) {
//!     Ok(w) => w,
//!     // This machine has no de_DE.UTF-8 (`localedef -i de_DE -f UTF-8 de_DE.UTF-8`).
//!     Err(pinned_ffi::SpawnError::Init(LocaleError::Missing { .. })) => return Ok(()),
//!     Err(e) => return Err(e.into()),
//! };
//! assert_eq!(worker.run(|f| f.format(1.5))?, "1,50");
//! assert_eq!(worker.run(|f| f.parse("2,25"))??, 2.25);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`raw`] holds the same calls on whatever thread calls them, for the
//! tests that show what goes wrong without an owner.

use std::ffi::{c_char, CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// The German locale the tests and examples use: decimal comma.
pub const GERMAN: &str = "de_DE.UTF-8";

/// The C locale: decimal point, present on every system.
pub const C: &str = "C";

/// glibc's `LC_GLOBAL_LOCALE` (`(locale_t) -1`), which the libc crate does
/// not export: passed to `uselocale`, the thread follows the process locale.
const LC_GLOBAL_LOCALE: libc::locale_t = std::ptr::without_provenance_mut(usize::MAX);

// ---------------------------------------------------------------------------
// Step 3: one place where failures become typed errors, read on the thread
// that made the call, right after it.
// ---------------------------------------------------------------------------

/// Why a locale could not be made or a number not parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocaleError {
    /// `newlocale` found no data for this locale on this machine (generate
    /// it with `localedef -i de_DE -f UTF-8 de_DE.UTF-8`, or install the
    /// `locales` package).
    #[error("locale {name} is not installed on this machine (generate it with localedef)")]
    Missing {
        /// The locale asked for.
        name: String,
    },
    /// The name contains a NUL byte.
    #[error("locale name {0:?} contains a NUL byte")]
    BadName(String),
    /// `newlocale` failed for another reason.
    #[error("newlocale({name}): {source}")]
    Os {
        /// The locale asked for.
        name: String,
        /// The `errno` it set.
        source: std::io::Error,
    },
    /// `strtod` read no number at the start of the input.
    #[error("{input:?} does not start with a number")]
    NotANumber {
        /// The text given.
        input: String,
    },
    /// `strtod` read a number but text was left after it (in the German
    /// locale `"1.5"` reads as `1` followed by `".5"`).
    #[error("{input:?}: text left after the number: {rest:?}")]
    Trailing {
        /// The text given.
        input: String,
        /// What `strtod` did not consume.
        rest: String,
    },
    /// The number does not fit an `f64` (`strtod` set `ERANGE`).
    #[error("{input:?} is out of range for f64")]
    OutOfRange {
        /// The text given.
        input: String,
    },
}

/// `newlocale(LC_ALL_MASK, name, 0)`, with its `errno` turned into an error.
fn new_locale(name: &str) -> Result<NonNull<std::ffi::c_void>, LocaleError> {
    let c_name = CString::new(name).map_err(|_| LocaleError::BadName(name.to_owned()))?;
    // SAFETY: a valid NUL-terminated name and a null base (a fresh object);
    // newlocale only reads its arguments.
    let loc = unsafe { libc::newlocale(libc::LC_ALL_MASK, c_name.as_ptr(), std::ptr::null_mut()) };
    // Read errno now, on this thread, before anything else can set it.
    let err = std::io::Error::last_os_error();
    match NonNull::new(loc) {
        Some(loc) => Ok(loc),
        None if err.raw_os_error() == Some(libc::ENOENT) => Err(LocaleError::Missing {
            name: name.to_owned(),
        }),
        None => Err(LocaleError::Os {
            name: name.to_owned(),
            source: err,
        }),
    }
}

/// `snprintf("%.2f", x)` on the calling thread's locale.
fn format_here(x: f64) -> String {
    const FMT: &CStr = c"%.2f";
    let mut buf = vec![0u8; 64];
    loop {
        // SAFETY: `buf` is valid for writes of its length; the format takes
        // exactly one double, which is what we pass.
        let n = unsafe { libc::snprintf(buf.as_mut_ptr().cast::<c_char>(), buf.len(), FMT.as_ptr(), x) };
        // A negative return is an output error; "%.2f" of a double has none.
        let n = usize::try_from(n).unwrap_or(0);
        if n < buf.len() {
            buf.truncate(n);
            // The locale's decimal separator and digits are ASCII here, but
            // a locale may use any UTF-8 (or other) bytes: keep them all.
            return String::from_utf8_lossy(&buf).into_owned();
        }
        buf.resize(n + 1, 0);
    }
}

/// `strtod` on the calling thread's locale, with `errno` read right after.
fn parse_here(input: &str) -> Result<f64, LocaleError> {
    let c_input = CString::new(input).map_err(|_| LocaleError::NotANumber {
        input: input.to_owned(),
    })?;
    let mut end: *mut c_char = std::ptr::null_mut();
    // SAFETY: errno is this thread's; clearing it lets us tell ERANGE from
    // a value left by an earlier call. strtod reads a NUL-terminated string
    // and writes `end` to point into it.
    let (value, errno) = unsafe {
        *libc::__errno_location() = 0;
        let value = libc::strtod(c_input.as_ptr(), &mut end);
        (value, *libc::__errno_location())
    };
    // SAFETY: `end` points into `c_input` (or at its start), so the offset
    // is within the same allocation and non-negative.
    let used = usize::try_from(unsafe { end.cast_const().offset_from(c_input.as_ptr()) }).unwrap_or(0);
    if used == 0 {
        return Err(LocaleError::NotANumber {
            input: input.to_owned(),
        });
    }
    if used < input.len() {
        return Err(LocaleError::Trailing {
            input: input.to_owned(),
            rest: String::from_utf8_lossy(&input.as_bytes()[used..]).into_owned(),
        });
    }
    if errno == libc::ERANGE && value.is_infinite() {
        return Err(LocaleError::OutOfRange {
            input: input.to_owned(),
        });
    }
    Ok(value)
}

// ---------------------------------------------------------------------------
// Step 2: the !Send state, created on the owner thread.
// ---------------------------------------------------------------------------

/// A numeric formatter bound to one locale, current on its owner thread.
///
/// Created by [`Formatter::new`] inside a worker's `init`: that makes the
/// locale current on the owner with `uselocale`. The raw pointer makes it
/// `!Send`, so it is used and dropped on that thread only; `Drop` puts the
/// thread back on the global locale, then frees the locale object.
///
/// ```compile_fail
/// fn needs_send<T: Send>() {}
/// needs_send::<pinned_ffi_sdks::locale::Formatter>();
/// ```
#[derive(Debug)]
pub struct Formatter {
    loc: NonNull<std::ffi::c_void>,
    name: String,
    repairs: u64,
    _not_send: PhantomData<*const ()>,
}

impl Formatter {
    /// Creates the locale `name` (e.g. [`GERMAN`], [`C`]) and makes it the
    /// calling thread's locale. This is the `init` closure of a worker.
    ///
    /// # Errors
    /// [`LocaleError::Missing`] when the machine has no data for `name`
    /// (tests skip on it), [`LocaleError::BadName`], [`LocaleError::Os`].
    pub fn new(name: &str) -> Result<Formatter, LocaleError> {
        let loc = new_locale(name)?;
        // SAFETY: `loc` is a valid locale object that we own; it stays
        // alive until `Drop`, which first takes it off this thread. The
        // value is !Send, so this thread is the one `Drop` runs on.
        unsafe { libc::uselocale(loc.as_ptr()) };
        Ok(Formatter {
            loc,
            name: name.to_owned(),
            repairs: 0,
            _not_send: PhantomData,
        })
    }

    /// The locale's name, as given to [`new`](Self::new).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this thread's locale is still this formatter's (a job that
    /// called `uselocale` itself may have changed it).
    pub fn is_current(&self) -> bool {
        // SAFETY: a null argument only queries this thread's locale.
        unsafe { libc::uselocale(std::ptr::null_mut()) == self.loc.as_ptr() }
    }

    /// How many times an operation found another locale on the thread and
    /// made this one current again.
    pub fn repairs(&self) -> u64 {
        self.repairs
    }

    /// Makes this formatter's locale the thread's again if a job changed it.
    fn ensure_current(&mut self) {
        if !self.is_current() {
            self.repairs += 1;
            // SAFETY: as in `new`: our live locale, on our own thread.
            unsafe { libc::uselocale(self.loc.as_ptr()) };
        }
    }

    /// `x` with two decimals, as `snprintf("%.2f")` writes it in this
    /// locale: `"1,50"` in German, `"1.50"` in C.
    pub fn format(&mut self, x: f64) -> String {
        self.ensure_current();
        format_here(x)
    }

    /// The number `text` spells in this locale, read by `strtod`; the whole
    /// text must be the number.
    ///
    /// # Errors
    /// [`LocaleError::NotANumber`], [`LocaleError::Trailing`] (`"1.5"` in
    /// German), [`LocaleError::OutOfRange`].
    pub fn parse(&mut self, text: &str) -> Result<f64, LocaleError> {
        self.ensure_current();
        parse_here(text)
    }
}

impl Drop for Formatter {
    fn drop(&mut self) {
        // SAFETY: this runs on the thread that made the locale current
        // (the value is !Send). Taking it off the thread first means no
        // thread uses it when it is freed, once, here.
        unsafe {
            libc::uselocale(LC_GLOBAL_LOCALE);
            libc::freelocale(self.loc.as_ptr());
        }
    }
}

// ---------------------------------------------------------------------------
// Without an owner: the raw calls, on whatever thread runs them.
// ---------------------------------------------------------------------------

/// The raw per-thread calls, without an owner: what the failure tests use
/// to show the wrong results. Real code uses a [`Formatter`] on a worker.
pub mod raw {
    use super::{LocaleError, NonNull, LC_GLOBAL_LOCALE};

    /// A locale object (`newlocale`), kept for the whole process so any
    /// thread may use it at any time. Leak one per locale you need.
    #[derive(Debug)]
    pub struct Locale {
        loc: NonNull<std::ffi::c_void>,
    }

    // SAFETY: a glibc locale object is immutable once made and may be
    // current on several threads at once; `Locale` never frees it.
    unsafe impl Send for Locale {}
    // SAFETY: as above: shared use is read-only.
    unsafe impl Sync for Locale {}

    impl Locale {
        /// Makes the locale `name` and leaks it, so it stays valid for any
        /// thread that makes it current.
        ///
        /// # Errors
        /// As [`Formatter::new`](super::Formatter::new).
        pub fn leak(name: &str) -> Result<&'static Locale, LocaleError> {
            let loc = super::new_locale(name)?;
            Ok(Box::leak(Box::new(Locale { loc })))
        }
    }

    /// `uselocale(loc)` on the calling thread: it stays until this thread
    /// changes it again, whatever runs on the thread next.
    pub fn use_here(loc: &'static Locale) {
        // SAFETY: the locale is leaked, so it outlives every thread using it.
        unsafe { libc::uselocale(loc.loc.as_ptr()) };
    }

    /// `uselocale(LC_GLOBAL_LOCALE)`: the calling thread follows the
    /// process locale again ("C" unless someone called `setlocale`).
    pub fn use_global() {
        // SAFETY: LC_GLOBAL_LOCALE is always a valid argument.
        unsafe { libc::uselocale(LC_GLOBAL_LOCALE) };
    }

    /// Whether `loc` is the calling thread's locale.
    pub fn is_current(loc: &Locale) -> bool {
        // SAFETY: a null argument only queries this thread's locale.
        unsafe { libc::uselocale(std::ptr::null_mut()) == loc.loc.as_ptr() }
    }

    /// `snprintf("%.2f", x)` in the calling thread's locale.
    pub fn format(x: f64) -> String {
        super::format_here(x)
    }

    /// `strtod(text)` in the calling thread's locale.
    ///
    /// # Errors
    /// As [`Formatter::parse`](super::Formatter::parse).
    pub fn parse(text: &str) -> Result<f64, LocaleError> {
        super::parse_here(text)
    }
}
