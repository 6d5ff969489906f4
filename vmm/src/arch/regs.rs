//! The initial state of a vCPU: general registers, segments and paging for the 64-bit Linux boot
//! protocol (boot CPU only), FPU and the boot MSRs (every vCPU), as Firecracker sets them.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{kvm_segment_from_gdt, BOOT_GDT};
use super::layout::{
    BOOT_IDENTITY_MAP_GIB, BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START,
    PML4_START, ZERO_PAGE_START,
};

/// Setting up a vCPU's registers failed.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Cannot write the boot {0} into guest memory
    #[error("Cannot write the boot {0} into guest memory")]
    GuestMemory(&'static str),
    /// KVM refused the vCPU's {0}: {1}
    #[error("KVM refused the vCPU's {0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// KVM set only {0} of {1} boot MSRs
    #[error("KVM set only {0} of {1} boot MSRs")]
    PartialMsrs(usize, usize),
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// Page-table entry bits.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE_2M: u64 = 0x80;

/// Boot CPU: 64-bit entry at `entry`, boot_params in RSI, stack at the boot stack.
pub fn setup_regs(vcpu: &VcpuFd, entry: GuestAddress) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Kvm("registers", e))
}

/// Boot CPU: flat segments from the boot GDT and long mode with identity paging.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("segment registers", e))?;
    configure_segments(mem, &mut sregs)?;
    setup_page_tables(mem, &mut sregs)?;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("segment registers", e))
}

fn configure_segments(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(|_| RegsError::GuestMemory("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|_| RegsError::GuestMemory("IDT"))?;

    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    let code = kvm_segment_from_gdt(BOOT_GDT[1], 1);
    let data = kvm_segment_from_gdt(BOOT_GDT[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(BOOT_GDT[3], 3);

    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// Identity-maps the first `BOOT_IDENTITY_MAP_GIB` GiB with 2 MiB pages.
fn setup_page_tables(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    let err = |_| RegsError::GuestMemory("page tables");
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(err)?;
    for gib in 0..BOOT_IDENTITY_MAP_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | PTE_PRESENT_RW, GuestAddress(PDPTE_START + gib * 8))
            .map_err(err)?;
        for i in 0..512u64 {
            let frame = ((gib << 30) | (i << 21)) | PDE_HUGE_2M | PTE_PRESENT_RW;
            mem.write_obj(frame, GuestAddress(pd + i * 8))
                .map_err(err)?;
        }
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PG;
    Ok(())
}

/// Every vCPU: x87 control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Kvm("FPU", e))
}

// MSR indices (arch/x86/include/asm/msr-index.h).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 0x6;

/// The MSRs every vCPU starts with (Firecracker's boot MSR list): syscall MSRs cleared, fast
/// strings on, and write-back as the default memory type with MTRRs enabled.
pub fn boot_msr_entries() -> [kvm_msr_entry; 11] {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// Every vCPU: writes the boot MSRs; all of them must take.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs =
        Msrs::from_entries(&entries).map_err(|_| RegsError::PartialMsrs(0, entries.len()))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Kvm("MSRs", e))?;
    if set != entries.len() {
        return Err(RegsError::PartialMsrs(set, entries.len()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn page_tables_identity_map_the_low_4_gib() {
        let mem = mem();
        let mut sregs = kvm_sregs::default();
        setup_page_tables(&mem, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        // Walk a few addresses: the 2 MiB page holding each must map to itself.
        for addr in [0u64, 0x20_0000, 0x3fe0_0000, 0xd000_0000, 0xffe0_0000] {
            let pdpte: u64 = mem
                .read_obj(GuestAddress(PDPTE_START + (addr >> 30) * 8))
                .unwrap();
            let pde: u64 = mem
                .read_obj(GuestAddress((pdpte & !0xfff) + ((addr >> 21) & 0x1ff) * 8))
                .unwrap();
            assert_eq!(pde & !0xfff, addr, "{addr:#x}");
            assert_eq!(pde & 0x83, 0x83);
        }
    }

    #[test]
    fn boot_cpu_state_is_accepted_by_kvm() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mem = mem();
        setup_regs(&vcpu, GuestAddress(0x1000)).unwrap();
        setup_sregs(&mem, &vcpu).unwrap();
        setup_fpu(&vcpu).unwrap();
        setup_msrs(&vcpu).unwrap();

        let regs = vcpu.get_regs().unwrap();
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp),
            (0x1000, ZERO_PAGE_START, BOOT_STACK_POINTER)
        );
        let sregs = vcpu.get_sregs().unwrap();
        assert_eq!(sregs.cs.l, 1);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_eq!(vcpu.get_fpu().unwrap().fcw, 0x37f);
    }
}
