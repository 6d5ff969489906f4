//! CMOS RTC at ports 0x70 (index) / 0x71 (data), as Cloud Hypervisor's `cmos.rs`: the clock
//! registers report the host's UTC time (BCD, 24-hour), the update-in-progress bit is never set
//! and the other bytes are plain NVRAM. Without it Linux's rtc_cmos driver polls "update in
//! progress" on an all-ones port for many seconds at boot.

use std::time::{SystemTime, UNIX_EPOCH};

use super::bus::BusDevice;

const INDEX_MASK: u8 = 0x7f; // bit 7 of the index port is the NMI mask
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// 32.768 kHz time base, 1024 Hz periodic rate; UIP (bit 7) clear.
const STATUS_A: u8 = 0x26;
/// 24-hour mode, BCD, no interrupts enabled.
const STATUS_B: u8 = 0x02;
/// Valid RAM and time.
const STATUS_D: u8 = 0x80;

/// A calendar time, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
}

/// Converts seconds since the Unix epoch into a civil UTC date (Howard Hinnant's algorithm).
fn date_time(unix_secs: i64) -> DateTime {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    DateTime {
        year,
        month,
        day,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
        weekday: (days + 4).rem_euclid(7) as u32, // 1970-01-01 was a Thursday
    }
}

fn bcd(value: u32) -> u8 {
    let v = (value % 100) as u8;
    ((v / 10) << 4) | (v % 10)
}

/// The CMOS on the PIO bus (two ports).
pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    now: fn() -> i64,
}

fn host_unix_time() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos::new()
    }
}

impl Cmos {
    pub fn new() -> Self {
        Cmos {
            index: 0,
            nvram: [0; 128],
            now: host_unix_time,
        }
    }

    fn read_register(&self, index: u8) -> u8 {
        let t = date_time((self.now)());
        match index {
            REG_SECONDS => bcd(t.second),
            REG_MINUTES => bcd(t.minute),
            REG_HOURS => bcd(t.hour),
            REG_WEEKDAY => bcd(t.weekday + 1),
            REG_DAY => bcd(t.day),
            REG_MONTH => bcd(t.month),
            REG_YEAR => bcd(t.year.rem_euclid(100) as u32),
            REG_CENTURY => bcd(t.year.div_euclid(100).rem_euclid(100) as u32),
            REG_STATUS_A => STATUS_A,
            REG_STATUS_B => STATUS_B,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D,
            other => self.nvram[usize::from(other & INDEX_MASK)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0, [byte]) => *byte = self.index,
            (1, [byte]) => *byte = self.read_register(self.index),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [index]) => self.index = index & INDEX_MASK,
            // The clock itself is the host's; writes to it (hwclock --systohc) are dropped.
            (1, [value]) if self.index > REG_STATUS_D && self.index != REG_CENTURY => {
                self.nvram[usize::from(self.index)] = *value;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_table() {
        let cases = [
            (0, (1970, 1, 1, 0, 0, 0, 4)),
            (951_782_400, (2000, 2, 29, 0, 0, 0, 2)),
            (1_700_000_000, (2023, 11, 14, 22, 13, 20, 2)),
            (4_102_444_799, (2099, 12, 31, 23, 59, 59, 4)),
        ];
        for (secs, (year, month, day, hour, minute, second, weekday)) in cases {
            let want = DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                weekday,
            };
            assert_eq!(date_time(secs), want, "{secs}");
        }
    }

    #[test]
    fn registers_read_bcd_time_and_nvram_persists() {
        let mut cmos = Cmos::new();
        cmos.now = || 1_700_000_000; // 2023-11-14 22:13:20, a Tuesday
        let mut read = |index: u8| {
            cmos.write(0, &[index | 0x80]); // NMI-mask bit is ignored
            let mut b = [0u8];
            cmos.read(1, &mut b);
            b[0]
        };
        let regs = [
            (REG_SECONDS, 0x20),
            (REG_MINUTES, 0x13),
            (REG_HOURS, 0x22),
            (REG_WEEKDAY, 0x03),
            (REG_DAY, 0x14),
            (REG_MONTH, 0x11),
            (REG_YEAR, 0x23),
            (REG_CENTURY, 0x20),
            (REG_STATUS_A, STATUS_A),
            (REG_STATUS_D, STATUS_D),
        ];
        for (index, want) in regs {
            assert_eq!(read(index), want, "register {index:#x}");
        }
        cmos.write(0, &[0x40]);
        cmos.write(1, &[0x5a]);
        cmos.write(0, &[REG_SECONDS]);
        cmos.write(1, &[0x99]); // the clock ignores writes
        cmos.write(0, &[0x40]);
        let mut b = [0u8];
        cmos.read(1, &mut b);
        assert_eq!(b, [0x5a]);
        let mut wide = [0u8; 2];
        cmos.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
