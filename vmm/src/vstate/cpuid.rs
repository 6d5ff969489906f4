//! The CPUID each vCPU sees: KVM's supported list, fixed up for this VM's topology (one socket,
//! one thread per core, `cpu_count` cores, APIC ID = vCPU index) the way Firecracker and Cloud
//! Hypervisor do it, plus the hypervisor bit and no PMU.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Where a vCPU sits in the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// vCPU index, also its APIC ID.
    pub cpu_index: u8,
    /// vCPUs in the VM (all cores of one socket).
    pub cpu_count: u8,
    /// Whether KVM emulates the TSC-deadline timer mode of the LAPIC (KVM_CAP_TSC_DEADLINE_TIMER).
    pub tsc_deadline: bool,
}

/// Building a vCPU's CPUID failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// KVM reports no CPUID leaf 0 (vendor and maximum leaf)
    #[error("KVM reports no CPUID leaf 0 (vendor and maximum leaf)")]
    NoLeaf0,
    /// The fixed-up CPUID has {0} entries, more than KVM accepts
    #[error("The fixed-up CPUID has {0} entries, more than KVM accepts")]
    TooManyEntries(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    /// AMD and Hygon share the 0x8000_00xx topology leaves.
    Amd,
    Other,
}

const EBX_GENU: u32 = 0x756e_6547; // "Genu"ineIntel
const EBX_AUTH: u32 = 0x6874_7541; // "Auth"enticAMD
const EBX_HYGO: u32 = 0x6f67_7948; // "Hygo"nGenuine

const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

/// Topology level types of leaves 0xB/0x1F (ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` items: ceil(log2(n)).
fn id_bits(n: u8) -> u32 {
    u32::from(n.max(1)).next_power_of_two().trailing_zeros()
}

/// The CPUID for the vCPU at `topo`, from KVM's supported entries.
pub fn build_cpuid(supported: &CpuId, topo: Topology) -> Result<CpuId, CpuidError> {
    let entries = fix_entries(supported.as_slice(), topo)?;
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries(entries.len()))
}

fn fix_entries(
    supported: &[kvm_cpuid_entry2],
    topo: Topology,
) -> Result<Vec<kvm_cpuid_entry2>, CpuidError> {
    let leaf0 = supported
        .iter()
        .find(|e| e.function == 0)
        .ok_or(CpuidError::NoLeaf0)?;
    let vendor = match leaf0.ebx {
        EBX_GENU => Vendor::Intel,
        EBX_AUTH | EBX_HYGO => Vendor::Amd,
        _ => Vendor::Other,
    };
    let apic_id = u32::from(topo.cpu_index);
    let count = u32::from(topo.cpu_count.max(1));

    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(supported.len() + 4);
    let mut topology_leaves = Vec::new();
    for entry in supported {
        let mut e = *entry;
        match e.function {
            0x1 => {
                // EBX: [31:24] initial APIC ID, [23:16] addressable logical CPUs in the package.
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if topo.tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS if vendor == Vendor::Intel => {
                // EAX: [31:26] cores in the package - 1, [25:14] threads sharing this cache - 1.
                // Six bits: beyond 64 vCPUs the field saturates (leaf 0xB gives the real count).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                let cores = (count - 1).min(0x3f);
                e.eax = (e.eax & 0x3fff) | (cores << 26) | ((sharing & 0xfff) << 14);
            }
            LEAF_PMU => {
                // No virtual PMU: Linux then leaves the perf counters alone.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                // Rebuilt below, once per leaf.
                if !topology_leaves.contains(&e.function) {
                    topology_leaves.push(e.function);
                }
                continue;
            }
            LEAF_AMD_SIZES if vendor == Vendor::Amd => {
                // ECX: [15:12] APIC ID bits for cores, [7:0] cores in the package - 1.
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(topo.cpu_count) << 12) | (count - 1);
            }
            LEAF_AMD_CACHE_TOPOLOGY if vendor == Vendor::Amd => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
            }
            LEAF_AMD_EXT_APIC_ID if vendor == Vendor::Amd => {
                // One thread per core (EBX[15:8] = 0), core ID = vCPU index, node 0.
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | (apic_id & 0xff);
                e.ecx = 0;
            }
            _ => {}
        }
        out.push(e);
    }

    for function in topology_leaves {
        out.extend(topology_entries(function, topo));
    }
    Ok(out)
}

