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

/// Block size of the sequential read benchmark, and count and size of the random reads.
pub const BENCH_SEQ_BLOCK: usize = 1 << 20;
pub const BENCH_RANDOM_READS: usize = 2048;
pub const BENCH_RANDOM_BLOCK: usize = 4096;

/// Times a sequential read of the first `size` bytes of `file` in `BENCH_SEQ_BLOCK` pieces, then
/// `BENCH_RANDOM_READS` reads of `BENCH_RANDOM_BLOCK` bytes at reproducible aligned offsets. The
/// buffer is page aligned so `file` may be opened with O_DIRECT. Guest and host run the same code
/// on the same image, which makes the two comparable.
pub fn read_benchmark(
    file: &std::fs::File,
    size: u64,
) -> std::io::Result<(std::time::Duration, std::time::Duration)> {
    use std::os::unix::fs::FileExt;
    let mut raw = vec![0u8; BENCH_SEQ_BLOCK + 4096];
    let off = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[off..off + BENCH_SEQ_BLOCK];
    let start = std::time::Instant::now();
    let mut pos = 0;
    while pos + BENCH_SEQ_BLOCK as u64 <= size {
        file.read_exact_at(buf, pos)?;
        pos += BENCH_SEQ_BLOCK as u64;
    }
    let seq = start.elapsed();
    let blocks = size / BENCH_RANDOM_BLOCK as u64;
    let offsets = pattern(0x7261_6e64, BENCH_RANDOM_READS * 8);
    let start = std::time::Instant::now();
    for chunk in offsets.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let block = u64::from_le_bytes(word) % blocks.max(1);
        file.read_exact_at(
            &mut buf[..BENCH_RANDOM_BLOCK],
            block * BENCH_RANDOM_BLOCK as u64,
        )?;
    }
    Ok((seq, start.elapsed()))
}

/// The virtio network check's own bridge and subnet, apart from the management bridge `keelbr0`
/// that PID 1 puts on QEMU's user network (10.0.2.0/24).
pub const TEST_BRIDGE: &str = "keeltest0";
/// The Keel host's address on `TEST_BRIDGE`.
pub const TEST_HOST_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 3, 1);
/// The guest's address behind its tap on `TEST_BRIDGE`.
pub const TEST_GUEST_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 3, 2);
