//! Boot timer (as Firecracker's): the guest writes `BOOT_TIMER_MAGIC` to its register once it is
//! up (typically its init, through /dev/mem) and the VMM logs how long that took since the VMM
//! started. Benchmarks read this line.

use std::time::{Duration, Instant};

use super::bus::BusDevice;

/// The value the guest writes at offset 0.
pub const BOOT_TIMER_MAGIC: u8 = 123;

pub struct BootTimer {
    start: Instant,
    /// Time from VMM start to the first magic write.
    measured: Option<Duration>,
}

impl BootTimer {
    /// A timer counting from `start`, the VMM's start.
    pub fn new(start: Instant) -> Self {
        BootTimer {
            start,
            measured: None,
        }
    }

    /// The boot time, once the guest reported it.
    pub fn measured(&self) -> Option<Duration> {
        self.measured
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) && self.measured.is_none() {
            let elapsed = self.start.elapsed();
            self.measured = Some(elapsed);
            log::info!("boot time: {} us since VMM start", elapsed.as_micros());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_magic_write_counts() {
        let mut timer = BootTimer::new(Instant::now());
        timer.write(0, &[1]);
        timer.write(1, &[BOOT_TIMER_MAGIC]);
        assert_eq!(timer.measured(), None);
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        let first = timer.measured();
        assert!(first.is_some());
        std::thread::sleep(Duration::from_millis(2));
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(timer.measured(), first);
    }
}
