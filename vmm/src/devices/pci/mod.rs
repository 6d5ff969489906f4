//! A PCI root complex with one bus, reached both through the legacy configuration ports
//! (0xCF8/0xCFC) and through ECAM (described by the ACPI MCFG table), after Cloud Hypervisor's
//! `pci` crate. Function 0 of each slot only; slot 0 is the host bridge.
//!
//! BAR moves: a guest may reprogram a BAR; the function reports the move and the root remaps the
//! function's MMIO range on the bus, so devices never touch the bus themselves.

pub mod config;
pub mod msix;

use std::sync::{Arc, Mutex};

use vm_allocator::{AddressAllocator, AllocPolicy};

use crate::devices::bus::{Bus, BusDevice, SharedDevice};
use crate::devices::RateLimitedLog;
use config::{PciConfig, PciIds};

/// Legacy configuration address port; the data port follows at +4.
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Ports of the address and data registers.
pub const PCI_CONFIG_PORT_LEN: u16 = 8;
/// Slots on the bus.
pub const SLOTS: usize = 32;
/// ECAM bytes per bus (32 devices, 8 functions, 4 KiB each).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

static BAD_BAR_MOVE: RateLimitedLog = RateLimitedLog::new();

/// A function's BAR0 moved from `old` to `new` (both `len` bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    pub old: u64,
    pub new: u64,
    pub len: u64,
}

/// A PCI function as the root sees it.
pub trait PciFunction: Send {
    /// Reads configuration dword `reg`.
    fn config_read(&mut self, reg: usize) -> u32;
    /// Writes `data` at byte `offset` inside configuration dword `reg`; reports a BAR move.
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove>;
}

/// The host bridge at 00:00.0: identity only.
struct HostBridge(PciConfig);

impl PciFunction for HostBridge {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.0.read(reg)
    }
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        self.0.write(reg, offset, data);
        None
    }
}

/// One function in a slot: its configuration and, when it has a BAR, its MMIO side.
struct Slot {
    function: Arc<Mutex<dyn PciFunction>>,
    mmio: Option<SharedDevice>,
}

/// Why a function could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// Every PCI slot is taken (32 on bus 0)
    #[error("every PCI slot is taken ({SLOTS} on bus 0)")]
    NoSlot,
    /// No room for a {0:#x}-byte BAR in the PCI MMIO window
    #[error("no room for a {0:#x}-byte BAR in the PCI MMIO window")]
    NoBarSpace(u64),
    /// Cannot map a BAR: {0}
    #[error("cannot map a BAR: {0}")]
    Bus(crate::devices::bus::BusError),
}

/// The bus: slots, the BAR allocator over the MMIO window, and the MMIO bus BARs live on.
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    allocator: AddressAllocator,
    mmio: Arc<Bus>,
}

impl PciRoot {
    /// A bus with the host bridge; BARs are allocated in `[window_start, window_start + size)`.
    pub fn new(mmio: Arc<Bus>, window_start: u64, window_size: u64) -> Result<Self, PciError> {
        let allocator = AddressAllocator::new(window_start, window_size)
            .map_err(|_| PciError::NoBarSpace(window_size))?;
        let bridge = HostBridge(PciConfig::new(PciIds {
            vendor: 0x8086,
            device: 0x0d57,
            revision: 0,
            class: 0x06_00_00,
            subsystem_vendor: 0,
            subsystem: 0,
        }));
        let mut slots: Vec<Option<Slot>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(Slot {
            function: Arc::new(Mutex::new(bridge)),
            mmio: None,
        });
        Ok(PciRoot {
            slots,
            allocator,
            mmio,
        })
    }

    /// Reserves `size` bytes (a power of two) of the MMIO window, naturally aligned.
    pub fn allocate_bar(&mut self, size: u64) -> Result<u64, PciError> {
        self.allocator
            .allocate(size, size, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|_| PciError::NoBarSpace(size))
    }

