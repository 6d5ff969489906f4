//! Boot media from a finished `out/`: the hybrid ISO (BIOS and UEFI, CD or raw USB), the PXE
//! directory, and the GPT USB disk image with its `KEEL-STATE` partition. Every tool runs on plain
//! files (no root, no loop devices) with fixed times and identifiers, so two builds of the same
//! `out/` give the same bytes.

pub mod bootcfg;
pub mod usb;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::manifest::{self, Component};
use crate::tool::{self, ToolError};
use bootcfg::GrubImage;

/// Time stamped on every file of every medium: 2000-01-01, because FAT cannot go before 1980.
/// `SOURCE_DATE_EPOCH` overrides it, as reproducible-builds tools expect.
const DEFAULT_EPOCH: u64 = 946_684_800;
/// ISO 9660 volume id (also what `blkid` shows for the stick the ISO was written to).
const ISO_VOLUME_ID: &str = "KEEL";
/// GRUB's i386-pc images, from grub-pc-bin.
const GRUB_PC_DIR: &str = "/usr/lib/grub/i386-pc";
/// Fixed ext4 UUID and directory hash seed of the state partition (mke2fs picks random ones).
const STATE_FS_UUID: &str = "6b45454c-5354-4154-4500-000000000001";
const STATE_HASH_SEED: &str = "6b45454c-5354-4154-4500-000000000002";

/// Errors building the media.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// {0} is missing: run `keel-image-builder build` first
    #[error("{0} is missing: run `keel-image-builder build` first")]
    MissingInput(PathBuf),
    /// Cannot access {0}: {1}
    #[error("Cannot access {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// {0}
    #[error("{0}")]
    Tool(#[from] ToolError),
    /// {0}
    #[error("{0}")]
    Bios(#[from] usb::BiosError),
    /// {0}
    #[error("{0}")]
    Manifest(#[from] manifest::ManifestError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MediaError + '_ {
    move |e| MediaError::Io(path.to_path_buf(), e)
}

/// What the media are built from.
pub struct Inputs {
    pub out: PathBuf,
    pub staging: PathBuf,
    /// Size of the state partition of the USB image.
    pub state_mib: u64,
    /// Copied to `out/pxe/README.md` if it exists.
    pub pxe_readme: PathBuf,
}

/// Builds every medium into `inputs.out` and returns their manifest components.
pub fn build(inputs: &Inputs) -> Result<Vec<Component>, MediaError> {
    let out = &inputs.out;
    for name in ["vmlinuz", "initramfs.img", "cmdline"] {
        if !out.join(name).is_file() {
            return Err(MediaError::MissingInput(out.join(name)));
        }
    }
    let cmdline_path = out.join("cmdline");
    let cmdline = fs::read_to_string(&cmdline_path)
        .map_err(io_err(&cmdline_path))?
        .trim()
        .to_string();
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EPOCH);
    let ctx = Ctx {
        staging: inputs.staging.clone(),
        epoch,
        build_id: build_id(out, &cmdline)?,
        cmdline,
    };
    match fs::remove_dir_all(&ctx.staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(MediaError::Io(ctx.staging.clone(), e))
        }
        _ => {}
    }
    fs::create_dir_all(&ctx.staging).map_err(io_err(&ctx.staging))?;

    let mut components = Vec::new();
    ctx.iso(out, &out.join("keel.iso"))?;
    components.push(Component::measure("keel.iso", out, "keel.iso")?);
    for name in ctx.pxe(out, &inputs.pxe_readme)? {
        components.push(Component::measure(&name, out, &name)?);
    }
    ctx.usb(out, &out.join("keel-usb.img"), inputs.state_mib << 20)?;
    components.push(Component::measure("keel-usb.img", out, "keel-usb.img")?);
    components.push(Component::measure("cmdline", out, "cmdline")?);
    Ok(components)
}

