//! The template's steps applied to EGL + OpenGL ES 2 on Mesa, headless.
//!
//! EGL keeps a *current context per OS thread* (`eglMakeCurrent`), and
//! every GL call goes to the calling thread's current context. A context is
//! current on at most one thread: on any other thread `glGetString` returns
//! NULL, `glClear` and `glReadPixels` do nothing, `glGetError` reports
//! nothing, and making the context current there fails with
//! `EGL_BAD_ACCESS`. Nothing tells the caller; the work is simply lost or
//! lands in another context. So the context lives on one owner thread
//! ([`GlContext`], `!Send`) and every call runs there ([`gl_worker`],
//! [`gl_pool`]).
//!
//! The display is Mesa's surfaceless platform
//! (`EGL_MESA_platform_surfaceless`, through `eglGetPlatformDisplay`) with a
//! small pbuffer surface: no window system, no GPU needed (llvmpipe).
//! `libEGL.so.1` and `libGLESv2.so.2` are opened at run time ([`Egl::load`]),
//! so this builds anywhere and a machine without them gets
//! [`GlError::LibraryMissing`] (a library that opens but lacks an entry
//! point is a hard [`GlError::SymbolMissing`], not a skip).
//!
//! | step | here |
//! |---|---|
//! | 1 raw bindings | [`Egl`]: entry points loaded with libloading |
//! | 2 `!Send` state made on the owner | [`GlContext::open`] |
//! | 3 errors read on the owner, right away, and cleared | [`Egl::egl_check`], [`GlContext::check`] |
//! | 4 a worker / pool of owners | [`gl_worker`], [`gl_pool`] |
//! | 5 SDK objects as owner-bound handles | [`Texture`], [`GlTexture`] |
//! | 6 shutdown in order | `Drop` of [`Texture`], then of [`GlContext`] |
//!
//! ```no_run
//! use pinned_ffi_sdks::egl::{gl_worker, GlContext, Texture};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gl = gl_worker()?; // the context is created and made current on the owner
//! let px = gl.run(|ctx| ctx.clear_and_read([255, 0, 0, 255]))??;
//! assert_eq!(px, [255, 0, 0, 255]);
//! let tex = gl.try_bind(|ctx| Texture::create(ctx, 4))??; // a Send handle
//! std::thread::spawn(move || drop(tex)).join().unwrap(); // deleted on the owner
//! # Ok(())
//! # }
//! ```
//!
//! The context cannot leave its thread:
//!
//! ```compile_fail
//! fn needs_send<T: Send>(_: T) {}
//! let ctx = pinned_ffi_sdks::egl::GlContext::open().unwrap();
//! needs_send(ctx);
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, ThreadId};

use pinned_ffi::{Bound, PinnedWorker, Pool, SpawnError};

// ---------------------------------------------------------------------------
// Step 1: raw bindings. Only the entry points we call, loaded by name.
// ---------------------------------------------------------------------------

/// `EGLDisplay`.
pub type EglDisplay = *mut c_void;
/// `EGLConfig`.
pub type EglConfig = *mut c_void;
/// `EGLContext`.
pub type EglContext = *mut c_void;
/// `EGLSurface`.
pub type EglSurface = *mut c_void;
/// `EGLint`.
pub type EglInt = i32;
/// `EGLBoolean`.
pub type EglBoolean = u32;
/// `EGLenum`.
pub type EglEnum = u32;
/// `GLenum`.
pub type GlEnum = u32;
/// `GLuint`.
pub type GlUint = u32;

/// `EGL_SUCCESS`.
pub const EGL_SUCCESS: EglInt = 0x3000;
/// `EGL_BAD_ACCESS`: e.g. making current a context that is current on
/// another thread.
pub const EGL_BAD_ACCESS: EglInt = 0x3002;
/// `EGL_PLATFORM_SURFACELESS_MESA`.
pub const EGL_PLATFORM_SURFACELESS_MESA: EglEnum = 0x31DD;
/// `EGL_NONE`, the end of an attribute list.
pub const EGL_NONE: EglInt = 0x3038;
/// `EGL_VENDOR`.
pub const EGL_VENDOR: EglInt = 0x3053;
/// `EGL_VERSION`.
pub const EGL_VERSION: EglInt = 0x3054;
/// `EGL_EXTENSIONS`.
pub const EGL_EXTENSIONS: EglInt = 0x3055;
const EGL_SURFACE_TYPE: EglInt = 0x3033;
const EGL_PBUFFER_BIT: EglInt = 0x0001;
const EGL_RENDERABLE_TYPE: EglInt = 0x3040;
const EGL_OPENGL_ES2_BIT: EglInt = 0x0004;
const EGL_RED_SIZE: EglInt = 0x3024;
const EGL_GREEN_SIZE: EglInt = 0x3023;
const EGL_BLUE_SIZE: EglInt = 0x3022;
const EGL_ALPHA_SIZE: EglInt = 0x3021;
const EGL_WIDTH: EglInt = 0x3057;
const EGL_HEIGHT: EglInt = 0x3056;
const EGL_CONTEXT_CLIENT_VERSION: EglInt = 0x3098;
const EGL_OPENGL_ES_API: EglEnum = 0x30A0;
const EGL_FALSE: EglBoolean = 0;
const EGL_DRAW: EglInt = 0x3059;
const EGL_READ: EglInt = 0x305A;

/// `GL_NO_ERROR`.
pub const GL_NO_ERROR: GlEnum = 0;
/// `GL_RENDERER`, for `glGetString`.
pub const GL_RENDERER: GlEnum = 0x1F01;
/// `GL_COLOR_BUFFER_BIT`, for `glClear`.
pub const GL_COLOR_BUFFER_BIT: u32 = 0x4000;
/// `GL_RGBA`.
pub const GL_RGBA: GlEnum = 0x1908;
/// `GL_UNSIGNED_BYTE`.
pub const GL_UNSIGNED_BYTE: GlEnum = 0x1401;
/// `GL_TEXTURE_2D`.
pub const GL_TEXTURE_2D: GlEnum = 0x0DE1;

