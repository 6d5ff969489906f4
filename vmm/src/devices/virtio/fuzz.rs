//! Fuzz targets for the queue handling of each device, as plain functions: the cargo-fuzz crate
//! in `vmm/fuzz/` (`make fuzz`) calls them with libFuzzer's inputs, and a unit test below drives
//! them with deterministic pseudo-random inputs on the stable toolchain, so `cargo test`
//! exercises the same code. Built only for tests and with the `fuzz` feature.
//!
//! An input describes a guest ([`Guest`], decoded with `arbitrary`): the queue size; for each
//! queue, descriptor chains as a driver builds them (segments with an address, a length and a
//! direction, linked in the table and made available in one of a few rounds), then hostile table
//! entries written over them, extra available entries and sometimes a lying available index; and
//! the data pages' contents (raw bytes, virtio-blk request headers and discard/write-zeroes
//! ranges, or indirect descriptor tables). Addresses and lengths land inside guest memory most of
//! the time (at a data page, in one, or on the rings themselves) and anywhere otherwise, so even a
//! few bytes of input form a chain. The device must never panic, and every call must return.

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::{self, Block};
use super::net::{FrameBackend, Net};
use super::rng::Rng;
use super::{DeviceEvent, VirtioDevice, VirtioTransport};
use crate::config::DiskConfig;

const MEM_SIZE: usize = 1 << 20;
/// Queue q: descriptor table at RINGS + q * QUEUE_STRIDE, available ring one page above it,
/// used ring two pages above it.
const RINGS: u64 = 0x1000;
const QUEUE_STRIDE: u64 = 0x4000;
const PAGE: u64 = 0x1000;
/// Buffers live in SLOTS pages from DATA on.
const DATA: u64 = 0x10000;
const SLOTS: u64 = 16;
/// Most rounds (batches of available entries) one input can ask for.
const MAX_ROUNDS: usize = 4;

/// Descriptor flags (virtio 1.x 2.7.5).
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A fuzzed guest: what the driver put in memory.
#[derive(Debug, Arbitrary)]
pub struct Guest {
    /// log2 of every queue's size, modulo 9 (1..=256 entries, as a driver may pick).
    pub size_log2: u8,
    /// VIRTIO_F_EVENT_IDX negotiated (notification suppression through used_event).
    pub event_idx: bool,
    /// One per device queue (missing ones stay empty).
    pub queues: Vec<GuestQueue>,
    /// Contents of the data pages: buffer i at the start of page i (at most [`SLOTS`]).
    pub buffers: Vec<Fill>,
}

/// One queue as the driver filled it.
#[derive(Debug, Arbitrary)]
pub struct GuestQueue {
    /// Chains laid out one after another in the descriptor table (NEXT and `next` link each
    /// segment to the following entry); each is made available in its round.
    pub chains: Vec<Chain>,
    /// Then these table entries are overwritten as given: loops, bad indices, odd flags.
    pub raw: Vec<(Index, Desc)>,
    /// More available entries, any head, in the first round.
    pub extra_heads: Vec<Index>,
    /// An available index written instead of the true one before the first round.
    pub lying_avail_idx: Option<u16>,
    /// used_event (read by the device when event_idx is on).
    pub used_event: u16,
}

/// A descriptor chain as a driver builds it.
#[derive(Debug, Arbitrary)]
pub struct Chain {
    /// The round that makes it available (modulo [`MAX_ROUNDS`]).
    pub round: u8,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Arbitrary)]
pub struct Segment {
    pub addr: Addr,
    pub len: Len,
    pub kind: SegmentKind,
}

#[derive(Debug, Arbitrary)]
pub enum SegmentKind {
    /// Device-readable.
    Read,
    /// Device-writable.
    Write,
    /// An indirect table (point it at a [`Fill::Table`] buffer).
    Indirect,
    /// These flags (NEXT is still set between segments).
    Flags(u16),
}

/// A descriptor, field by field.
#[derive(Debug, Arbitrary)]
pub struct Desc {
    pub addr: Addr,
    pub len: Len,
    pub flags: u16,
    pub next: Index,
}

/// A descriptor or ring index: inside the queue mostly.
#[derive(Debug, Arbitrary)]
pub enum Index {
    /// Modulo the queue size.
    In(u8),
    Raw(u16),
}

/// A buffer address.
#[derive(Debug, Arbitrary)]
pub enum Addr {
    /// The start of data page `n % SLOTS` (where buffer n is).
    Slot(u8),
    /// Inside data page `slot % SLOTS`, at `offset % 4096`.
    InSlot { slot: u8, offset: u16 },
    /// On the rings (descriptor tables, available and used rings): a hostile overlap.
    Rings(u16),
    /// Anywhere, usually outside guest memory.
    Raw(u64),
}

