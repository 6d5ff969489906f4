//! The KVM VM: guest memory slots, the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT, and the
//! two pages KVM needs inside the MMIO gap (identity map and TSS) on Intel.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{
    Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::arch::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};

/// Creating or configuring the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Cannot create the KVM VM: {0}
    #[error("Cannot create the KVM VM: {0}")]
    Create(kvm_ioctls::Error),
    /// KVM refused to {0}: {1}
    #[error("KVM refused to {0}: {1}")]
    Setup(&'static str, kvm_ioctls::Error),
    /// Cannot register guest memory slot {0} at {1:#x}: {2}
    #[error("Cannot register guest memory slot {0} at {1:#x}: {2}")]
    MemorySlot(u32, u64, kvm_ioctls::Error),
    /// Guest memory region at {0:#x} has no host mapping
    #[error("Guest memory region at {0:#x} has no host mapping")]
    NoHostAddress(u64),
}

/// Creates the VM, registers `mem` and sets up the in-kernel interrupt controllers and PIT.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(VmError::Create)?;
    register_memory(&vm, mem)?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
        .map_err(|e| VmError::Setup("set the identity map address", e))?;
    vm.set_tss_address(KVM_TSS_START as usize)
        .map_err(|e| VmError::Setup("set the TSS address", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmError::Setup("create the in-kernel irqchip", e))?;
    // The PC speaker port 0x61 is emulated in the kernel too: Linux reads it to calibrate the TSC.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| VmError::Setup("create the in-kernel PIT", e))?;
    Ok(vm)
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let guest_phys_addr = region.start_addr().raw_value();
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| VmError::NoHostAddress(guest_phys_addr))?;
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region describes a live mapping owned by `mem`, which the caller keeps for
        // as long as the VM exists (the builder stores both in the same `Vmm`).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| VmError::MemorySlot(slot, guest_phys_addr, e))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;

    #[test]
    fn vm_has_irqchip_and_pit() {
        let kvm = Kvm::new().unwrap();
        let mem = create_guest_memory(4).unwrap();
        let vm = create_vm(&kvm, &mem).unwrap();
        // Both only succeed if the in-kernel devices exist.
        vm.get_pit2().unwrap();
        let mut chip = kvm_bindings::kvm_irqchip {
            chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).unwrap();
    }
}
