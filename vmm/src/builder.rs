//! Assembles a VM from its `VmConfig`: guest memory, the KVM VM, the kernel (ELF vmlinux or
//! bzImage) with command line and initrd, the ACPI tables, the zero page, the devices on their
//! buses and the vCPUs. Nothing runs until `Vmm::run`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::acpi::{create_acpi_tables, AcpiConfig, AcpiError};
use crate::arch::boot::{write_boot_params, BootError, BootInfo};
use crate::arch::layout;
use crate::config::VmConfig;
use crate::devices::acpi::{AcpiGed, AcpiSleep, GED_MMIO_LEN, SLEEP_PORT_LEN};
use crate::devices::boot_timer::BootTimer;
use crate::devices::bus::{Bus, BusError};
use crate::devices::cmos::Cmos;
use crate::devices::i8042::I8042;
use crate::devices::interrupt::{IrqFdLine, LineTrigger};
use crate::devices::serial::{open_backend, SerialDevice, SerialError, SerialInput};
use crate::devices::ExitRequest;
use crate::vmm::Vmm;
use crate::vstate::cpuid::Topology;
use crate::vstate::memory::{create_guest_memory, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{create_vm, VmError};

/// Offset of the 64-bit entry point (`startup_64`) in a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// bzImage `xloadflags` bit: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
const PAGE_SIZE: u64 = 0x1000;

/// The VM could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// {0}
    #[error("{0}")]
    Memory(#[from] MemoryError),
    /// {0}
    #[error("{0}")]
    Vm(#[from] VmError),
    /// Cannot open kernel {0}: {1}
    #[error("Cannot open kernel {0}: {1}")]
    KernelOpen(String, io::Error),
    /// Cannot load kernel {0}: {1}
    #[error("Cannot load kernel {0}: {1}")]
    KernelLoad(String, linux_loader::loader::Error),
    /// Kernel {0} is a bzImage without a 64-bit entry point
    #[error("Kernel {0} is a bzImage without a 64-bit entry point")]
    Kernel32Bit(String),
    /// Invalid kernel command line {0:?}: {1}
    #[error("Invalid kernel command line {0:?}: {1}")]
    Cmdline(String, linux_loader::cmdline::Error),
    /// Cannot write the kernel command line: {0}
    #[error("Cannot write the kernel command line: {0}")]
    CmdlineLoad(linux_loader::loader::Error),
    /// Cannot open initrd {0}: {1}
    #[error("Cannot open initrd {0}: {1}")]
    InitrdOpen(String, io::Error),
    /// Initrd {0} ({1} bytes) does not fit in guest memory above the kernel
    #[error("Initrd {0} ({1} bytes) does not fit in guest memory above the kernel")]
    InitrdTooBig(String, u64),
    /// Cannot read initrd {0} into guest memory: {1}
    #[error("Cannot read initrd {0} into guest memory: {1}")]
    InitrdRead(String, vm_memory::GuestMemoryError),
    /// {0}
    #[error("{0}")]
    Acpi(#[from] AcpiError),
    /// {0}
    #[error("{0}")]
    Boot(#[from] BootError),
    /// {0}
    #[error("{0}")]
    Serial(#[from] SerialError),
    /// Cannot create the {0} interrupt: {1}
    #[error("Cannot create the {0} interrupt: {1}")]
    Interrupt(&'static str, io::Error),
    /// Cannot place the {0}: {1}
    #[error("Cannot place the {0}: {1}")]
    Bus(&'static str, BusError),
    /// Cannot create the exit request eventfd: {0}
    #[error("Cannot create the exit request eventfd: {0}")]
    ExitEvent(io::Error),
    /// Cannot read the CPUID KVM supports: {0}
    #[error("Cannot read the CPUID KVM supports: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    /// {0}
    #[error("{0}")]
    Vcpu(#[from] VcpuError),
    /// {0}
    #[error("{0}")]
    Virtio(#[from] crate::devices::virtio::setup::SetupError),
}

/// Where the kernel starts and what the zero page needs from its image.
struct LoadedKernel {
    entry: GuestAddress,
    end: u64,
    setup_header: Option<setup_header>,
}

fn is_elf(file: &mut File) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(n == 4 && magic == *b"\x7fELF")
}

fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BuildError> {
    let name = || path.display().to_string();
    let mut file = File::open(path).map_err(|e| BuildError::KernelOpen(name(), e))?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    if is_elf(&mut file).map_err(|e| BuildError::KernelOpen(name(), e))? {
        let loaded = Elf::load(mem, None, &mut file, himem)
            .map_err(|e| BuildError::KernelLoad(name(), e))?;
        return Ok(LoadedKernel {
            entry: loaded.kernel_load,
            end: loaded.kernel_end,
            setup_header: None,
        });
    }
    let loaded = BzImage::load(mem, None, &mut file, himem)
        .map_err(|e| BuildError::KernelLoad(name(), e))?;
    let hdr = loaded.setup_header.unwrap_or_default();
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BuildError::Kernel32Bit(name()));
    }
    // The decompressor needs `init_size` bytes from where it decompresses to: the load address,
    // or the preferred address if that is higher (a relocatable kernel moves up to it).
    let end = loaded
        .kernel_load
        .raw_value()
        .max(hdr.pref_address)
        .saturating_add(u64::from(hdr.init_size))
        .max(loaded.kernel_end);
    Ok(LoadedKernel {
        entry: loaded.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
        end,
        setup_header: Some(hdr),
    })
}

/// Loads the initrd at the top of low memory (below the MMIO gap and the kernel's
/// `initrd_addr_max`), page aligned, as Firecracker does.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(GuestAddress, u64), BuildError> {
    let name = || path.display().to_string();
    let mut file = File::open(path).map_err(|e| BuildError::InitrdOpen(name(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BuildError::InitrdOpen(name(), e))?
        .len();
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.start_addr().raw_value() + r.len())
        .unwrap_or(0);
    let max_end = match kernel.setup_header {
        Some(hdr) if hdr.initrd_addr_max != 0 => u64::from(hdr.initrd_addr_max) + 1,
        _ => u64::MAX,
    };
    let top = low_end.min(max_end);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel.end)
        .ok_or_else(|| BuildError::InitrdTooBig(name(), size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BuildError::InitrdRead(name(), e))?;
    Ok((GuestAddress(addr), size))
}

/// Places `device` on `bus` (as a shared device), returning it.
fn place<T: crate::devices::bus::BusDevice + 'static>(
    bus: &Bus,
    what: &'static str,
    device: T,
    base: u64,
    len: u64,
) -> Result<Arc<Mutex<T>>, BuildError> {
    let device = Arc::new(Mutex::new(device));
    bus.insert(device.clone(), base, len)
        .map_err(|e| BuildError::Bus(what, e))?;
    Ok(device)
}

/// Builds the whole VM. `start` is when the VMM process started (for the boot timer).
pub fn build(kvm: &Kvm, config: &VmConfig, start: Instant) -> Result<Vmm, BuildError> {
    let mem = create_guest_memory(config.memory_mib)?;
    let vm = Arc::new(create_vm(kvm, &mem)?);

    let kernel = load_kernel(&mem, &config.kernel)?;
    let cmdline = Cmdline::try_from(&config.cmdline, layout::CMDLINE_MAX_SIZE)
        .map_err(|e| BuildError::Cmdline(config.cmdline.clone(), e))?;
    load_cmdline(&mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(BuildError::CmdlineLoad)?;
    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(&mem, path, &kernel)?),
        None => None,
    };
    let acpi = AcpiConfig {
        extra_dsdt_aml: crate::acpi::pci::pci_aml(),
        extra_tables: vec![crate::acpi::pci::mcfg()],
        ..AcpiConfig::new(config.vcpus)
    };
    let rsdp = create_acpi_tables(&mem, &acpi)?;
    write_boot_params(
        &mem,
        &BootInfo {
            setup_header: kernel.setup_header,
            cmdline_len: config.cmdline.len(),
            initrd,
            rsdp: Some(rsdp),
        },
    )?;

    let exit = Arc::new(ExitRequest::new().map_err(BuildError::ExitEvent)?);
    let pio = Arc::new(Bus::new());
    let mmio = Arc::new(Bus::new());
    let devices = create_devices(&vm, &pio, &mmio, &exit, config, start)?;
    let virtio =
        crate::devices::virtio::setup::create_virtio_devices(&vm, &mem, &pio, &mmio, config)?;
    let vcpus = create_vcpus(
        kvm,
        &vm,
        &mem,
        config.vcpus,
        kernel.entry,
        &pio,
        &mmio,
        &exit,
    )?;

    Ok(Vmm::new(crate::vmm::VmParts {
        mem,
        vm,
        vcpus,
        exit,
        ged: devices.ged,
        serial_input: devices.serial_input,
        boot_timer: devices.boot_timer,
        virtio,
        vcpu_count: config.vcpus,
        memory_mib: config.memory_mib,
        start,
    }))
}

struct Devices {
    ged: Arc<Mutex<AcpiGed>>,
    serial_input: SerialInput,
    boot_timer: Arc<Mutex<BootTimer>>,
}

fn create_devices(
    vm: &VmFd,
    pio: &Bus,
    mmio: &Bus,
    exit: &Arc<ExitRequest>,
    config: &VmConfig,
    start: Instant,
) -> Result<Devices, BuildError> {
    let com1_irq =
        IrqFdLine::register(vm, layout::COM1_GSI).map_err(|e| BuildError::Interrupt("COM1", e))?;
    let backend = open_backend(&config.serial)?;
    let (serial, fifo_drained) = SerialDevice::new(LineTrigger(Arc::new(com1_irq)), backend.out)?;
    let serial = place(
        pio,
        "COM1",
        serial,
        u64::from(layout::COM1_PORT),
        u64::from(layout::COM1_LEN),
    )?;
    let kbd_irq = IrqFdLine::register(vm, layout::I8042_KBD_GSI)
        .map_err(|e| BuildError::Interrupt("i8042 keyboard", e))?;
    place(
        pio,
        "i8042",
        I8042::new(exit.clone(), Arc::new(kbd_irq)),
        u64::from(layout::I8042_PORT),
        u64::from(layout::I8042_LEN),
    )?;
    place(
        pio,
        "CMOS RTC",
        Cmos::new(),
        u64::from(layout::CMOS_PORT),
        u64::from(layout::CMOS_LEN),
    )?;
    place(
        pio,
        "ACPI sleep register",
        AcpiSleep::new(exit.clone()),
        u64::from(layout::ACPI_SLEEP_PORT),
        SLEEP_PORT_LEN,
    )?;
    let ged_irq = IrqFdLine::register(vm, layout::GED_GSI)
        .map_err(|e| BuildError::Interrupt("ACPI GED", e))?;
    let ged = place(
        mmio,
        "ACPI GED",
        AcpiGed::new(Arc::new(ged_irq)),
        layout::GED_START,
        GED_MMIO_LEN,
    )?;
    let boot_timer = place(
        mmio,
        "boot timer",
        BootTimer::new(start),
        layout::BOOT_TIMER_START,
        layout::PLATFORM_MMIO_SIZE,
    )?;
    Ok(Devices {
        ged,
        serial_input: SerialInput::new(serial, backend.input, fifo_drained),
        boot_timer,
    })
}

#[allow(clippy::too_many_arguments)]
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    count: u8,
    entry: GuestAddress,
    pio: &Arc<Bus>,
    mmio: &Arc<Bus>,
    exit: &Arc<ExitRequest>,
) -> Result<Vec<Vcpu>, BuildError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::SupportedCpuid)?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    (0..count)
        .map(|index| {
            let vcpu = Vcpu::new(vm, index, pio.clone(), mmio.clone(), exit.clone())?;
            let topology = Topology {
                cpu_index: index,
                cpu_count: count,
                tsc_deadline,
            };
            let boot_entry = (index == 0).then_some(entry);
            vcpu.configure(&supported, topology, mem, boot_entry)?;
            Ok(vcpu)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_file(name: &str, len: usize) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("keel-builder-{}-{name}", std::process::id()));
        std::fs::write(&path, vec![0xa5u8; len]).unwrap();
        path
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory_page_aligned() {
        let mem = create_guest_memory(16).unwrap();
        let path = temp_file("initrd", 5000);
        let kernel = LoadedKernel {
            entry: GuestAddress(layout::HIMEM_START),
            end: 0x20_0000,
            setup_header: None,
        };
        let (addr, size) = load_initrd(&mem, &path, &kernel).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr.raw_value(), ((16 << 20) - 5000) & !0xfff);
        let byte: u8 = mem.read_obj(addr).unwrap();
        assert_eq!(byte, 0xa5);

        // The kernel's initrd_addr_max caps the placement.
        let hdr = setup_header {
            initrd_addr_max: 0x7f_ffff,
            ..Default::default()
        };
        let capped = LoadedKernel {
            setup_header: Some(hdr),
            ..kernel
        };
        let (addr, _) = load_initrd(&mem, &path, &capped).unwrap();
        assert_eq!(addr.raw_value(), (0x80_0000 - 5000) & !0xfff);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn initrd_overlapping_the_kernel_is_refused_with_its_name() {
        let mem = create_guest_memory(4).unwrap();
        let path = temp_file("big-initrd", 3 << 20);
        let kernel = LoadedKernel {
            entry: GuestAddress(layout::HIMEM_START),
            end: 0x20_0000,
            setup_header: None,
        };
        let err = load_initrd(&mem, &path, &kernel).unwrap_err();
        assert!(matches!(err, BuildError::InitrdTooBig(_, n) if n == 3 << 20));
        assert!(err.to_string().contains("big-initrd"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn elf_magic_decides_the_loader() {
        let elf = temp_file("elf", 0);
        std::fs::write(&elf, b"\x7fELF\x02\x01").unwrap();
        let other = temp_file("bz", 600);
        for (path, want) in [(&elf, true), (&other, false)] {
            let mut file = File::open(path).unwrap();
            assert_eq!(is_elf(&mut file).unwrap(), want);
            assert_eq!(file.stream_position().unwrap(), 0, "rewound for the loader");
            std::fs::remove_file(path).unwrap();
        }
    }
}
