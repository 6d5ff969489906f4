//! The virtio-pci transport, modern (virtio 1.x) interface only, after Cloud Hypervisor's
//! `virtio-devices/src/transport/pci_device.rs`. One memory BAR holds every structure:
//!
//! ```text
//! BAR0 + 0x0000  common configuration (features, status, queue set-up)
//!        0x1000  ISR status
//!        0x2000  device-specific configuration
//!        0x3000  queue notify: queue n at 0x3000 + 4 n, an ioeventfd each (KVM completes the
//!                write without leaving the kernel; the bus path below is only a fallback)
//!        0x4000  MSI-X vector table, 0x5000 pending bits
//! ```
//!
//! Vector 0..n-1 serve the queues the driver assigns them to; there is no INTx (interrupt pin 0),
//! as on Cloud Hypervisor: Linux's virtio-pci uses MSI-X whenever the function has it.

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, NoDatamatch};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    DeviceEvent, Progress, VirtioDevice, VirtioTransport, F_VERSION_1, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use crate::devices::bus::BusDevice;
use crate::devices::pci::config::{PciConfig, PciIds};
use crate::devices::pci::msix::{MsiRouter, Msix};
use crate::devices::pci::{BarMove, PciFunction};
use crate::devices::RateLimitedLog;

pub const COMMON_OFFSET: u64 = 0x0000;
pub const COMMON_LEN: u64 = 0x38;
pub const ISR_OFFSET: u64 = 0x1000;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const DEVICE_CFG_LEN: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
pub const NOTIFY_LEN: u64 = 0x1000;
pub const NOTIFY_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// BAR0's size: every structure above, rounded to a power of two.
pub const BAR_SIZE: u64 = 0x8000;
/// "No vector" in msix_config and queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;
/// Virtio's PCI vendor and the modern device ID base (0x1040 + device type).
const VIRTIO_VENDOR: u16 = 0x1af4;
const MODERN_DEVICE_BASE: u16 = 0x1040;
/// Vendor-specific capability ID, and the virtio structure types.
const CAP_VENDOR: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
/// ISR bits: a queue interrupt, a configuration change.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

static DEVICE_FAULT: RateLimitedLog = RateLimitedLog::new();
static BAD_ACCESS: RateLimitedLog = RateLimitedLog::new();

/// Why a virtio-pci function could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// Cannot create the {0} queue {1} notification: {2}
    #[error("cannot create the {0} queue {1} notification: {2}")]
    Notify(String, usize, std::io::Error),
    /// Cannot create the {0} MSI-X vectors: {1}
    #[error("cannot create the {0} MSI-X vectors: {1}")]
    Msix(String, std::io::Error),
    /// The {0} device declares an invalid queue: {1}
    #[error("the {0} device declares an invalid queue: {1}")]
    Queue(String, virtio_queue::Error),
    /// The {0} device's PCI capabilities do not fit in configuration space
    #[error("the {0} device's PCI capabilities do not fit in configuration space")]
    Capabilities(String),
}

/// Interrupts as a device raises them: ISR bit plus the queue's MSI-X vector.
struct PciInterrupts<'a> {
    msix: &'a mut Msix,
    queue_vectors: &'a [u16],
    isr: &'a mut u8,
}

impl VirtioTransport for PciInterrupts<'_> {
    fn signal_queue(&mut self, queue: usize) {
        *self.isr |= ISR_QUEUE;
        if let Some(&v) = self.queue_vectors.get(queue) {
            if v != NO_VECTOR {
                self.msix.trigger(v);
            }
        }
    }
}

/// A virtio device on PCI.
pub struct VirtioPciDevice {
    name: String,
    config: PciConfig,
    msix_cap: usize,
    msix: Msix,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    router: Arc<MsiRouter>,
    queues: Vec<Queue>,
    queue_vectors: Vec<u16>,
    queue_evts: Vec<EventFd>,
    config_vector: u16,
    status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    config_generation: u8,
    isr: u8,
    bar: u64,
    active: bool,
}