/// Bounds the `glGetError` drain: a context keeps one flag per error kind,
/// so a handful of reads empties it; more means no context answers.
const MAX_GL_ERRORS: usize = 8;

/// EGL's and GLES's entry points, resolved once per process from
/// `libEGL.so.1` and `libGLESv2.so.2`, and the surfaceless display's
/// reference count. The libraries stay loaded for the life of the process.
#[allow(missing_docs)] // each field is the EGL or GL function of that name
pub struct Egl {
    _egl: libloading::Library,
    _gles: libloading::Library,
    display: Mutex<DisplayState>,
    pub egl_get_error: unsafe extern "C" fn() -> EglInt,
    pub egl_query_string: unsafe extern "C" fn(EglDisplay, EglInt) -> *const c_char,
    pub egl_get_proc_address: unsafe extern "C" fn(*const c_char) -> *mut c_void,
    /// EGL 1.5's `eglGetPlatformDisplay`, where libEGL has it.
    pub egl_get_platform_display:
        Option<unsafe extern "C" fn(EglEnum, *mut c_void, *const isize) -> EglDisplay>,
    pub egl_initialize: unsafe extern "C" fn(EglDisplay, *mut EglInt, *mut EglInt) -> EglBoolean,
    pub egl_terminate: unsafe extern "C" fn(EglDisplay) -> EglBoolean,
    pub egl_bind_api: unsafe extern "C" fn(EglEnum) -> EglBoolean,
    pub egl_choose_config:
        unsafe extern "C" fn(EglDisplay, *const EglInt, *mut EglConfig, EglInt, *mut EglInt) -> EglBoolean,
    pub egl_create_pbuffer_surface: unsafe extern "C" fn(EglDisplay, EglConfig, *const EglInt) -> EglSurface,
    pub egl_destroy_surface: unsafe extern "C" fn(EglDisplay, EglSurface) -> EglBoolean,
    pub egl_create_context:
        unsafe extern "C" fn(EglDisplay, EglConfig, EglContext, *const EglInt) -> EglContext,
    pub egl_destroy_context: unsafe extern "C" fn(EglDisplay, EglContext) -> EglBoolean,
    pub egl_make_current: unsafe extern "C" fn(EglDisplay, EglSurface, EglSurface, EglContext) -> EglBoolean,
    pub egl_get_current_context: unsafe extern "C" fn() -> EglContext,
    pub egl_get_current_display: unsafe extern "C" fn() -> EglDisplay,
    pub egl_get_current_surface: unsafe extern "C" fn(EglInt) -> EglSurface,
    pub egl_release_thread: unsafe extern "C" fn() -> EglBoolean,
    pub gl_get_error: unsafe extern "C" fn() -> GlEnum,
    pub gl_get_string: unsafe extern "C" fn(GlEnum) -> *const u8,
    pub gl_clear_color: unsafe extern "C" fn(f32, f32, f32, f32),
    pub gl_clear: unsafe extern "C" fn(u32),
    pub gl_read_pixels: unsafe extern "C" fn(i32, i32, i32, i32, GlEnum, GlEnum, *mut c_void),
    pub gl_gen_textures: unsafe extern "C" fn(i32, *mut GlUint),
    pub gl_delete_textures: unsafe extern "C" fn(i32, *const GlUint),
    pub gl_bind_texture: unsafe extern "C" fn(GlEnum, GlUint),
    pub gl_is_texture: unsafe extern "C" fn(GlUint) -> u8,
    pub gl_tex_image_2d: unsafe extern "C" fn(GlEnum, i32, i32, i32, i32, i32, GlEnum, GlEnum, *const c_void),
}

/// The surfaceless display and how many [`Display`]s hold it. EGL returns
/// one display per platform and native display for the whole process, and
/// `eglTerminate` ends it for everyone, so it is initialised by the first
/// holder and terminated by the last.
struct DisplayState {
    raw: EglDisplay,
    users: usize,
    version: (EglInt, EglInt),
}

// SAFETY: an `EGLDisplay` is a process-wide handle, and EGL's functions on
// it are thread-safe (EGL 1.5, section 2.7: EGL and its client APIs must be
// thread-safe); the state is only touched under `Egl::display`'s lock.
unsafe impl Send for DisplayState {}

impl std::fmt::Debug for Egl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Egl(libEGL.so.1, libGLESv2.so.2)")
    }
}

static EGL: OnceLock<Result<Egl, GlError>> = OnceLock::new();

