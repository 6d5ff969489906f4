//! virtio-net on a tap device: queue 0 receives (tap → guest), queue 1 transmits. Frames keep
//! their virtio-net header end to end, so checksum and segmentation offloads negotiated with the
//! guest are handed to the tap (`TUNSETOFFLOAD`) instead of being done here.
//!
//! The tap is watched edge-triggered: reception reads until the tap is empty or the guest has no
//! buffers left; in the second case the frame waits, and the guest's next receive-queue
//! notification resumes reception. Nothing spins while the guest is not receiving.

use std::io;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::chain::{copy_from, copy_to, parse};
use super::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use super::{
    serve_queue, DeviceError, DeviceEvent, Progress, VirtioDevice, VirtioTransport,
    F_RING_INDIRECT_DESC, F_VERSION_1, TYPE_NET,
};
use crate::devices::RateLimitedLog;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Largest frame: a 64 KiB GSO frame, its Ethernet and VLAN headers, and the virtio-net header.
const MAX_FRAME: usize = 65_562 + VNET_HDR_LEN;

pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;

static NET_ERROR: RateLimitedLog = RateLimitedLog::new();

/// Where a virtio-net device sends and receives frames. A tap in production; tests use a pair of
/// in-memory queues.
pub trait FrameBackend: Send {
    /// Reads one frame, header first; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame, header first.
    fn write_frame(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// The guest accepts these TUN_F_* offloads on received frames.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
    /// A descriptor that becomes readable when frames arrive.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd>;
}

impl FrameBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&mut self, buf: &[u8]) -> io::Result<usize> {
        Tap::write_frame(self, buf)
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags)
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.as_raw_fd())
    }
}

/// A virtio-net device.
pub struct Net {
    name: String,
    backend: Box<dyn FrameBackend>,
    config: [u8; 8],
    buf: Vec<u8>,
    /// Length of a received frame in `buf` still waiting for a guest buffer.
    pending: Option<usize>,
}

