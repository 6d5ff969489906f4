//! MSI-X: the capability, the vector table and pending-bit array a guest programs through a BAR,
//! and their delivery through KVM. Every vector owns a GSI routed (`KVM_SET_GSI_ROUTING`) to the
//! message the guest wrote, and an irqfd on that GSI, so raising a vector is one eventfd write.
//! A masked vector records a pending bit instead and fires when unmasked, as the spec requires.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::RateLimitedLog;

/// MSI-X capability ID.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry: address low, address high, data, vector control.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Vector control bit: the vector is masked.
const ENTRY_MASKED: u32 = 1;
/// Message control bits (in the capability's high half of its first dword).
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// GSIs of the IOAPIC pins; MSI GSIs come after them.
pub const IOAPIC_PINS: u32 = 24;

static ROUTING_FAILED: RateLimitedLog = RateLimitedLog::new();

/// The VM's whole GSI routing table. `KVM_SET_GSI_ROUTING` replaces every route at once, so the
/// default legacy routes (ISA IRQs to the PIC and IOAPIC, which the serial port and the GED need)
/// are kept here beside the MSI routes.
pub struct MsiRouter {
    vm: Arc<VmFd>,
    routes: Mutex<BTreeMap<(u32, u32), kvm_irq_routing_entry>>,
}

impl MsiRouter {
    /// A router holding KVM's default legacy routes.
    pub fn new(vm: Arc<VmFd>) -> Self {
        let mut routes = BTreeMap::new();
        for gsi in 0..IOAPIC_PINS {
            let mut chips = vec![(KVM_IRQCHIP_IOAPIC, gsi)];
            if gsi < 16 && gsi != 2 {
                let (chip, pin) = if gsi < 8 {
                    (KVM_IRQCHIP_PIC_MASTER, gsi)
                } else {
                    (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
                };
                chips.push((chip, pin));
            }
            for (chip, pin) in chips {
                let mut e = kvm_irq_routing_entry {
                    gsi,
                    type_: KVM_IRQ_ROUTING_IRQCHIP,
                    ..Default::default()
                };
                e.u.irqchip.irqchip = chip;
                e.u.irqchip.pin = pin;
                routes.insert((gsi, chip), e);
            }
        }
        MsiRouter {
            vm,
            routes: Mutex::new(routes),
        }
    }

    /// The VM, for irqfd registration.
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// Routes `gsi` to the MSI message (`address`, `data`), or removes its route (`None`).
    pub fn set_msi(&self, gsi: u32, message: Option<(u64, u32)>) -> io::Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let key = (gsi, u32::MAX);
        match message {
            Some((address, data)) => {
                let mut e = kvm_irq_routing_entry {
                    gsi,
                    type_: KVM_IRQ_ROUTING_MSI,
                    ..Default::default()
                };
                e.u.msi.address_lo = address as u32;
                e.u.msi.address_hi = (address >> 32) as u32;
                e.u.msi.data = data;
                routes.insert(key, e);
            }
            None => {
                routes.remove(&key);
            }
        }
        let entries: Vec<kvm_irq_routing_entry> = routes.values().copied().collect();
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("GSI routing table: {e:?}")))?;
        self.vm.set_gsi_routing(&table).map_err(io::Error::from)
    }
}

/// One vector table entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn message(&self) -> (u64, u32) {
        (
            u64::from(self.addr_lo) | (u64::from(self.addr_hi) << 32),
            self.data,
        )
    }
}

/// A function's MSI-X vectors.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
    router: Arc<MsiRouter>,
    /// Interrupts delivered per vector (KVM consumes the irqfd counter, so this is how they are
    /// observed).
    delivered: Vec<u64>,
}

impl Msix {
    /// `count` vectors on the GSIs `gsis` (one each), every vector masked as at reset.
    pub fn new(router: Arc<MsiRouter>, gsis: Vec<u32>) -> io::Result<Self> {
        let mut irqfds = Vec::with_capacity(gsis.len());
        for &gsi in &gsis {
            let evt = EventFd::new(EFD_NONBLOCK)?;
            router
                .vm()
                .register_irqfd(&evt, gsi)
                .map_err(io::Error::from)?;
            irqfds.push(evt);
        }
        let count = gsis.len();
        Ok(Msix {
            entries: vec![
                Entry {
                    control: ENTRY_MASKED,
                    ..Entry::default()
                };
                count
            ],
            pending: vec![false; count],
            enabled: false,
            function_masked: false,
            gsis,
            irqfds,
            router,
            delivered: vec![0; count],
        })
    }

