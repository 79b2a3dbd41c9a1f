//! The operating system's randomness.

/// Fills `buf` with random bytes from the operating system. A system that cannot give them
/// cannot make keys or nonces safely, so this does not go on without them.
pub(crate) fn fill(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}
