//! ACPI tables for a hardware-reduced platform (after Cloud Hypervisor's `vmm/src/acpi.rs` and
//! Firecracker's `vmm/src/acpi`), built with rust-vmm's `acpi_tables` and written into guest memory
//! at `layout::ACPI_START`:
//!
//! ```text
//! ACPI_START  RSDP -> XSDT
//!             DSDT  (AML from dsdt.rs: CPUs, COM1, i8042, power button, GED, \_S5_)
//!             FACP  hardware-reduced; sleep control/status and reset registers at ACPI_SLEEP_PORT
//!             APIC  (MADT) one local APIC per vCPU, the IOAPIC
//!             extra tables (AcpiConfig::extra_tables: MCFG for PCI later)
//!             XSDT  -> FACP, APIC, extra tables
//! ```
//!
//! No interrupt source overrides: KVM's default GSI routing maps ISA IRQ n to IOAPIC pin n, which
//! is what an OS assumes without overrides, and a hardware-reduced guest has no SCI and does not
//! use the 8259 PIC or the PIT interrupt (Linux bypasses both when the FADT says hardware-reduced).

mod dsdt;
pub mod pci;

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::arch::layout::{ACPI_SIZE, ACPI_SLEEP_PORT, ACPI_START, APIC_START, IOAPIC_START};
use crate::devices::acpi::RESET_VALUE;

pub use dsdt::dsdt_aml;

/// Where the RSDP is: `boot_params.acpi_rsdp_addr` must hold this.
pub const RSDP_ADDR: u64 = ACPI_START;
/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"KEEL  ";
/// FADT "hypervisor vendor identity".
const HYPERVISOR_ID: &[u8; 8] = b"KEELVMM ";
/// Tables start on this alignment (ACPI only needs bytes; 16 keeps hexdumps readable).
const TABLE_ALIGN: u64 = 16;
/// Length of an ACPI table header.
const HEADER_LEN: usize = 36;
/// IA-PC boot architecture flags: no VGA (bit 2), OS must not enable PCIe ASPM (bit 4).
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 4);

/// What the tables describe. The device addresses are fixed in `arch::layout`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs (APIC IDs and processor UIDs 0..vcpus).
    pub vcpus: u8,
    /// AML appended to the DSDT (a PCI root bridge `\_SB_.PCI0` in the next issue).
    pub extra_dsdt_aml: Vec<u8>,
    /// Complete tables (header and checksum included) listed in the XSDT, such as an MCFG.
    pub extra_tables: Vec<Vec<u8>>,
}

impl AcpiConfig {
    /// The tables for `vcpus` vCPUs and the platform devices only.
    pub fn new(vcpus: u8) -> Self {
        AcpiConfig {
            vcpus,
            ..AcpiConfig::default()
        }
    }
}

/// Why the tables could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// ACPI tables for 0 vCPUs
    #[error("ACPI tables for 0 vCPUs")]
    NoVcpus,
    /// The ACPI tables need {needed} bytes, more than the {available} reserved at {start:#x}
    #[error(
        "the ACPI tables need {needed} bytes, more than the {available} reserved at {start:#x}"
    )]
    TooLarge {
        needed: u64,
        available: u64,
        start: u64,
    },
    /// Extra ACPI table {index}: {reason}
    #[error("extra ACPI table {index}: {reason}")]
    BadExtraTable { index: usize, reason: &'static str },
    /// Cannot write the ACPI tables to guest memory at {addr:#x}: {source}
    #[error("cannot write the ACPI tables to guest memory at {addr:#x}: {source}")]
    Write { addr: u64, source: GuestMemoryError },
}

/// One table at its guest physical address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedTable {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

/// Builds the tables and writes them to guest memory. Returns the RSDP's address
/// (= [`RSDP_ADDR`]), for `boot_params.acpi_rsdp_addr`.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    for table in build_tables(cfg)? {
        mem.write_slice(&table.bytes, GuestAddress(table.addr))
            .map_err(|source| AcpiError::Write {
                addr: table.addr,
                source,
            })?;
    }
    Ok(GuestAddress(RSDP_ADDR))
}

