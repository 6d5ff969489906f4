//! Virtio devices (virtio 1.x, split virtqueues from `virtio-queue`) and the transport they sit
//! behind. A device implements [`VirtioDevice`]: its features, its configuration space and what it
//! does with its queues; it raises interrupts only through the [`VirtioTransport`] it is handed,
//! so it never knows it sits on PCI (`pci.rs`).
//!
//! Everything a guest writes into a queue is hostile until checked: [`chain::parse`] turns a
//! descriptor chain into bounded, direction-checked segments inside guest memory, or an error.
//! A request that fails is completed with an error (or a zero length); a queue that cannot be
//! used at all puts the device in NEEDS_RESET, and the VMM carries on with its other devices.

pub mod block;
pub mod chain;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod net;
pub mod pci;
pub mod rng;
pub mod setup;
pub mod tap;
#[cfg(test)]
pub(crate) mod testing;
pub mod worker;

use virtio_queue::{Queue, QueueT};

use crate::devices::RateLimitedLog;
use vm_memory::GuestMemoryMmap;

/// Device type IDs (virtio 1.x section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;

/// Feature bits every device offers.
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// What woke a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The driver notified queue `n`.
    Queue(usize),
    /// The device's back-end file descriptor (a tap) is readable.
    Backend,
}

/// What a device still has to do after handling an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing left until the next event.
    Done,
    /// It stopped at its per-event budget with work left: handle the same event again after the
    /// other devices had their turn (a notify storm cannot starve them).
    More,
}

/// A fault that makes a device unusable until the driver resets it (NEEDS_RESET).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// Queue {0} is not usable: {1}
    #[error("queue {0} is not usable: {1}")]
    Queue(usize, String),
    /// Back-end failure: {0}
    #[error("back-end failure: {0}")]
    Backend(String),
}

/// How a device reaches its driver: interrupts. Implemented by the transport.
pub trait VirtioTransport {
    /// The device put buffers in the used ring of `queue`.
    fn signal_queue(&mut self, queue: usize);
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// Device type ID ([`TYPE_NET`], …).
    fn device_type(&self) -> u32;
    /// Largest size of each queue (the number of queues is this slice's length).
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered (including [`F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored by most devices).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver accepted `features` and set DRIVER_OK; queues are valid.
    fn activate(&mut self, _features: u64) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Handles one event.
    fn process(
        &mut self,
        event: DeviceEvent,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        transport: &mut dyn VirtioTransport,
    ) -> Result<Progress, DeviceError>;
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// A descriptor the event loop must watch for [`DeviceEvent::Backend`].
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

static BAD_CHAIN: RateLimitedLog = RateLimitedLog::new();

/// Serves queue `index`: every available chain is parsed (at most `max_bytes` long) and handed to
/// `serve`, which returns the length written into the chain's writable buffers; the chain is then
/// returned to the driver. Refused chains are logged (rate-limited), passed to `serve` as errors
/// and returned too, so a hostile chain never wedges the queue. At most one queue's worth of
/// chains is served per call.
pub fn serve_queue<F>(
    queue: &mut Queue,
    index: usize,
    mem: &GuestMemoryMmap,
    transport: &mut dyn VirtioTransport,
    max_bytes: u64,
    mut serve: F,
) -> Result<Progress, DeviceError>
where
    F: FnMut(Result<chain::Request, chain::ChainError>) -> u32,
{
    let queue_error = |e: virtio_queue::Error| DeviceError::Queue(index, e.to_string());
    let mut budget = queue.size();
    let mut used_any = false;
    let progress = loop {
        if budget == 0 {
            break Progress::More;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break Progress::Done;
        };
        budget -= 1;
        let head = chain.head_index();
        let parsed = chain::parse(chain, max_bytes);
        if let Err(e) = &parsed {
            BAD_CHAIN.log(format_args!("virtio queue {index}: {e}"));
        }
        let len = serve(parsed);
        queue.add_used(mem, head, len).map_err(queue_error)?;
        used_any = true;
    };
    // A driver that lies about its available index is caught by virtio-queue (pop returns None
    // and the ring is left alone); check it explicitly so it becomes NEEDS_RESET.
    let avail = queue
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .map_err(queue_error)?;
    if avail.0.wrapping_sub(queue.next_avail()) > queue.size() {
        return Err(DeviceError::Queue(
            index,
            format!(
                "available index {} is more than {} ahead of {}",
                avail.0,
                queue.size(),
                queue.next_avail()
            ),
        ));
    }
    if used_any && queue.needs_notification(mem).map_err(queue_error)? {
        transport.signal_queue(index);
    }
    Ok(progress)
}

/// Copies `data` into a device config space image at `offset`; the rest of `out` reads as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, out: &mut [u8]) {
    out.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(out.len());
        out[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let cases: &[(u64, usize, &[u8])] = &[
            (0, 4, &[1, 2, 3, 4]),
            (2, 4, &[3, 4, 0, 0]),
            (4, 2, &[0, 0]),
            (u64::MAX, 1, &[0]),
        ];
        for (offset, len, want) in cases {
            let mut out = vec![0xaa; *len];
            read_config_bytes(&cfg, *offset, &mut out);
            assert_eq!(&out, want, "offset {offset}");
        }
    }
}
