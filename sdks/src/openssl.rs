//! The template applied to OpenSSL 3's per-thread error queue.
//!
//! Every failing libcrypto call pushes its reasons onto an error queue that
//! belongs to the calling OS thread; `ERR_get_error` pops from the queue of
//! the thread that calls it. Read on another thread (an async task that
//! hopped, a pool that ran the call elsewhere) the queue is empty, or holds
//! somebody else's errors. This module keeps the queue on one owner thread:
//! [`Crypto`] is the `!Send` state a [`PinnedWorker`] creates there, each of
//! its operations clears the queue before the call and drains it right
//! after, on the same thread, and parsed objects ([`Cert`], [`PrivateKey`])
//! stay on that thread as [`Bound`] handles and are freed there.
//!
//! `libcrypto.so.3` is opened at run time ([`Libcrypto::load`]), so this
//! builds on a machine without OpenSSL, and the tests say `SKIPPED` there
//! ([`LoadError::LibraryMissing`]); a libcrypto that opens but lacks an
//! entry point is a hard [`LoadError::SymbolMissing`].
//!
//! ```
//! use std::sync::Arc;
//! use pinned_ffi_sdks::openssl::{self, Libcrypto};
//!
//! let Ok(lib) = Libcrypto::load() else { return Ok(()) }; // no OpenSSL here
//! let worker = openssl::worker(&Arc::new(lib))?;
//! let err = worker.run(|c| c.parse_cert(b"not a certificate").map(|_| ()))?.unwrap_err();
//! assert!(err.to_string().contains("no start line"), "{err}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::{c_char, c_int, c_ulong, c_void, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, ThreadId};

use pinned_ffi::{Bound, PinnedWorker, Pool, SpawnError};

// ---------------------------------------------------------------------------
// Step 1: raw bindings. Only the entry points we call, loaded by name.
// ---------------------------------------------------------------------------

/// `BIO`, opaque.
#[repr(C)]
pub struct Bio {
    _opaque: [u8; 0],
}

/// `X509`, opaque.
#[repr(C)]
pub struct X509 {
    _opaque: [u8; 0],
}

/// `X509_NAME`, opaque.
#[repr(C)]
pub struct X509Name {
    _opaque: [u8; 0],
}

/// `EVP_PKEY`, opaque.
#[repr(C)]
pub struct EvpPkey {
    _opaque: [u8; 0],
}

/// `pem_password_cb`: fills `buf` with a passphrase, returns its length.
pub type PemPasswordCb = unsafe extern "C" fn(*mut c_char, c_int, c_int, *mut c_void) -> c_int;

/// The passphrase callback every PEM read here passes: it offers none, so an
/// encrypted key fails with an error instead of OpenSSL's default callback
/// prompting on the terminal.
extern "C" fn no_passphrase(_buf: *mut c_char, _size: c_int, _rw: c_int, _u: *mut c_void) -> c_int {
    0
}

/// libcrypto's entry points, resolved once from `libcrypto.so.3`.
#[allow(missing_docs)] // each field is the libcrypto function of that name
pub struct Libcrypto {
    _lib: libloading::Library,
    pub err_get_error: unsafe extern "C" fn() -> c_ulong,
    pub err_peek_error: unsafe extern "C" fn() -> c_ulong,
    pub err_clear_error: unsafe extern "C" fn(),
    pub err_error_string_n: unsafe extern "C" fn(c_ulong, *mut c_char, usize),
    pub err_reason_error_string: unsafe extern "C" fn(c_ulong) -> *const c_char,
    pub bio_new_mem_buf: unsafe extern "C" fn(*const c_void, c_int) -> *mut Bio,
    pub bio_free: unsafe extern "C" fn(*mut Bio) -> c_int,
    pub pem_read_bio_x509:
        unsafe extern "C" fn(*mut Bio, *mut *mut X509, Option<PemPasswordCb>, *mut c_void) -> *mut X509,
    pub x509_free: unsafe extern "C" fn(*mut X509),
    pub x509_get_subject_name: unsafe extern "C" fn(*const X509) -> *mut X509Name,
    pub x509_name_oneline: unsafe extern "C" fn(*const X509Name, *mut c_char, c_int) -> *mut c_char,
    pub pem_read_bio_private_key:
        unsafe extern "C" fn(*mut Bio, *mut *mut EvpPkey, Option<PemPasswordCb>, *mut c_void) -> *mut EvpPkey,
    pub evp_pkey_get_bits: unsafe extern "C" fn(*const EvpPkey) -> c_int,
    pub evp_pkey_free: unsafe extern "C" fn(*mut EvpPkey),
}