/// Leaf 0xB or 0x1F: SMT level (1 thread per core), core level (all vCPUs), then the
/// terminating invalid level. EDX is the x2APIC ID on every sub-leaf.
fn topology_entries(function: u32, topo: Topology) -> [kvm_cpuid_entry2; 3] {
    let apic_id = u32::from(topo.cpu_index);
    let entry = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: apic_id,
        ..Default::default()
    };
    [
        entry(0, 0, 1, LEVEL_SMT << 8),
        entry(
            1,
            id_bits(topo.cpu_count),
            u32::from(topo.cpu_count.max(1)),
            (LEVEL_CORE << 8) | 1,
        ),
        entry(2, 0, 0, 2),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn intel() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0, [0x1f, EBX_GENU, 0x6c65_746e, 0x4965_6e69]),
            leaf(1, 0, [0x806ec, 0xff00_0800, 0x1, 0x1 << 28]),
            leaf(4, 0, [0x1c00_4121, 0, 0, 0]), // L1 data cache
            leaf(4, 3, [0x1c03_c163, 0, 0, 0]), // L3
            leaf(0xa, 0, [0x0760_3004, 1, 2, 3]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xb, 1, [4, 8, 0x201, 7]),
            leaf(0x1f, 0, [1, 2, 0x100, 7]),
        ]
    }

    #[test]
    fn id_bits_is_ceil_log2() {
        for (n, bits) in [
            (0u8, 0u32),
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (255, 8),
        ] {
            assert_eq!(id_bits(n), bits, "{n}");
        }
    }

    #[test]
    fn intel_topology_and_flags_follow_the_vm() {
        let topo = Topology {
            cpu_index: 2,
            cpu_count: 3,
            tsc_deadline: true,
        };
        let out = fix_entries(&intel(), topo).unwrap();

        let l1 = find(&out, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 3, "logical CPUs");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);

        let l1d = find(&out, 4, 0);
        assert_eq!((l1d.eax >> 26, (l1d.eax >> 14) & 0xfff), (2, 0));
        assert_eq!(l1d.eax & 0x3fff, 0x0121, "cache type/level kept");
        let l3 = find(&out, 4, 3);
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (2, 2));

        let pmu = find(&out, 0xa, 0);
        assert_eq!([pmu.eax, pmu.ebx, pmu.ecx, pmu.edx], [0; 4]);

        for function in [0xb, 0x1f] {
            let smt = find(&out, function, 0);
            let core = find(&out, function, 1);
            let end = find(&out, function, 2);
            assert_eq!([smt.eax, smt.ebx, smt.ecx, smt.edx], [0, 1, 0x100, 2]);
            assert_eq!([core.eax, core.ebx, core.ecx, core.edx], [2, 3, 0x201, 2]);
            assert_eq!([end.eax, end.ebx, end.ecx & 0xff00, end.edx], [0, 0, 0, 2]);
            assert_eq!(smt.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
            assert_eq!(out.iter().filter(|e| e.function == function).count(), 3);
        }
    }

    #[test]
    fn more_than_64_vcpus_keep_their_apic_ids_and_count() {
        for (index, count) in [(64u8, 65u8), (159, 160), (253, 254)] {
            let topo = Topology {
                cpu_index: index,
                cpu_count: count,
                tsc_deadline: false,
            };
            let out = fix_entries(&intel(), topo).unwrap();
            let l1 = find(&out, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(index), "APIC ID");
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(count), "logical CPUs");
            let l3 = find(&out, 4, 3);
            assert_eq!(l3.eax >> 26, 63, "cores field saturates, {count}");
            assert_eq!((l3.eax >> 14) & 0xfff, u32::from(count) - 1);
            assert_eq!(l3.eax & 0x3fff, 0x0163, "cache type/level kept");
            let core = find(&out, 0xb, 1);
            assert_eq!(
                [core.eax, core.ebx, core.edx],
                [id_bits(count), u32::from(count), u32::from(index)]
            );
        }
    }

    #[test]
    fn single_cpu_clears_htt() {
        let topo = Topology {
            cpu_index: 0,
            cpu_count: 1,
            tsc_deadline: false,
        };
        let out = fix_entries(&intel(), topo).unwrap();
        let l1 = find(&out, 1, 0);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(find(&out, 0xb, 1).eax, 0);
    }

    #[test]
    fn amd_core_leaves_follow_the_vm() {
        let supported = vec![
            leaf(0, 0, [0x10, EBX_AUTH, 0x444d_4163, 0x6974_6e65]),
            leaf(1, 0, [0x830f10, 0x0800, 0, 0]),
            leaf(LEAF_AMD_SIZES, 0, [0x3030, 0, 0x700f, 0]),
            leaf(LEAF_AMD_CACHE_TOPOLOGY, 3, [0x0001_c163, 0, 0, 0]),
            leaf(LEAF_AMD_EXT_APIC_ID, 0, [9, 0x0000_0105, 0x0000_0300, 0]),
        ];
        let topo = Topology {
            cpu_index: 3,
            cpu_count: 4,
            tsc_deadline: false,
        };
        let out = fix_entries(&supported, topo).unwrap();
        let sizes = find(&out, LEAF_AMD_SIZES, 0);
        assert_eq!(sizes.ecx & 0xf0ff, (2 << 12) | 3);
        let l3 = find(&out, LEAF_AMD_CACHE_TOPOLOGY, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        let ext = find(&out, LEAF_AMD_EXT_APIC_ID, 0);
        assert_eq!([ext.eax, ext.ebx & 0xffff, ext.ecx], [3, 3, 0]);
    }

    #[test]
    fn missing_leaf0_is_an_error() {
        let topo = Topology {
            cpu_index: 0,
            cpu_count: 1,
            tsc_deadline: false,
        };
        assert!(matches!(
            fix_entries(&[leaf(1, 0, [0; 4])], topo),
            Err(CpuidError::NoLeaf0)
        ));
    }
}
