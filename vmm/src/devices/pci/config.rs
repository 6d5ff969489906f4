//! One PCI function's 256-byte type-0 configuration space: the header, one 32-bit memory BAR and a
//! capability list, with a per-dword write mask so a guest can only change what hardware lets it
//! change (after Cloud Hypervisor's `pci/src/configuration.rs`, much reduced).

/// Dwords in a conventional configuration space (ECAM's extended space reads as zero).
pub const CONFIG_DWORDS: usize = 64;
/// Dword index of BAR0.
const BAR0_REG: usize = 4;
/// Dword index of the command (low half) and status (high half) registers.
pub const COMMAND_REG: usize = 1;
/// Command register bit: the function decodes its memory BARs.
pub const COMMAND_MEMORY: u32 = 1 << 1;
/// Command register bits a guest may set: I/O, memory, bus master, INTx disable.
const COMMAND_WRITABLE: u32 = 0x1 | 0x2 | 0x4 | 0x400;
/// Status register bit: a capability list is present.
const STATUS_CAP_LIST: u32 = 1 << 4;
/// Offset of the capabilities pointer.
const CAP_POINTER: usize = 0x34;
/// First capability: right after the header.
pub const FIRST_CAP: usize = 0x40;

/// What the identity registers hold.
#[derive(Debug, Clone, Copy)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class code, subclass and programming interface (`0x02_00_00` for an Ethernet controller).
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// A configuration space.
#[derive(Debug, Clone)]
pub struct PciConfig {
    regs: [u32; CONFIG_DWORDS],
    writable: [u32; CONFIG_DWORDS],
    /// Size of BAR0 (a power of two), 0 without one.
    bar_size: u32,
    /// Where BAR0 is mapped on the bus now.
    mapped_bar: u32,
    /// Where the next capability goes, and the offset of the previous one's next pointer.
    next_cap: usize,
    last_cap_next: usize,
}

impl PciConfig {
    /// A header with these identities, no BAR and no capabilities.
    pub fn new(ids: PciIds) -> Self {
        let mut regs = [0u32; CONFIG_DWORDS];
        regs[0] = u32::from(ids.vendor) | (u32::from(ids.device) << 16);
        regs[2] = (ids.class << 8) | u32::from(ids.revision);
        regs[11] = u32::from(ids.subsystem_vendor) | (u32::from(ids.subsystem) << 16);
        let mut writable = [0u32; CONFIG_DWORDS];
        writable[COMMAND_REG] = COMMAND_WRITABLE;
        // Interrupt line is scratch space for the OS; the pin stays 0 (no INTx, MSI-X only).
        writable[15] = 0xff;
        PciConfig {
            regs,
            writable,
            bar_size: 0,
            mapped_bar: 0,
            next_cap: FIRST_CAP,
            last_cap_next: CAP_POINTER,
        }
    }

    /// Gives the function a 32-bit, non-prefetchable memory BAR0 of `size` bytes (a power of two,
    /// at least 16) at `addr`.
    pub fn set_bar0(&mut self, addr: u32, size: u32) {
        self.bar_size = size;
        self.regs[BAR0_REG] = addr & !(size - 1);
        self.writable[BAR0_REG] = !(size - 1);
        self.mapped_bar = self.bar0();
    }

    /// After a configuration write: if decoding is on and BAR0 now holds another address than the
    /// one mapped, the mapping must follow. Sizing (all ones written with decoding off, as Linux
    /// does) never moves anything.
    pub fn take_bar_move(&mut self) -> Option<super::BarMove> {
        if self.bar_size == 0 || !self.memory_enabled() || self.bar0() == self.mapped_bar {
            return None;
        }
        let old = self.mapped_bar;
        self.mapped_bar = self.bar0();
        Some(super::BarMove {
            old: u64::from(old),
            new: u64::from(self.mapped_bar),
            len: u64::from(self.bar_size),
        })
    }

    /// The address BAR0 holds now.
    pub fn bar0(&self) -> u32 {
        self.regs[BAR0_REG] & !0xf
    }

    /// Whether memory decoding is on.
    pub fn memory_enabled(&self) -> bool {
        self.regs[COMMAND_REG] & COMMAND_MEMORY != 0
    }

