//! The Linux zero page (`struct boot_params`) with its e820 memory map, for the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst).

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{
    ACPI_SIZE, ACPI_START, CMDLINE_START, HIMEM_START, LOW_RAM_END, ZERO_PAGE_START,
};

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;

/// Writing the zero page failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Guest memory has {0} e820 ranges, more than the zero page holds
    #[error("Guest memory has {0} e820 ranges, more than the zero page holds")]
    TooManyE820Entries(usize),
    /// Cannot write the zero page: {0}
    #[error("Cannot write the zero page: {0}")]
    ZeroPage(linux_loader::configurator::Error),
}

/// What the zero page tells the kernel beyond the memory map.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootInfo {
    /// The bzImage setup header; `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    /// Length of the command line at `CMDLINE_START`, without its NUL.
    pub cmdline_len: usize,
    /// Where the initrd was loaded and its size.
    pub initrd: Option<(GuestAddress, u64)>,
    /// The ACPI RSDP.
    pub rsdp: Option<GuestAddress>,
}

/// The e820 map of `mem`: its RAM, minus the legacy hole below 1 MiB, with the ACPI tables reserved.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, r#type| boot_e820_entry {
        addr,
        size: end - addr,
        r#type,
    };
    let mut map = Vec::with_capacity(mem.num_regions() + 2);
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        if start == 0 && end > HIMEM_START {
            map.push(entry(0, LOW_RAM_END, E820_RAM));
            map.push(entry(ACPI_START, ACPI_START + ACPI_SIZE, E820_RESERVED));
            map.push(entry(HIMEM_START, end, E820_RAM));
        } else {
            map.push(entry(start, end, E820_RAM));
        }
    }
    map
}

/// Fills in and writes the zero page at `ZERO_PAGE_START`.
pub fn write_boot_params(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootError> {
    let mut params = boot_params::default();
    match info.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr.raw_value() >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    if let Some(rsdp) = info.rsdp {
        params.acpi_rsdp_addr = rsdp.raw_value();
    }

    let map = e820_map(mem);
    if map.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries(map.len()));
    }
    params.e820_table[..map.len()].copy_from_slice(&map);
    params.e820_entries = map.len() as u8;

    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::ZeroPage)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::Bytes;

    fn triples(map: &[boot_e820_entry]) -> Vec<(u64, u64, u32)> {
        map.iter().map(|e| (e.addr, e.size, e.r#type)).collect()
    }

    #[test]
    fn e820_splits_the_legacy_hole_and_reserves_acpi() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 128 << 20)]).unwrap();
        assert_eq!(
            triples(&e820_map(&mem)),
            vec![
                (0, 0xa_0000, E820_RAM),
                (ACPI_START, ACPI_SIZE, E820_RESERVED),
                (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_keeps_ram_above_4_gib() {
        // Sparse mappings: only the region list matters, the pages are never touched.
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), 1 << 30),
        ])
        .unwrap();
        let map = triples(&e820_map(&mem));
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM)
        );
        assert_eq!(map[3], (MMIO_GAP_END, 1 << 30, E820_RAM));
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_rsdp() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let info = BootInfo {
            setup_header: None,
            cmdline_len: 12,
            initrd: Some((GuestAddress(0x80_0000), 0x1234)),
            rsdp: Some(GuestAddress(ACPI_START)),
        };
        write_boot_params(&mem, &info).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ params.hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.cmdline_size }, 12);
        assert_eq!({ params.hdr.ramdisk_image }, 0x80_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ params.acpi_rsdp_addr }, ACPI_START);
        assert_eq!(params.e820_entries, 3);
    }
}