    /// Number of vectors.
    pub fn count(&self) -> u16 {
        self.entries.len() as u16
    }

    /// The capability body (ID first) and its write mask: message control's enable and function
    /// mask bits are the only writable bits. Table and PBA are in BAR0 at the given offsets.
    pub fn capability(&self, table_offset: u32, pba_offset: u32) -> (Vec<u8>, Vec<u8>) {
        let control = self.count().saturating_sub(1);
        let mut body = vec![MSIX_CAP_ID, 0];
        body.extend_from_slice(&control.to_le_bytes());
        body.extend_from_slice(&table_offset.to_le_bytes()); // BIR 0
        body.extend_from_slice(&pba_offset.to_le_bytes());
        let mut mask = vec![0u8; body.len()];
        mask[3] = 0xc0;
        (body, mask)
    }

    /// The guest wrote message control (the capability's bytes 2..4).
    pub fn set_control(&mut self, control: u16) {
        let was_enabled = self.enabled;
        let was_masked = self.function_masked;
        self.enabled = control & CTRL_ENABLE != 0;
        self.function_masked = control & CTRL_FUNCTION_MASK != 0;
        if self.enabled != was_enabled {
            for v in 0..self.entries.len() {
                self.update_route(v);
            }
        }
        if was_masked && !self.function_masked {
            for v in 0..self.entries.len() {
                self.fire_pending(v);
            }
        }
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn vector_live(&self, v: usize) -> bool {
        self.enabled
            && self
                .entries
                .get(v)
                .is_some_and(|e| e.control & ENTRY_MASKED == 0)
    }

    fn update_route(&self, v: usize) {
        let (Some(entry), Some(&gsi)) = (self.entries.get(v), self.gsis.get(v)) else {
            return;
        };
        let message = self.enabled.then(|| entry.message());
        if let Err(e) = self.router.set_msi(gsi, message) {
            ROUTING_FAILED.log(format_args!(
                "cannot route MSI-X vector {v} (GSI {gsi}): {e}"
            ));
        }
    }

    fn fire_pending(&mut self, v: usize) {
        if self.pending.get(v) == Some(&true) && self.vector_live(v) && !self.function_masked {
            self.pending[v] = false;
            self.deliver(v);
        }
    }

    /// Raises vector `v` (an out-of-range vector, as a guest may configure, is dropped).
    pub fn trigger(&mut self, v: u16) {
        let v = usize::from(v);
        if v >= self.entries.len() || !self.enabled {
            return;
        }
        if self.function_masked || !self.vector_live(v) {
            self.pending[v] = true;
        } else {
            self.deliver(v);
        }
    }

    fn deliver(&mut self, v: usize) {
        if self.irqfds[v].write(1).is_ok() {
            self.delivered[v] += 1;
        }
    }

    /// Interrupts delivered on vector `v` so far.
    pub fn delivered(&self, v: usize) -> u64 {
        self.delivered.get(v).copied().unwrap_or(0)
    }

    /// Guest read of the vector table at `offset`.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (v, field) = (
            (offset / MSIX_ENTRY_SIZE) as usize,
            offset % MSIX_ENTRY_SIZE,
        );
        let Some(e) = self.entries.get(v) else { return };
        let words = [e.addr_lo, e.addr_hi, e.data, e.control];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = field as usize;
        let end = (start + data.len()).min(16);
        data[..end - start].copy_from_slice(&bytes[start..end]);
    }

    /// Guest write of the vector table at `offset` (dword or qword accesses, as the spec allows).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let (v, field) = (
            (offset / MSIX_ENTRY_SIZE) as usize,
            offset % MSIX_ENTRY_SIZE,
        );
        if v >= self.entries.len() || !matches!(data.len(), 4 | 8) || field % 4 != 0 {
            return;
        }
        let before = self.entries[v];
        for (i, chunk) in data.chunks(4).enumerate() {
            let mut word = [0u8; 4];
            word.copy_from_slice(chunk);
            let word = u32::from_le_bytes(word);
            let e = &mut self.entries[v];
            match field / 4 + i as u64 {
                0 => e.addr_lo = word,
                1 => e.addr_hi = word,
                2 => e.data = word,
                3 => e.control = word & ENTRY_MASKED,
                _ => {}
            }
        }
        let after = self.entries[v];
        if after.message() != before.message() && self.enabled {
            self.update_route(v);
        }
        if before.control & ENTRY_MASKED != 0 && after.control & ENTRY_MASKED == 0 {
            self.fire_pending(v);
        }
    }

    /// Guest read of the pending-bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let base = (offset as usize + i) * 8;
            *byte = (0..8)
                .filter(|bit| self.pending.get(base + bit) == Some(&true))
                .fold(0u8, |acc, bit| acc | (1 << bit));
        }
    }

    /// Back to reset state: disabled, every vector masked, nothing pending.
    pub fn reset(&mut self) {
        self.set_control(0);
        for e in &mut self.entries {
            *e = Entry {
                control: ENTRY_MASKED,
                ..Entry::default()
            };
        }
        self.pending.fill(false);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    pub(crate) fn router() -> Arc<MsiRouter> {
        let vm = Kvm::new().unwrap().create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        Arc::new(MsiRouter::new(Arc::new(vm)))
    }

    fn program(m: &mut Msix, v: u64, unmask: bool) {
        m.write_table(v * 16, &0xfee0_0000u32.to_le_bytes());
        m.write_table(v * 16 + 4, &0u32.to_le_bytes());
        m.write_table(v * 16 + 8, &(0x40 + v as u32).to_le_bytes());
        m.write_table(v * 16 + 12, &u32::from(!unmask).to_le_bytes());
    }

    #[test]
    fn masked_vectors_pend_and_fire_when_unmasked() {
        let mut m = Msix::new(router(), vec![24, 25]).unwrap();
        m.set_control(CTRL_ENABLE);
        program(&mut m, 0, true);
        program(&mut m, 1, false);
        m.trigger(0);
        assert_eq!(m.delivered(0), 1);
        m.trigger(1);
        assert_eq!(m.delivered(1), 0, "masked: no interrupt");
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        m.write_table(16 + 12, &0u32.to_le_bytes());
        assert_eq!(m.delivered(1), 1, "fires on unmask");
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);

        // Function mask holds every vector.
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        m.trigger(0);
        assert_eq!(m.delivered(0), 1);
        m.set_control(CTRL_ENABLE);
        assert_eq!(m.delivered(0), 2);
    }

    #[test]
    fn table_reads_back_and_bad_accesses_are_ignored() {
        let mut m = Msix::new(router(), vec![30]).unwrap();
        program(&mut m, 0, true);
        let mut entry = [0u8; 16];
        m.read_table(0, &mut entry);
        assert_eq!(&entry[..4], &0xfee0_0000u32.to_le_bytes());
        assert_eq!(&entry[8..12], &0x40u32.to_le_bytes());
        // Out-of-range vector, odd sizes, misaligned fields: ignored, no panic.
        m.write_table(16, &[1, 2, 3, 4]);
        m.write_table(1, &[1, 2, 3, 4]);
        m.write_table(0, &[1, 2]);
        m.read_table(4096, &mut entry);
        assert_eq!(entry, [0; 16]);
        m.trigger(7);
        m.trigger(0); // disabled: dropped
        assert_eq!(m.delivered(0), 0);
    }

    #[test]
    fn capability_advertises_the_table_size() {
        let m = Msix::new(router(), vec![40, 41, 42]).unwrap();
        let (body, mask) = m.capability(0x4000, 0x5000);
        assert_eq!(body[0], MSIX_CAP_ID);
        assert_eq!(u16::from_le_bytes([body[2], body[3]]), 2, "N - 1");
        assert_eq!(&body[4..8], &0x4000u32.to_le_bytes());
        assert_eq!(mask[3], 0xc0);
    }
}