/// A buffer length.
#[derive(Debug, Arbitrary)]
pub enum Len {
    Small(u8),
    /// Up to two pages.
    Pages(u16),
    Raw(u32),
}

/// What a data page holds.
#[derive(Debug, Arbitrary)]
pub enum Fill {
    Bytes(Vec<u8>),
    /// A virtio-blk request header (type, reserved, sector) with a type the device knows
    /// (`kind % 7` below 6) or `raw`, and a sector near the 64 KiB disk.
    BlockHeader {
        kind: u8,
        raw: u32,
        sector: u16,
    },
    /// Discard/write-zeroes segments (sector, sectors, flags).
    Ranges(Vec<(u16, u16, u32)>),
    /// An indirect descriptor table.
    Table(Vec<Desc>),
}

impl Index {
    fn resolve(&self, size: u16) -> u16 {
        match *self {
            Index::In(i) => u16::from(i) % size.max(1),
            Index::Raw(i) => i,
        }
    }
}

impl Addr {
    fn resolve(&self) -> u64 {
        match *self {
            Addr::Slot(n) => DATA + u64::from(n) % SLOTS * PAGE,
            Addr::InSlot { slot, offset } => {
                DATA + u64::from(slot) % SLOTS * PAGE + u64::from(offset) % PAGE
            }
            Addr::Rings(at) => RINGS + u64::from(at) % (2 * QUEUE_STRIDE),
            Addr::Raw(a) => a,
        }
    }
}

impl Len {
    fn resolve(&self) -> u32 {
        match *self {
            Len::Small(n) => u32::from(n),
            Len::Pages(n) => u32::from(n) % (2 * PAGE as u32 + 1),
            Len::Raw(n) => n,
        }
    }
}

/// The 16 bytes of a descriptor.
fn encode(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..].copy_from_slice(&next.to_le_bytes());
    raw
}

impl Desc {
    fn encode(&self, size: u16) -> [u8; 16] {
        encode(
            self.addr.resolve(),
            self.len.resolve(),
            self.flags,
            self.next.resolve(size),
        )
    }
}

impl Fill {
    fn bytes(&self, size: u16) -> Vec<u8> {
        match self {
            Fill::Bytes(b) => b.clone(),
            Fill::BlockHeader { kind, raw, sector } => {
                let known = [
                    block::T_IN,
                    block::T_OUT,
                    block::T_FLUSH,
                    block::T_GET_ID,
                    block::T_DISCARD,
                    block::T_WRITE_ZEROES,
                ];
                let kind = known.get(usize::from(*kind % 7)).copied().unwrap_or(*raw);
                let mut out = Vec::with_capacity(16);
                out.extend_from_slice(&kind.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&u64::from(*sector % 256).to_le_bytes());
                out
            }
            Fill::Ranges(ranges) => ranges
                .iter()
                .flat_map(|(sector, sectors, flags)| {
                    let mut seg = [0u8; 16];
                    seg[..8].copy_from_slice(&u64::from(*sector % 256).to_le_bytes());
                    seg[8..12].copy_from_slice(&u32::from(*sectors).to_le_bytes());
                    seg[12..].copy_from_slice(&flags.to_le_bytes());
                    seg
                })
                .collect(),
            Fill::Table(descs) => descs.iter().flat_map(|d| d.encode(size)).collect(),
        }
    }
}

/// Counts interrupts instead of raising them.
struct NoInterrupts(u64);

impl VirtioTransport for NoInterrupts {
    fn signal_queue(&mut self, _queue: usize) {
        self.0 += 1;
    }
}

fn desc_table(q: usize) -> u64 {
    RINGS + q as u64 * QUEUE_STRIDE
}

fn avail_ring(q: usize) -> u64 {
    desc_table(q) + PAGE
}

fn used_ring(q: usize) -> u64 {
    desc_table(q) + 2 * PAGE
}

/// Guest memory laid out as `guest` says, `queues` ready device-side queues over it, and for
/// each queue the heads to make available in each round.
type Built = (GuestMemoryMmap, Vec<Queue>, u16, Vec<Vec<Vec<u16>>>);

