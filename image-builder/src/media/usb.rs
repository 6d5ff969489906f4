//! `keel-usb.img`: the GPT layout (pure), the `sfdisk` script that writes it, and the legacy-BIOS
//! boot code GRUB's `grub-bios-setup` would install, done on a plain file without root.

/// Bytes per logical sector.
pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries, as every partitioning tool does today.
const ALIGN: u64 = 2048;

/// GPT partition type GUIDs.
const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_DATA_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Fixed GUIDs keep the image reproducible; the disk GUID names the image, not a stick.
const DISK_GUID: &str = "6B45454C-0000-4000-8000-000000000000";

/// The label init looks for, on the partition and its file system.
pub const STATE_LABEL: &str = "KEEL-STATE";
/// The ESP's file system label.
pub const ESP_LABEL: &str = "KEEL-ESP";

/// One partition, in sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: &'static str,
    pub type_guid: &'static str,
    pub start: u64,
    pub sectors: u64,
}

/// The whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub bios_boot: Partition,
    pub esp: Partition,
    pub state: Partition,
    /// Size of the image file in bytes (room for the backup GPT at the end).
    pub bytes: u64,
}

fn align_up(sectors: u64) -> u64 {
    sectors.div_ceil(ALIGN) * ALIGN
}

/// BIOS boot partition (1 MiB, GRUB's core.img), ESP and state partition, each aligned.
pub fn layout(esp_bytes: u64, state_bytes: u64) -> Layout {
    let bios_boot = Partition {
        name: "BIOS-BOOT",
        type_guid: BIOS_BOOT_TYPE,
        start: ALIGN,
        sectors: ALIGN,
    };
    let esp = Partition {
        name: ESP_LABEL,
        type_guid: ESP_TYPE,
        start: bios_boot.start + bios_boot.sectors,
        sectors: align_up(esp_bytes.div_ceil(SECTOR)),
    };
    let state = Partition {
        name: STATE_LABEL,
        type_guid: LINUX_DATA_TYPE,
        start: esp.start + esp.sectors,
        sectors: align_up(state_bytes.div_ceil(SECTOR)),
    };
    // The backup GPT needs 33 sectors after the last partition; a whole MiB keeps it aligned.
    let bytes = (state.start + state.sectors + ALIGN) * SECTOR;
    Layout {
        bios_boot,
        esp,
        state,
        bytes,
    }
}

impl Layout {
    fn partitions(&self) -> [&Partition; 3] {
        [&self.bios_boot, &self.esp, &self.state]
    }

    /// The `sfdisk` script for this layout, with fixed GUIDs.
    pub fn sfdisk_script(&self) -> String {
        let mut script = format!("label: gpt\nlabel-id: {DISK_GUID}\nunit: sectors\n");
        for (i, p) in self.partitions().iter().enumerate() {
            script.push_str(&format!(
                "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
                p.start,
                p.sectors,
                p.type_guid,
                partition_guid(i + 1),
                p.name
            ));
        }
        script
    }
}

/// Partition GUID number `n` of the image.
fn partition_guid(n: usize) -> String {
    format!("6B45454C-0000-4000-8000-{n:012X}")
}

/// Offsets in GRUB's i386-pc `boot.img` and `diskboot.img` (grub/i386/pc/boot.h).
const KERNEL_SECTOR: usize = 0x5c;
const DRIVE_CHECK: usize = 0x66;
/// The MBR boot code ends where the disk signature and partition table begin.
const MBR_CODE_END: usize = 0x1b8;
/// The first (and for a contiguous core, only) blocklist entry at the end of diskboot's sector.
const BLOCKLIST_START: usize = 0x200 - 12;

/// Errors installing the BIOS boot code.
#[derive(Debug, thiserror::Error)]
pub enum BiosError {
    /// GRUB boot.img is {0} bytes, expected 512
    #[error("GRUB boot.img is {0} bytes, expected 512")]
    BootImg(usize),
    /// GRUB core.img is {0} bytes, which does not fit the {1}-byte BIOS boot partition
    #[error("GRUB core.img is {0} bytes, which does not fit the {1}-byte BIOS boot partition")]
    CoreImg(usize, u64),
}

/// What `grub-bios-setup` does for a core.img embedded in a BIOS boot partition at `core_lba`:
/// the MBR code points at the core's first sector and trusts the BIOS drive number (hard disks
/// and sticks; the floppy check is replaced by NOPs), and diskboot's blocklist points at the
/// rest of the core. Returns the new first 440 bytes of the disk and the patched core.
pub fn bios_boot_code(
    boot_img: &[u8],
    core_img: &[u8],
    core_lba: u64,
    room: u64,
) -> Result<(Vec<u8>, Vec<u8>), BiosError> {
    if boot_img.len() != SECTOR as usize {
        return Err(BiosError::BootImg(boot_img.len()));
    }
    if core_img.len() < SECTOR as usize || core_img.len() as u64 > room {
        return Err(BiosError::CoreImg(core_img.len(), room));
    }
    let mut mbr = boot_img[..MBR_CODE_END].to_vec();
    mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    mbr[DRIVE_CHECK] = 0x90;
    mbr[DRIVE_CHECK + 1] = 0x90;
    let mut core = core_img.to_vec();
    core[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    Ok((mbr, core))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_ordered() {
        let cases = [
            (1, 1, 4096, 6144, 8192),
            (20 << 20, 64 << 20, 4096, 45056, 176128),
            ((20 << 20) + 1, 64 << 20, 4096, 47104, 178176),
        ];
        for (esp, state, esp_start, state_start, end) in cases {
            let l = layout(esp, state);
            assert_eq!(l.bios_boot.start, 2048);
            assert_eq!(l.esp.start, esp_start);
            assert_eq!(l.state.start, state_start);
            assert_eq!(l.state.start + l.state.sectors, end, "{esp} {state}");
            assert_eq!(l.bytes, (end + 2048) * 512);
            assert!(l.esp.sectors * SECTOR >= esp && l.state.sectors * SECTOR >= state);
        }
    }

    #[test]
    fn sfdisk_script_names_the_state_partition() {
        let script = layout(1 << 20, 1 << 20).sfdisk_script();
        assert!(script.starts_with("label: gpt\n"), "{script}");
        assert!(
            script.contains(
                "start=6144, size=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, \
                 uuid=6B45454C-0000-4000-8000-000000000003, name=\"KEEL-STATE\"\n"
            ),
            "{script}"
        );
        assert!(script.contains("type=21686148-6449-6E6F-744E-656564454649"));
    }

    #[test]
    fn bios_boot_code_patches_the_pointers() {
        let boot = vec![0xaau8; 512];
        let core = vec![0x55u8; 3000];
        let (mbr, patched) = bios_boot_code(&boot, &core, 2048, 1 << 20).unwrap();
        assert_eq!(mbr.len(), 440);
        assert_eq!(&mbr[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&patched[0x1f4..0x1fc], &2049u64.to_le_bytes());
        assert_eq!(
            patched[0x1fc], 0x55,
            "length and segment stay as grub-mkimage set them"
        );
        assert!(matches!(
            bios_boot_code(&boot[..100], &core, 2048, 1 << 20),
            Err(BiosError::BootImg(100))
        ));
        assert!(matches!(
            bios_boot_code(&boot, &core, 2048, 1000),
            Err(BiosError::CoreImg(3000, 1000))
        ));
    }
}