impl Egl {
    /// Opens `libEGL.so.1` and `libGLESv2.so.2` (once per process) and
    /// resolves the entry points.
    ///
    /// # Errors
    /// [`GlError::LibraryMissing`] when a library cannot be opened (no GL
    /// here: a skip); [`GlError::SymbolMissing`] when it opens but lacks an
    /// entry point (a broken install: a hard error).
    pub fn load() -> Result<&'static Egl, GlError> {
        EGL.get_or_init(Egl::open).as_ref().map_err(Clone::clone)
    }

    fn open() -> Result<Egl, GlError> {
        let missing = |what: &str, e: libloading::Error| GlError::LibraryMissing(format!("{what}: {e}"));
        let no_symbol =
            |library: &'static str, name: &'static str, e: libloading::Error| GlError::SymbolMissing {
                library,
                name,
                detail: e.to_string(),
            };
        // SAFETY: loading the libraries runs their initialisers, which are
        // sound to run in any process; the libraries are kept in the
        // returned `Egl` (a process-wide static), so they outlive every
        // function pointer taken from them.
        let egl =
            unsafe { libloading::Library::new("libEGL.so.1") }.map_err(|e| missing("libEGL.so.1", e))?;
        // SAFETY: as above.
        let gles = unsafe { libloading::Library::new("libGLESv2.so.2") }
            .map_err(|e| missing("libGLESv2.so.2", e))?;
        macro_rules! sym {
            ($lib:ident, $name:literal) => {
                // SAFETY: the field's type is the function's prototype in
                // the Khronos headers (EGL/egl.h, GLES2/gl2.h).
                *unsafe { $lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| {
                    let library = if stringify!($lib) == "egl" {
                        "libEGL.so.1"
                    } else {
                        "libGLESv2.so.2"
                    };
                    no_symbol(library, $name, e)
                })?
            };
        }
        // SAFETY: as in `sym!`; a libEGL before 1.5 lacks it, and the
        // EXT form is looked up through eglGetProcAddress instead.
        let platform = unsafe { egl.get(b"eglGetPlatformDisplay\0") }.ok().map(|s| *s);
        Ok(Egl {
            display: Mutex::new(DisplayState {
                raw: std::ptr::null_mut(),
                users: 0,
                version: (0, 0),
            }),
            egl_get_error: sym!(egl, "eglGetError"),
            egl_query_string: sym!(egl, "eglQueryString"),
            egl_get_proc_address: sym!(egl, "eglGetProcAddress"),
            egl_get_platform_display: platform,
            egl_initialize: sym!(egl, "eglInitialize"),
            egl_terminate: sym!(egl, "eglTerminate"),
            egl_bind_api: sym!(egl, "eglBindAPI"),
            egl_choose_config: sym!(egl, "eglChooseConfig"),
            egl_create_pbuffer_surface: sym!(egl, "eglCreatePbufferSurface"),
            egl_destroy_surface: sym!(egl, "eglDestroySurface"),
            egl_create_context: sym!(egl, "eglCreateContext"),
            egl_destroy_context: sym!(egl, "eglDestroyContext"),
            egl_make_current: sym!(egl, "eglMakeCurrent"),
            egl_get_current_context: sym!(egl, "eglGetCurrentContext"),
            egl_get_current_display: sym!(egl, "eglGetCurrentDisplay"),
            egl_get_current_surface: sym!(egl, "eglGetCurrentSurface"),
            egl_release_thread: sym!(egl, "eglReleaseThread"),
            gl_get_error: sym!(gles, "glGetError"),
            gl_get_string: sym!(gles, "glGetString"),
            gl_clear_color: sym!(gles, "glClearColor"),
            gl_clear: sym!(gles, "glClear"),
            gl_read_pixels: sym!(gles, "glReadPixels"),
            gl_gen_textures: sym!(gles, "glGenTextures"),
            gl_delete_textures: sym!(gles, "glDeleteTextures"),
            gl_bind_texture: sym!(gles, "glBindTexture"),
            gl_is_texture: sym!(gles, "glIsTexture"),
            gl_tex_image_2d: sym!(gles, "glTexImage2D"),
            _egl: egl,
            _gles: gles,
        })
    }

    /// Step 3 for EGL: `ok` is whether the call succeeded by its own
    /// return value; on failure `eglGetError` is read now, on this thread
    /// (it is per thread, and reading it resets it to `EGL_SUCCESS`).
    ///
    /// # Errors
    /// [`GlError::Egl`] with the call's name and EGL's code.
    pub fn egl_check(&self, call: &'static str, ok: bool) -> Result<(), GlError> {
        // SAFETY: eglGetError takes nothing and reads this thread's status.
        let code = unsafe { (self.egl_get_error)() };
        if ok {
            return Ok(());
        }
        Err(GlError::Egl { call, code })
    }

    /// The calling thread's current context (`EGL_NO_CONTEXT`: null).
    pub fn current_context(&self) -> EglContext {
        // SAFETY: reads this thread's EGL state only.
        unsafe { (self.egl_get_current_context)() }
    }

    /// Drains the calling thread's GL error flags (`glGetError` until
    /// `GL_NO_ERROR`), so no stale error is left for the next call.
    pub fn drain_gl_errors(&self) -> Vec<GlEnum> {
        let mut codes = Vec::new();
        for _ in 0..MAX_GL_ERRORS {
            // SAFETY: glGetError takes nothing; without a current context
            // it returns GL_NO_ERROR.
            match unsafe { (self.gl_get_error)() } {
                GL_NO_ERROR => break,
                code => codes.push(code),
            }
        }
        codes
    }
}

/// The name of an EGL error code, e.g. `EGL_BAD_ACCESS`.
pub fn egl_error_name(code: EglInt) -> &'static str {
    match code {
        0x3000 => "EGL_SUCCESS",
        0x3001 => "EGL_NOT_INITIALIZED",
        0x3002 => "EGL_BAD_ACCESS",
        0x3003 => "EGL_BAD_ALLOC",
        0x3004 => "EGL_BAD_ATTRIBUTE",
        0x3005 => "EGL_BAD_CONFIG",
        0x3006 => "EGL_BAD_CONTEXT",
        0x3007 => "EGL_BAD_CURRENT_SURFACE",
        0x3008 => "EGL_BAD_DISPLAY",
        0x3009 => "EGL_BAD_MATCH",
        0x300A => "EGL_BAD_NATIVE_PIXMAP",
        0x300B => "EGL_BAD_NATIVE_WINDOW",
        0x300C => "EGL_BAD_PARAMETER",
        0x300D => "EGL_BAD_SURFACE",
        0x300E => "EGL_CONTEXT_LOST",
        _ => "EGL_UNKNOWN_ERROR",
    }
}

/// The name of a GL error code, e.g. `GL_INVALID_OPERATION`.
pub fn gl_error_name(code: GlEnum) -> &'static str {
    match code {
        0 => "GL_NO_ERROR",
        0x0500 => "GL_INVALID_ENUM",
        0x0501 => "GL_INVALID_VALUE",
        0x0502 => "GL_INVALID_OPERATION",
        0x0505 => "GL_OUT_OF_MEMORY",
        0x0506 => "GL_INVALID_FRAMEBUFFER_OPERATION",
        _ => "GL_UNKNOWN_ERROR",
    }
}

