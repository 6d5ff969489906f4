//! Guest physical address layout (x86_64), after Firecracker's and Cloud Hypervisor's:
//!
//! ```text
//! 0x0000_0500  GDT            0x0000_0520  IDT (empty)
//! 0x0000_7000  zero page (boot_params)     0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000.. PDs (identity map of the first 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x000a_0000  ACPI tables (RSDP first), reserved in e820
//! 0x0010_0000  high memory: kernel, then RAM up to the 32-bit gap
//! 0xc000_0000  32-bit MMIO gap (1 GiB): platform devices, PCI later, IOAPIC, LAPIC, TSS
//! 0x1_0000_0000  RAM above 4 GiB, if any
//! ```

/// Global descriptor table.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (a zero-length one: the guest installs its own).
pub const IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 of the boot page tables.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot page tables.
pub const PDPTE_START: u64 = 0xa000;
/// First of the page directories of the boot page tables (one per GiB identity-mapped).
pub const PDE_START: u64 = 0xb000;
/// GiBs identity-mapped by the boot page tables: all the 32-bit space, which holds everything the
/// 64-bit boot protocol needs mapped (zero page, command line, kernel) and the MMIO gap.
pub const BOOT_IDENTITY_MAP_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line, with its NUL (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of the RAM below the legacy VGA/BIOS hole.
pub const LOW_RAM_END: u64 = 0xa_0000;
/// ACPI tables, RSDP first; `boot_params.acpi_rsdp_addr` points here.
pub const ACPI_START: u64 = 0xa_0000;
/// Room for the ACPI tables (up to the BIOS area).
pub const ACPI_SIZE: u64 = 0x4_0000;
/// Start of high memory: the kernel is loaded at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap; RAM stops here and resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Platform MMIO devices (boot timer, ACPI GED), one page each, start of the MMIO gap's upper half.
pub const PLATFORM_MMIO_START: u64 = 0xd000_0000;
/// Size of one platform MMIO device window.
pub const PLATFORM_MMIO_SIZE: u64 = 0x1000;
/// Boot timer: the guest writes `BOOT_TIMER_MAGIC` here when its init starts (Firecracker's
/// address, so the same guest tooling works).
pub const BOOT_TIMER_START: u64 = PLATFORM_MMIO_START;
/// ACPI Generic Event Device registers (power button), described in the DSDT.
pub const GED_START: u64 = PLATFORM_MMIO_START + PLATFORM_MMIO_SIZE;
/// GSI of the ACPI GED interrupt (edge, active high through the IOAPIC).
pub const GED_GSI: u32 = 5;
/// ACPI sleep control/status and reset registers (hardware-reduced FADT), port I/O.
pub const ACPI_SLEEP_PORT: u16 = 0x3c0;
/// IOAPIC registers (in-kernel).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers (in-kernel).
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's real-mode identity-map page (Intel), one page, inside the MMIO gap.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// KVM's TSS area (Intel), three pages right after the identity map.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// COM1 ports and interrupt.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's port count.
pub const COM1_LEN: u16 = 8;
/// COM1's GSI (legacy IRQ 4).
pub const COM1_GSI: u32 = 4;
/// CMOS RTC ports: index 0x70, data 0x71.
pub const CMOS_PORT: u16 = 0x70;
/// CMOS's port count.
pub const CMOS_LEN: u16 = 2;
/// i8042 controller ports: data 0x60 .. command/status 0x64.
pub const I8042_PORT: u16 = 0x60;
/// i8042's port count.
pub const I8042_LEN: u16 = 5;
/// i8042 keyboard GSI (legacy IRQ 1).
pub const I8042_KBD_GSI: u32 = 1;
/// PCI BAR window (32-bit, non-prefetchable), the first quarter of the MMIO gap.
pub const PCI_MMIO_START: u64 = MMIO_GAP_START;
/// Size of the PCI BAR window.
pub const PCI_MMIO_SIZE: u64 = 0x1000_0000;
/// PCI ECAM (memory-mapped configuration space) for bus 0, described by the MCFG table.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// First GSI handed to MSI-X vectors (after the IOAPIC's 24 pins) and the last one.
pub const MSI_GSI_FIRST: u32 = 24;
pub const MSI_GSI_LAST: u32 = 1023;