/// Names this build's boot files: a digest of the kernel, the initramfs and the command line.
fn build_id(out: &Path, cmdline: &str) -> Result<String, MediaError> {
    let mut hasher = Sha256::new();
    for name in ["vmlinuz", "initramfs.img"] {
        let path = out.join(name);
        hasher.update(manifest::sha256_file(&path).map_err(io_err(&path))?);
    }
    hasher.update(cmdline);
    Ok(hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

struct Ctx {
    staging: PathBuf,
    epoch: u64,
    build_id: String,
    cmdline: String,
}

impl Ctx {
    fn time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.epoch)
    }

    /// A command with the fixed build time in the variables the tools honour.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SOURCE_DATE_EPOCH", self.epoch.to_string())
            .env("E2FSPROGS_FAKE_TIME", self.epoch.to_string())
            .env("TZ", "UTC");
        cmd
    }

    /// Writes `contents` to `path` (parents created) and stamps it with the build time.
    fn put(&self, path: &Path, contents: &[u8]) -> Result<(), MediaError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::write(path, contents).map_err(io_err(path))?;
        self.stamp(path)
    }

    fn put_file(&self, path: &Path, from: &Path) -> Result<(), MediaError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::copy(from, path).map_err(io_err(path))?;
        self.stamp(path)
    }

    fn stamp(&self, path: &Path) -> Result<(), MediaError> {
        File::open(path)
            .and_then(|f| f.set_modified(self.time()))
            .map_err(io_err(path))
    }

    /// Stamps every directory under `dir` (children first, since adding a file changes them).
    fn stamp_dirs(&self, dir: &Path) -> Result<(), MediaError> {
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.is_dir() {
                self.stamp_dirs(&path)?;
            }
        }
        self.stamp(dir)
    }

    fn grub_image(&self, kind: GrubImage, out: &Path) -> Result<(), MediaError> {
        let early = self.staging.join("early.cfg");
        self.put(&early, bootcfg::early_cfg(&self.build_id).as_bytes())?;
        let mut cmd = self.command("grub-mkimage");
        cmd.args(["-O", kind.format(), "-p", kind.prefix()])
            .arg("-d")
            .arg(Path::new("/usr/lib/grub").join(kind.platform()))
            .arg("-o")
            .arg(out);
        if kind != GrubImage::EfiNet {
            cmd.arg("-c").arg(&early);
        }
        cmd.args(kind.modules());
        tool::run(&mut cmd)?;
        Ok(())
    }

    /// A FAT file system image of `bytes` holding `files` (path on the file system, host path).
    fn fat(&self, image: &Path, bytes: u64, files: &[(&str, PathBuf)]) -> Result<(), MediaError> {
        let _ = fs::remove_file(image);
        File::create(image)
            .and_then(|f| f.set_len(bytes))
            .map_err(io_err(image))?;
        tool::run(
            self.command("mkfs.vfat")
                .args(["--invariant", "-n", usb::ESP_LABEL])
                .arg(image),
        )?;
        let mut dirs: Vec<String> = Vec::new();
        for (dest, _) in files {
            let mut parts: Vec<&str> = dest.trim_start_matches('/').split('/').collect();
            parts.pop();
            for i in 1..=parts.len() {
                let dir = parts[..i].join("/");
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        if !dirs.is_empty() {
            let mut mmd = self.command("mmd");
            mmd.arg("-i").arg(image);
            mmd.args(dirs.iter().map(|d| format!("::/{d}")));
            tool::run(&mut mmd)?;
        }
        for (dest, src) in files {
            let staged = self.staging.join("fat-file");
            self.put_file(&staged, src)?;
            tool::run(
                self.command("mcopy")
                    .args(["-m", "-o", "-i"])
                    .arg(image)
                    .arg(&staged)
                    .arg(format!("::/{}", dest.trim_start_matches('/'))),
            )?;
        }
        Ok(())
    }

    fn boot_files(&self, out: &Path) -> Vec<(String, PathBuf)> {
        vec![
            ("boot/vmlinuz".into(), out.join("vmlinuz")),
            ("boot/initramfs.img".into(), out.join("initramfs.img")),
        ]
    }

    /// The text files every disk medium carries next to the kernel: the menu and the marker.
    fn write_disk_config(&self, root: &Path) -> Result<(), MediaError> {
        let cfg = bootcfg::grub_cfg(&self.cmdline, "/boot/vmlinuz", "/boot/initramfs.img");
        self.put(&root.join("boot/grub/grub.cfg"), cfg.as_bytes())?;
        let marker = bootcfg::marker_path(&self.build_id);
        self.put(
            &root.join(marker.trim_start_matches('/')),
            format!("{}\n", self.build_id).as_bytes(),
        )
    }

    /// El Torito for BIOS (GRUB i386-pc-eltorito, GRUB's hybrid MBR for raw USB) plus an appended
    /// ESP for UEFI, the way Debian's and Talos' ISOs are laid out.
    fn iso(&self, out: &Path, iso: &Path) -> Result<(), MediaError> {
        let root = self.staging.join("iso");
        for (dest, src) in self.boot_files(out) {
            self.put_file(&root.join(dest), &src)?;
        }
        self.write_disk_config(&root)?;
        self.grub_image(GrubImage::BiosCdrom, &root.join("boot/grub/bios.img"))?;
        self.stamp(&root.join("boot/grub/bios.img"))?;
        let efi = self.staging.join("BOOTX64.EFI");
        self.grub_image(GrubImage::Efi, &efi)?;
        let efi_size = fs::metadata(&efi).map_err(io_err(&efi))?.len();
        let esp = self.staging.join("iso-esp.img");
        self.fat(
            &esp,
            mib_round(efi_size + (1 << 20)),
            &[("EFI/BOOT/BOOTX64.EFI", efi)],
        )?;
        self.stamp_dirs(&root)?;
        let _ = fs::remove_file(iso);
        let mut cmd = self.command("xorriso");
        cmd.args(["-as", "mkisofs", "-quiet", "-iso-level", "3", "-R", "-J"])
            .args(["-V", ISO_VOLUME_ID])
            .args(["-b", "boot/grub/bios.img", "-no-emul-boot"])
            .args([
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "--grub2-boot-info",
            ])
            .arg("--grub2-mbr")
            .arg(Path::new(GRUB_PC_DIR).join("boot_hybrid.img"))
            .args(["-append_partition", "2", "0xef"])
            .arg(&esp)
            .args([
                "-eltorito-alt-boot",
                "-e",
                "--interval:appended_partition_2:all::",
            ])
            .args(["-no-emul-boot", "-isohybrid-gpt-basdat", "-o"])
            .arg(iso)
            .arg(&root);
        tool::run(&mut cmd)?;
        Ok(())
    }

    /// `out/pxe/`: kernel, initramfs, iPXE script, GRUB network boot image and configuration.
    /// Returns the written paths relative to `out`.
    fn pxe(&self, out: &Path, readme: &Path) -> Result<Vec<String>, MediaError> {
        let dir = out.join("pxe");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for name in ["vmlinuz", "initramfs.img"] {
            self.put_file(&dir.join(name), &out.join(name))?;
        }
        self.put(
            &dir.join("keel.ipxe"),
            bootcfg::ipxe_script(&self.cmdline).as_bytes(),
        )?;
        let cfg = bootcfg::grub_cfg(&self.cmdline, "(tftp)/vmlinuz", "(tftp)/initramfs.img");
        self.put(&dir.join("grub.cfg"), cfg.as_bytes())?;
        self.grub_image(GrubImage::EfiNet, &dir.join("grubnetx64.efi"))?;
        let mut names = vec![
            "vmlinuz",
            "initramfs.img",
            "keel.ipxe",
            "grub.cfg",
            "grubnetx64.efi",
        ];
        if readme.is_file() {
            self.put_file(&dir.join("README.md"), readme)?;
            names.push("README.md");
        }
        Ok(names.iter().map(|n| format!("pxe/{n}")).collect())
    }

    /// GPT disk: BIOS boot partition with GRUB's core.img, an ESP holding GRUB for UEFI plus the
    /// kernel, initramfs and menu, and an empty ext4 `KEEL-STATE` partition.
    fn usb(&self, out: &Path, image: &Path, state_bytes: u64) -> Result<(), MediaError> {
        let esp_root = self.staging.join("usb-esp");
        self.write_disk_config(&esp_root)?;
        let efi = self.staging.join("usb-BOOTX64.EFI");
        self.grub_image(GrubImage::Efi, &efi)?;
        let mut files: Vec<(String, PathBuf)> = vec![("EFI/BOOT/BOOTX64.EFI".into(), efi)];
        files.extend(self.boot_files(out));
        for rel in [
            "boot/grub/grub.cfg",
            bootcfg::marker_path(&self.build_id).as_str(),
        ] {
            let rel = rel.trim_start_matches('/');
            files.push((rel.to_string(), esp_root.join(rel)));
        }
        let mut content = 0;
        for (_, src) in &files {
            content += fs::metadata(src).map_err(io_err(src))?.len();
        }
        // Half as much again as the boot files, so a newer build can be copied in beside them.
        let esp_bytes = mib_round(content + content / 2 + (8 << 20));
        let esp = self.staging.join("usb-esp.img");
        let refs: Vec<(&str, PathBuf)> =
            files.iter().map(|(d, s)| (d.as_str(), s.clone())).collect();
        self.fat(&esp, esp_bytes, &refs)?;

        let state = self.staging.join("state.img");
        let _ = fs::remove_file(&state);
        File::create(&state)
            .and_then(|f| f.set_len(state_bytes))
            .map_err(io_err(&state))?;
        tool::run(
            self.command("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-L", usb::STATE_LABEL])
                .args(["-U", STATE_FS_UUID])
                .arg(format!(
                    "-Ehash_seed={STATE_HASH_SEED},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0"
                ))
                .arg(&state),
        )?;

        let layout = usb::layout(esp_bytes, state_bytes);
        let _ = fs::remove_file(image);
        File::create(image)
            .and_then(|f| f.set_len(layout.bytes))
            .map_err(io_err(image))?;
        let script = self.staging.join("usb.sfdisk");
        self.put(&script, layout.sfdisk_script().as_bytes())?;
        let script_file = File::open(&script).map_err(io_err(&script))?;
        tool::run(
            self.command("sfdisk")
                .args(["--quiet", "--no-reread", "--no-tell-kernel"])
                .arg(image)
                .stdin(script_file),
        )?;
        copy_into(&esp, image, layout.esp.start * usb::SECTOR)?;
        copy_into(&state, image, layout.state.start * usb::SECTOR)?;

        let core = self.staging.join("core.img");
        self.grub_image(GrubImage::BiosDisk, &core)?;
        let boot_img_path = Path::new(GRUB_PC_DIR).join("boot.img");
        let boot_img = fs::read(&boot_img_path).map_err(io_err(&boot_img_path))?;
        let core_img = fs::read(&core).map_err(io_err(&core))?;
        let (mbr, core_img) = usb::bios_boot_code(
            &boot_img,
            &core_img,
            layout.bios_boot.start,
            layout.bios_boot.sectors * usb::SECTOR,
        )?;
        write_at(image, 0, &mbr)?;
        write_at(image, layout.bios_boot.start * usb::SECTOR, &core_img)
    }
}

