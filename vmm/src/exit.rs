//! The process exit statuses of keel-vmm. They are part of its interface: the agent records them as the
//! reason a VM stopped, so each value is stable and documented in README.md.

/// Why keel-vmm ended. `code()` is the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered itself off (ACPI S5).
    GuestPowerOff,
    /// The VMM failed: set-up or a runtime error of its own (logged).
    VmmError,
    /// The configuration or the command line was invalid (logged with the offending value).
    BadConfig,
    /// The guest asked for a reboot (i8042 reset line or ACPI reset); the agent restarts it.
    GuestReboot,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM reported an internal error, a failed entry or an emulation failure.
    KvmError,
    /// The host powered the VM off: the API's power-off or SIGTERM.
    HostPowerOff,
}

impl ExitReason {
    /// Every reason, in exit-code order.
    pub const ALL: [ExitReason; 7] = [
        ExitReason::GuestPowerOff,
        ExitReason::VmmError,
        ExitReason::BadConfig,
        ExitReason::GuestReboot,
        ExitReason::TripleFault,
        ExitReason::KvmError,
        ExitReason::HostPowerOff,
    ];

    /// The reason whose exit status is `code`, if any.
    pub fn from_code(code: u8) -> Option<ExitReason> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The process exit status for this reason.
    pub fn code(self) -> u8 {
        match self {
            ExitReason::GuestPowerOff => 0,
            ExitReason::VmmError => 1,
            ExitReason::BadConfig => 2,
            ExitReason::GuestReboot => 3,
            ExitReason::TripleFault => 4,
            ExitReason::KvmError => 5,
            ExitReason::HostPowerOff => 6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct() {
        let all = ExitReason::ALL;
        let mut codes: Vec<u8> = all.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn codes_map_back_to_their_reason() {
        for reason in ExitReason::ALL {
            assert_eq!(ExitReason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(ExitReason::from_code(7), None);
        assert_eq!(ExitReason::from_code(u8::MAX), None);
    }
}