fn build(guest: &Guest, queues: usize) -> Option<Built> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    let size = 1u16 << (guest.size_log2 % 9);
    for (slot, fill) in guest.buffers.iter().take(SLOTS as usize).enumerate() {
        let bytes = fill.bytes(size);
        let at = DATA + slot as u64 * PAGE;
        let room = (DATA + SLOTS * PAGE - at) as usize;
        let _ = mem.write_slice(&bytes[..bytes.len().min(room)], GuestAddress(at));
    }
    let mut out = Vec::new();
    let mut heads = Vec::new();
    for q in 0..queues {
        let mut rounds = vec![Vec::new(); MAX_ROUNDS];
        if let Some(input) = guest.queues.get(q) {
            let table = |i: u16| GuestAddress(desc_table(q) + u64::from(i) * 16);
            let mut entry = 0u16;
            for chain in &input.chains {
                let n = chain.segments.len().min(usize::from(size - entry)) as u16;
                if n == 0 {
                    continue;
                }
                rounds[usize::from(chain.round) % MAX_ROUNDS].push(entry);
                for (i, seg) in chain.segments.iter().take(usize::from(n)).enumerate() {
                    let last = i + 1 == usize::from(n);
                    let next = if last { 0 } else { F_NEXT };
                    let flags = match seg.kind {
                        SegmentKind::Read => next,
                        SegmentKind::Write => next | F_WRITE,
                        SegmentKind::Indirect => next | F_INDIRECT,
                        SegmentKind::Flags(f) => f | next,
                    };
                    let raw = encode(seg.addr.resolve(), seg.len.resolve(), flags, entry + 1);
                    let _ = mem.write_slice(&raw, table(entry));
                    entry += 1;
                }
            }
            for (index, desc) in &input.raw {
                let _ = mem.write_slice(&desc.encode(size), table(index.resolve(size) % size));
            }
            rounds[0].extend(input.extra_heads.iter().map(|h| h.resolve(size)));
            // used_event sits right after the available ring's entries.
            let used_event = avail_ring(q) + 4 + u64::from(size) * 2;
            let _ = mem.write_obj(input.used_event, GuestAddress(used_event));
        }
        heads.push(rounds);
        let mut queue = Queue::new(256).ok()?;
        queue.set_size(size);
        queue.set_event_idx(guest.event_idx);
        queue.set_desc_table_address(Some(desc_table(q) as u32), Some(0));
        queue.set_avail_ring_address(Some(avail_ring(q) as u32), Some(0));
        queue.set_used_ring_address(Some(used_ring(q) as u32), Some(0));
        queue.set_ready(true);
        out.push(queue);
    }
    Some((mem, out, size, heads))
}

/// Makes round `round`'s heads of every queue available; the available index moves by their
/// number (or to the lie, before the first round).
fn publish(guest: &Guest, mem: &GuestMemoryMmap, size: u16, round: usize, heads: &[Vec<Vec<u16>>]) {
    for (q, rounds) in heads.iter().enumerate() {
        let idx: u16 = mem.read_obj(GuestAddress(avail_ring(q) + 2)).unwrap_or(0);
        let mut next = idx;
        for head in rounds[round].iter().take(usize::from(size)) {
            let slot = u64::from(next % size);
            let _ = mem.write_obj(*head, GuestAddress(avail_ring(q) + 4 + slot * 2));
            next = next.wrapping_add(1);
        }
        let lie = guest.queues.get(q).and_then(|i| i.lying_avail_idx);
        let next = match (round, lie) {
            (0, Some(lie)) => lie,
            _ => next,
        };
        let _ = mem.write_obj(next, GuestAddress(avail_ring(q) + 2));
    }
}

/// Runs `device` over the guest: before each round a batch is made available, then every queue
/// is notified (and the back-end once).
fn drive_guest(device: &mut dyn VirtioDevice, guest: &Guest) -> Option<GuestMemoryMmap> {
    let queues = device.queue_max_sizes().len();
    let (mem, mut queue_state, size, heads) = build(guest, queues)?;
    let rounds = heads
        .iter()
        .flat_map(|r| r.iter().rposition(|h| !h.is_empty()))
        .max()
        .map_or(1, |last| last + 1);
    let mut irq = NoInterrupts(0);
    for round in 0..rounds {
        publish(guest, &mem, size, round, &heads);
        for q in 0..queues {
            let _ = device.process(DeviceEvent::Queue(q), &mut queue_state, &mem, &mut irq);
        }
        if round == 0 {
            let _ = device.process(DeviceEvent::Backend, &mut queue_state, &mem, &mut irq);
        }
    }
    Some(mem)
}

/// Decodes `data` as a [`Guest`] and runs `device` over it.
fn drive(device: &mut dyn VirtioDevice, data: &[u8]) {
    if let Ok(guest) = Guest::arbitrary_take_rest(Unstructured::new(data)) {
        drive_guest(device, &guest);
    }
}