impl std::fmt::Debug for Libcrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Libcrypto(libcrypto.so.3)")
    }
}

/// Why [`Libcrypto::load`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The library file cannot be opened (`dlopen` failed): no OpenSSL 3
    /// on this machine. The one case tests skip on.
    #[error("{path} cannot be opened: {detail}")]
    LibraryMissing {
        /// The name or path given.
        path: String,
        /// What the dynamic loader said.
        detail: String,
    },
    /// The library opened but an entry point is not in it: not the
    /// libcrypto 3 it claims to be, or a broken install. A hard error.
    #[error("{path} has no {name}: {detail}")]
    SymbolMissing {
        /// The name or path given.
        path: String,
        /// The entry point.
        name: &'static str,
        /// What the dynamic loader said.
        detail: String,
    },
}

impl LoadError {
    /// Whether this means "no OpenSSL 3 on this machine" (the library
    /// cannot be opened): the only case a test may skip on.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LoadError::LibraryMissing { .. })
    }
}

impl Libcrypto {
    /// Opens the system's `libcrypto.so.3` (by soname, through the dynamic
    /// loader's search path) and resolves the entry points.
    ///
    /// # Errors
    /// [`LoadError::LibraryMissing`] when no `libcrypto.so.3` can be
    /// opened; [`LoadError::SymbolMissing`] when it lacks an entry point.
    pub fn load() -> Result<Libcrypto, LoadError> {
        // SAFETY: `libcrypto.so.3` is the soname OpenSSL 3 installs its
        // libcrypto under (the 3 is its ABI version: OpenSSL 1.1 is
        // libcrypto.so.1.1), found on the system's library path, so the
        // library opened is OpenSSL 3's libcrypto and its symbols have the
        // prototypes `load_from` casts them to.
        unsafe { Libcrypto::load_from("libcrypto.so.3") }
    }