fn gl_names(codes: &[GlEnum]) -> String {
    codes
        .iter()
        .map(|&c| format!("{} (0x{c:04X})", gl_error_name(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What can go wrong opening or using a GL context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GlError {
    /// `libEGL.so.1` or `libGLESv2.so.2` cannot be opened (`dlopen`
    /// failed): no GL on this machine.
    #[error("library missing: {0}")]
    LibraryMissing(String),
    /// The library opened, but an entry point is not in it: a broken or
    /// foreign install, not "no GL here".
    #[error("{library} has no {name}: {detail}")]
    SymbolMissing {
        /// The library that lacks it.
        library: &'static str,
        /// The entry point.
        name: &'static str,
        /// What the dynamic loader said.
        detail: String,
    },
    /// The libraries load, but EGL does not offer the headless platform:
    /// `EGL_MESA_platform_surfaceless` is not a client extension here.
    /// (A platform that is offered but fails, in `eglGetPlatformDisplay`
    /// or `eglInitialize`, is a [`GlError::Egl`].)
    #[error("no surfaceless EGL display: {0}")]
    DisplayUnavailable(String),
    /// No config offers a pbuffer surface with OpenGL ES 2.
    #[error("no EGL config with a pbuffer surface and OpenGL ES 2")]
    NoConfig,
    /// An EGL call failed; `code` is what `eglGetError` said right after.
    #[error("{call} failed: {} (0x{code:04X})", egl_error_name(*code))]
    Egl {
        /// The EGL function.
        call: &'static str,
        /// `eglGetError`.
        code: EglInt,
    },
    /// GL recorded errors during `call`: every `glGetError` code, in the
    /// order read (the flags are cleared).
    #[error("{call}: {}", gl_names(codes))]
    Gl {
        /// The GL function (or group of calls).
        call: &'static str,
        /// The `glGetError` codes.
        codes: Vec<GlEnum>,
    },
    /// The context is not current on this thread and could not be made
    /// current (it is current on another thread).
    #[error("{0}: the context is not current on this thread")]
    NotCurrent(&'static str),
}

impl GlError {
    /// Whether the error means "no GL on this machine": a library that
    /// cannot be opened, or a surfaceless platform EGL does not offer. The
    /// only cases tests skip on; a missing entry point or a failed
    /// initialisation is a real failure.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, GlError::LibraryMissing(_) | GlError::DisplayUnavailable(_))
    }
}

/// One hold on the process's surfaceless display, initialised by the
/// first holder and terminated when the last is dropped.
#[derive(Debug)]
pub struct Display {
    egl: &'static Egl,
    raw: EglDisplay,
}

// SAFETY: an EGLDisplay is a process-wide handle and EGL is thread-safe on
// it (EGL 1.5, section 2.7); the hold count is behind `Egl::display`.
unsafe impl Send for Display {}
// SAFETY: as for Send: `&Display` only hands out the handle value.
unsafe impl Sync for Display {}

impl Display {
    /// Gets Mesa's surfaceless display and initialises it if this is the
    /// first hold.
    ///
    /// # Errors
    /// [`Egl::load`]'s; [`GlError::DisplayUnavailable`] without the
    /// surfaceless platform; [`GlError::Egl`] when getting or initialising
    /// the display fails.
    pub fn open() -> Result<Display, GlError> {
        let egl = Egl::load()?;
        let mut state = egl.display.lock().unwrap_or_else(|e| e.into_inner());
        if state.users == 0 {
            let raw = surfaceless_display(egl)?;
            let (mut major, mut minor) = (0, 0);
            // SAFETY: a display from eglGetPlatformDisplay, valid out
            // pointers.
            let ok = unsafe { (egl.egl_initialize)(raw, &mut major, &mut minor) } != EGL_FALSE;
            egl.egl_check("eglInitialize", ok)?;
            state.raw = raw;
            state.version = (major, minor);
        }
        state.users += 1;
        Ok(Display { egl, raw: state.raw })
    }

    /// The raw `EGLDisplay`.
    pub fn raw(&self) -> EglDisplay {
        self.raw
    }

    /// The EGL version `eglInitialize` reported, e.g. `(1, 5)`.
    pub fn version(&self) -> (EglInt, EglInt) {
        self.egl.display.lock().unwrap_or_else(|e| e.into_inner()).version
    }

    /// `eglQueryString(EGL_VENDOR)`, e.g. `Mesa Project`.
    pub fn vendor(&self) -> String {
        self.query(EGL_VENDOR).unwrap_or_default()
    }

    fn query(&self, name: EglInt) -> Option<String> {
        // SAFETY: an initialised display (we hold it); EGL returns a static
        // NUL-terminated string or NULL.
        let s = unsafe { (self.egl.egl_query_string)(self.raw, name) };
        // SAFETY: non-null, NUL-terminated, static for the display's life.
        (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
    }

    /// Gives the hold back; returns whether this was the last one (and the
    /// display was terminated).
    fn release(self) -> bool {
        let terminated = self.release_hold();
        std::mem::forget(self);
        terminated
    }

    fn release_hold(&self) -> bool {
        let mut state = self.egl.display.lock().unwrap_or_else(|e| e.into_inner());
        state.users -= 1;
        if state.users > 0 {
            return false;
        }
        // SAFETY: the last hold: every context and surface made through a
        // hold was destroyed before the hold was given back (GlContext's
        // Drop), so nothing uses the display any more.
        let ok = unsafe { (self.egl.egl_terminate)(self.raw) } != EGL_FALSE;
        // Read (and clear) eglGetError either way; a failed terminate
        // leaves nothing more to do.
        self.egl.egl_check("eglTerminate", ok).is_ok()
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.release_hold();
    }
}

fn surfaceless_display(egl: &Egl) -> Result<EglDisplay, GlError> {
    // SAFETY: EGL_NO_DISPLAY with EGL_EXTENSIONS asks for the client
    // extensions: a static string, or NULL before EGL 1.5.
    let ext = unsafe { (egl.egl_query_string)(std::ptr::null_mut(), EGL_EXTENSIONS) };
    let ext = if ext.is_null() {
        String::new()
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(ext) }.to_string_lossy().into_owned()
    };
    let _ = egl.egl_check("eglQueryString", true);
    if !ext.split(' ').any(|e| e == "EGL_MESA_platform_surfaceless") {
        return Err(GlError::DisplayUnavailable(
            "EGL_MESA_platform_surfaceless is not a client extension here".into(),
        ));
    }
    let raw = if let Some(get) = egl.egl_get_platform_display {
        // SAFETY: the platform is one the client extensions list; its
        // native display is EGL_DEFAULT_DISPLAY (NULL), no attributes.
        unsafe {
            get(
                EGL_PLATFORM_SURFACELESS_MESA,
                std::ptr::null_mut(),
                std::ptr::null(),
            )
        }
    } else {
        // SAFETY: a NUL-terminated name; EGL returns NULL if unknown.
        let f = unsafe { (egl.egl_get_proc_address)(c"eglGetPlatformDisplayEXT".as_ptr()) };
        if f.is_null() {
            // The client extensions list the platform, so EGL_EXT_platform_base
            // is there: its entry point missing is a broken libEGL.
            return Err(GlError::SymbolMissing {
                library: "libEGL.so.1",
                name: "eglGetPlatformDisplayEXT",
                detail: "eglGetProcAddress returned NULL".into(),
            });
        }
        type GetExt = unsafe extern "C" fn(EglEnum, *mut c_void, *const EglInt) -> EglDisplay;
        // SAFETY: eglGetPlatformDisplayEXT has this prototype
        // (EGL_EXT_platform_base).
        let get: GetExt = unsafe { std::mem::transmute::<*mut c_void, GetExt>(f) };
        // SAFETY: as for eglGetPlatformDisplay above.
        unsafe {
            get(
                EGL_PLATFORM_SURFACELESS_MESA,
                std::ptr::null_mut(),
                std::ptr::null(),
            )
        }
    };
    let got = !raw.is_null();
    egl.egl_check("eglGetPlatformDisplay", got)?;
    Ok(raw)
}

// ---------------------------------------------------------------------------
// Step 2: the !Send state, created on the owner thread.
// ---------------------------------------------------------------------------

/// The side of a pbuffer [`GlContext::open`] makes, in pixels.
pub const PBUFFER_SIZE: i32 = 16;

/// What shutdown did, step by step, for a test or a log to check the
/// order (see [`GlContext::set_teardown_log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Teardown {
    /// A [`Texture`] was dropped.
    Texture {
        /// The GL texture name.
        name: GlUint,
        /// The thread that dropped it.
        thread: ThreadId,
        /// Whether its context was still alive on that thread. If not, the
        /// texture died with its context (`eglDestroyContext` frees it)
        /// and nothing was deleted: the name may belong to a newer context
        /// now, even one at the same address.
        context_alive: bool,
        /// Whether its context was current for the delete (made current
        /// for it if another context, or none, was, and the previous one
        /// restored after). False if the context was gone or could not be
        /// made current: then nothing was deleted.
        context_current: bool,
        /// `glIsTexture` just before the delete.
        was_texture: bool,
    },
    /// A [`GlContext`] was dropped.
    Context {
        /// The thread that dropped it.
        thread: ThreadId,
        /// `eglMakeCurrent(EGL_NO_CONTEXT)` succeeded (false if the
        /// context was not current there).
        released: bool,
        /// `eglDestroySurface` succeeded.
        surface_destroyed: bool,
        /// `eglDestroyContext` succeeded.
        context_destroyed: bool,
        /// This was the display's last holder, and it was terminated.
        display_terminated: bool,
    },
}

/// A shared list of [`Teardown`] steps, in the order they happened.
pub type TeardownLog = Arc<Mutex<Vec<Teardown>>>;

/// The raw EGL handles of a context, for code that breaks the rules on
/// purpose (the proof tests, the report's rebinding peer). Raw code that
/// changes which context is current on a thread holding a [`GlContext`]
/// must make that context current again before the `GlContext` is used
/// there: its methods remember what they made current instead of asking
/// EGL on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHandles {
    /// The display.
    pub display: EglDisplay,
    /// The pbuffer surface.
    pub surface: EglSurface,
    /// The context.
    pub context: EglContext,
}

// SAFETY: these are handle values, names valid process-wide; moving a
// name between threads touches nothing. Every use of them is an unsafe EGL
// call whose caller answers for EGL's make-current rules.
unsafe impl Send for RawHandles {}
// SAFETY: as for Send.
unsafe impl Sync for RawHandles {}

/// The next [`GlContext`] generation id; 0 means "none".
static NEXT_CONTEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The id of the [`GlContext`] that last made itself current on this
    /// thread (0: none). Asking EGL (`eglGetCurrentContext`) costs ~200 ns
    /// through libglvnd, fifty times a `glGetError`, so the per-call check
    /// reads this instead. An id, not an address: a new context may get a
    /// dead one's address.
    static MADE_CURRENT: Cell<u64> = const { Cell::new(0) };
    /// The [`GlContext`]s alive on this thread, by id: registered at the
    /// end of [`GlContext::open`], removed by its `Drop`. A [`Texture`]
    /// looks its context up here to know whether it is still alive.
    static LIVE_CONTEXTS: RefCell<HashMap<u64, RawHandles>> = RefCell::new(HashMap::new());
}

/// The handles of live context `id` on this thread, if it is alive (none
/// too while the thread's locals are being torn down).
fn live_context(id: u64) -> Option<RawHandles> {
    LIVE_CONTEXTS
        .try_with(|live| live.borrow().get(&id).copied())
        .ok()
        .flatten()
}

/// An OpenGL ES 2 context on Mesa's surfaceless display with a small
/// pbuffer, current on the thread that opened it. `!Send`: it never leaves
/// that thread; run it on a [`PinnedWorker`] ([`gl_worker`], [`gl_pool`]).
#[derive(Debug)]
pub struct GlContext {
    /// This context's generation id, unique in the process.
    id: u64,
    egl: &'static Egl,
    display: Option<Display>,
    surface: EglSurface,
    context: EglContext,
    teardown: Option<TeardownLog>,
    _not_send: PhantomData<*const ()>,
}

impl GlContext {
    /// Creates a context and a [`PBUFFER_SIZE`]² pbuffer and makes them
    /// current on the calling thread. This is the `init` of the worker.
    ///
    /// # Errors
    /// [`GlError::LibraryMissing`] or [`GlError::DisplayUnavailable`] when
    /// this machine has no headless GL; [`GlError::NoConfig`]; otherwise
    /// the failing EGL call's [`GlError::Egl`].
    pub fn open() -> Result<GlContext, GlError> {
        let display = Display::open()?;
        let egl = display.egl;
        let d = display.raw;
        // Half-built contexts are torn down by Drop, which skips nulls.
        let mut ctx = GlContext {
            // ORDERING: only uniqueness matters; no data is published with it.
            id: NEXT_CONTEXT_ID.fetch_add(1, Ordering::Relaxed),
            egl,
            display: Some(display),
            surface: std::ptr::null_mut(),
            context: std::ptr::null_mut(),
            teardown: None,
            _not_send: PhantomData,
        };
        // SAFETY: eglBindAPI sets this thread's client API (it is per
        // thread, so it must run here, on the owner).
        let ok = unsafe { (egl.egl_bind_api)(EGL_OPENGL_ES_API) } != EGL_FALSE;
        egl.egl_check("eglBindAPI", ok)?;
        let attrs = [
            EGL_SURFACE_TYPE,
            EGL_PBUFFER_BIT,
            EGL_RENDERABLE_TYPE,
            EGL_OPENGL_ES2_BIT,
            EGL_RED_SIZE,
            8,
            EGL_GREEN_SIZE,
            8,
            EGL_BLUE_SIZE,
            8,
            EGL_ALPHA_SIZE,
            8,
            EGL_NONE,
        ];
        let mut config: EglConfig = std::ptr::null_mut();
        let mut n = 0;
        // SAFETY: an initialised display, an EGL_NONE-terminated list, room
        // for one config.
        let ok = unsafe { (egl.egl_choose_config)(d, attrs.as_ptr(), &mut config, 1, &mut n) } != EGL_FALSE;
        egl.egl_check("eglChooseConfig", ok)?;
        if n < 1 {
            return Err(GlError::NoConfig);
        }
        let size = [EGL_WIDTH, PBUFFER_SIZE, EGL_HEIGHT, PBUFFER_SIZE, EGL_NONE];
        // SAFETY: a config from eglChooseConfig, a terminated list.
        ctx.surface = unsafe { (egl.egl_create_pbuffer_surface)(d, config, size.as_ptr()) };
        egl.egl_check("eglCreatePbufferSurface", !ctx.surface.is_null())?;
        let version = [EGL_CONTEXT_CLIENT_VERSION, 2, EGL_NONE];
        // SAFETY: as above; no share context.
        ctx.context = unsafe { (egl.egl_create_context)(d, config, std::ptr::null_mut(), version.as_ptr()) };
        egl.egl_check("eglCreateContext", !ctx.context.is_null())?;
        // SAFETY: our surface and context, current on no thread yet.
        let ok = unsafe { (egl.egl_make_current)(d, ctx.surface, ctx.surface, ctx.context) } != EGL_FALSE;
        egl.egl_check("eglMakeCurrent", ok)?;
        MADE_CURRENT.with(|c| c.set(ctx.id));
        LIVE_CONTEXTS.with(|live| live.borrow_mut().insert(ctx.id, ctx.raw()));
        let _ = egl.drain_gl_errors();
        Ok(ctx)
    }

    /// The entry points, for raw calls on this (the owner) thread.
    pub fn egl(&self) -> &'static Egl {
        self.egl
    }

    /// The raw handles (see [`RawHandles`]).
    pub fn raw(&self) -> RawHandles {
        RawHandles {
            display: self.display.as_ref().map_or(std::ptr::null_mut(), Display::raw),
            surface: self.surface,
            context: self.context,
        }
    }

    /// The display this context is on (version, vendor).
    pub fn display(&self) -> &Display {
        self.display.as_ref().expect("the display is held until drop")
    }

    /// Records this context's shutdown steps, and those of the textures
    /// created on it from now on, in `log`.
    pub fn set_teardown_log(&mut self, log: TeardownLog) {
        self.teardown = Some(log);
    }

    /// Makes sure the context is current on this thread (another
    /// `GlContext` opened on the same thread would have replaced it).
    fn current(&self, call: &'static str) -> Result<(), GlError> {
        if MADE_CURRENT.with(Cell::get) == self.id {
            return Ok(());
        }
        let d = self.raw().display;
        // SAFETY: our surface and context; EGL refuses (EGL_BAD_ACCESS) if
        // another thread has it current, which the check reports.
        let ok =
            unsafe { (self.egl.egl_make_current)(d, self.surface, self.surface, self.context) } != EGL_FALSE;
        self.egl
            .egl_check("eglMakeCurrent", ok)
            .map_err(|_| GlError::NotCurrent(call))?;
        MADE_CURRENT.with(|c| c.set(self.id));
        Ok(())
    }

    /// Step 3 for GL: reads every pending `glGetError` code on this thread
    /// (call it right after `call`'s GL calls), which clears them.
    ///
    /// # Errors
    /// [`GlError::Gl`] with the codes read.
    pub fn check(&self, call: &'static str) -> Result<(), GlError> {
        let codes = self.egl.drain_gl_errors();
        if codes.is_empty() {
            Ok(())
        } else {
            Err(GlError::Gl { call, codes })
        }
    }

    /// `glGetError`, drained: the cheapest GL call there is.
    ///
    /// # Errors
    /// [`GlError::Gl`] if errors were pending; [`GlError::NotCurrent`].
    #[inline]
    pub fn error(&self) -> Result<(), GlError> {
        self.current("glGetError")?;
        self.check("glGetError")
    }

    /// `glGetString(GL_RENDERER)`, e.g. `llvmpipe (LLVM 15.0.7, 256 bits)`.
    ///
    /// # Errors
    /// [`GlError::Gl`] if GL returned NULL.
    pub fn renderer(&self) -> Result<String, GlError> {
        self.current("glGetString")?;
        // SAFETY: a valid enum; GL returns a static string or NULL.
        let s = unsafe { (self.egl.gl_get_string)(GL_RENDERER) };
        let errors = self.check("glGetString");
        if s.is_null() {
            errors?;
            return Err(GlError::Gl {
                call: "glGetString",
                codes: Vec::new(),
            });
        }
        errors?;
        // SAFETY: non-null, NUL-terminated, static for the context's life.
        Ok(unsafe { CStr::from_ptr(s.cast()) }.to_string_lossy().into_owned())
    }

    /// `glClearColor` + `glClear` of the colour buffer.
    ///
    /// # Errors
    /// GL's errors.
    pub fn clear(&mut self, rgba: [u8; 4]) -> Result<(), GlError> {
        self.current("glClear")?;
        let [r, g, b, a] = rgba.map(|c| f32::from(c) / 255.0);
        // SAFETY: plain GL calls on this thread's current context (ours).
        unsafe {
            (self.egl.gl_clear_color)(r, g, b, a);
            (self.egl.gl_clear)(GL_COLOR_BUFFER_BIT);
        }
        self.check("glClear")
    }

    /// `glReadPixels` of the pixel at (0, 0), RGBA / unsigned bytes.
    ///
    /// # Errors
    /// GL's errors.
    pub fn read_pixel(&mut self) -> Result<[u8; 4], GlError> {
        self.current("glReadPixels")?;
        let mut px = [0u8; 4];
        // SAFETY: one RGBA8 pixel fits the 4-byte buffer (the default pack
        // alignment, 4, needs no padding for one pixel).
        unsafe {
            (self.egl.gl_read_pixels)(0, 0, 1, 1, GL_RGBA, GL_UNSIGNED_BYTE, px.as_mut_ptr().cast());
        }
        self.check("glReadPixels")?;
        Ok(px)
    }

    /// [`clear`](Self::clear) to `rgba`, then [`read_pixel`](Self::read_pixel):
    /// returns `rgba` when the context is this thread's.
    ///
    /// # Errors
    /// GL's errors.
    pub fn clear_and_read(&mut self, rgba: [u8; 4]) -> Result<[u8; 4], GlError> {
        self.clear(rgba)?;
        self.read_pixel()
    }

    /// `glIsTexture(name)` in this context.
    pub fn is_texture(&self, name: GlUint) -> bool {
        if self.current("glIsTexture").is_err() {
            return false;
        }
        // SAFETY: any name is a valid argument.
        let is = unsafe { (self.egl.gl_is_texture)(name) } != 0;
        let _ = self.egl.drain_gl_errors();
        is
    }
}

