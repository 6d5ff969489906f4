//! Builds the PCI root and the virtio devices `vm.json` asks for: disks first (the guest names
//! them vda, vdb, … in slot order), then NICs, then the entropy device.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vm_allocator::IdAllocator;
use vm_memory::GuestMemoryMmap;

use super::block::Block;
use super::net::Net;
use super::pci::{VirtioPciDevice, VirtioPciError, BAR_SIZE};
use super::rng::Rng;
use super::tap::Tap;
use super::VirtioDevice;
use crate::arch::layout::{
    MSI_GSI_FIRST, MSI_GSI_LAST, PCI_ECAM_START, PCI_MMIO_SIZE, PCI_MMIO_START,
};
use crate::config::VmConfig;
use crate::devices::bus::{Bus, BusError, SharedDevice};
use crate::devices::pci::msix::MsiRouter;
use crate::devices::pci::{
    PciConfigIo, PciEcam, PciError, PciFunction, PciRoot, ECAM_BUS_SIZE, PCI_CONFIG_PORT,
    PCI_CONFIG_PORT_LEN,
};

/// The PCI root or a virtio device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// {0}
    #[error("{0}")]
    Pci(#[from] PciError),
    /// Cannot place the PCI {0}: {1}
    #[error("cannot place the PCI {0}: {1}")]
    Bus(&'static str, BusError),
    /// Out of interrupt numbers for the {0} device
    #[error("out of interrupt numbers for the {0} device")]
    NoGsi(String),
    /// {0}
    #[error("{0}")]
    Device(#[from] VirtioPciError),
    /// {0}
    #[error("{0}")]
    Backend(String),
}

/// Creates the PCI root (always: a guest with no devices still sees an empty bus) and every
/// configured virtio device. Returns the devices for the event loop.
pub fn create_virtio_devices(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    pio: &Bus,
    mmio: &Arc<Bus>,
    config: &VmConfig,
) -> Result<Vec<Arc<Mutex<VirtioPciDevice>>>, SetupError> {
    let router = Arc::new(MsiRouter::new(vm.clone()));
    let mut root = PciRoot::new(mmio.clone(), PCI_MMIO_START, PCI_MMIO_SIZE)?;
    let mut gsis = IdAllocator::new(MSI_GSI_FIRST, MSI_GSI_LAST)
        .map_err(|_| SetupError::NoGsi("first".into()))?;

    let mut models: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let block = Block::open(disk).map_err(|e| SetupError::Backend(e.to_string()))?;
        models.push((format!("disks[{i}]"), Box::new(block)));
    }
    for (i, nic) in config.nics.iter().enumerate() {
        let name = nic.tap.clone().unwrap_or_else(|| format!("keeltap{i}"));
        let mac = nic.mac.octets();
        let tap = Tap::open(&name, nic.bridge.as_deref())
            .map_err(|e| SetupError::Backend(format!("nics[{i}] tap {name}: {e}")))?;
        models.push((
            format!("nics[{i}]"),
            Box::new(Net::new(name, Box::new(tap), mac)),
        ));
    }
    if config.rng {
        models.push(("rng".into(), Box::new(Rng)));
    }

    let mut devices = Vec::new();
    for (name, model) in models {
        let vectors = model.queue_max_sizes().len() + 1;
        let ids = (0..vectors)
            .map(|_| gsis.allocate_id())
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| SetupError::NoGsi(name.clone()))?;
        let bar = root.allocate_bar(BAR_SIZE)?;
        let device = Arc::new(Mutex::new(VirtioPciDevice::new(
            name,
            model,
            mem.clone(),
            router.clone(),
            ids,
            bar,
        )?));
        let function: Arc<Mutex<dyn PciFunction>> = device.clone();
        let regs: SharedDevice = device.clone();
        root.add(function, Some((regs, bar, BAR_SIZE)))?;
        devices.push(device);
    }

    let root = Arc::new(Mutex::new(root));
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
        u64::from(PCI_CONFIG_PORT),
        u64::from(PCI_CONFIG_PORT_LEN),
    )
    .map_err(|e| SetupError::Bus("configuration ports", e))?;
    mmio.insert(
        Arc::new(Mutex::new(PciEcam::new(root))),
        PCI_ECAM_START,
        ECAM_BUS_SIZE,
    )
    .map_err(|e| SetupError::Bus("ECAM window", e))?;
    Ok(devices)
}
