//! Recognising the state partition from its first bytes: the ext4 or FAT file system label, read
//! from the superblock or boot sector directly (no blkid at run time).

/// The label `keel-image-builder` gives the state file system (and `create` gives a new one).
pub const STATE_LABEL: &str = "KEEL-STATE";

/// Bytes of a device to read to recognise every supported file system.
pub const PROBE_BYTES: usize = 2048;

/// A file system that can hold the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Vfat,
}

impl FsType {
    /// The kernel's name for it (`mount -t`, module name).
    pub fn kernel_name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Vfat => "vfat",
        }
    }
}

/// ext2/3/4 superblock: at byte 1024; magic at 0x38, volume name (16 bytes) at 0x78.
const EXT_SUPERBLOCK: usize = 1024;
const EXT_MAGIC: [u8; 2] = [0x53, 0xef];

fn trimmed(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).trim_end().to_string()
}

/// The file system type and label found in the first `PROBE_BYTES` of a device, if any.
pub fn identify(head: &[u8]) -> Option<(FsType, String)> {
    let sb = head.get(EXT_SUPERBLOCK..EXT_SUPERBLOCK + 0x88);
    if let Some(sb) = sb.filter(|sb| sb[0x38..0x3a] == EXT_MAGIC) {
        return Some((FsType::Ext4, trimmed(&sb[0x78..0x88])));
    }
    let boot = head.get(..512)?;
    if boot[510..512] != [0x55, 0xaa] {
        return None;
    }
    // FAT32 has 0 in the 16-bit sectors-per-FAT field and its extended BPB further on.
    let fat32 = boot[0x16..0x18] == [0, 0];
    let (label_at, type_at) = if fat32 { (0x47, 0x52) } else { (0x2b, 0x36) };
    if !boot[type_at..type_at + 3].eq_ignore_ascii_case(b"FAT") {
        return None;
    }
    Some((FsType::Vfat, trimmed(&boot[label_at..label_at + 11])))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn ext4_head(label: &str) -> Vec<u8> {
        let mut head = vec![0u8; PROBE_BYTES];
        head[1024 + 0x38..1024 + 0x3a].copy_from_slice(&EXT_MAGIC);
        head[1024 + 0x78..1024 + 0x78 + label.len()].copy_from_slice(label.as_bytes());
        head
    }

    fn fat_head(fat32: bool, label: &str) -> Vec<u8> {
        let mut head = vec![0u8; PROBE_BYTES];
        head[510] = 0x55;
        head[511] = 0xaa;
        let (label_at, type_at) = if fat32 {
            (0x47, 0x52)
        } else {
            head[0x16] = 9;
            (0x2b, 0x36)
        };
        let padded = format!("{label:<11}");
        head[label_at..label_at + 11].copy_from_slice(padded.as_bytes());
        head[type_at..type_at + 8].copy_from_slice(if fat32 { b"FAT32   " } else { b"FAT16   " });
        head
    }

    #[test]
    fn identifies_labels() {
        let mut mbr_only = vec![0u8; PROBE_BYTES];
        mbr_only[510] = 0x55;
        mbr_only[511] = 0xaa;
        type Case = (Vec<u8>, Option<(FsType, &'static str)>);
        let cases: Vec<Case> = vec![
            (ext4_head("KEEL-STATE"), Some((FsType::Ext4, "KEEL-STATE"))),
            (ext4_head(""), Some((FsType::Ext4, ""))),
            (
                ext4_head("0123456789abcdef"),
                Some((FsType::Ext4, "0123456789abcdef")),
            ),
            (
                fat_head(true, "KEEL-STATE"),
                Some((FsType::Vfat, "KEEL-STATE")),
            ),
            (
                fat_head(false, "KEEL-ESP"),
                Some((FsType::Vfat, "KEEL-ESP")),
            ),
            (mbr_only, None),
            (vec![0u8; PROBE_BYTES], None),
            (vec![0u8; 100], None),
            (Vec::new(), None),
        ];
        for (head, want) in cases {
            let got = identify(&head);
            assert_eq!(
                got.as_ref().map(|(t, l)| (*t, l.as_str())),
                want,
                "{want:?}"
            );
        }
    }
}
