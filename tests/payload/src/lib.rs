//! What the guest `/init` and the in-host scenario runner share: the disk test pattern and its
//! checksum (so either side can verify what the other wrote).

/// Bytes of the pattern the virtio-blk scenario writes to the guest's first disk.
pub const DISK_PATTERN_LEN: usize = 4 << 20;

/// A reproducible pseudo-random byte stream (xorshift64*) from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a, 64 bits: enough to tell two multi-MiB buffers apart in a test.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_reproducible_and_seed_dependent() {
        assert_eq!(pattern(7, 100), pattern(7, 100));
        assert_ne!(pattern(7, 100), pattern(8, 100));
        assert_eq!(pattern(7, 13).len(), 13);
        assert_eq!(checksum(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(checksum(&pattern(1, 64)), checksum(&pattern(2, 64)));
    }
}

pub mod modules;
pub mod net;
