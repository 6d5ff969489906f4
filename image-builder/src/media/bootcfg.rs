//! The boot loader configurations the media carry: GRUB's (disk, ISO and network boot) and iPXE's.
//! Pure text, so every medium boots the same kernel command line the same way.

/// GRUB modules both firmware flavours need to find the medium and boot Linux from it.
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "iso9660",
    "normal",
    "linux",
    "search",
    "search_fs_file",
    "configfile",
    "echo",
    "serial",
    "terminal",
    "test",
];

/// Which GRUB image to build, with its `grub-mkimage -O` format and extra modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrubImage {
    /// Legacy BIOS, El Torito (ISO).
    BiosCdrom,
    /// Legacy BIOS, core.img in a GPT BIOS boot partition (disk).
    BiosDisk,
    /// UEFI, `EFI/BOOT/BOOTX64.EFI`.
    Efi,
    /// UEFI network boot: GRUB fetching its configuration over TFTP.
    EfiNet,
}

impl GrubImage {
    pub fn format(self) -> &'static str {
        match self {
            GrubImage::BiosCdrom => "i386-pc-eltorito",
            GrubImage::BiosDisk => "i386-pc",
            GrubImage::Efi | GrubImage::EfiNet => "x86_64-efi",
        }
    }

    /// The module directory under /usr/lib/grub.
    pub fn platform(self) -> &'static str {
        match self {
            GrubImage::BiosCdrom | GrubImage::BiosDisk => "i386-pc",
            GrubImage::Efi | GrubImage::EfiNet => "x86_64-efi",
        }
    }

    pub fn modules(self) -> Vec<&'static str> {
        let extra: &[&str] = match self {
            GrubImage::BiosCdrom | GrubImage::BiosDisk => &["biosdisk"],
            GrubImage::Efi => &["efi_gop"],
            GrubImage::EfiNet => &["efi_gop", "efinet", "net", "tftp"],
        };
        COMMON_MODULES.iter().chain(extra).copied().collect()
    }

    /// The prefix compiled into the image (`-p`).
    pub fn prefix(self) -> &'static str {
        match self {
            GrubImage::EfiNet => "(tftp)",
            _ => "/boot/grub",
        }
    }
}

/// The file whose presence marks this build's boot medium; GRUB searches every disk for it, so a
/// machine with other disks (or another Keel medium of a different build) boots the right one.
pub fn marker_path(build_id: &str) -> String {
    format!("/boot/keel-{build_id}.id")
}

/// Embedded in the GRUB image: find the medium, then read its `grub.cfg`.
pub fn early_cfg(build_id: &str) -> String {
    format!(
        "search --no-floppy --set=root --file {}\n\
         set prefix=($root)/boot/grub\n\
         configfile $prefix/grub.cfg\n",
        marker_path(build_id)
    )
}

/// The menu: one entry, a one-second hidden timeout (Esc shows the menu to edit the command
/// line), output on both the screen and the first serial port.
pub fn grub_cfg(cmdline: &str, kernel: &str, initrd: &str) -> String {
    format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set timeout_style=hidden\n\
         set timeout=1\n\
         set default=0\n\
         menuentry \"Keel\" {{\n\
         \x20 linux {kernel} {cmdline}\n\
         \x20 initrd {initrd}\n\
         }}\n"
    )
}

/// The iPXE script: paths are relative to the script's own URL (TFTP or HTTP).
pub fn ipxe_script(cmdline: &str) -> String {
    format!("#!ipxe\nkernel vmlinuz {cmdline}\ninitrd initramfs.img\nboot\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_carry_the_command_line() {
        let cmdline = "console=ttyS0 keel.adopt_token=abc";
        let cases = [
            (
                grub_cfg(cmdline, "/boot/vmlinuz", "/boot/initramfs.img"),
                "  linux /boot/vmlinuz console=ttyS0 keel.adopt_token=abc\n  initrd /boot/initramfs.img\n",
            ),
            (
                grub_cfg(cmdline, "(tftp)/vmlinuz", "(tftp)/initramfs.img"),
                "  linux (tftp)/vmlinuz console=ttyS0 keel.adopt_token=abc\n  initrd (tftp)/initramfs.img\n",
            ),
            (
                ipxe_script(cmdline),
                "#!ipxe\nkernel vmlinuz console=ttyS0 keel.adopt_token=abc\ninitrd initramfs.img\nboot\n",
            ),
            (
                early_cfg("0123"),
                "search --no-floppy --set=root --file /boot/keel-0123.id\n",
            ),
        ];
        for (text, want) in cases {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn images_have_what_their_firmware_needs() {
        let cases = [
            (
                GrubImage::BiosCdrom,
                "i386-pc-eltorito",
                "biosdisk",
                "/boot/grub",
            ),
            (GrubImage::BiosDisk, "i386-pc", "biosdisk", "/boot/grub"),
            (GrubImage::Efi, "x86_64-efi", "efi_gop", "/boot/grub"),
            (GrubImage::EfiNet, "x86_64-efi", "tftp", "(tftp)"),
        ];
        for (image, format, module, prefix) in cases {
            assert_eq!(image.format(), format);
            assert!(image.modules().contains(&module), "{image:?}");
            assert!(image.modules().contains(&"linux"), "{image:?}");
            assert_eq!(image.prefix(), prefix);
        }
    }
}