    /// Like [`load`](Self::load) from a given path.
    ///
    /// # Safety
    /// `path` must name a genuine OpenSSL 3 libcrypto (or a library whose
    /// exports of these names have OpenSSL 3's prototypes and behaviour):
    /// its initialisers run on load, and every safe method of the returned
    /// `Libcrypto` calls its symbols as OpenSSL 3's, trusting what they
    /// return (e.g. `ERR_reason_error_string`'s string). Any other library
    /// exporting the same names makes those safe calls undefined behaviour.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    ///
    /// Calling it from safe code does not compile:
    ///
    /// ```compile_fail,E0133
    /// let _ = pinned_ffi_sdks::openssl::Libcrypto::load_from("libcrypto.so.3");
    /// ```
    pub unsafe fn load_from(path: impl AsRef<std::ffi::OsStr>) -> Result<Libcrypto, LoadError> {
        let shown = path.as_ref().to_string_lossy().into_owned();
        // SAFETY: the caller promises a genuine libcrypto 3, whose
        // initialisers are sound to run in any process; the Library lives
        // in `Libcrypto` as long as the function pointers taken from it.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::LibraryMissing {
            path: shown.clone(),
            detail: e.to_string(),
        })?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the library is OpenSSL 3's libcrypto (the
                // caller's promise), and the type matches OpenSSL 3's
                // prototype for this symbol (err.h, bio.h, pem.h, x509.h,
                // evp.h).
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| {
                    LoadError::SymbolMissing {
                        path: shown.clone(),
                        name: $name,
                        detail: e.to_string(),
                    }
                })?
            };
        }
        Ok(Libcrypto {
            err_get_error: sym!("ERR_get_error"),
            err_peek_error: sym!("ERR_peek_error"),
            err_clear_error: sym!("ERR_clear_error"),
            err_error_string_n: sym!("ERR_error_string_n"),
            err_reason_error_string: sym!("ERR_reason_error_string"),
            bio_new_mem_buf: sym!("BIO_new_mem_buf"),
            bio_free: sym!("BIO_free"),
            pem_read_bio_x509: sym!("PEM_read_bio_X509"),
            x509_free: sym!("X509_free"),
            x509_get_subject_name: sym!("X509_get_subject_name"),
            x509_name_oneline: sym!("X509_NAME_oneline"),
            pem_read_bio_private_key: sym!("PEM_read_bio_PrivateKey"),
            evp_pkey_get_bits: sym!("EVP_PKEY_get_bits"),
            evp_pkey_free: sym!("EVP_PKEY_free"),
            _lib: lib,
        })
    }

    /// `ERR_get_error`: pops the oldest error of the **calling thread's**
    /// queue (0 when it is empty).
    pub fn get_error(&self) -> c_ulong {
        // SAFETY: no arguments; touches only the calling thread's queue.
        unsafe { (self.err_get_error)() }
    }

    /// `ERR_peek_error`: the oldest error of the calling thread's queue,
    /// left in place (0 when it is empty).
    pub fn peek_error(&self) -> c_ulong {
        // SAFETY: no arguments; reads only the calling thread's queue.
        unsafe { (self.err_peek_error)() }
    }

    /// `ERR_clear_error`: empties the calling thread's queue.
    pub fn clear_error(&self) {
        // SAFETY: no arguments; touches only the calling thread's queue.
        unsafe { (self.err_clear_error)() }
    }

    /// `ERR_error_string_n`: OpenSSL's text for a packed error code, e.g.
    /// `error:0480006C:PEM routines::no start line`.
    pub fn error_string(&self, code: c_ulong) -> String {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer is valid for `buf.len()` bytes, which is the
        // length passed; OpenSSL NUL-terminates within it.
        unsafe { (self.err_error_string_n)(code, buf.as_mut_ptr(), buf.len()) };
        // SAFETY: NUL-terminated within `buf` (above), which outlives this.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// `ERR_reason_error_string`: the reason part alone (`no start line`),
    /// if OpenSSL knows one for `code`.
    pub fn reason(&self, code: c_ulong) -> Option<String> {
        // SAFETY: any code is accepted; the result is null or a static
        // NUL-terminated string.
        let s = unsafe { (self.err_reason_error_string)(code) };
        // SAFETY: non-null, NUL-terminated and static (checked above).
        (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
    }

    /// Pops every error on the calling thread's queue, oldest first. After
    /// it the queue is empty.
    pub fn drain(&self) -> ErrorStack {
        let mut errors = Vec::new();
        loop {
            let code = self.get_error();
            if code == 0 {
                break;
            }
            errors.push(SslErrorEntry {
                code,
                text: self.error_string(code),
                reason: self.reason(code),
            });
        }
        ErrorStack(errors)
    }

    /// Parses one PEM certificate and frees it at once, returning its
    /// subject, or `None` on failure. It **leaves the calling thread's
    /// error queue as OpenSSL left it** (neither cleared before nor
    /// drained after): the raw call, for showing what goes wrong when the
    /// queue is read elsewhere. Use [`Crypto::parse_cert`] instead.
    ///
    /// # Panics
    /// If `pem` is longer than `i32::MAX` bytes.
    pub fn raw_parse_cert(&self, pem: &[u8]) -> Option<String> {
        // SAFETY: `pem` is valid for its length for the whole call, which
        // owns the returned certificate and frees it.
        unsafe {
            let x509 = self.with_mem_bio(pem, |bio| {
                (self.pem_read_bio_x509)(
                    bio,
                    std::ptr::null_mut(),
                    Some(no_passphrase),
                    std::ptr::null_mut(),
                )
            })?;
            let subject = self.subject_of(x509);
            (self.x509_free)(x509);
            Some(subject)
        }
    }

    /// Runs `read` on a read-only memory BIO over `bytes`, then frees the
    /// BIO; `None` when `read` (or the BIO) returns null.
    ///
    /// # Safety
    /// `read` must not keep the BIO past its return, and the object it
    /// returns must not borrow the BIO (PEM reads copy what they parse).
    unsafe fn with_mem_bio<T>(&self, bytes: &[u8], read: impl FnOnce(*mut Bio) -> *mut T) -> Option<*mut T> {
        let len = c_int::try_from(bytes.len()).expect("PEM input longer than i32::MAX bytes");
        // SAFETY: `bytes` is valid for `len` bytes and outlives the BIO,
        // which is freed below before this function returns.
        let bio = unsafe { (self.bio_new_mem_buf)(bytes.as_ptr().cast(), len) };
        if bio.is_null() {
            return None;
        }
        let out = read(bio);
        // SAFETY: our BIO, freed once; `read` kept no use of it (contract).
        unsafe { (self.bio_free)(bio) };
        (!out.is_null()).then_some(out)
    }

    /// The one-line subject of a certificate, e.g. `/CN=pinned`.
    ///
    /// # Safety
    /// `x509` must be a live certificate.
    unsafe fn subject_of(&self, x509: *const X509) -> String {
        let mut buf = [0 as c_char; 512];
        // SAFETY: live certificate (contract); its name is an internal
        // pointer valid as long as it, and the buffer is valid for its
        // length, which X509_NAME_oneline NUL-terminates within.
        unsafe {
            let name = (self.x509_get_subject_name)(x509);
            if name.is_null()
                || (self.x509_name_oneline)(name, buf.as_mut_ptr(), buf.len() as c_int).is_null()
            {
                return String::new();
            }
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        }
    }
}

// ---------------------------------------------------------------------------
// Step 3: the error queue, read on the owner right after the call, cleared.
// ---------------------------------------------------------------------------

/// One entry of OpenSSL's error queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslErrorEntry {
    /// The packed error code (`ERR_get_error`'s value).
    pub code: c_ulong,
    /// `ERR_error_string_n`, e.g. `error:0480006C:PEM routines::no start line`.
    pub text: String,
    /// `ERR_reason_error_string`, e.g. `no start line`.
    pub reason: Option<String>,
}

