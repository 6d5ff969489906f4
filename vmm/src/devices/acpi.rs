//! The two devices behind the hardware-reduced ACPI platform the DSDT and FADT describe (after
//! Cloud Hypervisor's `devices/src/acpi.rs`):
//!
//! - [`AcpiGed`], the Generic Event Device (`ACPI0013`, MMIO at `layout::GED_START`): the host
//!   presses the power button by setting an event bit and raising the GED interrupt; the guest's
//!   `_EVT` method reads (and thereby clears) the bits and notifies `\_SB.PWRB`.
//! - [`AcpiSleep`], the sleep control/status and reset registers (one port,
//!   `layout::ACPI_SLEEP_PORT`): the guest writes `SLP_TYP=5 | SLP_EN` to power off (S5) and the
//!   FADT's reset value to reboot. Both become an [`ExitRequest`].

use std::io;
use std::sync::Arc;

use super::bus::BusDevice;
use super::interrupt::InterruptLine;
use super::ExitRequest;
use crate::exit::ExitReason;

/// Length of the GED register window on the MMIO bus: one byte of event bits.
pub const GED_MMIO_LEN: u64 = 1;
/// GED event bit: the power button was pressed. `_EVT` in the DSDT tests this bit.
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 0;

/// Length of the sleep/reset register window on the PIO bus.
pub const SLEEP_PORT_LEN: u64 = 1;
/// `_S5_`'s SLP_TYP value, as the DSDT declares it.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Hardware-reduced sleep control register: SLP_TYP in bits 2..4, SLP_EN in bit 5.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
const SLP_EN: u8 = 1 << 5;
/// Value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 1;

/// The ACPI Generic Event Device. Shared between the MMIO bus (guest reads) and the VMM (the API's
/// graceful shutdown calls [`AcpiGed::notify_power_button`]).
pub struct AcpiGed {
    irq: Arc<dyn InterruptLine>,
    pending: u8,
}

impl AcpiGed {
    /// A GED raising `irq` (the builder registers it on `layout::GED_GSI`).
    pub fn new(irq: Arc<dyn InterruptLine>) -> Self {
        AcpiGed { irq, pending: 0 }
    }

    /// Presses the ACPI power button: the guest OS sees a power-button event and shuts down.
    pub fn notify_power_button(&mut self) -> io::Result<()> {
        self.pending |= GED_EVENT_POWER_BUTTON;
        self.irq.trigger()
    }
}

impl BusDevice for AcpiGed {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            // Reading the event byte acknowledges it, as _EVT does exactly once per interrupt.
            (0, [byte]) => *byte = std::mem::take(&mut self.pending),
            (_, data) => data.fill(0xff),
        }
    }

    /// The GED has no writable register.
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// The sleep control/status and reset register of a hardware-reduced ACPI platform.
pub struct AcpiSleep {
    exit: Arc<ExitRequest>,
}

impl AcpiSleep {
    /// A register that turns power-off and reset writes into requests on `exit`.
    pub fn new(exit: Arc<ExitRequest>) -> Self {
        AcpiSleep { exit }
    }
}

impl BusDevice for AcpiSleep {
    /// The sleep status register: WAK_STS never becomes set, the guest never wakes from S5.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let fill = if offset == 0 && data.len() == 1 {
            0
        } else {
            0xff
        };
        data.fill(fill);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, [value]) = (offset, data) else {
            return;
        };
        if *value == RESET_VALUE {
            self.exit.request(ExitReason::GuestReboot);
        } else if value & SLP_EN != 0 && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLEEP_TYPE {
            self.exit.request(ExitReason::GuestPowerOff);
        }
        // Anything else (clearing WAK_STS, another sleep state) has no effect: the DSDT only
        // offers S5.
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// An interrupt line that is an eventfd, like the irqfd line KVM reads: the test reads the
    /// count of triggers where KVM would inject.
    struct EventLine(EventFd);

    impl InterruptLine for EventLine {
        fn trigger(&self) -> io::Result<()> {
            self.0.write(1)
        }
    }

    #[test]
    fn power_button_raises_the_interrupt_and_read_acknowledges() {
        let line = Arc::new(EventLine(EventFd::new(EFD_NONBLOCK).unwrap()));
        let mut ged = AcpiGed::new(line.clone());
        let mut byte = [0u8];
        ged.read(0, &mut byte);
        assert_eq!(byte, [0], "no event yet");
        assert!(line.0.read().is_err(), "no interrupt yet");

        ged.notify_power_button().unwrap();
        assert_eq!(line.0.read().unwrap(), 1);
        ged.read(0, &mut byte);
        assert_eq!(byte, [GED_EVENT_POWER_BUTTON]);
        ged.read(0, &mut byte);
        assert_eq!(byte, [0], "reading clears the event");
    }

    #[test]
    fn ged_ignores_odd_accesses() {
        let line = Arc::new(EventLine(EventFd::new(EFD_NONBLOCK).unwrap()));
        let mut ged = AcpiGed::new(line);
        ged.notify_power_button().unwrap();
        let cases: &[(u64, usize)] = &[(0, 0), (0, 2), (0, 4), (1, 1), (u64::MAX, 8)];
        for &(offset, len) in cases {
            let mut data = vec![0u8; len];
            ged.read(offset, &mut data);
            assert!(data.iter().all(|&b| b == 0xff), "{offset} {len}");
            ged.write(offset, &data);
        }
        ged.write(0, &[0]);
        let mut byte = [0u8];
        ged.read(0, &mut byte);
        assert_eq!(
            byte,
            [GED_EVENT_POWER_BUTTON],
            "odd accesses did not acknowledge"
        );
    }

    #[test]
    fn sleep_register_table() {
        let s5 = (S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN;
        assert_eq!(s5, 0x34, "what Linux writes for S5 with _S5_ = 5");
        let cases: &[(&str, u64, &[u8], Option<ExitReason>)] = &[
            ("S5", 0, &[0x34], Some(ExitReason::GuestPowerOff)),
            ("reset", 0, &[RESET_VALUE], Some(ExitReason::GuestReboot)),
            ("clear WAK_STS", 0, &[0x80], None),
            ("S5 type without SLP_EN", 0, &[5 << 2], None),
            ("S3 with SLP_EN", 0, &[(3 << 2) | SLP_EN], None),
            ("zero", 0, &[0], None),
            ("S5 as a word", 0, &[0x34, 0], None),
            ("S5 at another offset", 1, &[0x34], None),
            ("empty", 0, &[], None),
        ];
        for (name, offset, data, want) in cases {
            let exit = Arc::new(ExitRequest::new().unwrap());
            let mut dev = AcpiSleep::new(exit.clone());
            dev.write(*offset, data);
            assert_eq!(exit.reason(), *want, "{name}");
        }
    }

    #[test]
    fn sleep_status_reads_zero() {
        let mut dev = AcpiSleep::new(Arc::new(ExitRequest::new().unwrap()));
        let mut byte = [0xaa];
        dev.read(0, &mut byte);
        assert_eq!(byte, [0]);
        let mut word = [0u8; 2];
        dev.read(0, &mut word);
        assert_eq!(word, [0xff, 0xff]);
    }
}