/// Fuzz target: virtio-rng.
pub fn fuzz_rng(data: &[u8]) {
    drive(&mut Rng, data);
}

/// A temporary 64 KiB disk image, made once per process.
fn disk_image() -> Option<&'static std::path::Path> {
    static PATH: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("keel-fuzz-disk-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 64 * 1024])
            .ok()
            .map(|()| path)
    })
    .as_deref()
}

/// Fuzz target: virtio-blk (read-write, then read-only).
pub fn fuzz_block(data: &[u8]) {
    let Ok(guest) = Guest::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let Some(path) = disk_image() else { return };
    for read_only in [false, true] {
        let cfg = DiskConfig {
            path: path.to_owned(),
            read_only,
            serial: Some("fuzz".into()),
            direct: false,
        };
        if let Ok(mut block) = Block::open(&cfg) {
            drive_guest(&mut block, &guest);
        }
    }
}

/// Frames for the fuzzed NIC: always one waiting, every transmitted one dropped.
struct Loopback {
    frames: u32,
}

impl FrameBackend for Loopback {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.frames == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        self.frames -= 1;
        let n = buf.len().min(1514);
        buf[..n].fill(0xa5);
        Ok(n)
    }
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn set_offload(&mut self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Fuzz target: virtio-net (both queues).
pub fn fuzz_net(data: &[u8]) {
    let mut net = Net::new(
        "fuzz".into(),
        Box::new(Loopback { frames: 64 }),
        [0x52, 0x54, 0, 0, 0, 1],
    );
    drive(&mut net, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: deterministic inputs, the same on every run.
    struct Inputs(u64);

    impl Inputs {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Random bytes, decoded as a [`Guest`] by the targets.
        fn input(&mut self) -> Vec<u8> {
            let len = (self.next() % 0x1000) as usize;
            let mut out = Vec::with_capacity(len + 8);
            while out.len() < len {
                out.extend_from_slice(&self.next().to_le_bytes());
            }
            out.truncate(len);
            out
        }
    }

    #[test]
    fn fuzz_targets_survive_random_guests() {
        let mut inputs = Inputs(0x6b65_656c_7669_7274);
        for _ in 0..1000 {
            let data = inputs.input();
            fuzz_rng(&data);
            fuzz_block(&data);
            fuzz_net(&data);
        }
    }

    fn used_idx(mem: &GuestMemoryMmap, q: usize) -> u16 {
        mem.read_obj(GuestAddress(used_ring(q) + 2)).unwrap_or(0)
    }

    /// The layout is what a driver would write: a well-formed chain is served.
    #[test]
    fn a_well_formed_guest_is_served() {
        let seg = |slot, len, kind| Segment {
            addr: Addr::Slot(slot),
            len: Len::Pages(len),
            kind,
        };
        let queue = |chains| GuestQueue {
            chains,
            raw: Vec::new(),
            extra_heads: Vec::new(),
            lying_avail_idx: None,
            used_event: 0,
        };
        // A block read of one sector: header, data (writable), status (writable).
        let guest = Guest {
            size_log2: 4,
            event_idx: false,
            queues: vec![queue(vec![Chain {
                round: 0,
                segments: vec![
                    seg(0, 16, SegmentKind::Read),
                    seg(1, 512, SegmentKind::Write),
                    seg(2, 1, SegmentKind::Write),
                ],
            }])],
            buffers: vec![Fill::BlockHeader {
                kind: 0,
                raw: 0,
                sector: 3,
            }],
        };
        let path = disk_image().unwrap_or_else(|| panic!("no disk image"));
        let cfg = DiskConfig {
            path: path.to_owned(),
            read_only: true,
            serial: None,
            direct: false,
        };
        let mut block = Block::open(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let mem = drive_guest(&mut block, &guest).unwrap_or_else(|| panic!("no guest"));
        assert_eq!(used_idx(&mem, 0), 1);
        let status: u8 = mem
            .read_obj(GuestAddress(DATA + 2 * PAGE))
            .unwrap_or(u8::MAX);
        assert_eq!(status, block::S_OK);

        // Two entropy requests in two rounds for virtio-rng.
        let chain = |round| Chain {
            round,
            segments: vec![seg(5, 64, SegmentKind::Write)],
        };
        let guest = Guest {
            size_log2: 1,
            event_idx: true,
            queues: vec![queue(vec![chain(0), chain(1)])],
            buffers: Vec::new(),
        };
        let mem = drive_guest(&mut Rng, &guest).unwrap_or_else(|| panic!("no guest"));
        assert_eq!(used_idx(&mem, 0), 2);
    }
}
