//! Guest RAM: anonymous private mappings (`MAP_NORESERVE`, so pages cost host memory only once the
//! guest touches them), split around the 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Guest memory size {0} MiB is too small (at least 2 MiB)
    #[error("Guest memory size {0} MiB is too small (at least 2 MiB)")]
    TooSmall(u32),
    /// Cannot map {0} MiB of guest memory: {1}
    #[error("Cannot map {0} MiB of guest memory: {1}")]
    Map(u32, vm_memory::mmap::FromRangesError),
}

/// The RAM ranges for `size` bytes: below the MMIO gap, the rest from 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Maps `mib` MiB of guest RAM.
pub fn create_guest_memory(mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    if mib < 2 {
        return Err(MemoryError::TooSmall(mib));
    }
    let ranges = ram_ranges(u64::from(mib) << 20);
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Map(mib, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn ranges_skip_the_mmio_gap() {
        let gib = 1u64 << 30;
        let cases: &[(u64, &[(u64, u64)])] = &[
            (128 << 20, &[(0, 128 << 20)]),
            (3 * gib, &[(0, 3 * gib)]),
            (4 * gib, &[(0, 3 * gib), (4 * gib, gib)]),
            // 2 TiB, the largest guest: the rest of it above 4 GiB, no 32-bit truncation.
            (2048 * gib, &[(0, 3 * gib), (4 * gib, 2045 * gib)]),
        ];
        for (size, want) in cases {
            let got: Vec<(u64, u64)> = ram_ranges(*size)
                .iter()
                .map(|(a, l)| (a.0, *l as u64))
                .collect();
            assert_eq!(&got, want, "{size:#x}");
        }
    }

    #[test]
    fn creates_memory_and_refuses_tiny_sizes() {
        assert!(matches!(
            create_guest_memory(1),
            Err(MemoryError::TooSmall(1))
        ));
        let mem = create_guest_memory(16).unwrap();
        assert_eq!(mem.last_addr(), GuestAddress((16 << 20) - 1));
    }
}