/// The errors one call queued, oldest first (OpenSSL pushes the innermost
/// failure first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorStack(pub Vec<SslErrorEntry>);

impl ErrorStack {
    /// The packed codes, oldest first.
    pub fn codes(&self) -> Vec<c_ulong> {
        self.0.iter().map(|e| e.code).collect()
    }

    /// Whether the call queued nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for ErrorStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("failed without queueing an error");
        }
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&e.text)?;
        }
        Ok(())
    }
}

/// Why an OpenSSL operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SslError {
    /// OpenSSL refused the input; these are the errors it queued for this
    /// call, read on the thread that made it.
    #[error("OpenSSL: {0}")]
    Ssl(ErrorStack),
    /// The input is longer than OpenSSL's `int` lengths take.
    #[error("input of {len} bytes is longer than OpenSSL takes")]
    TooLarge {
        /// The input's length.
        len: usize,
    },
}

impl SslError {
    /// The queued codes (empty for errors that are not OpenSSL's).
    pub fn codes(&self) -> Vec<c_ulong> {
        match self {
            SslError::Ssl(stack) => stack.codes(),
            SslError::TooLarge { .. } => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Step 2: the !Send state, created on the owner thread.
// ---------------------------------------------------------------------------

/// Counts of objects freed, and of frees that happened off the owner
/// thread (always 0 through [`Bound`] handles). Shared with the caller
/// through [`Crypto::frees`].
#[derive(Debug, Default)]
pub struct Frees {
    certs: AtomicU64,
    keys: AtomicU64,
    off_owner: AtomicU64,
}

impl Frees {
    /// Certificates freed (`X509_free`).
    pub fn certs(&self) -> u64 {
        // ORDERING: Relaxed: a statistic, read after the frees it counts
        // were ordered by the job that reports it.
        self.certs.load(Ordering::Relaxed)
    }

    /// Keys freed (`EVP_PKEY_free`).
    pub fn keys(&self) -> u64 {
        // ORDERING: as `certs`.
        self.keys.load(Ordering::Relaxed)
    }

    /// Frees that ran on a thread other than the owner.
    pub fn off_owner(&self) -> u64 {
        // ORDERING: as `certs`.
        self.off_owner.load(Ordering::Relaxed)
    }

    fn record(&self, counter: &AtomicU64, owner: ThreadId) {
        // ORDERING: Relaxed: counters only; see `certs`.
        counter.fetch_add(1, Ordering::Relaxed);
        if thread::current().id() != owner {
            // ORDERING: as above.
            self.off_owner.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The owner thread's OpenSSL state: the library and this thread's error
/// queue. The marker makes it `!Send`: it never leaves the thread that
/// created it, so the queue its operations drain is the queue their calls
/// filled.
///
/// ```compile_fail
/// fn send<T: Send>() {}
/// send::<pinned_ffi_sdks::openssl::Crypto>();
/// ```
#[derive(Debug)]
pub struct Crypto {
    lib: Arc<Libcrypto>,
    owner: ThreadId,
    frees: Arc<Frees>,
    _not_send: PhantomData<*const ()>,
}

impl Crypto {
    /// Takes the calling (owner) thread for OpenSSL and empties its error
    /// queue. This is the `init` closure of [`worker`] and [`pool`].
    pub fn open(lib: Arc<Libcrypto>) -> Crypto {
        lib.clear_error();
        Crypto {
            lib,
            owner: thread::current().id(),
            frees: Arc::default(),
            _not_send: PhantomData,
        }
    }

    /// The library, for raw calls on this (the owner) thread.
    pub fn lib(&self) -> &Libcrypto {
        &self.lib
    }

    /// The thread this state belongs to.
    pub fn owner(&self) -> ThreadId {
        self.owner
    }

    /// The free counters of the objects this state parses.
    pub fn frees(&self) -> Arc<Frees> {
        Arc::clone(&self.frees)
    }

    /// Step 3's one place: clears the queue, makes the call, and drains the
    /// queue on this same thread right after, whatever the outcome, so no
    /// error of this call is left for the next job to read.
    fn checked<T>(&mut self, call: impl FnOnce(&Libcrypto) -> Option<T>) -> Result<T, SslError> {
        self.lib.clear_error();
        let out = call(&self.lib);
        // Drained on success too: some calls succeed with errors queued
        // (reading PEM objects to the end of a chain ends on a queued "no
        // start line"); left there they would be the next job's.
        let errors = self.lib.drain();
        out.ok_or(SslError::Ssl(errors))
    }

    /// Parses one PEM certificate (the first in `pem`).
    ///
    /// # Errors
    /// [`SslError::Ssl`] with the errors OpenSSL queued for this parse;
    /// [`SslError::TooLarge`] past `i32::MAX` bytes.
    pub fn parse_cert(&mut self, pem: &[u8]) -> Result<Cert, SslError> {
        if c_int::try_from(pem.len()).is_err() {
            return Err(SslError::TooLarge { len: pem.len() });
        }
        let x509 = self.checked(|lib| {
            // SAFETY: `pem` is valid for the call; PEM_read_bio_X509 copies
            // what it parses, so the result does not borrow the BIO.
            unsafe {
                lib.with_mem_bio(pem, |bio| {
                    (lib.pem_read_bio_x509)(
                        bio,
                        std::ptr::null_mut(),
                        Some(no_passphrase),
                        std::ptr::null_mut(),
                    )
                })
            }
        })?;
        Ok(Cert {
            lib: Arc::clone(&self.lib),
            // Non-null: `with_mem_bio` returns `None` for null.
            ptr: NonNull::new(x509).expect("non-null certificate"),
            owner: self.owner,
            frees: Arc::clone(&self.frees),
            _not_send: PhantomData,
        })
    }

    /// Parses one PEM private key (PKCS#8 or traditional; unencrypted, as
    /// no passphrase is offered).
    ///
    /// # Errors
    /// As [`parse_cert`](Self::parse_cert).
    pub fn parse_key(&mut self, pem: &[u8]) -> Result<PrivateKey, SslError> {
        if c_int::try_from(pem.len()).is_err() {
            return Err(SslError::TooLarge { len: pem.len() });
        }
        let key = self.checked(|lib| {
            // SAFETY: as in `parse_cert`; the key is a copy too.
            unsafe {
                lib.with_mem_bio(pem, |bio| {
                    (lib.pem_read_bio_private_key)(
                        bio,
                        std::ptr::null_mut(),
                        Some(no_passphrase),
                        std::ptr::null_mut(),
                    )
                })
            }
        })?;
        Ok(PrivateKey {
            lib: Arc::clone(&self.lib),
            // Non-null: `with_mem_bio` returns `None` for null.
            ptr: NonNull::new(key).expect("non-null key"),
            owner: self.owner,
            frees: Arc::clone(&self.frees),
            _not_send: PhantomData,
        })
    }

    /// Parses a certificate for its subject and frees it: the whole
    /// outcome of one parse as a `Send` value.
    ///
    /// # Errors
    /// As [`parse_cert`](Self::parse_cert).
    pub fn cert_subject(&mut self, pem: &[u8]) -> Result<String, SslError> {
        self.parse_cert(pem).map(|c| c.subject())
    }
}

// ---------------------------------------------------------------------------
// Step 4: one owner, or a pool of owners, each with its own error queue.
// ---------------------------------------------------------------------------

/// Starts one owner thread for OpenSSL.
///
/// # Errors
/// When the thread cannot be started.
pub fn worker(lib: &Arc<Libcrypto>) -> Result<PinnedWorker<Crypto>, SpawnError<std::convert::Infallible>> {
    let lib = Arc::clone(lib);
    PinnedWorker::builder()
        .name("openssl")
        .spawn(move || Ok(Crypto::open(Arc::clone(&lib))))
}

/// Starts `n` owner threads for OpenSSL. Any worker can parse any input;
/// keep a [`Bound`] object's calls on the worker that made it.
///
/// # Errors
/// When a thread cannot be started.
pub fn pool(lib: &Arc<Libcrypto>, n: usize) -> Result<Pool<Crypto>, SpawnError<std::convert::Infallible>> {
    let lib = Arc::clone(lib);
    Pool::builder(n)
        .name("openssl")
        .spawn(move |_| Ok(Crypto::open(Arc::clone(&lib))))
}

// ---------------------------------------------------------------------------
// Step 5: OpenSSL objects as owner-bound handles, freed on the owner.
// ---------------------------------------------------------------------------

/// A parsed certificate (`X509`), freed with `X509_free` when dropped.
/// `!Send`: hand it out as a [`CertHandle`] ([`bind_cert`]), so it stays,
/// and is freed, on the owner thread whose queue its calls use.
#[derive(Debug)]
pub struct Cert {
    lib: Arc<Libcrypto>,
    ptr: NonNull<X509>,
    owner: ThreadId,
    frees: Arc<Frees>,
    _not_send: PhantomData<*const ()>,
}

impl Cert {
    /// The subject in OpenSSL's one-line form, e.g. `/CN=pinned`.
    pub fn subject(&self) -> String {
        // SAFETY: our live certificate.
        unsafe { self.lib.subject_of(self.ptr.as_ptr()) }
    }

    /// The raw `X509*`, valid while `self` lives.
    pub fn as_ptr(&self) -> *mut X509 {
        self.ptr.as_ptr()
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        // SAFETY: our certificate, freed once; a Bound value is dropped
        // only on its owner thread.
        unsafe { (self.lib.x509_free)(self.ptr.as_ptr()) };
        self.frees.record(&self.frees.certs, self.owner);
    }
}

/// A parsed private key (`EVP_PKEY`), freed with `EVP_PKEY_free` when
/// dropped. `!Send`, like [`Cert`]; hand it out as a [`KeyHandle`].
#[derive(Debug)]
pub struct PrivateKey {
    lib: Arc<Libcrypto>,
    ptr: NonNull<EvpPkey>,
    owner: ThreadId,
    frees: Arc<Frees>,
    _not_send: PhantomData<*const ()>,
}

impl PrivateKey {
    /// The key's size in bits (`EVP_PKEY_get_bits`): 2048 for RSA-2048,
    /// 256 for P-256.
    pub fn bits(&self) -> u32 {
        // SAFETY: our live key.
        let bits = unsafe { (self.lib.evp_pkey_get_bits)(self.ptr.as_ptr()) };
        u32::try_from(bits).unwrap_or(0)
    }

    /// The raw `EVP_PKEY*`, valid while `self` lives.
    pub fn as_ptr(&self) -> *mut EvpPkey {
        self.ptr.as_ptr()
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        // SAFETY: our key, freed once, on the owner (as for `Cert`).
        unsafe { (self.lib.evp_pkey_free)(self.ptr.as_ptr()) };
        self.frees.record(&self.frees.keys, self.owner);
    }
}

/// A certificate handle: `Send`, usable from any thread through its worker
/// ([`PinnedWorker::with`]); dropping it frees the certificate on the owner.
pub type CertHandle = Bound<Cert>;

/// A private-key handle, as [`CertHandle`].
pub type KeyHandle = Bound<PrivateKey>;

/// Parses a certificate on `worker`'s owner thread and keeps it there.
///
/// ```
/// # use std::sync::Arc;
/// # use pinned_ffi_sdks::openssl::{self, Libcrypto};
/// # let Ok(lib) = Libcrypto::load() else { return Ok(()) };
/// # let worker = openssl::worker(&Arc::new(lib))?;
/// let junk = openssl::bind_cert(&worker, b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")?;
/// assert!(!junk.unwrap_err().codes().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The outer error is the executor's ([`pinned_ffi::Error`]); the inner is
/// the parse's ([`SslError`]).
pub fn bind_cert(
    worker: &PinnedWorker<Crypto>,
    pem: &[u8],
) -> Result<Result<CertHandle, SslError>, pinned_ffi::Error> {
    worker.try_bind(|c| c.parse_cert(pem))
}

/// Parses a private key on `worker`'s owner thread and keeps it there.
///
/// # Errors
/// As [`bind_cert`].
pub fn bind_key(
    worker: &PinnedWorker<Crypto>,
    pem: &[u8],
) -> Result<Result<KeyHandle, SslError>, pinned_ffi::Error> {
    worker.try_bind(|c| c.parse_key(pem))
}
