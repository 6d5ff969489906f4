//! The PIO and MMIO buses: address ranges mapped to devices. vCPU exits are dispatched here.
//! (Contract shared by every device; the lead defined it, the VMM core helper implements `Bus`.)

use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes in the range it was inserted at.
/// `offset` is relative to the start of that range. Implementations must not panic on any
/// offset or data length a guest can produce: unknown accesses read as all ones and writes are ignored.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (the event loop, the API).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

use std::collections::BTreeMap;
use std::sync::RwLock;

/// Why a device could not be placed on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Bus range at {0:#x} has zero length
    #[error("Bus range at {0:#x} has zero length")]
    ZeroLength(u64),
    /// Bus range {0:#x}+{1:#x} wraps past the end of the address space
    #[error("Bus range {0:#x}+{1:#x} wraps past the end of the address space")]
    Overflow(u64, u64),
    /// Bus range {0:#x}+{1:#x} overlaps the device at {2:#x}+{3:#x}
    #[error("Bus range {0:#x}+{1:#x} overlaps the device at {2:#x}+{3:#x}")]
    Overlap(u64, u64, u64, u64),
}

#[derive(Clone)]
struct BusEntry {
    len: u64,
    device: SharedDevice,
}

/// An address space (port I/O or MMIO) with devices on non-overlapping ranges. Shared by all vCPUs;
/// the map sits behind a read-write lock so ranges can be added or moved at run time (PCI BARs)
/// while lookups from vCPUs only take the read side.
#[derive(Default)]
pub struct Bus {
    devices: RwLock<BTreeMap<u64, BusEntry>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Bus::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength(base));
        }
        let last = base
            .checked_add(len - 1)
            .ok_or(BusError::Overflow(base, len))?;
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        // The only candidates for overlap: the last range starting at or before `last`.
        if let Some((&other, entry)) = devices.range(..=last).next_back() {
            if other + (entry.len - 1) >= base {
                return Err(BusError::Overlap(base, len, other, entry.len));
            }
        }
        devices.insert(base, BusEntry { len, device });
        Ok(())
    }

    /// Removes the device placed at exactly `base`, returning it.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        devices.remove(&base).map(|entry| entry.device)
    }

    /// The device whose range holds the whole access `[addr, addr + size)`, and the offset of `addr`.
    fn resolve(&self, addr: u64, size: usize) -> Option<(SharedDevice, u64)> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let (&base, entry) = devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then(|| (entry.device.clone(), offset))
    }

    /// Dispatches a guest read. Returns false (and leaves `data` alone) if no device holds the range.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write. Returns false if no device holds the range.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Records the last access; reads return the offset in every byte.
    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn insert_rejects_bad_and_overlapping_ranges() {
        let bus = Bus::new();
        let dev = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(dev(), 0x10, 0x10).unwrap();
        let cases: &[(u64, u64, Option<BusError>)] = &[
            (0x20, 0x8, None),                                              // adjacent above
            (0x8, 0x8, None),                                               // adjacent below
            (0x0, 0x9, Some(BusError::Overlap(0x0, 0x9, 0x8, 0x8))),        // tail overlaps
            (0x1f, 0x1, Some(BusError::Overlap(0x1f, 0x1, 0x10, 0x10))),    // inside
            (0x12, 0x100, Some(BusError::Overlap(0x12, 0x100, 0x20, 0x8))), // covers two
            (0x30, 0, Some(BusError::ZeroLength(0x30))),
            (u64::MAX, 2, Some(BusError::Overflow(u64::MAX, 2))),
            (u64::MAX, 1, None), // the very last byte is usable
        ];
        for (base, len, want) in cases {
            assert_eq!(
                bus.insert(dev(), *base, *len).err(),
                *want,
                "{base:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn accesses_dispatch_by_address_with_offsets() {
        let bus = Bus::new();
        let rec = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(rec.clone(), 0x3f8, 8).unwrap();

        let mut data = [0u8; 2];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data, [2, 2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(rec.lock().unwrap().last_write, Some((7, vec![7])));

        // Outside any device, or straddling the end of one: not handled, data untouched.
        let mut data = [0xaa; 2];
        assert!(!bus.read(0x3f7, &mut data));
        assert!(!bus.read(0x3ff, &mut data));
        assert_eq!(data, [0xaa, 0xaa]);
        assert!(!bus.write(0x400, &[1]));

        assert!(bus.remove(0x3f8).is_some());
        assert!(!bus.write(0x3f8, &[1]));
    }
}
