//! The template applied to a real vendor SDK: the CUDA driver API.
//!
//! The driver keeps a *current context per OS thread* (`cuCtxSetCurrent`),
//! exactly the hazard this project is about: a thread that does not have
//! the context gets `CUDA_ERROR_INVALID_CONTEXT` (201). Each step below is
//! the same step as in the crate root, with CUDA in place of `affine`.
//!
//! `libcuda.so.1` is opened at run time ([`Driver::load`]), so this builds
//! without a CUDA toolkit and a machine without a GPU says so and moves on.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};

use pinned_ffi::{Bound, Pool, SpawnError};

// ---------------------------------------------------------------------------
// Step 1: raw bindings. Only the entry points we call, loaded by name.
// ---------------------------------------------------------------------------

/// `CUresult`: 0 is success.
pub type CuResult = c_int;
/// `CUdevice`.
pub type CuDevice = c_int;
/// `CUcontext`.
pub type CuContext = *mut c_void;
/// `CUdeviceptr`.
pub type CuDevicePtr = u64;

/// `CUDA_ERROR_INVALID_CONTEXT`: the calling thread has no (or a wrong)
/// current context.
pub const CUDA_ERROR_INVALID_CONTEXT: CuResult = 201;

/// The driver's entry points, resolved once from `libcuda.so.1`.
#[allow(missing_docs)] // each field is the driver function of that name
pub struct Driver {
    _lib: libloading::Library,
    pub cu_init: unsafe extern "C" fn(c_uint) -> CuResult,
    pub cu_driver_get_version: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub cu_device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub cu_device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    pub cu_device_get_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    pub cu_ctx_create: unsafe extern "C" fn(*mut CuContext, c_uint, CuDevice) -> CuResult,
    pub cu_ctx_destroy: unsafe extern "C" fn(CuContext) -> CuResult,
    pub cu_ctx_push_current: unsafe extern "C" fn(CuContext) -> CuResult,
    pub cu_ctx_pop_current: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    pub cu_ctx_get_device: unsafe extern "C" fn(*mut CuDevice) -> CuResult,
    pub cu_mem_alloc: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    pub cu_mem_free: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    pub cu_memcpy_htod: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult,
    pub cu_memcpy_dtoh: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult,
    pub cu_get_error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Driver(libcuda.so.1)")
    }
}

impl Driver {
    /// Opens `libcuda.so.1` and resolves the entry points.
    ///
    /// # Errors
    /// A message saying what is missing (no driver on this machine, or an
    /// entry point this driver lacks).
    pub fn load() -> Result<Driver, String> {
        Driver::load_from("libcuda.so.1")
    }

