//! Emulated devices and the plumbing they share: the PIO/MMIO buses (`bus`), interrupt lines
//! (`interrupt`) and the exit request through which a device or a vCPU asks the VMM to stop.
//!
//! Devices only see `BusDevice` (their registers) and `InterruptLine` (their interrupt), never the
//! transport, so a later virtio-pci transport reuses them unchanged.

pub mod acpi;
pub mod boot_timer;
pub mod bus;
pub mod cmos;
pub mod i8042;
pub mod interrupt;
pub mod pci;
pub mod serial;
pub mod virtio;

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::exit::ExitReason;

/// No exit requested yet (not an `ExitReason::code()`).
const NO_EXIT: u8 = u8::MAX;

/// A request to end the VM, shared by everything that may end it: vCPUs (triple fault, KVM errors),
/// the i8042 reset line, the ACPI sleep device (S5), the API and signals. The first request wins;
/// the event loop wakes on `event_fd()` and reads `reason()`.
#[derive(Debug)]
pub struct ExitRequest {
    evt: EventFd,
    reason: AtomicU8,
}

impl ExitRequest {
    /// A request slot with nothing requested yet.
    pub fn new() -> io::Result<Self> {
        Ok(ExitRequest {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: AtomicU8::new(NO_EXIT),
        })
    }

    /// Asks the VMM to stop with `reason`. Later requests do not override the first one.
    /// Safe to call from any thread, including vCPU threads; never blocks.
    pub fn request(&self, reason: ExitReason) {
        let _ = self.reason.compare_exchange(
            NO_EXIT,
            reason.code(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        // Only fails if the counter would overflow, which already means "signalled".
        let _ = self.evt.write(1);
    }

    /// The reason requested first, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        let code = self.reason.load(Ordering::Acquire);
        ExitReason::from_code(code.into())
    }

    /// Becomes readable once an exit was requested.
    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

/// Logs a message about something a guest controls (unknown ports, bad register writes) without
/// letting the guest flood the log: the first `BURST` occurrences, then one in every `EVERY`.
#[derive(Debug, Default)]
pub struct RateLimitedLog {
    count: AtomicU32,
}

impl RateLimitedLog {
    const BURST: u32 = 10;
    const EVERY: u32 = 1000;

    pub const fn new() -> Self {
        RateLimitedLog {
            count: AtomicU32::new(0),
        }
    }

    /// Whether this occurrence should be logged; counts it.
    pub fn should_log(&self) -> bool {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        n < Self::BURST || n.is_multiple_of(Self::EVERY)
    }

    /// Logs `args` as a warning if the rate allows, with the count of occurrences so far.
    pub fn log(&self, args: std::fmt::Arguments<'_>) {
        if self.should_log() {
            let n = self.count.load(Ordering::Relaxed);
            log::warn!("{args} (occurrence {n})");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_request_wins_and_signals() {
        let req = ExitRequest::new().unwrap();
        assert_eq!(req.reason(), None);
        assert!(req.event_fd().read().is_err(), "nothing signalled yet");
        req.request(ExitReason::GuestReboot);
        req.request(ExitReason::TripleFault);
        assert_eq!(req.reason(), Some(ExitReason::GuestReboot));
        assert_eq!(req.event_fd().read().unwrap(), 2);
    }

    #[test]
    fn every_exit_reason_round_trips() {
        for reason in ExitReason::ALL {
            let req = ExitRequest::new().unwrap();
            req.request(reason);
            assert_eq!(req.reason(), Some(reason));
        }
    }

    #[test]
    fn rate_limited_log_bursts_then_thins_out() {
        let log = RateLimitedLog::new();
        let logged = (0..3000).filter(|_| log.should_log()).count();
        // 10 in the burst, then occurrences 1000 and 2000.
        assert_eq!(logged, 12);
    }
}