impl Drop for GlContext {
    fn drop(&mut self) {
        let egl = self.egl;
        let d = self.raw().display;
        // Forget it first: its textures see it gone from here on (they
        // died with it), and the cache no longer names it.
        let _ = LIVE_CONTEXTS.try_with(|live| live.borrow_mut().remove(&self.id));
        let _ = MADE_CURRENT.try_with(|c| {
            if c.get() == self.id {
                c.set(0);
            }
        });
        let mut released = false;
        if !self.context.is_null() && egl.current_context() == self.context {
            // SAFETY: our context, current on this thread: released here so
            // that the destroys below free it at once (a context current
            // somewhere is only marked for deletion).
            let ok = unsafe {
                (egl.egl_make_current)(
                    d,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            } != EGL_FALSE;
            released = egl.egl_check("eglMakeCurrent", ok).is_ok();
            if released {
                // SAFETY: nothing is current on this thread now; this frees
                // the thread's EGL state (bound API, last error).
                unsafe { (egl.egl_release_thread)() };
                let _ = egl.egl_check("eglReleaseThread", true);
            }
        }
        let mut surface_destroyed = false;
        if !self.surface.is_null() {
            // SAFETY: our surface, destroyed once.
            let ok = unsafe { (egl.egl_destroy_surface)(d, self.surface) } != EGL_FALSE;
            surface_destroyed = egl.egl_check("eglDestroySurface", ok).is_ok();
        }
        let mut context_destroyed = false;
        if !self.context.is_null() {
            // SAFETY: our context, destroyed once; every texture on it was
            // dropped before the state (pinned-ffi drops owner-bound values
            // first).
            let ok = unsafe { (egl.egl_destroy_context)(d, self.context) } != EGL_FALSE;
            context_destroyed = egl.egl_check("eglDestroyContext", ok).is_ok();
        }
        let display_terminated = self.display.take().is_some_and(Display::release);
        if let Some(log) = &self.teardown {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Teardown::Context {
                    thread: thread::current().id(),
                    released,
                    surface_destroyed,
                    context_destroyed,
                    display_terminated,
                });
        }
    }
}