fn mib_round(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20) << 20
}

fn write_at(image: &Path, offset: u64, bytes: &[u8]) -> Result<(), MediaError> {
    let mut file = File::options()
        .write(true)
        .open(image)
        .map_err(io_err(image))?;
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.write_all(bytes))
        .map_err(io_err(image))
}

/// Copies the file `part` into `image` at `offset`, skipping all-zero blocks so the image stays
/// sparse (it was created with set_len, so they read as zeros anyway).
fn copy_into(part: &Path, image: &Path, offset: u64) -> Result<(), MediaError> {
    let mut src = File::open(part).map_err(io_err(part))?;
    let mut dst = File::options()
        .write(true)
        .open(image)
        .map_err(io_err(image))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut at = offset;
    loop {
        let n = src.read(&mut buf).map_err(io_err(part))?;
        if n == 0 {
            return Ok(());
        }
        let block = buf.get(..n).unwrap_or_default();
        if block.iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(at))
                .and_then(|_| dst.write_all(block))
                .map_err(io_err(image))?;
        }
        at += n as u64;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn copy_into_places_data_and_keeps_holes() {
        let dir = std::env::temp_dir().join(format!("keel-media-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let part = dir.join("part");
        let mut data = vec![0u8; 200 << 10];
        data[100] = 1;
        data[(130 << 10) + 5] = 2;
        fs::write(&part, &data).unwrap();
        let image = dir.join("image");
        File::create(&image).unwrap().set_len(1 << 20).unwrap();
        copy_into(&part, &image, 4096).unwrap();
        let out = fs::read(&image).unwrap();
        assert_eq!(out.len(), 1 << 20);
        assert_eq!(&out[4096..4096 + data.len()], data.as_slice());
        write_at(&image, 10, b"xy").unwrap();
        assert_eq!(&fs::read(&image).unwrap()[10..12], b"xy");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The whole media build on a small fake out/ (needs `make deps`): twice, byte-identical,
    /// and the build-time command line lands in every boot configuration.
    #[test]
    fn media_build_twice_byte_identical() {
        let base = std::env::temp_dir().join(format!("keel-media-repro-{}", std::process::id()));
        let build_once = |n: u32| {
            let out = base.join(format!("out{n}"));
            fs::create_dir_all(&out).unwrap();
            fs::write(out.join("vmlinuz"), vec![0x4bu8; 300 << 10]).unwrap();
            fs::write(out.join("initramfs.img"), vec![0x69u8; 500 << 10]).unwrap();
            fs::write(out.join("cmdline"), "console=ttyS0 keel.hostname=repro\n").unwrap();
            let inputs = Inputs {
                out: out.clone(),
                staging: base.join(format!("stage{n}")),
                state_mib: 8,
                pxe_readme: base.join("no-readme"),
            };
            let components = build(&inputs).unwrap();
            // Different moments, so file times from the clock would show.
            std::thread::sleep(Duration::from_millis(1100));
            components
        };
        let one = build_once(1);
        let two = build_once(2);
        assert_eq!(one, two);
        let names: Vec<&str> = one.iter().map(|c| c.name.as_str()).collect();
        for want in [
            "keel.iso",
            "keel-usb.img",
            "pxe/keel.ipxe",
            "pxe/grub.cfg",
            "cmdline",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let ipxe = fs::read_to_string(base.join("out1/pxe/keel.ipxe")).unwrap();
        assert!(ipxe.contains("kernel vmlinuz console=ttyS0 keel.hostname=repro\n"));
        let iso = fs::read(base.join("out1/keel.iso")).unwrap();
        let needle = b"linux /boot/vmlinuz console=ttyS0 keel.hostname=repro";
        assert!(iso.windows(needle.len()).any(|w| w == needle));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn rounds_to_mib() {
        for (bytes, want) in [
            (0, 0),
            (1, 1 << 20),
            (1 << 20, 1 << 20),
            ((1 << 20) + 1, 2 << 20),
        ] {
            assert_eq!(mib_round(bytes), want);
        }
    }
}