impl VirtioPciDevice {
    /// Wraps `device` with its BAR at `bar`; `gsis` holds one GSI per MSI-X vector (queues + 1).
    pub fn new(
        name: String,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        router: Arc<MsiRouter>,
        gsis: Vec<u32>,
        bar: u64,
    ) -> Result<Self, VirtioPciError> {
        let device_type = device.device_type();
        let class = match device_type {
            super::TYPE_NET => 0x02_00_00,
            super::TYPE_BLOCK => 0x01_80_00,
            _ => 0xff_00_00,
        };
        let mut config = PciConfig::new(PciIds {
            vendor: VIRTIO_VENDOR,
            device: MODERN_DEVICE_BASE + device_type as u16,
            revision: 1,
            class,
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x40,
        });
        config.set_bar0(bar as u32, BAR_SIZE as u32);
        let caps = [
            (CAP_COMMON, COMMON_OFFSET, COMMON_LEN),
            (CAP_ISR, ISR_OFFSET, 4),
            (CAP_DEVICE, DEVICE_CFG_OFFSET, DEVICE_CFG_LEN),
        ];
        for (kind, offset, len) in caps {
            let body = virtio_cap(kind, offset, len, None);
            let mask = vec![0; body.len()];
            config
                .add_capability(&body, &mask)
                .ok_or_else(|| VirtioPciError::Capabilities(name.clone()))?;
        }
        let body = virtio_cap(
            CAP_NOTIFY,
            NOTIFY_OFFSET,
            NOTIFY_LEN,
            Some(NOTIFY_MULTIPLIER),
        );
        config
            .add_capability(&body, &vec![0; body.len()])
            .ok_or_else(|| VirtioPciError::Capabilities(name.clone()))?;
        let msix =
            Msix::new(router.clone(), gsis).map_err(|e| VirtioPciError::Msix(name.clone(), e))?;
        let (body, mask) = msix.capability(MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32);
        let msix_cap = config
            .add_capability(&body, &mask)
            .ok_or_else(|| VirtioPciError::Capabilities(name.clone()))?;

        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (i, &max) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(max).map_err(|e| VirtioPciError::Queue(name.clone(), e))?);
            let evt = EventFd::new(EFD_NONBLOCK)
                .map_err(|e| VirtioPciError::Notify(name.clone(), i, e))?;
            router
                .vm()
                .register_ioevent(&evt, &notify_address(bar, i), NoDatamatch)
                .map_err(|e| VirtioPciError::Notify(name.clone(), i, e.into()))?;
            queue_evts.push(evt);
        }
        let queue_count = queues.len();
        Ok(VirtioPciDevice {
            name,
            config,
            msix_cap,
            msix,
            device,
            mem,
            router,
            queues,
            queue_vectors: vec![NO_VECTOR; queue_count],
            queue_evts,
            config_vector: NO_VECTOR,
            status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            config_generation: 0,
            isr: 0,
            bar,
            active: false,
        })
    }

    /// The device's name in logs (`block vda`, `net eth0`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Copies of the queue notification eventfds, for the event loop.
    pub fn queue_events(&self) -> std::io::Result<Vec<EventFd>> {
        self.queue_evts.iter().map(EventFd::try_clone).collect()
    }

    /// The back-end descriptor the event loop must watch, if any.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd()
    }

    /// The device status register (tests and logs).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Handles one event on the event-loop thread.
    pub fn handle(&mut self, event: DeviceEvent) -> Progress {
        if !self.active {
            return Progress::Done;
        }
        let mut transport = PciInterrupts {
            msix: &mut self.msix,
            queue_vectors: &self.queue_vectors,
            isr: &mut self.isr,
        };
        match self
            .device
            .process(event, &mut self.queues, &self.mem, &mut transport)
        {
            Ok(progress) => progress,
            Err(e) => {
                DEVICE_FAULT.log(format_args!(
                    "virtio {}: {e}; the device needs a reset",
                    self.name
                ));
                self.needs_reset();
                Progress::Done
            }
        }
    }

    /// Stops the device until the driver resets it, and tells the driver (configuration
    /// interrupt; the driver reads NEEDS_RESET from the status).
    fn needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        self.active = false;
        self.isr |= ISR_CONFIG;
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.config_vector != NO_VECTOR {
            self.msix.trigger(self.config_vector);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.config_vector = NO_VECTOR;
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.isr = 0;
        self.active = false;
    }

    fn set_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = new & !STATUS_NEEDS_RESET | (old & STATUS_NEEDS_RESET);
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let offered = self.device.features();
            let acceptable =
                self.driver_features & !offered == 0 && self.driver_features & F_VERSION_1 != 0;
            if !acceptable {
                // The driver reads FEATURES_OK back and gives up.
                new &= !STATUS_FEATURES_OK;
            }
        }
        self.status = new;
        if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.status & STATUS_FEATURES_OK == 0 {
            BAD_ACCESS.log(format_args!(
                "virtio {}: DRIVER_OK without FEATURES_OK",
                self.name
            ));
            self.needs_reset();
            return;
        }
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                DEVICE_FAULT.log(format_args!(
                    "virtio {}: queue {i} has rings outside guest memory or a bad size",
                    self.name
                ));
                self.needs_reset();
                return;
            }
        }
        match self.device.activate(self.driver_features) {
            Ok(()) => self.active = true,
            Err(e) => {
                DEVICE_FAULT.log(format_args!("virtio {}: {e}", self.name));
                self.needs_reset();
            }
        }
    }

    /// The common configuration structure as the driver reads it.
    fn common_image(&self) -> [u8; COMMON_LEN as usize] {
        let mut b = [0u8; COMMON_LEN as usize];
        let features = self.device.features();
        let feature_half = match self.device_feature_select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let driver_half = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        b[0..4].copy_from_slice(&self.device_feature_select.to_le_bytes());
        b[4..8].copy_from_slice(&feature_half.to_le_bytes());
        b[8..12].copy_from_slice(&self.driver_feature_select.to_le_bytes());
        b[12..16].copy_from_slice(&driver_half.to_le_bytes());
        b[16..18].copy_from_slice(&self.config_vector.to_le_bytes());
        b[18..20].copy_from_slice(&(self.queues.len() as u16).to_le_bytes());
        b[20] = self.status;
        b[21] = self.config_generation;
        b[22..24].copy_from_slice(&self.queue_select.to_le_bytes());
        let sel = usize::from(self.queue_select);
        if let Some(q) = self.queues.get(sel) {
            b[24..26].copy_from_slice(&q.size().to_le_bytes());
            b[26..28].copy_from_slice(&self.queue_vectors[sel].to_le_bytes());
            b[28..30].copy_from_slice(&u16::from(q.ready()).to_le_bytes());
            b[30..32].copy_from_slice(&self.queue_select.to_le_bytes());
            b[32..40].copy_from_slice(&q.desc_table().to_le_bytes());
            b[40..48].copy_from_slice(&q.avail_ring().to_le_bytes());
            b[48..56].copy_from_slice(&q.used_ring().to_le_bytes());
        }
        b
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let value = le_value(data);
        let sel = usize::from(self.queue_select);
        // Queue set-up is frozen once the queue is enabled or the driver is running.
        let queue_writable =
            self.status & STATUS_DRIVER_OK == 0 && self.queues.get(sel).is_some_and(|q| !q.ready());
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = value as u32,
            (0x08, 4) => self.driver_feature_select = value as u32,
            (0x0c, 4) if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32)
                    }
                    _ => {}
                }
            }
            (0x10, 2) => self.config_vector = self.checked_vector(value as u16),
            (0x14, 1) => self.set_status(value as u8),
            (0x16, 2) => self.queue_select = value as u16,
            (0x18, 2) if queue_writable => {
                let q = &mut self.queues[sel];
                if q.try_set_size(value as u16).is_err() {
                    BAD_ACCESS.log(format_args!(
                        "virtio {}: queue {sel}: bogus size {value} (max {})",
                        self.name,
                        q.max_size()
                    ));
                }
            }
            (0x1a, 2) if sel < self.queues.len() => {
                self.queue_vectors[sel] = self.checked_vector(value as u16)
            }
            (0x1c, 2) if queue_writable && value == 1 => self.queues[sel].set_ready(true),
            (0x20..=0x37, 4) if queue_writable => {
                let q = &mut self.queues[sel];
                let v = Some(value as u32);
                match offset {
                    0x20 => q.set_desc_table_address(v, None),
                    0x24 => q.set_desc_table_address(None, v),
                    0x28 => q.set_avail_ring_address(v, None),
                    0x2c => q.set_avail_ring_address(None, v),
                    0x30 => q.set_used_ring_address(v, None),
                    0x34 => q.set_used_ring_address(None, v),
                    _ => {}
                }
            }
            _ => BAD_ACCESS.log(format_args!(
                "virtio {}: ignored write of {} bytes at common config {offset:#x}",
                self.name,
                data.len()
            )),
        }
    }

    /// A vector the table has, or NO_VECTOR (the driver reads it back to detect the failure).
    fn checked_vector(&self, v: u16) -> u16 {
        if v < self.msix.count() {
            v
        } else {
            NO_VECTOR
        }
    }

    /// Moves the ioeventfds with the BAR.
    fn move_notifications(&mut self, m: BarMove) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let vm = self.router.vm();
            let _ = vm.unregister_ioevent(evt, &notify_address(m.old, i), NoDatamatch);
            if let Err(e) = vm.register_ioevent(evt, &notify_address(m.new, i), NoDatamatch) {
                BAD_ACCESS.log(format_args!(
                    "virtio {}: cannot move queue {i} notification: {e}",
                    self.name
                ));
            }
        }
        self.bar = m.new;
    }
}