    /// Like [`load`](Self::load) from a given path (tests point it at a
    /// stand-in driver).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_from(path: impl AsRef<std::ffi::OsStr>) -> Result<Driver, String> {
        // SAFETY: loading the driver runs its initialisers, which are sound
        // to run in any process; we keep the Library alive as long as the
        // function pointers (they live in `Driver`).
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the type matches the driver's documented
                // prototype for this versioned symbol (cuda.h).
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| format!("{}: {e}", $name))?
            };
        }
        Ok(Driver {
            cu_init: sym!("cuInit"),
            cu_driver_get_version: sym!("cuDriverGetVersion"),
            cu_device_get_count: sym!("cuDeviceGetCount"),
            cu_device_get: sym!("cuDeviceGet"),
            cu_device_get_name: sym!("cuDeviceGetName"),
            cu_ctx_create: sym!("cuCtxCreate_v2"),
            cu_ctx_destroy: sym!("cuCtxDestroy_v2"),
            cu_ctx_push_current: sym!("cuCtxPushCurrent_v2"),
            cu_ctx_pop_current: sym!("cuCtxPopCurrent_v2"),
            cu_ctx_get_device: sym!("cuCtxGetDevice"),
            cu_mem_alloc: sym!("cuMemAlloc_v2"),
            cu_mem_free: sym!("cuMemFree_v2"),
            cu_memcpy_htod: sym!("cuMemcpyHtoD_v2"),
            cu_memcpy_dtoh: sym!("cuMemcpyDtoH_v2"),
            cu_get_error_name: sym!("cuGetErrorName"),
            _lib: lib,
        })
    }

    /// Step 3's one place where statuses become errors, with the driver's
    /// own error name. (CUDA returns its error; where an SDK has an
    /// errno-style "last error", read it here, on this same thread.)
    ///
    /// # Errors
    /// A non-zero status as a [`CudaError`].
    pub fn check(&self, rc: CuResult) -> Result<(), CudaError> {
        if rc == 0 {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: valid out pointer; the driver returns a static string.
        let known = unsafe { (self.cu_get_error_name)(rc, &mut name) } == 0 && !name.is_null();
        let name = if known {
            // SAFETY: non-null, NUL-terminated, static (checked above).
            unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
        } else {
            "CUDA_ERROR_UNKNOWN".to_owned()
        };
        Err(CudaError { code: rc, name })
    }

    /// `cuInit(0)`, the driver version (e.g. 13000) and the device count.
    ///
    /// # Errors
    /// The driver's error (no device, driver/toolkit mismatch...).
    pub fn init(&self) -> Result<(i32, i32), CudaError> {
        let (mut version, mut count) = (0, 0);
        // SAFETY: plain driver calls with valid out pointers.
        unsafe {
            self.check((self.cu_init)(0))?;
            self.check((self.cu_driver_get_version)(&mut version))?;
            self.check((self.cu_device_get_count)(&mut count))?;
        }
        Ok((version, count))
    }

    /// `cuMemAlloc` on the calling thread's current context: the call that
    /// fails with 201 on a thread without one.
    ///
    /// # Errors
    /// The driver's error.
    pub fn mem_alloc(&self, bytes: usize) -> Result<CuDevicePtr, CudaError> {
        let mut ptr = 0;
        // SAFETY: valid out pointer; uses this thread's current context.
        self.check(unsafe { (self.cu_mem_alloc)(&mut ptr, bytes) })?;
        Ok(ptr)
    }

    /// `cuCtxGetDevice` on the calling thread: the cheap call measured.
    ///
    /// # Errors
    /// The driver's error (201 without a current context).
    #[inline]
    pub fn ctx_get_device(&self) -> Result<CuDevice, CudaError> {
        let mut dev = -1;
        // SAFETY: valid out pointer.
        self.check(unsafe { (self.cu_ctx_get_device)(&mut dev) })?;
        Ok(dev)
    }
}

/// A CUDA driver error, with the driver's name for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} ({code})")]
pub struct CudaError {
    /// The `CUresult`.
    pub code: CuResult,
    /// `cuGetErrorName`, e.g. `CUDA_ERROR_INVALID_CONTEXT`.
    pub name: String,
}

// ---------------------------------------------------------------------------
// Step 2: the !Send state, created on the owner thread.
// ---------------------------------------------------------------------------

/// One GPU's context, owned by one worker's thread. The raw `CuContext`
/// makes it `!Send`: it never leaves that thread.
#[derive(Debug)]
pub struct Gpu {
    driver: Arc<Driver>,
    ctx: CuContext,
    /// The device ordinal.
    pub device: CuDevice,
    /// The device's name.
    pub name: String,
}