    /// Adds a function in the first free slot, with its BAR0 (if any) already mapped at `bar`.
    /// Returns the slot number.
    pub fn add(
        &mut self,
        function: Arc<Mutex<dyn PciFunction>>,
        bar: Option<(SharedDevice, u64, u64)>,
    ) -> Result<usize, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoSlot)?;
        let mmio = match bar {
            Some((device, base, len)) => {
                self.mmio
                    .insert(device.clone(), base, len)
                    .map_err(PciError::Bus)?;
                Some(device)
            }
            None => None,
        };
        self.slots[slot] = Some(Slot { function, mmio });
        Ok(slot)
    }

    /// Reads dword `reg` of function `devfn` (slot << 3 | function); absent functions read as
    /// all ones, which is how a guest learns a slot is empty.
    pub fn config_read(&self, devfn: u8, reg: usize) -> u32 {
        match self.function(devfn) {
            Some(slot) => slot
                .function
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(reg),
            None => u32::MAX,
        }
    }

    /// Writes configuration space of function `devfn`, remapping its BAR if it moved.
    pub fn config_write(&self, devfn: u8, reg: usize, offset: usize, data: &[u8]) {
        let Some(slot) = self.function(devfn) else {
            return;
        };
        // The function's lock is released before the bus is touched.
        let moved = slot
            .function
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_write(reg, offset, data);
        if let (Some(m), Some(device)) = (moved, &slot.mmio) {
            self.mmio.remove(m.old);
            if let Err(e) = self.mmio.insert(device.clone(), m.new, m.len) {
                BAD_BAR_MOVE.log(format_args!("PCI {devfn:#x}: BAR move refused: {e}"));
                // Keep serving at the old address rather than losing the device.
                let _ = self.mmio.insert(device.clone(), m.old, m.len);
            }
        }
    }

    fn function(&self, devfn: u8) -> Option<&Slot> {
        if devfn & 7 != 0 {
            return None;
        }
        self.slots.get(usize::from(devfn >> 3))?.as_ref()
    }
}

/// The legacy configuration mechanism #1: an address register at 0xCF8 and a data window at
/// 0xCFC..0xCFF.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigIo { root, address: 0 }
    }

    /// (devfn, dword) selected by the address register, if enabled and on bus 0.
    fn target(&self) -> Option<(u8, usize)> {
        let enabled = self.address & (1 << 31) != 0;
        let bus = (self.address >> 16) & 0xff;
        (enabled && bus == 0).then_some((
            ((self.address >> 8) & 0xff) as u8,
            ((self.address >> 2) & 0x3f) as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 if data.len() == 4 => self.address,
            4..=7 => match self.target() {
                Some((devfn, reg)) => {
                    let root = self.root.lock().unwrap_or_else(|e| e.into_inner());
                    root.config_read(devfn, reg) >> ((offset - 4) * 8)
                }
                None => u32::MAX,
            },
            _ => u32::MAX,
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = value.checked_shr(8 * i as u32).unwrap_or(0xff) as u8;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut v = [0u8; 4];
                v.copy_from_slice(data);
                self.address = u32::from_le_bytes(v) & 0x80ff_fffc;
            }
            4..=7 => {
                if let Some((devfn, reg)) = self.target() {
                    let root = self.root.lock().unwrap_or_else(|e| e.into_inner());
                    root.config_write(devfn, reg, (offset - 4) as usize, data);
                }
            }
            _ => {}
        }
    }
}

/// ECAM: configuration space memory-mapped, 4 KiB per function, bus 0 only.
pub struct PciEcam {
    root: Arc<Mutex<PciRoot>>,
}

