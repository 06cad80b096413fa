//! Errors reported by the C library: [`ErrorCode`], its status codes, and
//! [`AffError`], a code with the message read on the failing thread.

use std::fmt;

/// The C library's status codes (`AFF_E_*` in `affine.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `AFF_E_INVALID_ARG`: bad input by contract.
    InvalidArg,
    /// `AFF_E_NO_CONTEXT`: no context current on the calling thread.
    NoContext,
    /// `AFF_E_BUSY`: the context is current on another thread.
    Busy,
    /// `AFF_E_WRONG_THREAD`: an explicit-context call from a non-owner thread.
    WrongThread,
    /// `AFF_E_CALLBACK`: a callback asked to stop.
    Callback,
    /// `AFF_E_NOMEM`: out of memory.
    NoMem,
    /// `AFF_E_IN_CALLBACK`: called from inside a [`Context::visit`]
    /// callback on this thread, and the call would switch, release or
    /// destroy the context the visit runs on (for example
    /// [`Context::new`], or `op` on another [`Context`]). Nothing changed;
    /// the visit goes on with its own context.
    ///
    /// [`Context::visit`]: crate::Context::visit
    /// [`Context::new`]: crate::Context::new
    /// [`Context`]: crate::Context
    InCallback,
    /// A code this version does not know.
    Unknown(i32),
}

impl ErrorCode {
    /// Maps a non-zero C status to its code.
    ///
    /// ```
    /// use affine::ErrorCode;
    /// assert_eq!(ErrorCode::from_raw(3), ErrorCode::Busy);
    /// assert_eq!(ErrorCode::from_raw(7), ErrorCode::InCallback);
    /// assert_eq!(ErrorCode::from_raw(42), ErrorCode::Unknown(42));
    /// ```
    pub fn from_raw(rc: i32) -> Self {
        match rc {
            ffi::AFF_E_INVALID_ARG => Self::InvalidArg,
            ffi::AFF_E_NO_CONTEXT => Self::NoContext,
            ffi::AFF_E_BUSY => Self::Busy,
            ffi::AFF_E_WRONG_THREAD => Self::WrongThread,
            ffi::AFF_E_CALLBACK => Self::Callback,
            ffi::AFF_E_NOMEM => Self::NoMem,
            ffi::AFF_E_IN_CALLBACK => Self::InCallback,
            other => Self::Unknown(other),
        }
    }

    /// The C status value.
    ///
    /// ```
    /// assert_eq!(affine::ErrorCode::NoContext.raw(), 2);
    /// ```
    pub fn raw(self) -> i32 {
        match self {
            Self::InvalidArg => ffi::AFF_E_INVALID_ARG,
            Self::NoContext => ffi::AFF_E_NO_CONTEXT,
            Self::Busy => ffi::AFF_E_BUSY,
            Self::WrongThread => ffi::AFF_E_WRONG_THREAD,
            Self::Callback => ffi::AFF_E_CALLBACK,
            Self::NoMem => ffi::AFF_E_NOMEM,
            Self::InCallback => ffi::AFF_E_IN_CALLBACK,
            Self::Unknown(rc) => rc,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArg => f.write_str("AFF_E_INVALID_ARG"),
            Self::NoContext => f.write_str("AFF_E_NO_CONTEXT"),
            Self::Busy => f.write_str("AFF_E_BUSY"),
            Self::WrongThread => f.write_str("AFF_E_WRONG_THREAD"),
            Self::Callback => f.write_str("AFF_E_CALLBACK"),
            Self::NoMem => f.write_str("AFF_E_NOMEM"),
            Self::InCallback => f.write_str("AFF_E_IN_CALLBACK"),
            Self::Unknown(rc) => write!(f, "unknown status {rc}"),
        }
    }
}

/// A failure reported by the C library: its status code and the message it
/// stored, both read on the failing thread right after the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AffError {
    /// The status code.
    pub code: ErrorCode,
    /// The library's message (`aff_last_error_message`).
    pub message: String,
}