impl Gpu {
    /// Creates a context on `ordinal`, current on the calling (owner)
    /// thread. This is the `init` closure of the pool.
    ///
    /// # Errors
    /// The driver's error.
    pub fn new(driver: Arc<Driver>, ordinal: i32) -> Result<Gpu, CudaError> {
        let mut device = 0;
        let mut name = [0 as c_char; 128];
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid out pointers and buffer length; cuCtxCreate makes
        // the new context current on this thread, which owns it from now.
        unsafe {
            driver.check((driver.cu_device_get)(&mut device, ordinal))?;
            driver.check((driver.cu_device_get_name)(
                name.as_mut_ptr(),
                name.len() as c_int,
                device,
            ))?;
            driver.check((driver.cu_ctx_create)(&mut ctx, 0, device))?;
        }
        // SAFETY: the driver wrote a NUL-terminated name into the buffer.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(Gpu {
            driver,
            ctx,
            device,
            name,
        })
    }

    /// The driver, for calls on this (the owner) thread.
    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    /// The raw context, for the push/pop comparison only.
    pub fn raw(&self) -> CuContext {
        self.ctx
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: our context, destroyed on the owner thread after every
        // buffer bound to it (pinned-ffi drops bound values first).
        let _ = unsafe { (self.driver.cu_ctx_destroy)(self.ctx) };
    }
}

// ---------------------------------------------------------------------------
// Step 4: a pool keyed by device: one owner thread per GPU.
// ---------------------------------------------------------------------------

/// Starts one owner per GPU, each creating its context on its own thread.
///
/// # Errors
/// The first GPU whose context could not be created.
pub fn gpu_pool(driver: &Arc<Driver>, gpus: usize) -> Result<Pool<Gpu>, SpawnError<CudaError>> {
    let driver = Arc::clone(driver);
    Pool::builder(gpus)
        .name("gpu")
        .spawn(move |i| Gpu::new(Arc::clone(&driver), i as i32))
}

// ---------------------------------------------------------------------------
// Step 5: SDK objects as owner-bound handles, freed on the owner thread.
// ---------------------------------------------------------------------------

/// Device memory that lives on its GPU's owner thread. Handed out as a
/// [`Bound<DeviceBuffer>`]; dropping the handle anywhere frees it there.
#[derive(Debug)]
pub struct DeviceBuffer {
    driver: Arc<Driver>,
    ptr: CuDevicePtr,
    len: usize,
    freed_on: Arc<Mutex<Option<ThreadId>>>,
}

impl DeviceBuffer {
    /// Allocates on the current (owner) thread's context. Call it inside a
    /// job: `pool.worker(i).try_bind(|gpu| DeviceBuffer::alloc(gpu, n, probe))`.
    ///
    /// # Errors
    /// The driver's error.
    pub fn alloc(gpu: &Gpu, len: usize, freed_on: Arc<Mutex<Option<ThreadId>>>) -> Result<Self, CudaError> {
        let ptr = gpu.driver.mem_alloc(len)?;
        Ok(DeviceBuffer {
            driver: Arc::clone(&gpu.driver),
            ptr,
            len,
            freed_on,
        })
    }

    /// Copies `src` to the device.
    ///
    /// # Errors
    /// The driver's error.
    ///
    /// # Panics
    /// If `src` is longer than the buffer.
    pub fn upload(&mut self, src: &[u8]) -> Result<(), CudaError> {
        assert!(src.len() <= self.len, "upload larger than the buffer");
        // SAFETY: `src` is valid for its length, which fits the buffer.
        self.driver
            .check(unsafe { (self.driver.cu_memcpy_htod)(self.ptr, src.as_ptr().cast(), src.len()) })
    }

    /// Copies the device bytes into `dst`.
    ///
    /// # Errors
    /// The driver's error.
    ///
    /// # Panics
    /// If `dst` is longer than the buffer.
    pub fn download(&self, dst: &mut [u8]) -> Result<(), CudaError> {
        assert!(dst.len() <= self.len, "download larger than the buffer");
        // SAFETY: `dst` is valid for writes of its length, which fits.
        self.driver
            .check(unsafe { (self.driver.cu_memcpy_dtoh)(dst.as_mut_ptr().cast(), self.ptr, dst.len()) })
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: our allocation, freed once, on the owner thread whose
        // context it belongs to (a Bound value is dropped only there).
        let _ = unsafe { (self.driver.cu_mem_free)(self.ptr) };
        *self.freed_on.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread::current().id());
    }
}

/// A buffer handle: `Send`, usable from any thread through the pool.
pub type GpuBuffer = Bound<DeviceBuffer>;
