//! virtio-rng (entropy device): one queue; every buffer the driver offers is filled from the host's
//! `getrandom(2)`, as Cloud Hypervisor and Firecracker do.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::chain::{copy_to, Request};
use super::{
    serve_queue, DeviceError, DeviceEvent, Progress, VirtioDevice, VirtioTransport,
    F_RING_INDIRECT_DESC, F_VERSION_1, TYPE_RNG,
};

/// Queue size.
const QUEUE_SIZE: u16 = 256;
/// Most bytes handed out per request (Linux asks for at most a page or so).
const MAX_REQUEST: u64 = 64 * 1024;

/// The entropy device.
#[derive(Debug, Default)]
pub struct Rng;

/// Fills `buf` from getrandom.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        done += n as usize;
    }
    Ok(())
}

impl Rng {
    fn serve(mem: &GuestMemoryMmap, req: &Request) -> Result<u32, DeviceError> {
        let len = req.writable_len.min(MAX_REQUEST) as usize;
        let mut buf = vec![0u8; len];
        fill_random(&mut buf).map_err(|e| DeviceError::Backend(format!("getrandom: {e}")))?;
        let n = copy_to(mem, &req.writable, 0, &buf).unwrap_or(0);
        Ok(n as u32)
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_RING_INDIRECT_DESC
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process(
        &mut self,
        event: DeviceEvent,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        transport: &mut dyn VirtioTransport,
    ) -> Result<Progress, DeviceError> {
        if event != DeviceEvent::Queue(0) {
            return Ok(Progress::Done);
        }
        let Some(queue) = queues.first_mut() else {
            return Ok(Progress::Done);
        };
        let mut failure = None;
        // Readable descriptors are simply unused: a request larger than MAX_REQUEST gets a part.
        let progress = serve_queue(
            queue,
            0,
            mem,
            transport,
            u64::from(u32::MAX),
            |req| match req
                .map_err(|_| None)
                .and_then(|r| Self::serve(mem, &r).map_err(Some))
            {
                Ok(n) => n,
                Err(e) => {
                    failure = failure.take().or(e);
                    0
                }
            },
        )?;
        match failure {
            Some(e) => Err(e),
            None => Ok(progress),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::devices::virtio::pci::tests::{bring_up, device};
    use crate::devices::virtio::testing::GuestQueue;
    use vm_memory::{Bytes, GuestAddress};

    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    #[test]
    fn fills_buffers_with_random_bytes() {
        let mut q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Rng));
        bring_up(&mut d, 16);
        q.desc(0, 0x10000, 64, NEXT | WRITE, 1);
        q.desc(1, 0x20000, 64, WRITE, 0);
        q.publish(0);
        d.handle(DeviceEvent::Queue(0));
        assert_eq!(q.used(0), (0, 128));
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        q.mem.read_slice(&mut a, GuestAddress(0x10000)).unwrap();
        q.mem.read_slice(&mut b, GuestAddress(0x20000)).unwrap();
        assert_ne!(a, [0; 64]);
        assert_ne!(a, b);
    }

    #[test]
    fn hostile_chains_complete_empty_and_the_device_keeps_serving() {
        let mut q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Rng));
        bring_up(&mut d, 16);
        q.desc(0, 0x10000, 16, NEXT | WRITE, 0); // loop onto itself
        q.publish(0);
        q.desc(1, 1 << 40, 16, WRITE, 0); // outside memory
        q.publish(1);
        q.desc(2, 0x10000, 16, WRITE, 0); // a good one
        q.publish(2);
        d.handle(DeviceEvent::Queue(0));
        assert_eq!(q.used_idx(), 3);
        assert_eq!(q.used(0), (0, 0));
        assert_eq!(q.used(1), (1, 0));
        assert_eq!(q.used(2), (2, 16));
        assert_eq!(d.status() & super::super::STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn a_head_index_past_the_queue_needs_a_reset() {
        let mut q = GuestQueue::new(4);
        let mut d = device(&q, Box::new(Rng));
        bring_up(&mut d, 4);
        q.publish(9);
        d.handle(DeviceEvent::Queue(0));
        assert_ne!(d.status() & super::super::STATUS_NEEDS_RESET, 0);
        assert_eq!(q.used_idx(), 0);
    }

    #[test]
    fn notify_storm_is_served_in_bounded_slices() {
        let mut q = GuestQueue::new(4);
        let mut d = device(&q, Box::new(Rng));
        bring_up(&mut d, 4);
        q.desc(0, 0x10000, 8, WRITE, 0);
        // The driver claims 4 chains at a time, all the same descriptor, over and over.
        for _ in 0..4 {
            q.publish(0);
        }
        assert_eq!(d.handle(DeviceEvent::Queue(0)), Progress::More);
        assert_eq!(q.used_idx(), 4);
        assert_eq!(d.handle(DeviceEvent::Queue(0)), Progress::Done);
        // A driver claiming more available chains than the queue holds needs a reset.
        q.set_avail_idx(q.used_idx().wrapping_add(100));
        d.handle(DeviceEvent::Queue(0));
        assert_ne!(d.status() & super::super::STATUS_NEEDS_RESET, 0);
    }
}