// ---------------------------------------------------------------------------
// Step 4: a worker, and a pool: one owner thread per context.
// ---------------------------------------------------------------------------

/// Starts one owner thread holding a [`GlContext`].
///
/// # Errors
/// [`SpawnError::Init`] with [`GlContext::open`]'s error.
pub fn gl_worker() -> Result<PinnedWorker<GlContext>, SpawnError<GlError>> {
    PinnedWorker::builder().name("gl").spawn(GlContext::open)
}

/// Starts `contexts` owner threads, each with its own [`GlContext`].
///
/// # Errors
/// The first context that could not be opened.
pub fn gl_pool(contexts: usize) -> Result<Pool<GlContext>, SpawnError<GlError>> {
    Pool::builder(contexts).name("gl").spawn(|_| GlContext::open())
}

// ---------------------------------------------------------------------------
// Step 5: SDK objects as owner-bound handles, freed on the owner thread.
// ---------------------------------------------------------------------------

/// A GL texture that lives in its context, on the owner thread. Hand it out
/// as a [`GlTexture`]; dropping the handle anywhere deletes it there.
#[derive(Debug)]
pub struct Texture {
    egl: &'static Egl,
    name: GlUint,
    /// The id of the [`GlContext`] the name belongs to.
    context: u64,
    log: Option<TeardownLog>,
    _not_send: PhantomData<*const ()>,
}

