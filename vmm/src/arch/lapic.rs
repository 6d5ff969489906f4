//! Local APIC wiring: LINT0 delivers the legacy PIC's interrupts (ExtINT) and LINT1 the NMI, as on a
//! PC; Linux relies on this "virtual wire" mode while it sets up the IOAPIC.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *r = b as _;
    }
}

/// Replaces the delivery mode (bits 8..11) of an LVT entry.
fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in a LAPIC state.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, set_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Configures a vCPU's in-kernel LAPIC (needs the in-kernel irqchip).
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut lapic = vcpu.get_lapic()?;
    set_lint(&mut lapic);
    vcpu.set_lapic(&lapic)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    #[test]
    fn delivery_mode_replaces_only_its_bits() {
        let cases = [
            (0x0001_0000, APIC_MODE_EXTINT, 0x0001_0700), // masked stays masked
            (0x0000_07ff, APIC_MODE_NMI, 0x0000_04ff),
            (0, APIC_MODE_NMI, 0x400),
        ];
        for (reg, mode, want) in cases {
            assert_eq!(set_delivery_mode(reg, mode), want);
        }
    }

    #[test]
    fn lint_pins_reach_kvm() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        setup_lint(&vcpu).unwrap();
        let lapic = vcpu.get_lapic().unwrap();
        assert_eq!((get_reg(&lapic, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((get_reg(&lapic, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
