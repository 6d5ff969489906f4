//! A split virtqueue laid out by hand in guest memory, for tests that play a (possibly hostile)
//! driver: descriptors, the available ring and the used ring are written directly.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const DESC_TABLE: u64 = 0x1000;
pub const AVAIL_RING: u64 = 0x3000;
pub const USED_RING: u64 = 0x4000;

pub struct GuestQueue {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    avail_idx: u16,
}

impl GuestQueue {
    /// 16 MiB of guest memory with a queue of `size` entries (at most 256).
    pub fn new(size: u16) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)])
            .unwrap_or_else(|e| panic!("{e}"));
        GuestQueue {
            mem,
            size,
            avail_idx: 0,
        }
    }

    /// Writes descriptor `index`.
    pub fn desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC_TABLE + u64::from(index) * 16;
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let _ = self.mem.write_slice(&raw, GuestAddress(at));
    }

    /// Makes the chain starting at `head` available.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let _ = self
            .mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + slot * 2));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available index directly (hostile drivers lie about it).
    pub fn set_avail_idx(&mut self, idx: u16) {
        let _ = self.mem.write_obj(idx, GuestAddress(AVAIL_RING + 2));
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap_or(0)
    }

    /// Used element `n`: (head, length).
    pub fn used(&self, n: u16) -> (u32, u32) {
        let at = USED_RING + 4 + u64::from(n % self.size) * 8;
        let id = self.mem.read_obj(GuestAddress(at)).unwrap_or(u32::MAX);
        let len = self.mem.read_obj(GuestAddress(at + 4)).unwrap_or(u32::MAX);
        (id, len)
    }

    /// A ready device-side queue over this layout.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(256).unwrap_or_else(|e| panic!("{e}"));
        q.set_size(self.size);
        q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_ready(true);
        q
    }
}
