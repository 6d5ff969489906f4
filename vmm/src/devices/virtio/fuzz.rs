//! Fuzz targets for the queue handling of each device, as plain functions: the cargo-fuzz crate
//! in `vmm/fuzz/` (nightly, `make fuzz`) calls them with libFuzzer's inputs, and a unit test below
//! drives them with deterministic pseudo-random inputs on the stable toolchain, so `cargo test`
//! exercises the same code.
//!
//! An input is a guest: its first byte picks the queue size, the rest is copied over guest memory
//! from the available rings on (then the descriptor tables), so ring indices, descriptors and
//! buffer addresses are all the fuzzer's. The device must never panic, and every call must return.

use std::sync::OnceLock;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::Block;
use super::net::{FrameBackend, Net};
use super::rng::Rng;
use super::{DeviceEvent, VirtioDevice, VirtioTransport};
use crate::config::DiskConfig;

const MEM_SIZE: usize = 1 << 20;
/// Where the input goes. The available rings come first and the descriptor tables right after,
/// so short inputs already reach both; the used rings (device-written) follow.
const INPUT_START: u64 = 0x1000;
/// Per queue q: available ring at AVAIL + q * AVAIL_STRIDE (518 bytes for 256 entries),
/// descriptor table at DESC + q * 0x1000, used ring at USED + q * 0x1000.
const AVAIL: u64 = 0x1000;
const AVAIL_STRIDE: u64 = 0x300;
const DESC: u64 = 0x1600;
const USED: u64 = 0x4000;

/// Counts interrupts instead of raising them.
struct NoInterrupts(u64);

impl VirtioTransport for NoInterrupts {
    fn signal_queue(&mut self, _queue: usize) {
        self.0 += 1;
    }
}

/// Lays the input out as guest memory and queues; `None` if the memory cannot be mapped.
fn guest(data: &[u8], queues: usize) -> Option<(GuestMemoryMmap, Vec<Queue>)> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    let (first, rest) = data.split_first()?;
    let n = rest.len().min(MEM_SIZE - INPUT_START as usize);
    mem.write_slice(&rest[..n], GuestAddress(INPUT_START))
        .ok()?;
    let size = 1u16 << (first % 9); // 1..=256, as a driver may pick
    let mut out = Vec::new();
    for q in 0..queues as u64 {
        let mut queue = Queue::new(256).ok()?;
        queue.set_size(size);
        queue.set_desc_table_address(Some((DESC + q * 0x1000) as u32), Some(0));
        queue.set_avail_ring_address(Some((AVAIL + q * AVAIL_STRIDE) as u32), Some(0));
        queue.set_used_ring_address(Some((USED + q * 0x1000) as u32), Some(0));
        queue.set_ready(true);
        out.push(queue);
    }
    Some((mem, out))
}

/// Runs every event of `device` a few times over the fuzzed guest.
fn drive(device: &mut dyn VirtioDevice, data: &[u8]) {
    let queues = device.queue_max_sizes().len();
    let Some((mem, mut queues_state)) = guest(data, queues) else {
        return;
    };
    let mut irq = NoInterrupts(0);
    for round in 0..3 {
        for q in 0..queues {
            let _ = device.process(DeviceEvent::Queue(q), &mut queues_state, &mem, &mut irq);
        }
        if round == 0 {
            let _ = device.process(DeviceEvent::Backend, &mut queues_state, &mem, &mut irq);
        }
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
    let Some(path) = disk_image() else { return };
    for read_only in [false, true] {
        let cfg = DiskConfig {
            path: path.to_owned(),
            read_only,
            serial: Some("fuzz".into()),
            direct: false,
        };
        if let Ok(mut block) = Block::open(&cfg) {
            drive(&mut block, data);
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

        /// Mostly small values (valid-looking indices, lengths and addresses inside memory),
        /// sometimes anything.
        fn input(&mut self) -> Vec<u8> {
            let len = (self.next() % 0x4000) as usize;
            let mut out = Vec::with_capacity(len);
            while out.len() < len {
                let v = self.next();
                let word = match v % 4 {
                    0 => v >> 2,
                    1 => (v >> 8) % 0x2_0000,
                    2 => (v >> 8) % 16,
                    _ => ((v >> 8) % 8) | (((v >> 16) % 16) << 16),
                };
                out.extend_from_slice(&word.to_le_bytes());
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
}
