//! The i8042 keyboard controller, as much of it as Linux needs (after Firecracker's i8042):
//! the controller configuration byte, self-tests, an output buffer, a keyboard that ACKs its
//! commands (IRQ 1), and the CPU reset line. The guest writing 0xFE to the command port (0x64)
//! asks for a reboot, which ends this process with `ExitReason::GuestReboot` (the agent restarts
//! the VM); Linux uses it as a reboot method. Without the controller registers Linux's i8042 probe
//! waits seconds for "Can't read CTR" timeouts.

use std::collections::VecDeque;
use std::sync::Arc;

use super::bus::BusDevice;
use super::interrupt::InterruptLine;
use super::{ExitRequest, RateLimitedLog};
use crate::exit::ExitReason;

static I8042_ERRORS: RateLimitedLog = RateLimitedLog::new();

const DATA_PORT: u64 = 0;
const COMMAND_PORT: u64 = 4;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

// Status register bits.
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;

// Controller configuration byte bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
/// Keyboard interrupt on, system flag, translation on (what firmware leaves behind).
const CTR_DEFAULT: u8 = 0x45;

// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_ID: [u8; 2] = [0xab, 0x83];
const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;

/// Bytes the guest has not read yet; more than this are dropped.
const OUT_BUFFER_LEN: usize = 16;

/// The controller on the PIO bus at 0x60..0x64.
pub struct I8042 {
    exit: Arc<ExitRequest>,
    kbd_irq: Arc<dyn InterruptLine>,
    status: u8,
    ctr: u8,
    outp: u8,
    /// A controller command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    out: VecDeque<u8>,
}

impl I8042 {
    /// A controller whose reset line requests a reboot on `exit` and whose keyboard interrupts
    /// on `kbd_irq` (GSI 1).
    pub fn new(exit: Arc<ExitRequest>, kbd_irq: Arc<dyn InterruptLine>) -> Self {
        I8042 {
            exit,
            kbd_irq,
            status: SB_SYSTEM_FLAG,
            ctr: CTR_DEFAULT,
            outp: 0x01, // reset line high: running
            pending: None,
            out: VecDeque::with_capacity(OUT_BUFFER_LEN),
        }
    }

    fn push(&mut self, byte: u8) {
        if self.out.len() < OUT_BUFFER_LEN {
            self.out.push_back(byte);
        }
    }

    /// Queues keyboard bytes and raises IRQ 1 if the guest enabled it.
    fn push_kbd(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.push(*b);
        }
        if self.ctr & CTR_KBD_INT != 0 {
            if let Err(e) = self.kbd_irq.trigger() {
                I8042_ERRORS.log(format_args!("i8042: cannot raise IRQ 1: {e}"));
            }
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending = Some(cmd),
            CMD_READ_OUTP => self.push(self.outp),
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST | CMD_AUX_TEST => self.push(PORT_TEST_OK),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLED,
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLED,
            CMD_RESET_CPU => self.exit.request(ExitReason::GuestReboot),
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_LAST_WAS_COMMAND;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(_) => self.outp = value,
            None => match value {
                KBD_RESET => self.push_kbd(&[KBD_ACK, KBD_SELF_TEST_OK]),
                KBD_GET_ID => self.push_kbd(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
                // Every other keyboard command (LEDs, rates, scan sets, enable) is acknowledged.
                _ => self.push_kbd(&[KBD_ACK]),
            },
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            data.fill(0xff);
            return;
        };
        *byte = match offset {
            DATA_PORT => self.out.pop_front().unwrap_or(0),
            COMMAND_PORT => {
                let full = if self.out.is_empty() { 0 } else { SB_OUT_FULL };
                self.status | full
            }
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (COMMAND_PORT, [cmd]) => self.command(*cmd),
            (DATA_PORT, [value]) => self.data(*value),
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct CountingLine(AtomicUsize);
    impl InterruptLine for CountingLine {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn device() -> (I8042, Arc<ExitRequest>, Arc<CountingLine>) {
        let exit = Arc::new(ExitRequest::new().unwrap());
        let irq = Arc::new(CountingLine::default());
        (I8042::new(exit.clone(), irq.clone()), exit, irq)
    }

    fn read(dev: &mut I8042, port: u64) -> u8 {
        let mut b = [0u8];
        dev.read(port, &mut b);
        b[0]
    }

    #[test]
    fn only_0xfe_on_the_command_port_reboots() {
        let (mut dev, exit, _) = device();
        dev.write(COMMAND_PORT, &[0xfe, 0]); // too wide
        dev.write(COMMAND_PORT, &[CMD_READ_CTR]);
        dev.write(DATA_PORT, &[0xfe]); // keyboard "resend", not the reset line
        assert_eq!(exit.reason(), None);
        dev.write(COMMAND_PORT, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReboot));
    }

    #[test]
    fn linux_probe_sequence_gets_answers() {
        let (mut dev, _, irq) = device();
        assert_eq!(read(&mut dev, COMMAND_PORT) & SB_OUT_FULL, 0);
        // Read the CTR, write it back without interrupts, self-test.
        dev.write(COMMAND_PORT, &[CMD_READ_CTR]);
        assert_ne!(read(&mut dev, COMMAND_PORT) & SB_OUT_FULL, 0);
        assert_eq!(read(&mut dev, DATA_PORT), CTR_DEFAULT);
        dev.write(COMMAND_PORT, &[CMD_WRITE_CTR]);
        dev.write(DATA_PORT, &[0x44]);
        dev.write(COMMAND_PORT, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_PORT), 0x44);
        dev.write(COMMAND_PORT, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, DATA_PORT), SELF_TEST_OK);
        assert_eq!(read(&mut dev, COMMAND_PORT) & SB_OUT_FULL, 0);

        // Keyboard commands: ACKs, without IRQ while disabled in the CTR, then with it.
        dev.write(DATA_PORT, &[KBD_GET_ID]);
        assert_eq!(irq.0.load(Ordering::SeqCst), 0);
        let id: Vec<u8> = (0..3).map(|_| read(&mut dev, DATA_PORT)).collect();
        assert_eq!(id, [KBD_ACK, 0xab, 0x83]);
        dev.write(COMMAND_PORT, &[CMD_WRITE_CTR]);
        dev.write(DATA_PORT, &[CTR_DEFAULT]);
        dev.write(DATA_PORT, &[0xed]); // set LEDs
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        assert_eq!(read(&mut dev, DATA_PORT), KBD_ACK);
    }

    #[test]
    fn output_buffer_is_bounded() {
        let (mut dev, _, _) = device();
        for _ in 0..100 {
            dev.write(COMMAND_PORT, &[CMD_SELF_TEST]);
        }
        let n = (0..100)
            .take_while(|_| {
                read(&mut dev, COMMAND_PORT) & SB_OUT_FULL != 0
                    && read(&mut dev, DATA_PORT) == SELF_TEST_OK
            })
            .count();
        assert_eq!(n, OUT_BUFFER_LEN);
    }
}