impl PciEcam {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciEcam { root }
    }

    fn decode(offset: u64, len: usize) -> Option<(u8, usize, usize)> {
        let devfn = ((offset >> 12) & 0xff) as u8;
        let byte = (offset & 0xfff) as usize;
        // An access must stay inside one dword.
        ((byte % 4) + len <= 4).then_some((devfn, byte / 4, byte % 4))
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match Self::decode(offset, data.len()) {
            Some((devfn, reg, shift)) => {
                let root = self.root.lock().unwrap_or_else(|e| e.into_inner());
                root.config_read(devfn, reg) >> (shift * 8)
            }
            None => u32::MAX,
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = value.checked_shr(8 * i as u32).unwrap_or(0xff) as u8;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((devfn, reg, shift)) = Self::decode(offset, data.len()) {
            let root = self.root.lock().unwrap_or_else(|e| e.into_inner());
            root.config_write(devfn, reg, shift, data);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A function with a BAR, recording nothing: the root's behaviour is what is tested.
    struct Dummy(PciConfig);

    impl PciFunction for Dummy {
        fn config_read(&mut self, reg: usize) -> u32 {
            self.0.read(reg)
        }
        fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
            self.0.write(reg, offset, data);
            self.0.take_bar_move()
        }
    }

    struct Mem;
    impl BusDevice for Mem {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0x5a);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    fn root_with_device() -> (Arc<Mutex<PciRoot>>, Arc<Bus>, u64) {
        let mmio = Arc::new(Bus::new());
        let mut root = PciRoot::new(mmio.clone(), 0xc000_0000, 0x1000_0000).unwrap();
        let bar = root.allocate_bar(0x1000).unwrap();
        let mut cfg = PciConfig::new(PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x01_80_00,
            subsystem_vendor: 0x1af4,
            subsystem: 2,
        });
        cfg.set_bar0(bar as u32, 0x1000);
        let slot = root
            .add(
                Arc::new(Mutex::new(Dummy(cfg))),
                Some((Arc::new(Mutex::new(Mem)), bar, 0x1000)),
            )
            .unwrap();
        assert_eq!(slot, 1);
        (Arc::new(Mutex::new(root)), mmio, bar)
    }

    fn io_read(io: &mut PciConfigIo, devfn: u8, reg: u32) -> u32 {
        let addr = (1u32 << 31) | (u32::from(devfn) << 8) | (reg << 2);
        io.write(0, &addr.to_le_bytes());
        let mut v = [0u8; 4];
        io.read(4, &mut v);
        u32::from_le_bytes(v)
    }

    #[test]
    fn config_io_and_ecam_see_the_same_functions() {
        let (root, _, bar) = root_with_device();
        let mut io = PciConfigIo::new(root.clone());
        let mut ecam = PciEcam::new(root);
        assert_eq!(io_read(&mut io, 0, 0), 0x0d57_8086, "host bridge");
        assert_eq!(io_read(&mut io, 8, 0), 0x1042_1af4);
        assert_eq!(io_read(&mut io, 8, 4), bar as u32);
        assert_eq!(io_read(&mut io, 16, 0), u32::MAX, "empty slot");
        assert_eq!(io_read(&mut io, 9, 0), u32::MAX, "function 1");
        let mut v = [0u8; 2];
        ecam.read(1 << 15 | 2, &mut v);
        assert_eq!(u16::from_le_bytes(v), 0x1042);
        let mut v = [0u8; 4];
        ecam.read(1 << 15 | 2, &mut v);
        assert_eq!(v, [0xff; 4], "access straddling two dwords");
        // A disabled address register or another bus reads as all ones.
        io.write(0, &(8u32 << 8).to_le_bytes());
        io.read(4, &mut v);
        assert_eq!(v, [0xff; 4]);
        io.write(0, &((1u32 << 31) | (1 << 16)).to_le_bytes());
        io.read(4, &mut v);
        assert_eq!(v, [0xff; 4]);
    }

    #[test]
    fn moving_a_bar_remaps_the_device() {
        let (root, mmio, bar) = root_with_device();
        let mut ecam = PciEcam::new(root);
        let mut v = [0u8; 1];
        assert!(mmio.read(bar, &mut v));
        let new = 0xc800_0000u32;
        ecam.write(1 << 15 | 0x10, &new.to_le_bytes());
        assert!(mmio.read(bar, &mut v), "decoding off: not moved yet");
        ecam.write(1 << 15 | 0x4, &[2, 0]);
        assert!(!mmio.read(bar, &mut v));
        assert!(mmio.read(u64::from(new), &mut v));
        assert_eq!(v, [0x5a]);
    }

    #[test]
    fn bar_allocation_is_aligned_and_bounded() {
        let mut root = PciRoot::new(Arc::new(Bus::new()), 0xc000_0000, 0x10000).unwrap();
        assert_eq!(root.allocate_bar(0x1000).unwrap(), 0xc000_0000);
        assert_eq!(root.allocate_bar(0x8000).unwrap(), 0xc000_8000);
        assert_eq!(
            root.allocate_bar(0x8000).unwrap_err(),
            PciError::NoBarSpace(0x8000)
        );
    }
}
