//! A pure Rust reference model of the C library's call semantics, so tests
//! and the report can predict every output exactly and count wrong ones.

use crate::context::MAX_INPUT;

/// The state mixer (splitmix64's finaliser), bit-for-bit the C `aff_mix64`.
///
/// ```
/// assert_eq!(affine::mix64(0), 0xE220_A839_7B1D_CDAF); // splitmix64's first output
/// ```
pub const fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What one context's call sequence must produce: a context seeded with
/// `seed` starts at `mix64(seed)`; each valid call does
/// `state = mix64(state ^ input)` and returns the new state; an invalid
/// input (`> MAX_INPUT`) fails and leaves the state alone.
///
/// ```
/// use affine::Model;
/// let mut m = Model::new(1);
/// let a = m.op(5).unwrap();
/// assert_ne!(m.op(5).unwrap(), a); // every call advances the state
/// assert!(m.op(u64::MAX).is_none()); // invalid input
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    state: u64,
}

impl Model {
    /// The model of a fresh context with this seed.
    pub const fn new(seed: u64) -> Self {
        Model { state: mix64(seed) }
    }

    /// The output of the next call, or `None` if the input is invalid.
    pub fn op(&mut self, input: u64) -> Option<u64> {
        if input > MAX_INPUT {
            return None;
        }
        self.state = mix64(self.state ^ input);
        Some(self.state)
    }
}