impl Texture {
    /// Creates a `side`×`side` RGBA texture in `ctx` (call it inside a job:
    /// `worker.try_bind(|ctx| Texture::create(ctx, 4))`).
    ///
    /// # Errors
    /// GL's errors.
    pub fn create(ctx: &mut GlContext, side: i32) -> Result<Texture, GlError> {
        ctx.current("glGenTextures")?;
        let egl = ctx.egl;
        let mut name = 0;
        // SAFETY: room for one name.
        unsafe { (egl.gl_gen_textures)(1, &mut name) };
        ctx.check("glGenTextures")?;
        let tex = Texture {
            egl,
            name,
            context: ctx.id,
            log: ctx.teardown.clone(),
            _not_send: PhantomData,
        };
        // SAFETY: a name from glGenTextures; binding makes it a texture
        // (glIsTexture is false before), NULL data allocates without upload.
        unsafe {
            (egl.gl_bind_texture)(GL_TEXTURE_2D, name);
            (egl.gl_tex_image_2d)(
                GL_TEXTURE_2D,
                0,
                GL_RGBA as i32,
                side,
                side,
                0,
                GL_RGBA,
                GL_UNSIGNED_BYTE,
                std::ptr::null(),
            );
            (egl.gl_bind_texture)(GL_TEXTURE_2D, 0);
        }
        ctx.check("glTexImage2D")?;
        Ok(tex)
    }

