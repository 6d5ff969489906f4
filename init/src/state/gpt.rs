//! Writing a GPT with one partition (`state::create`): protective MBR, primary header and
//! entries at the start, backup entries and header at the end, as UEFI 2.x specifies.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Entries in the table (the minimum the specification allows), 128 bytes each.
const ENTRIES: u64 = 128;
const ENTRY_BYTES: u64 = 128;
const HEADER_BYTES: usize = 92;
/// "Linux filesystem data", 0FC63DAF-8483-4772-8E79-3D69D8477DE4, in GPT's mixed-endian bytes.
const LINUX_FS: [u8; 16] = [
    0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
];

/// Why the table cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// The partition (bytes {0}..{1}) does not fit a disk of {2} bytes with {3}-byte sectors
    #[error(
        "The partition (bytes {0}..{1}) does not fit a disk of {2} bytes with {3}-byte sectors"
    )]
    DoesNotFit(u64, u64, u64, u64),
    /// Cannot write the partition table at byte {0}: {1}
    #[error("Cannot write the partition table at byte {0}: {1}")]
    Write(u64, std::io::Error),
}

/// The one partition and the disk it is on.
#[derive(Debug, Clone)]
pub struct Table<'a> {
    pub disk_bytes: u64,
    /// Logical sector size, 512 or 4096.
    pub sector: u64,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// The partition name (GPT's, not the file system's label).
    pub name: &'a str,
    pub disk_guid: [u8; 16],
    pub partition_guid: [u8; 16],
}

/// CRC-32 (IEEE 802.3, reflected), as GPT checksums its header and entries.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A random GUID (version 4) from 16 random bytes.
pub fn guid(mut random: [u8; 16]) -> [u8; 16] {
    random[7] = (random[7] & 0x0f) | 0x40; // version, in the mixed-endian third field
    random[8] = (random[8] & 0x3f) | 0x80; // variant
    random
}

impl Table<'_> {
    fn entry_sectors(&self) -> u64 {
        (ENTRIES * ENTRY_BYTES).div_ceil(self.sector)
    }

    fn last_lba(&self) -> u64 {
        self.disk_bytes / self.sector - 1
    }

    fn entries(&self) -> Vec<u8> {
        let mut e = vec![0u8; (ENTRIES * ENTRY_BYTES) as usize];
        e[..16].copy_from_slice(&LINUX_FS);
        e[16..32].copy_from_slice(&self.partition_guid);
        let first = self.start_bytes / self.sector;
        let last = first + self.size_bytes / self.sector - 1;
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (n, unit) in self.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * n..58 + 2 * n].copy_from_slice(&unit.to_le_bytes());
        }
        e
    }

    /// The header at `my_lba` (1 or the last sector) describing entries at `entries_lba`.
    fn header(&self, my_lba: u64, other_lba: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; self.sector as usize];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&other_lba.to_le_bytes());
        let first_usable = 2 + self.entry_sectors();
        let last_usable = self.last_lba() - 1 - self.entry_sectors();
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_BYTES as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..HEADER_BYTES]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// A protective MBR: one partition of type 0xEE covering the disk.
    fn protective_mbr(&self) -> Vec<u8> {
        let mut m = vec![0u8; self.sector as usize];
        let p = &mut m[446..462];
        p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        p[4] = 0xee;
        p[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        p[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = u32::try_from(self.last_lba()).unwrap_or(u32::MAX);
        p[12..16].copy_from_slice(&size.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xaa;
        m
    }

    /// Writes the whole table to `disk` (an open block device or disk image).
    pub fn write(&self, disk: &File) -> Result<(), GptError> {
        let unfit = || {
            GptError::DoesNotFit(
                self.start_bytes,
                self.start_bytes + self.size_bytes,
                self.disk_bytes,
                self.sector,
            )
        };
        if self.sector == 0
            || self.disk_bytes / self.sector < 2 * self.entry_sectors() + 4
            || !self.start_bytes.is_multiple_of(self.sector)
            || !self.size_bytes.is_multiple_of(self.sector)
            || self.size_bytes == 0
        {
            return Err(unfit());
        }
        let first = self.start_bytes / self.sector;
        let last = first + self.size_bytes / self.sector - 1;
        if first < 2 + self.entry_sectors() || last > self.last_lba() - 1 - self.entry_sectors() {
            return Err(unfit());
        }
        let entries = self.entries();
        let entries_crc = crc32(&entries);
        let backup_entries = self.last_lba() - self.entry_sectors();
        let s = self.sector;
        let writes = [
            (0, self.protective_mbr()),
            (s, self.header(1, self.last_lba(), 2, entries_crc)),
            (2 * s, entries.clone()),
            (backup_entries * s, entries),
            (
                self.last_lba() * s,
                self.header(self.last_lba(), 1, backup_entries, entries_crc),
            ),
        ];
        for (at, bytes) in writes {
            disk.write_all_at(&bytes, at)
                .map_err(|e| GptError::Write(at, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::atomic::testdir::TestDir;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    fn table(disk_bytes: u64, sector: u64) -> Table<'static> {
        Table {
            disk_bytes,
            sector,
            start_bytes: 1 << 20,
            size_bytes: 64 << 20,
            name: "KEEL-STATE",
            disk_guid: guid([1; 16]),
            partition_guid: guid([2; 16]),
        }
    }

    /// fdisk, which verifies both headers' and the entries' checksums, reads back the table.
    #[test]
    fn fdisk_reads_it_back() {
        let dir = TestDir::new("gpt");
        for sector in [512u64, 4096] {
            let path = dir.path().join(format!("disk-{sector}"));
            let file = File::create(&path).unwrap();
            file.set_len(128 << 20).unwrap();
            table(128 << 20, sector).write(&file).unwrap();
            let out = std::process::Command::new("fdisk")
                .args(["-l", "-b", &sector.to_string()])
                .args(["-o", "Device,Start,Sectors,Type-UUID,Name"])
                .arg(&path)
                .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
                .env("LC_ALL", "C")
                .output()
                .unwrap_or_else(|e| panic!("fdisk (make deps installs it): {e}"));
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("Disklabel type: gpt"), "{text}");
            for bad in ["corrupt", "mismatch", "invalid", "not valid"] {
                assert!(!text.to_lowercase().contains(bad), "{text}");
            }
            let want = format!(
                " {} {} 0FC63DAF-8483-4772-8E79-3D69D8477DE4 KEEL-STATE",
                (1 << 20) / sector,
                (64 << 20) / sector
            );
            let rows = text
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|row| row.ends_with(&want))
                .count();
            assert_eq!(rows, 1, "{want} not in {text}");
        }
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let dir = TestDir::new("gpt-fit");
        let file = File::create(dir.path().join("disk")).unwrap();
        let cases = [
            Table {
                start_bytes: 512,
                ..table(128 << 20, 512)
            },
            table(65 << 20, 512),
            Table {
                size_bytes: (64 << 20) + 1,
                ..table(128 << 20, 512)
            },
            table(128 << 20, 0),
        ];
        for t in cases {
            assert!(
                matches!(t.write(&file), Err(GptError::DoesNotFit(..))),
                "{t:?}"
            );
        }
    }
}