/// Lays the tables out from `ACPI_START`, RSDP first. Pure, for tests and tools.
pub fn build_tables(cfg: &AcpiConfig) -> Result<Vec<PlacedTable>, AcpiError> {
    if cfg.vcpus == 0 {
        return Err(AcpiError::NoVcpus);
    }
    for (index, table) in cfg.extra_tables.iter().enumerate() {
        check_table(table).map_err(|reason| AcpiError::BadExtraTable { index, reason })?;
    }

    let mut layout = Layout::new();
    let dsdt = {
        let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"KEELDSDT", 1);
        dsdt.append_slice(&dsdt_aml(cfg.vcpus));
        dsdt.append_slice(&cfg.extra_dsdt_aml);
        layout.place(dsdt.as_slice().to_vec())
    };
    let fadt = layout.place(to_bytes(&fadt(dsdt)));
    let madt = layout.place(to_bytes(&madt(cfg.vcpus)));
    let extras: Vec<u64> = cfg
        .extra_tables
        .iter()
        .map(|table| layout.place(table.clone()))
        .collect();

    let mut xsdt = XSDT::new(OEM_ID, *b"KEELXSDT", 1);
    for addr in [fadt, madt].into_iter().chain(extras) {
        xsdt.add_entry(addr);
    }
    let xsdt = layout.place(to_bytes(&xsdt));
    layout.tables[0].bytes = to_bytes(&Rsdp::new(OEM_ID, xsdt));
    layout.finish()
}

/// Sequential placement after the RSDP, which is placed first as a fixed-size slot.
struct Layout {
    tables: Vec<PlacedTable>,
    next: u64,
}

impl Layout {
    fn new() -> Self {
        let rsdp_len = Rsdp::len() as u64;
        Layout {
            tables: vec![PlacedTable {
                addr: RSDP_ADDR,
                bytes: vec![0; Rsdp::len()],
            }],
            next: RSDP_ADDR + rsdp_len,
        }
    }

    fn place(&mut self, bytes: Vec<u8>) -> u64 {
        let addr = self.next.next_multiple_of(TABLE_ALIGN);
        self.next = addr + bytes.len() as u64;
        self.tables.push(PlacedTable { addr, bytes });
        addr
    }

    fn finish(self) -> Result<Vec<PlacedTable>, AcpiError> {
        let needed = self.next - ACPI_START;
        if needed > ACPI_SIZE {
            return Err(AcpiError::TooLarge {
                needed,
                available: ACPI_SIZE,
                start: ACPI_START,
            });
        }
        Ok(self.tables)
    }
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn fadt(dsdt: u64) -> acpi_tables::fadt::FADT {
    let port = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_SLEEP_PORT),
    );
    let mut fadt = FADTBuilder::new(OEM_ID, *b"KEELFACP", 1)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // The power button is the PNP0C0C device, not fixed hardware; there is no sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = port;
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = port;
    fadt.sleep_status_reg = port;
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*HYPERVISOR_ID).into();
    fadt.finalize()
}

