//! The report behind `cargo run --release`, and the workloads shared by the
//! proof tests and the benches: corruption [`scenarios`] and the
//! [`strategies`] whose per-call cost is compared, and the same costs on a
//! real thread-affine SDK ([`real_sdks`]).

pub mod busy;
pub mod real_sdks;
pub mod report;
pub mod scenarios;
pub mod strategies;

/// The workspace README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