    /// The GL texture name.
    pub fn name(&self) -> GlUint {
        self.name
    }
}

impl Drop for Texture {
    fn drop(&mut self) {
        let egl = self.egl;
        let live = live_context(self.context);
        let mut context_current = false;
        let mut was_texture = false;
        // Context gone: the texture died with it (eglDestroyContext freed
        // it), and its name may be a newer context's now: touch nothing.
        if let Some(raw) = live {
            if let Some(previous) = MakeCurrentFor::enter(egl, raw) {
                context_current = true;
                // SAFETY: our context (alive, by id) is current on this
                // thread, so the name is ours; deleted once.
                unsafe {
                    was_texture = (egl.gl_is_texture)(self.name) != 0;
                    (egl.gl_delete_textures)(1, &self.name);
                }
                let _ = egl.drain_gl_errors();
                previous.restore();
            }
        }
        if let Some(log) = &self.log {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Teardown::Texture {
                    name: self.name,
                    thread: thread::current().id(),
                    context_alive: live.is_some(),
                    context_current,
                    was_texture,
                });
        }
    }
}

/// What was current on this thread before a live context was made current
/// for one call (a texture's delete), to put back after.
struct MakeCurrentFor {
    egl: &'static Egl,
    /// Our context's handles (for releasing when nothing was current).
    ours: RawHandles,
    /// None: ours was already current, nothing to restore.
    previous: Option<(EglDisplay, EglSurface, EglSurface, EglContext)>,
    cached: u64,
}

impl MakeCurrentFor {
    /// Makes `ours` (a live context of this thread) current here; `None`
    /// if EGL refuses (e.g. raw code made it current on another thread).
    fn enter(egl: &'static Egl, ours: RawHandles) -> Option<MakeCurrentFor> {
        let cached = MADE_CURRENT.try_with(Cell::get).unwrap_or(0);
        let current = egl.current_context();
        if current == ours.context {
            // A live context's address is its own: no other has it now.
            return Some(MakeCurrentFor {
                egl,
                ours,
                previous: None,
                cached,
            });
        }
        // SAFETY: these read this thread's EGL state only.
        let previous = unsafe {
            (
                (egl.egl_get_current_display)(),
                (egl.egl_get_current_surface)(EGL_DRAW),
                (egl.egl_get_current_surface)(EGL_READ),
                current,
            )
        };
        // SAFETY: a live context with its own surface, on its own thread's
        // registry; EGL refuses (EGL_BAD_ACCESS) if another thread has it
        // current, which the check reports.
        let ok = unsafe { (egl.egl_make_current)(ours.display, ours.surface, ours.surface, ours.context) }
            != EGL_FALSE;
        egl.egl_check("eglMakeCurrent", ok).ok()?;
        Some(MakeCurrentFor {
            egl,
            ours,
            previous: Some(previous),
            cached,
        })
    }

    /// Puts back what was current before [`enter`](Self::enter).
    fn restore(self) {
        let egl = self.egl;
        let Some((display, draw, read, context)) = self.previous else {
            return;
        };
        // SAFETY: what was current on this thread a moment ago (it was
        // current here, so no other thread can have taken it), or
        // EGL_NO_CONTEXT on our display, which releases ours.
        let ok = unsafe {
            if context.is_null() {
                let none = std::ptr::null_mut();
                (egl.egl_make_current)(self.ours.display, none, none, none)
            } else {
                (egl.egl_make_current)(display, draw, read, context)
            }
        } != EGL_FALSE;
        let restored = egl.egl_check("eglMakeCurrent", ok).is_ok();
        // The cache names what is current now: the previous state, or ours
        // still if EGL would not switch back (ours' id is not known here:
        // 0 makes the next call ask EGL again).
        let cached = if restored { self.cached } else { 0 };
        let _ = MADE_CURRENT.try_with(|c| c.set(cached));
    }
}

/// A texture handle: `Send`, usable from any thread through its worker.
pub type GlTexture = Bound<Texture>;