fn madt(vcpus: u8) -> MADT {
    let lapic = u32::try_from(APIC_START).unwrap_or(u32::MAX);
    let ioapic = u32::try_from(IOAPIC_START).unwrap_or(u32::MAX);
    let mut madt = MADT::new(
        OEM_ID,
        *b"KEELMADT",
        1,
        LocalInterruptController::Address(lapic),
    );
    for id in 0..vcpus {
        // KVM gives vCPU n the APIC ID n; the UID matches _UID of \_SB_.Cnnn in the DSDT.
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // The IOAPIC's ID follows the last APIC ID (IDs share one space on xAPIC systems).
    madt.add_structure(IoApic::new(vcpus, ioapic, 0));
    madt
}

/// A table must carry its own length and a zero checksum: the guest rejects it otherwise.
fn check_table(table: &[u8]) -> Result<(), &'static str> {
    if table.len() < HEADER_LEN {
        return Err("shorter than a table header");
    }
    let declared = u32::from_le_bytes([table[4], table[5], table[6], table[7]]);
    if usize::try_from(declared).ok() != Some(table.len()) {
        return Err("header length differs from the table's size");
    }
    if table.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) != 0 {
        return Err("checksum does not sum to zero");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// Reads the table at `addr` out of guest memory, using its header's length.
    fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let mut header = [0u8; HEADER_LEN];
        mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
        let mut table = vec![0u8; u32_at(&header, 4) as usize];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        check_table(&table).unwrap();
        table
    }

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    /// Walks the tables the way a guest does: RSDP -> XSDT -> FADT -> DSDT, and the MADT.
    #[test]
    fn guest_finds_every_table_from_the_rsdp() {
        let mem = guest_memory();
        let rsdp_addr = create_acpi_tables(&mem, &AcpiConfig::new(3)).unwrap();
        assert_eq!(rsdp_addr, GuestAddress(RSDP_ADDR));

        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[..20].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(rsdp.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");

        let xsdt = read_table(&mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = (HEADER_LEN..xsdt.len())
            .step_by(8)
            .map(|off| u64_at(&xsdt, off))
            .collect();
        let signatures: Vec<Vec<u8>> = entries
            .iter()
            .map(|&addr| read_table(&mem, addr)[..4].to_vec())
            .collect();
        assert_eq!(signatures, [b"FACP".to_vec(), b"APIC".to_vec()]);

        let fadt = read_table(&mem, entries[0]);
        assert_eq!(fadt.len(), 276, "FADT revision 6");
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let io_port_gas = |off: usize| (fadt[off], fadt[off + 1], u64_at(&fadt, off + 4));
        let sleep_port = (1, 8, u64::from(ACPI_SLEEP_PORT));
        assert_eq!(io_port_gas(116), sleep_port, "RESET_REG");
        assert_eq!(fadt[128], RESET_VALUE);
        assert_eq!(io_port_gas(244), sleep_port, "SLEEP_CONTROL_REG");
        assert_eq!(io_port_gas(256), sleep_port, "SLEEP_STATUS_REG");
        assert_eq!(&fadt[268..276], HYPERVISOR_ID);

        let dsdt = read_table(&mem, u64_at(&fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(&dsdt[HEADER_LEN..], dsdt_aml(3).as_slice());

        let madt = read_table(&mem, entries[1]);
        assert_eq!(u32_at(&madt, 36) as u64, APIC_START);
        let mut structures = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            structures.push((madt[off], madt[off + 2], madt[off + 3]));
            off += madt[off + 1] as usize;
        }
        // (type, processor UID / IOAPIC ID, APIC ID / reserved)
        assert_eq!(structures, [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 3, 0)]);
        assert_eq!(u32_at(&madt, madt.len() - 8) as u64, IOAPIC_START);
    }

    #[test]
    fn tables_stay_inside_the_reserved_area() {
        for vcpus in [1, 160, 255] {
            let tables = build_tables(&AcpiConfig::new(vcpus)).unwrap();
            let end = tables.iter().map(|t| t.addr + t.bytes.len() as u64).max();
            assert!(end.unwrap() <= ACPI_START + ACPI_SIZE);
            for pair in tables.windows(2) {
                assert!(pair[0].addr + pair[0].bytes.len() as u64 <= pair[1].addr);
            }
        }
    }

    fn dummy_table(signature: &[u8; 4], extra: usize) -> Vec<u8> {
        let mut sdt = Sdt::new(*signature, 36, 1, OEM_ID, *b"KEELTEST", 1);
        sdt.append_slice(&vec![0xab; extra]);
        sdt.as_slice().to_vec()
    }

    #[test]
    fn extra_tables_and_aml_are_included() {
        let mem = guest_memory();
        let cfg = AcpiConfig {
            vcpus: 1,
            extra_dsdt_aml: b"\x08PCI0\x00".to_vec(),
            extra_tables: vec![dummy_table(b"MCFG", 44)],
        };
        create_acpi_tables(&mem, &cfg).unwrap();
        let tables = build_tables(&cfg).unwrap();
        let xsdt = tables.last().unwrap();
        assert_eq!(&xsdt.bytes[..4], b"XSDT");
        let mcfg_addr = u64_at(&xsdt.bytes, HEADER_LEN + 16);
        assert_eq!(read_table(&mem, mcfg_addr), cfg.extra_tables[0]);
        let dsdt = tables
            .iter()
            .find(|t| t.bytes.starts_with(b"DSDT"))
            .unwrap();
        assert!(dsdt.bytes.ends_with(b"\x08PCI0\x00"));
    }

    #[test]
    fn bad_input_is_refused() {
        let mut broken_checksum = dummy_table(b"MCFG", 8);
        broken_checksum[40] ^= 1;
        let mut wrong_length = dummy_table(b"MCFG", 8);
        wrong_length.push(0);
        let cases: Vec<(AcpiConfig, &str)> = vec![
            (AcpiConfig::new(0), "ACPI tables for 0 vCPUs"),
            (
                AcpiConfig {
                    extra_tables: vec![b"MCFG".to_vec()],
                    ..AcpiConfig::new(1)
                },
                "extra ACPI table 0: shorter than a table header",
            ),
            (
                AcpiConfig {
                    extra_tables: vec![dummy_table(b"SSDT", 0), wrong_length],
                    ..AcpiConfig::new(1)
                },
                "extra ACPI table 1: header length differs",
            ),
            (
                AcpiConfig {
                    extra_tables: vec![broken_checksum],
                    ..AcpiConfig::new(1)
                },
                "extra ACPI table 0: checksum",
            ),
            (
                AcpiConfig {
                    extra_tables: vec![dummy_table(b"SSDT", ACPI_SIZE as usize)],
                    ..AcpiConfig::new(1)
                },
                "more than the 262144 reserved at 0xa0000",
            ),
        ];
        for (cfg, want) in cases {
            let err = build_tables(&cfg).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }

    #[test]
    fn memory_without_the_table_area_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = create_acpi_tables(&mem, &AcpiConfig::new(1)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot write the ACPI tables to guest memory at 0xa0000"),
            "{err}"
        );
    }

    /// ACPICA's disassembler must accept every table without errors, and its interpreter must load
    /// the DSDT and run `_S5_`, `_EVT` and `_CRS`. Needs `iasl` and `acpiexec` (acpica-tools);
    /// skipped with a message where they are not installed.
    #[test]
    fn iasl_disassembles_every_table() {
        if Command::new("iasl").arg("-v").output().is_err() {
            eprintln!("iasl not installed (apt-get install acpica-tools): skipping");
            return;
        }
        let dir = std::env::temp_dir().join(format!("keel-acpi-iasl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tables = build_tables(&AcpiConfig {
            extra_dsdt_aml: pci::pci_aml(),
            extra_tables: vec![pci::mcfg()],
            ..AcpiConfig::new(4)
        })
        .unwrap();
        for table in &tables[1..] {
            let name = String::from_utf8_lossy(&table.bytes[..4]).to_lowercase();
            let path = dir.join(format!("{name}.dat"));
            std::fs::write(&path, &table.bytes).unwrap();
            let out = Command::new("iasl")
                .arg("-d")
                .arg(&path)
                .current_dir(&dir)
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{name}: {log}");
            assert!(
                !log.contains("Error") && !log.contains("Warning"),
                "{name}: {log}"
            );
            let dsl = std::fs::read_to_string(Path::new(&dir).join(format!("{name}.dsl")));
            assert!(dsl.is_ok(), "{name}: no disassembly: {log}");
        }
        let dsdt = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
        for needle in [
            "Name (_S5, Package",
            "Device (\\_SB.C003)",
            "EisaId (\"PNP0501\")",
            "EisaId (\"PNP0C0C\")",
            "\"ACPI0013\"",
            "Method (_EVT, 1, Serialized)",
            "Notify (\\_SB.PWRB, 0x80)",
            "EisaId (\"PNP0A08\")",
            "EisaId (\"PNP0C02\")",
            "DWordMemory (ResourceProducer",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        ] {
            assert!(dsdt.contains(needle), "dsdt.dsl lacks {needle:?}:\n{dsdt}");
        }

        // ACPICA's interpreter loads the namespace and runs the methods a guest runs.
        let out = Command::new("acpiexec")
            .args([
                "-b",
                "evaluate \\_S5_; evaluate \\_SB.GED._EVT 5; evaluate \\_SB.GED._CRS; evaluate \\_SB.PCI0._CRS",
            ])
            .args(["dsdt.dat", "facp.dat", "apic.dat", "mcfg.dat"])
            .current_dir(&dir)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        for needle in [
            "Table [DSDT: KEELDSDT] (id 01) -",
            "[Package] Contains 4 Elements:\n    [Integer] = 0000000000000005",
            "No object was returned from evaluation of \\_SB.GED._EVT",
            "Evaluation of \\_SB.GED._CRS returned object",
        ] {
            assert!(
                log.contains(needle),
                "acpiexec output lacks {needle:?}:\n{log}"
            );
        }
        assert!(
            !log.contains("Error") && !log.contains("Exception"),
            "{log}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
