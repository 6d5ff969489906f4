//! Interrupt lines as devices see them. A device holds an `InterruptLine` and calls `trigger()`;
//! how the interrupt reaches the guest (an irqfd on a legacy GSI today, an MSI route for
//! virtio-pci later) stays behind the trait.

use std::io;
use std::sync::Arc;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Raises an edge-triggered interrupt in the guest.
pub trait InterruptLine: Send + Sync {
    /// Signals the interrupt once.
    fn trigger(&self) -> io::Result<()>;
}

/// An interrupt injected by KVM when its eventfd is written (KVM_IRQFD on a GSI of the in-kernel
/// PIC/IOAPIC). Triggering it is a single `write(2)`, no exit to the VMM and no lock.
#[derive(Debug)]
pub struct IrqFdLine {
    evt: EventFd,
    gsi: u32,
}

impl IrqFdLine {
    /// Creates an eventfd and registers it with KVM as the trigger of `gsi`.
    pub fn register(vm: &VmFd, gsi: u32) -> io::Result<Self> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        vm.register_irqfd(&evt, gsi).map_err(io::Error::from)?;
        Ok(IrqFdLine { evt, gsi })
    }

    /// The GSI this line raises.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }
}

impl InterruptLine for IrqFdLine {
    fn trigger(&self) -> io::Result<()> {
        self.evt.write(1)
    }
}

/// Adapts an `InterruptLine` to the `Trigger` that vm-superio devices call.
#[derive(Clone)]
pub struct LineTrigger(pub Arc<dyn InterruptLine>);

impl vm_superio::Trigger for LineTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    #[test]
    fn irqfd_line_needs_an_irqchip_and_then_triggers() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        // Without an in-kernel irqchip KVM refuses irqfds: the error reaches the caller.
        assert!(IrqFdLine::register(&vm, 4).is_err());
        vm.create_irq_chip().unwrap();
        let line = IrqFdLine::register(&vm, 4).unwrap();
        assert_eq!(line.gsi(), 4);
        line.trigger().unwrap();
        LineTrigger(Arc::new(line)).0.trigger().unwrap();
    }
}
