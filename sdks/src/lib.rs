//! Real thread-affine SDKs, each wrapped through the template's steps
//! (`template/README.md`): a `!Send` state created in `init` on the owner,
//! errors read on the owner right after the call and cleared, SDK objects
//! as owner-bound handles, and shutdown in the right order.
//!
//! Every library is opened at run time: a machine without one builds, and
//! its tests print a `SKIPPED` line instead of passing silently.
//!
//! - [`egl`]: EGL + OpenGL ES 2 on Mesa (surfaceless, llvmpipe): a context
//!   current on the owner thread.
//! - [`openssl`]: OpenSSL 3's per-thread error queue.
//! - [`locale`]: glibc's per-thread locale (`uselocale`).
//! - [`netns`]: Linux network namespaces per thread (`unshare`, `setns`).
//! - [`errno`]: glibc's per-thread `errno`.

pub mod egl;
pub mod errno;
pub mod locale;
pub mod netns;
pub mod openssl;

/// Prints the visible line a test prints when this machine cannot run it.
pub fn skipped(test: &str, why: &str) {
    println!("SKIPPED: {test}: {why}");
}
