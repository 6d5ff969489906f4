//! KVM state of one VM: guest memory (`memory`), the VM with its in-kernel irqchip and PIT (`vm`),
//! the vCPUs with their threads, exits and pause/resume (`vcpu`), and their CPUID (`cpuid`).

pub mod cpuid;
pub mod memory;
pub mod vcpu;
pub mod vm;