    /// Appends a capability: `body` starts with the capability ID, its next pointer is filled in
    /// here. `writable` masks (per byte of body, same length) which bits the guest may change.
    /// Returns the capability's offset, or `None` if it does not fit.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> Option<usize> {
        let offset = self.next_cap;
        let end = offset.checked_add(body.len())?;
        if body.len() < 2 || end > CONFIG_DWORDS * 4 || writable.len() != body.len() {
            return None;
        }
        for (i, (&b, &w)) in body.iter().zip(writable).enumerate() {
            let at = offset + i;
            let byte = if i == 1 { 0 } else { b };
            self.set_byte(at, byte);
            set_byte_in(&mut self.writable, at, w);
        }
        self.set_byte(self.last_cap_next, offset as u8);
        self.regs[COMMAND_REG] |= STATUS_CAP_LIST << 16;
        self.last_cap_next = offset + 1;
        self.next_cap = end.next_multiple_of(4);
        Some(offset)
    }

    fn set_byte(&mut self, at: usize, value: u8) {
        set_byte_in(&mut self.regs, at, value);
    }

    /// Reads a byte (for capability users).
    pub fn byte(&self, at: usize) -> u8 {
        self.regs
            .get(at / 4)
            .map_or(0xff, |r| (r >> ((at % 4) * 8)) as u8)
    }

    /// Reads dword `reg`; outside the conventional space (ECAM's extended space) reads as zero.
    pub fn read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` of dword `reg`, through the write mask.
    /// Accesses that are not naturally aligned inside the dword are ignored.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        let Some(mask) = self.writable.get(reg).copied() else {
            return;
        };
        if !matches!(data.len(), 1 | 2 | 4)
            || offset + data.len() > 4
            || !offset.is_multiple_of(data.len())
        {
            return;
        }
        let mut value = [0u8; 4];
        value[offset..offset + data.len()].copy_from_slice(data);
        let value = u32::from_le_bytes(value);
        let lanes: u32 = match data.len() {
            4 => u32::MAX,
            n => ((1u32 << (n * 8)) - 1) << (offset * 8),
        };
        let mask = mask & lanes;
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
    }
}

fn set_byte_in(regs: &mut [u32; CONFIG_DWORDS], at: usize, value: u8) {
    if let Some(r) = regs.get_mut(at / 4) {
        let shift = (at % 4) * 8;
        *r = (*r & !(0xff << shift)) | (u32::from(value) << shift);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> PciConfig {
        PciConfig::new(PciIds {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: 0xff_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 4,
        })
    }

    #[test]
    fn header_identity_is_read_only() {
        let mut c = config();
        assert_eq!(c.read(0), 0x1044_1af4);
        assert_eq!(c.read(2), 0xff00_0001);
        c.write(0, 0, &[0xff, 0xff, 0xff, 0xff]);
        c.write(2, 0, &[0; 4]);
        assert_eq!(c.read(0), 0x1044_1af4);
        assert_eq!(c.read(2), 0xff00_0001);
        assert_eq!(c.read(1000), 0, "extended space reads as zero");
        c.write(1000, 0, &[1]); // ignored, no panic
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = config();
        c.set_bar0(0xc000_8000, 0x8000);
        assert_eq!(c.read(4), 0xc000_8000);
        c.write(4, 0, &u32::MAX.to_le_bytes());
        assert_eq!(c.read(4), 0xffff_8000, "size = !mask + 1");
        c.write(4, 0, &0xc001_2345u32.to_le_bytes());
        assert_eq!(c.bar0(), 0xc001_0000);
        // BAR1..5 are not implemented: they read as zero whatever is written.
        c.write(5, 0, &u32::MAX.to_le_bytes());
        assert_eq!(c.read(5), 0);
    }

    #[test]
    fn command_register_masks_and_partial_writes() {
        let mut c = config();
        c.write(COMMAND_REG, 0, &[0xff, 0xff]);
        assert_eq!(c.read(COMMAND_REG) & 0xffff, COMMAND_WRITABLE);
        assert!(c.memory_enabled());
        c.write(COMMAND_REG, 0, &[0, 0]);
        assert!(!c.memory_enabled());
        // Misaligned or odd-sized accesses are ignored.
        c.write(COMMAND_REG, 1, &[0xff, 0xff]);
        c.write(COMMAND_REG, 3, &[1, 2]);
        c.write(COMMAND_REG, 0, &[1, 2, 3]);
        assert_eq!(c.read(COMMAND_REG) & 0xffff, 0);
    }

    #[test]
    fn capabilities_chain_from_the_pointer() {
        let mut c = config();
        let a = c
            .add_capability(&[0x09, 0xee, 4, 1], &[0, 0, 0, 0])
            .unwrap();
        let b = c
            .add_capability(&[0x11, 0, 0, 0, 5], &[0, 0, 0, 0xff, 0])
            .unwrap();
        assert_eq!((a, b), (0x40, 0x44));
        assert_ne!(c.read(COMMAND_REG) & (STATUS_CAP_LIST << 16), 0);
        assert_eq!(c.byte(CAP_POINTER), 0x40);
        assert_eq!(c.byte(0x41), 0x44, "next pointer filled in");
        assert_eq!(c.byte(0x45), 0, "end of list");
        c.write(0x44 / 4, 3, &[0xab]);
        c.write(0x40 / 4, 3, &[0xab]);
        assert_eq!((c.byte(0x47), c.byte(0x43)), (0xab, 1));
        assert!(c.add_capability(&[0; 200], &[0; 200]).is_none(), "too big");
    }
}