impl Net {
    pub fn new(name: String, backend: Box<dyn FrameBackend>, mac: [u8; 6]) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        // max_virtqueue_pairs = 1 (only read with VIRTIO_NET_F_MQ, harmless otherwise).
        config[6] = 1;
        Net {
            name,
            backend,
            config,
            buf: vec![0u8; MAX_FRAME],
            pending: None,
        }
    }

    /// Moves frames from the back-end into the guest's receive buffers.
    fn receive(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        transport: &mut dyn VirtioTransport,
    ) -> Result<Progress, DeviceError> {
        let queue_error = |e: virtio_queue::Error| DeviceError::Queue(RX, e.to_string());
        let mut budget = queue.size();
        let mut used = false;
        let progress = loop {
            let len = match self.pending {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.buf) {
                    Ok(len) if len >= VNET_HDR_LEN => len,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Progress::Done,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        NET_ERROR.log(format_args!("virtio-net {}: tap read: {e}", self.name));
                        break Progress::Done;
                    }
                },
            };
            self.pending = Some(len);
            if budget == 0 {
                break Progress::More;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // No buffer: the frame waits for the guest's next notification.
                break Progress::Done;
            };
            budget -= 1;
            let head = chain.head_index();
            self.pending = None;
            // Without VIRTIO_NET_F_MRG_RXBUF a frame always takes exactly one buffer.
            self.buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            let written = match parse(chain, MAX_FRAME as u64 * 2) {
                Ok(req) if req.writable_len >= len as u64 => {
                    copy_to(mem, &req.writable, 0, &self.buf[..len]).unwrap_or(0)
                }
                Ok(req) => {
                    NET_ERROR.log(format_args!(
                        "virtio-net {}: {}-byte receive buffer for a {len}-byte frame; dropped",
                        self.name, req.writable_len
                    ));
                    0
                }
                Err(e) => {
                    NET_ERROR.log(format_args!("virtio-net {}: {e}; frame dropped", self.name));
                    0
                }
            };
            queue
                .add_used(mem, head, written as u32)
                .map_err(queue_error)?;
            used = true;
        };
        if used && queue.needs_notification(mem).map_err(queue_error)? {
            transport.signal_queue(RX);
        }
        Ok(progress)
    }

    /// Sends every frame the guest queued.
    fn transmit(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        transport: &mut dyn VirtioTransport,
    ) -> Result<Progress, DeviceError> {
        let (backend, buf, name) = (&mut self.backend, &mut self.buf, &self.name);
        serve_queue(queue, TX, mem, transport, MAX_FRAME as u64, |req| {
            let Ok(req) = req else { return 0 };
            let len = req.readable_len as usize;
            if len < VNET_HDR_LEN {
                NET_ERROR.log(format_args!("virtio-net {name}: {len}-byte frame dropped"));
                return 0;
            }
            match copy_from(mem, &req.readable, 0, &mut buf[..len]) {
                Ok(n) if n == len => {
                    if let Err(e) = backend.write_frame(&buf[..len]) {
                        NET_ERROR.log(format_args!("virtio-net {name}: tap write: {e}"));
                    }
                }
                _ => NET_ERROR.log(format_args!("virtio-net {name}: unreadable frame")),
            }
            0
        })
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_VERSION_1
            | F_RING_INDIRECT_DESC
            | F_MAC
            | F_CSUM
            | F_GUEST_CSUM
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_HOST_TSO4
            | F_HOST_TSO6
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        let mut offload = 0;
        if features & F_GUEST_CSUM != 0 {
            offload |= TUN_F_CSUM;
            if features & F_GUEST_TSO4 != 0 {
                offload |= TUN_F_TSO4;
            }
            if features & F_GUEST_TSO6 != 0 {
                offload |= TUN_F_TSO6;
            }
        }
        self.backend
            .set_offload(offload)
            .map_err(|e| DeviceError::Backend(format!("TUNSETOFFLOAD {offload:#x}: {e}")))
    }

    fn reset(&mut self) {
        self.pending = None;
    }

    fn process(
        &mut self,
        event: DeviceEvent,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        transport: &mut dyn VirtioTransport,
    ) -> Result<Progress, DeviceError> {
        let [rx, tx] = queues else {
            return Ok(Progress::Done);
        };
        match event {
            DeviceEvent::Queue(TX) => self.transmit(tx, mem, transport),
            DeviceEvent::Queue(RX) | DeviceEvent::Backend => self.receive(rx, mem, transport),
            DeviceEvent::Queue(_) => Ok(Progress::Done),
        }
    }

    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.backend.raw_fd()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// Frames in both directions, shared with the test.
    #[derive(Default, Clone)]
    pub(crate) struct Wire {
        pub to_guest: Arc<Mutex<VecDeque<Vec<u8>>>>,
        pub from_guest: Arc<Mutex<Vec<Vec<u8>>>>,
        pub offload: Arc<Mutex<Option<u32>>>,
    }

    impl FrameBackend for Wire {
        fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let frame = self
                .to_guest
                .lock()
                .unwrap()
                .pop_front()
                .ok_or(io::ErrorKind::WouldBlock)?;
            buf[..frame.len()].copy_from_slice(&frame);
            Ok(frame.len())
        }
        fn write_frame(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.from_guest.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn set_offload(&mut self, flags: u32) -> io::Result<()> {
            *self.offload.lock().unwrap() = Some(flags);
            Ok(())
        }
        fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
    }

    use crate::devices::bus::BusDevice;
    use crate::devices::pci::msix::tests::router;
    use crate::devices::pci::PciFunction;
    use crate::devices::virtio::pci::VirtioPciDevice;
    use crate::devices::virtio::testing::{GuestQueue, AVAIL_RING, DESC_TABLE, USED_RING};
    use crate::devices::virtio::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    };
    use vm_memory::{Bytes, GuestAddress};

    const WRITE: u16 = 2;
    /// The second queue's rings, after the first's.
    const Q1: u64 = 0x8000;

    fn w(d: &mut VirtioPciDevice, offset: u64, value: u64, len: usize) {
        d.write(offset, &value.to_le_bytes()[..len]);
    }

    /// Brings up both queues; queue 1 uses the rings at +Q1.
    fn bring_up_net(q: &GuestQueue, wire: &Wire) -> VirtioPciDevice {
        let net = Net::new("t".into(), Box::new(wire.clone()), [0x52, 0x54, 0, 1, 2, 3]);
        let mut d = VirtioPciDevice::new(
            "net".into(),
            Box::new(net),
            q.mem.clone(),
            router(),
            vec![30, 31, 32],
            0xc000_0000,
        )
        .unwrap();
        d.config_write(1, 0, &[0x06, 0]);
        w(&mut d, 0x14, 3, 1);
        w(&mut d, 0x08, 0, 4);
        w(&mut d, 0x0c, F_GUEST_CSUM | F_GUEST_TSO4 | F_MAC, 4);
        w(&mut d, 0x08, 1, 4);
        w(&mut d, 0x0c, 1, 4);
        w(
            &mut d,
            0x14,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
            1,
        );
        for (sel, base) in [(0u64, 0u64), (1, Q1)] {
            w(&mut d, 0x16, sel, 2);
            w(&mut d, 0x18, u64::from(q.size), 2);
            w(&mut d, 0x20, DESC_TABLE + base, 4);
            w(&mut d, 0x28, AVAIL_RING + base, 4);
            w(&mut d, 0x30, USED_RING + base, 4);
            w(&mut d, 0x1c, 1, 2);
        }
        let all = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        w(&mut d, 0x14, u64::from(all), 1);
        d
    }

    #[test]
    fn frames_flow_both_ways_and_offloads_reach_the_tap() {
        let mut q = GuestQueue::new(16);
        let wire = Wire::default();
        let mut d = bring_up_net(&q, &wire);
        assert_eq!(*wire.offload.lock().unwrap(), Some(TUN_F_CSUM | TUN_F_TSO4));
        let mut mac = [0u8; 6];
        d.read(super::super::pci::DEVICE_CFG_OFFSET, &mut mac);
        assert_eq!(mac, [0x52, 0x54, 0, 1, 2, 3]);

        // Receive: a frame arrives before any buffer; it waits, then lands when one is posted.
        let frame: Vec<u8> = (0..100u8).collect();
        wire.to_guest.lock().unwrap().push_back(frame.clone());
        d.handle(DeviceEvent::Backend);
        assert_eq!(q.used_idx(), 0);
        q.desc(0, 0x10000, 2048, WRITE, 0);
        q.publish(0);
        d.handle(DeviceEvent::Queue(RX));
        assert_eq!(q.used(0), (0, 100));
        let mut got = vec![0u8; 100];
        q.mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        assert_eq!(&got[12..], &frame[12..]);
        assert_eq!(&got[10..12], &[1, 0], "num_buffers");

        // Transmit through queue 1 (its rings at +Q1).
        q.mem
            .write_slice(&[7u8; 70], GuestAddress(0x20000))
            .unwrap();
        let desc = DESC_TABLE + Q1;
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&0x20000u64.to_le_bytes());
        raw[8..12].copy_from_slice(&70u32.to_le_bytes());
        q.mem.write_slice(&raw, GuestAddress(desc)).unwrap();
        q.mem
            .write_obj(0u16, GuestAddress(AVAIL_RING + Q1 + 4))
            .unwrap();
        q.mem
            .write_obj(1u16, GuestAddress(AVAIL_RING + Q1 + 2))
            .unwrap();
        d.handle(DeviceEvent::Queue(TX));
        assert_eq!(wire.from_guest.lock().unwrap().as_slice(), &[vec![7u8; 70]]);
    }

    #[test]
    fn too_small_buffers_and_bad_chains_drop_the_frame_not_the_device() {
        let mut q = GuestQueue::new(16);
        let wire = Wire::default();
        let mut d = bring_up_net(&q, &wire);
        for _ in 0..3 {
            wire.to_guest.lock().unwrap().push_back(vec![1u8; 1000]);
        }
        q.desc(0, 0x10000, 64, WRITE, 0); // too small
        q.publish(0);
        q.desc(1, 1 << 40, 2048, WRITE, 0); // outside memory
        q.publish(1);
        q.desc(2, 0x10000, 2048, WRITE, 0);
        q.publish(2);
        d.handle(DeviceEvent::Queue(RX));
        assert_eq!(
            (q.used(0), q.used(1), q.used(2)),
            ((0, 0), (1, 0), (2, 1000))
        );
        assert_eq!(d.status() & super::super::STATUS_NEEDS_RESET, 0);
    }
}