fn notify_address(bar: u64, queue: usize) -> IoEventAddress {
    IoEventAddress::Mmio(bar + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_MULTIPLIER))
}

/// A little-endian register value from a 1..8-byte access.
fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .enumerate()
        .fold(0, |v, (i, b)| v | (u64::from(*b) << (8 * i)))
}

/// A `virtio_pci_cap` (with `notify_off_multiplier` for the notify structure).
fn virtio_cap(kind: u8, offset: u64, len: u64, multiplier: Option<u32>) -> Vec<u8> {
    let cap_len: u8 = if multiplier.is_some() { 20 } else { 16 };
    let mut b = vec![CAP_VENDOR, 0, cap_len, kind, 0, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(len as u32).to_le_bytes());
    if let Some(m) = multiplier {
        b.extend_from_slice(&m.to_le_bytes());
    }
    b
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => {
                super::read_config_bytes(&self.common_image(), o, data)
            }
            o if (ISR_OFFSET..ISR_OFFSET + 4).contains(&o) => {
                // Reading the ISR acknowledges it.
                if let Some(b) = data.first_mut() {
                    *b = std::mem::take(&mut self.isr);
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix.read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if (MSIX_PBA_OFFSET..BAR_SIZE).contains(&o) => {
                self.msix.read_pba(o - MSIX_PBA_OFFSET, data)
            }
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => self.write_common(o, data),
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + NOTIFY_LEN).contains(&o) => {
                // Only reached if the ioeventfd is not registered at this address.
                let queue = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(evt) = self.queue_evts.get(queue) {
                    let _ = evt.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix.write_table(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }
}

impl PciFunction for VirtioPciDevice {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        self.config.write(reg, offset, data);
        if reg == self.msix_cap / 4 {
            let control = u16::from_le_bytes([
                self.config.byte(self.msix_cap + 2),
                self.config.byte(self.msix_cap + 3),
            ]);
            self.msix.set_control(control);
        }
        let moved = self.config.take_bar_move();
        if let Some(m) = moved {
            self.move_notifications(m);
        }
        moved
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::pci::msix::tests::router;
    use crate::devices::virtio::testing::{GuestQueue, AVAIL_RING, DESC_TABLE, USED_RING};
    use crate::devices::virtio::{DeviceError, STATUS_ACKNOWLEDGE, STATUS_DRIVER};

    /// A device that completes every chain with length 1, or fails when told to.
    pub(crate) struct Echo {
        pub fail: bool,
    }

    impl VirtioDevice for Echo {
        fn device_type(&self) -> u32 {
            super::super::TYPE_RNG
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            F_VERSION_1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[7, 8], offset, data)
        }
        fn process(
            &mut self,
            _: DeviceEvent,
            queues: &mut [Queue],
            mem: &GuestMemoryMmap,
            transport: &mut dyn VirtioTransport,
        ) -> Result<Progress, DeviceError> {
            if self.fail {
                return Err(DeviceError::Backend("told to".into()));
            }
            while let Some(chain) = queues[0].pop_descriptor_chain(mem) {
                let _ = queues[0].add_used(mem, chain.head_index(), 1);
            }
            transport.signal_queue(0);
            Ok(Progress::Done)
        }
    }

    pub(crate) const BAR: u64 = 0xc000_0000;

    pub(crate) fn device(q: &GuestQueue, inner: Box<dyn VirtioDevice>) -> VirtioPciDevice {
        VirtioPciDevice::new(
            "test".into(),
            inner,
            q.mem.clone(),
            router(),
            vec![24, 25],
            BAR,
        )
        .unwrap()
    }

    fn w(d: &mut VirtioPciDevice, offset: u64, value: u64, len: usize) {
        d.write(offset, &value.to_le_bytes()[..len]);
    }

    fn r(d: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        d.read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// Plays Linux's virtio-pci probe: features, one queue on vector 0, MSI-X on, DRIVER_OK.
    pub(crate) fn bring_up(d: &mut VirtioPciDevice, size: u16) {
        bring_up_with_used_ring(d, size, USED_RING)
    }

    /// `bring_up` with the used ring at `used` (a hostile driver's choice).
    fn bring_up_with_used_ring(d: &mut VirtioPciDevice, size: u16, used: u64) {
        d.config_write(1, 0, &[0x06, 0]); // memory + bus master
        let msix = d.msix_cap;
        d.config_write(msix / 4, 2, &0x8000u16.to_le_bytes());
        for v in 0..2u64 {
            let e = MSIX_TABLE_OFFSET + v * 16;
            w(d, e, 0xfee0_0000, 4);
            w(d, e + 8, 0x30 + v, 4);
            w(d, e + 12, 0, 4);
        }
        w(d, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        w(d, 0x00, 1, 4);
        let high = r(d, 0x04, 4) as u32;
        w(d, 0x08, 1, 4);
        w(d, 0x0c, u64::from(high), 4);
        w(d, 0x08, 0, 4);
        w(d, 0x00, 0, 4);
        let low = r(d, 0x04, 4);
        w(d, 0x0c, low, 4);
        w(
            d,
            0x14,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
            1,
        );
        assert_ne!(r(d, 0x14, 1) as u8 & STATUS_FEATURES_OK, 0);
        w(d, 0x10, 1, 2);
        w(d, 0x16, 0, 2);
        w(d, 0x18, u64::from(size), 2);
        w(d, 0x1a, 0, 2);
        w(d, 0x20, DESC_TABLE, 4);
        w(d, 0x28, AVAIL_RING, 4);
        w(d, 0x30, used & 0xffff_ffff, 4);
        w(d, 0x34, used >> 32, 4);
        w(d, 0x1c, 1, 2);
        let all = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        w(d, 0x14, u64::from(all), 1);
    }

    #[test]
    fn driver_brings_the_device_up_and_gets_interrupts() {
        let mut q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Echo { fail: false }));
        bring_up(&mut d, 16);
        assert!(d.active, "status {:#x}", d.status);
        assert_eq!(r(&mut d, 0x12, 2), 1, "num_queues");
        assert_eq!(r(&mut d, DEVICE_CFG_OFFSET, 2), 0x0807);
        q.desc(0, 0x10000, 4, 2, 0);
        q.publish(0);
        assert_eq!(d.handle(DeviceEvent::Queue(0)), Progress::Done);
        assert_eq!(q.used_idx(), 1);
        assert_eq!(d.msix.delivered(0), 1);
        assert_eq!(r(&mut d, ISR_OFFSET, 1), 1);
        assert_eq!(r(&mut d, ISR_OFFSET, 1), 0, "reading acknowledges");
    }

    /// A hostile driver puts the used ring outside guest memory: virtio-queue says so with
    /// `error!`, which keel-vmm's logger writes to stderr (`vmm.log`) with level and target, and
    /// the device asks for a reset. Without the logger installed nothing is captured.
    #[test]
    fn a_bad_queue_reaches_the_log_through_virtio_queue() {
        let sink = keel_logger::Capture::default();
        crate::logging::logger()
            .output(sink.clone())
            .install()
            .unwrap(); // The only test in this binary that installs the logger.
        let q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Echo { fail: false }));
        bring_up_with_used_ring(&mut d, 16, 0x7_0000_0000);
        assert!(!d.active);
        assert_ne!(d.status & STATUS_NEEDS_RESET, 0);
        let text = sink.text();
        let want = "keel-vmm: ERROR virtio_queue::queue: virtio queue used ring is not \
                    accessible: start:0x700000000 size:";
        assert!(text.contains(want), "{text}");
        assert!(
            text.contains("keel-vmm: virtio test: queue 0 has rings outside guest memory"),
            "{text}"
        );
    }

    #[test]
    fn config_space_carries_the_virtio_capabilities() {
        let q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Echo { fail: false }));
        assert_eq!(d.config_read(0), 0x1044_1af4);
        assert_eq!(d.config_read(4), BAR as u32);
        let mut kinds = Vec::new();
        let mut at = d.config.byte(0x34) as usize;
        while at != 0 {
            kinds.push((d.config.byte(at), d.config.byte(at + 3)));
            at = d.config.byte(at + 1) as usize;
        }
        assert_eq!(
            kinds,
            [
                (9, CAP_COMMON),
                (9, CAP_ISR),
                (9, CAP_DEVICE),
                (9, CAP_NOTIFY),
                (0x11, 0)
            ]
        );
    }

    #[test]
    fn bad_features_are_refused_and_bad_vectors_read_back_as_none() {
        let q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Echo { fail: false }));
        // Without VERSION_1 (a legacy driver) FEATURES_OK does not stick.
        w(&mut d, 0x14, 3, 1);
        w(&mut d, 0x14, 0xb, 1);
        assert_eq!(r(&mut d, 0x14, 1), 3);
        // A feature the device never offered.
        w(&mut d, 0x08, 0, 4);
        w(&mut d, 0x0c, 1 << 5, 4);
        w(&mut d, 0x08, 1, 4);
        w(&mut d, 0x0c, 1, 4);
        w(&mut d, 0x14, 0xb, 1);
        assert_eq!(r(&mut d, 0x14, 1), 3);
        w(&mut d, 0x10, 9, 2);
        assert_eq!(r(&mut d, 0x10, 2), u64::from(NO_VECTOR));
        w(&mut d, 0x16, 5, 2);
        w(&mut d, 0x1a, 0, 2); // queue 5 does not exist: ignored
        assert_eq!(r(&mut d, 0x18, 2), 0);
    }

    #[test]
    fn bogus_queue_sizes_are_ignored() {
        let q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Echo { fail: false }));
        for bogus in [0u64, 3, 32, 0xffff] {
            w(&mut d, 0x18, bogus, 2);
            assert_eq!(r(&mut d, 0x18, 2), 16, "size {bogus}");
        }
    }

    #[test]
    fn rings_outside_memory_make_the_device_need_a_reset() {
        let q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Echo { fail: false }));
        w(&mut d, 0x24, 0x10, 4); // descriptor table at 64 GiB
        bring_up(&mut d, 16);
        assert!(!d.active);
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
        assert_eq!(d.msix.delivered(1), 1, "configuration interrupt");
        // Reset brings it back.
        w(&mut d, 0x14, 0, 1);
        assert_eq!(d.status(), 0);
        bring_up(&mut d, 16);
        assert!(d.active);
    }

    #[test]
    fn a_failing_device_stops_until_reset() {
        let mut q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Echo { fail: true }));
        bring_up(&mut d, 16);
        q.desc(0, 0x10000, 4, 2, 0);
        q.publish(0);
        d.handle(DeviceEvent::Queue(0));
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
        assert_eq!(d.handle(DeviceEvent::Queue(0)), Progress::Done);
        assert_eq!(q.used_idx(), 0);
        // The driver cannot clear NEEDS_RESET without a reset.
        w(&mut d, 0x14, 0xf, 1);
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn queue_set_up_freezes_once_running() {
        let q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Echo { fail: false }));
        bring_up(&mut d, 16);
        w(&mut d, 0x20, 0x8000, 4);
        w(&mut d, 0x18, 4, 2);
        assert_eq!(r(&mut d, 0x20, 4), DESC_TABLE);
        assert_eq!(r(&mut d, 0x18, 2), 16);
    }
}
