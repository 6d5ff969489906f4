//! keel-image-builder: turns Debian's kernel package, Keel's binaries and `rootfs/` into `out/`
//! (vmlinuz, initramfs.img, cmdline, manifest.json; see README.md, "Build").

mod cpio;
mod fetch;
mod kconfig;
mod lock;
mod manifest;
mod media;
mod modules;
mod squashfs;
mod tool;
mod tree;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use fetch::Kernel;
use lock::{KernelLock, Which};
use manifest::{Component, Manifest};
use modules::ModuleIndex;
use tree::{Node, Tree};

/// The default kernel command line; `--cmdline` appends `keel.*` parameters to it.
pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0,115200 panic=-1 \
    lockdown=integrity kvm.nx_huge_pages=auto slab_nomerge vsyscall=none";

/// Empty directories the root image carries as mount points.
const MOUNT_POINTS: [&str; 6] = ["proc", "sys", "dev", "run", "tmp", "var"];

/// Directories stage 1 mounts on inside the initramfs.
const INITRAMFS_DIRS: [&str; 4] = ["proc", "sys", "dev", "newroot"];

#[derive(Parser)]
#[command(
    version,
    about = "Builds Keel's bootable image from Debian's kernel and Keel's binaries"
)]
struct Cli {
    /// Download cache (kernel packages and their extracted trees).
    #[arg(long, global = true, default_value = ".cache/keel")]
    cache: PathBuf,
    /// The kernel lock file.
    #[arg(long, global = true, default_value = "kernel-config/kernel.lock")]
    lock: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build out/: vmlinuz, initramfs.img, root.squashfs, cmdline, manifest.json.
    Build(BuildArgs),
    /// Fetch, verify and extract a pinned kernel package; print the extracted directory.
    FetchKernel {
        #[arg(long, value_enum)]
        which: Which,
    },
    /// Pack a small initramfs for a VM guest: /init plus the named modules and their deps.
    GuestInitramfs {
        #[arg(long, value_enum, default_value_t = Which::Guest)]
        which: Which,
        /// The binary to run as /init.
        #[arg(long)]
        init: PathBuf,
        /// Comma-separated module names or globs (dependencies are added).
        #[arg(long, default_value = "")]
        modules: String,
        /// Where to write the zstd-compressed cpio.
        #[arg(long)]
        out: PathBuf,
        /// Host directories copied over the initramfs root (later ones win), e.g. a tool and
        /// the shared libraries it needs.
        #[arg(long = "overlay", value_name = "DIR")]
        overlays: Vec<PathBuf>,
    },
    /// Build the boot media from a finished out/: keel.iso, pxe/, keel-usb.img (added to the
    /// manifest).
    Media {
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Size of the USB image's KEEL-STATE partition, in MiB.
        #[arg(long, default_value_t = 64)]
        state_mib: u64,
        /// Copied to out/pxe/README.md.
        #[arg(long, default_value = "docs/pxe.md")]
        pxe_readme: PathBuf,
    },
    /// Print the size report of a finished build.
    SizeReport {
        #[arg(long, default_value = "out/manifest.json")]
        manifest: PathBuf,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// A binary to install as /usr/bin/NAME, as NAME=PATH (repeat; `keel` is required).
    #[arg(long = "bin", value_name = "NAME=PATH", required = true)]
    bins: Vec<String>,
    /// Options the kernel must have.
    #[arg(long, default_value = "kernel-config/host.config")]
    kernel_config: PathBuf,
    /// Modules that go into the root image.
    #[arg(long, default_value = "rootfs/modules.list")]
    modules_list: PathBuf,
    /// Modules stage 1 loads to mount the root image.
    #[arg(long, default_value = "rootfs/early-modules.list")]
    early_modules_list: PathBuf,
    /// Files copied into the root image.
    #[arg(long, default_value = "rootfs/files")]
    files: PathBuf,
    /// More trees copied over the root image, in order (later wins).
    #[arg(long = "overlay", value_name = "DIR")]
    overlays: Vec<PathBuf>,
    /// `keel.*` kernel parameters appended to the default command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Output directory.
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

/// Everything that can stop a build.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    /// {0}
    #[error("{0}")]
    Lock(#[from] lock::LockError),
    /// {0}
    #[error("{0}")]
    Fetch(#[from] fetch::FetchError),
    /// {0}
    #[error("{0}")]
    Kconfig(#[from] kconfig::KconfigError),
    /// {0}
    #[error("{0}")]
    Modules(#[from] modules::ModulesError),
    /// {0}
    #[error("{0}")]
    Tree(#[from] tree::TreeError),
    /// {0}
    #[error("{0}")]
    Cpio(#[from] cpio::CpioError),
    /// {0}
    #[error("{0}")]
    Squashfs(#[from] squashfs::SquashfsError),
    /// {0}
    #[error("{0}")]
    Manifest(#[from] manifest::ManifestError),
    /// {0}
    #[error("{0}")]
    Media(#[from] media::MediaError),
    /// Kernel {0} lacks options Keel requires:\n  {1}
    #[error("Kernel {0} lacks options Keel requires:\n  {1}")]
    KernelConfig(String, String),
    /// --bin {0:?} is not NAME=PATH with a plain NAME
    #[error("--bin {0:?} is not NAME=PATH with a plain NAME")]
    BadBin(String),
    /// --bin keel=PATH is required (it is /init and /sbin/init)
    #[error("--bin keel=PATH is required (it is /init and /sbin/init)")]
    NoKeel,
    /// Binary {0} is not a readable file
    #[error("Binary {0} is not a readable file")]
    MissingBin(PathBuf),
    /// --cmdline parameter {0:?} is not a keel.* parameter
    #[error("--cmdline parameter {0:?} is not a keel.* parameter")]
    BadCmdline(String),
    /// Cannot access {0}: {1}
    #[error("Cannot access {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build(&cli.lock, &cli.cache, &args),
        Command::FetchKernel { which } => fetch_kernel(&cli.lock, &cli.cache, which)
            .and_then(|k| std::path::absolute(&k.root).map_err(io_err(&k.root)))
            .map(|root| println!("{}", root.display())),
        Command::GuestInitramfs {
            which,
            init,
            modules,
            out,
            overlays,
        } => guest_initramfs(
            &cli.lock, &cli.cache, which, &init, &modules, &overlays, &out,
        ),
        Command::Media {
            out,
            state_mib,
            pxe_readme,
        } => build_media(&cli.cache, out, state_mib, pxe_readme),
        Command::SizeReport { manifest } => Manifest::load(&manifest)
            .map(|m| print!("{}", m.size_report()))
            .map_err(BuildError::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-image-builder: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a progress line for a step and returns a timer for `done`.
fn step(what: &str) -> Instant {
    eprintln!("==> {what}");
    Instant::now()
}

fn done(started: Instant) {
    eprintln!("    done in {:.1}s", started.elapsed().as_secs_f64());
}

fn fetch_kernel(lock: &Path, cache: &Path, which: Which) -> Result<Kernel, BuildError> {
    let package = KernelLock::load(lock)?.get(which).clone();
    let started = step(&format!(
        "{which} kernel {}={}",
        package.package, package.version
    ));
    let kernel = fetch::fetch(&package, cache)?;
    done(started);
    Ok(kernel)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |e| BuildError::Io(path.to_path_buf(), e)
}

/// The kernel command line: the default plus build-time `keel.*` parameters.
fn kernel_cmdline(extra: &str) -> Result<String, BuildError> {
    let mut cmdline = DEFAULT_CMDLINE.to_string();
    for word in extra.split_whitespace() {
        if !word.starts_with("keel.") {
            return Err(BuildError::BadCmdline(word.to_string()));
        }
        cmdline.push(' ');
        cmdline.push_str(word);
    }
    Ok(cmdline)
}

/// Parses `--bin NAME=PATH` values; `keel` must be among them.
fn parse_bins(bins: &[String]) -> Result<Vec<(String, PathBuf)>, BuildError> {
    let parsed: Vec<(String, PathBuf)> = bins
        .iter()
        .map(|spec| {
            let (name, path) = spec
                .split_once('=')
                .ok_or_else(|| BuildError::BadBin(spec.clone()))?;
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !plain || name.starts_with('.') || path.is_empty() {
                return Err(BuildError::BadBin(spec.clone()));
            }
            Ok((name.to_string(), PathBuf::from(path)))
        })
        .collect::<Result<_, _>>()?;
    if !parsed.iter().any(|(name, _)| name == "keel") {
        return Err(BuildError::NoKeel);
    }
    for (_, path) in &parsed {
        if !path.is_file() {
            return Err(BuildError::MissingBin(path.clone()));
        }
    }
    Ok(parsed)
}

fn check_kernel_config(kernel: &Kernel, requirements: &Path) -> Result<(), BuildError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err(p));
    let requirements = kconfig::parse_requirements(&read(requirements)?)?;
    let config = kconfig::parse_config(&read(&kernel.config())?);
    let unmet = kconfig::unmet(&requirements, &config);
    if unmet.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unmet.iter().map(ToString::to_string).collect();
    Err(BuildError::KernelConfig(
        kernel.package.package.clone(),
        list.join("\n  "),
    ))
}

fn build(lock: &Path, cache: &Path, args: &BuildArgs) -> Result<(), BuildError> {
    let cmdline = kernel_cmdline(&args.cmdline)?;
    let bins = parse_bins(&args.bins)?;
    let kernel = fetch_kernel(lock, cache, Which::Host)?;
    check_kernel_config(&kernel, &args.kernel_config)?;

    let started = step("selecting modules");
    let modules_dir = kernel.modules_dir();
    let index = ModuleIndex::load(&modules_dir, kernel.release())?;
    let list_name = |p: &Path| p.display().to_string();
    let chosen = index.resolve(
        &modules::read_list(&args.modules_list)?,
        &list_name(&args.modules_list),
    )?;
    let early = index.resolve(
        &modules::read_list(&args.early_modules_list)?,
        &list_name(&args.early_modules_list),
    )?;
    eprintln!("    {} modules, {} early", chosen.len(), early.len());
    done(started);

    let mut root = Tree::new();
    for dir in MOUNT_POINTS {
        root.add_dir(dir)?;
    }
    for (name, path) in &bins {
        root.add_file(&format!("usr/bin/{name}"), path, true)?;
    }
    root.add("sbin/init", Node::Symlink("/usr/bin/keel".into()))?;
    index.add_to_tree(&mut root, &modules_dir, &chosen)?;
    root.add_host_dir("", &args.files)?;
    for overlay in &args.overlays {
        root.add_host_dir("", overlay)?;
    }

    std::fs::create_dir_all(&args.out).map_err(io_err(&args.out))?;
    let started = step("packing root.squashfs (mksquashfs, zstd)");
    squashfs::build(
        &root,
        &cache.join("stage-root"),
        &args.out.join("root.squashfs"),
    )?;
    done(started);

    let started = step("packing initramfs.img (newc cpio, zstd)");
    let mut initramfs = Tree::new();
    let keel = bins
        .iter()
        .find(|(name, _)| name == "keel")
        .map(|(_, path)| path.clone())
        .ok_or(BuildError::NoKeel)?;
    add_init(&mut initramfs, &keel)?;
    let early_names = add_early_modules(&mut initramfs, &index, &modules_dir, &early)?;
    initramfs.add_file("root.squashfs", &args.out.join("root.squashfs"), false)?;
    cpio::write_zstd_file(&initramfs, &args.out.join("initramfs.img"))?;
    done(started);

    let vmlinuz = args.out.join("vmlinuz");
    std::fs::copy(kernel.vmlinuz(), &vmlinuz).map_err(io_err(&vmlinuz))?;
    let cmdline_path = args.out.join("cmdline");
    std::fs::write(&cmdline_path, format!("{cmdline}\n")).map_err(io_err(&cmdline_path))?;

    let mut components = vec![
        Component::measure("vmlinuz", &args.out, "vmlinuz")?,
        Component::measure("initramfs", &args.out, "initramfs.img")?,
        Component::measure("root.squashfs", &args.out, "root.squashfs")?,
    ];
    for (name, path) in &bins {
        let size = std::fs::metadata(path).map_err(io_err(path))?.len();
        let sha256 = manifest::sha256_file(path).map_err(io_err(path))?;
        components.push(Component {
            name: name.clone(),
            path: format!("root.squashfs:/usr/bin/{name}"),
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        kernel: (&kernel.package).into(),
        modules: root.count_files(".ko"),
        early_modules: early_names,
        cmdline,
        components,
    };
    manifest.write(&args.out.join("manifest.json"))?;
    print!("{}", manifest.size_report());
    Ok(())
}

fn build_media(
    cache: &Path,
    out: PathBuf,
    state_mib: u64,
    pxe_readme: PathBuf,
) -> Result<(), BuildError> {
    let started = step("building boot media (keel.iso, pxe/, keel-usb.img)");
    let inputs = media::Inputs {
        staging: cache.join("stage-media"),
        out,
        state_mib,
        pxe_readme,
    };
    let components = media::build(&inputs)?;
    let path = inputs.out.join("manifest.json");
    let mut manifest = Manifest::load(&path)?;
    manifest.upsert(components);
    manifest.write(&path)?;
    done(started);
    print!("{}", manifest.size_report());
    Ok(())
}

/// `/init` plus what the kernel and stage 1 expect to find before anything is mounted.
fn add_init(tree: &mut Tree, init: &Path) -> Result<(), BuildError> {
    if !init.is_file() {
        return Err(BuildError::MissingBin(init.to_path_buf()));
    }
    tree.add_file("init", init, true)?;
    for dir in INITRAMFS_DIRS {
        tree.add_dir(dir)?;
    }
    tree.add("dev/console", Node::CharDevice { major: 5, minor: 1 })?;
    Ok(())
}

/// Puts the early modules at `/early/modules/<file>` and their load order (dependencies
/// first) in `/early/modules.order`; returns the file names in that order.
fn add_early_modules(
    tree: &mut Tree,
    index: &ModuleIndex,
    modules_dir: &Path,
    early: &BTreeSet<String>,
) -> Result<Vec<String>, BuildError> {
    let mut names = Vec::new();
    for module in index.load_order(early) {
        let file = module.rsplit('/').next().unwrap_or(&module).to_string();
        tree.add_file(
            &format!("early/modules/{file}"),
            &modules_dir.join(&module),
            false,
        )?;
        names.push(file);
    }
    let order: String = names.iter().map(|n| format!("{n}\n")).collect();
    tree.add_bytes("early/modules.order", order)?;
    Ok(names)
}

fn guest_initramfs(
    lock: &Path,
    cache: &Path,
    which: Which,
    init: &Path,
    modules: &str,
    overlays: &[PathBuf],
    out: &Path,
) -> Result<(), BuildError> {
    let mut tree = Tree::new();
    add_init(&mut tree, init)?;
    for overlay in overlays {
        tree.add_host_dir("", overlay)?;
    }
    let kernel = fetch_kernel(lock, cache, which)?;
    let modules_dir = kernel.modules_dir();
    let index = ModuleIndex::load(&modules_dir, kernel.release())?;
    let chosen = index.resolve(&modules::parse_names(modules), "--modules")?;
    index.add_to_tree(&mut tree, &modules_dir, &chosen)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    cpio::write_zstd_file(&tree, out)?;
    eprintln!(
        "    {} ({} modules, kernel {})",
        out.display(),
        chosen.len(),
        kernel.release()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_appends_only_keel_parameters() {
        let cases = [
            ("", Some(DEFAULT_CMDLINE.to_string())),
            (
                " keel.mgmt=eth0  keel.debug ",
                Some(format!("{DEFAULT_CMDLINE} keel.mgmt=eth0 keel.debug")),
            ),
            ("keel.x=1 quiet", None),
            ("init=/bin/sh", None),
        ];
        for (extra, want) in cases {
            assert_eq!(kernel_cmdline(extra).ok(), want, "{extra}");
        }
    }

    #[test]
    fn bins_must_be_plain_names_and_include_keel() {
        let exists = env!("CARGO_MANIFEST_DIR").to_string() + "/Cargo.toml";
        let ok = parse_bins(&[format!("keel={exists}"), format!("keel-vmm={exists}")]).unwrap();
        assert_eq!(ok[1].0, "keel-vmm");
        let cases = [
            vec![format!("keel-vmm={exists}")],
            vec![format!("keel")],
            vec![format!("../keel={exists}")],
            vec![format!("keel=")],
            vec![format!("keel=/nonexistent/keel")],
        ];
        for bins in cases {
            assert!(parse_bins(&bins).is_err(), "{bins:?}");
        }
    }

    /// The initramfs writer is deterministic end to end: same inputs, same bytes.
    #[test]
    fn initramfs_builds_twice_byte_identical() {
        let dir = std::env::temp_dir().join(format!("keel-main-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib/modules/6.1.0-t/kernel/fs")).unwrap();
        let init = dir.join("keel");
        std::fs::write(&init, vec![0x7fu8; 4096]).unwrap();
        let modules_dir = dir.join("lib/modules/6.1.0-t");
        std::fs::write(modules_dir.join("kernel/fs/a.ko"), "a").unwrap();
        std::fs::write(modules_dir.join("kernel/fs/b-x.ko"), "b").unwrap();
        std::fs::write(
            modules_dir.join("modules.dep"),
            "kernel/fs/b-x.ko: kernel/fs/a.ko\nkernel/fs/a.ko:\n",
        )
        .unwrap();
        std::fs::write(modules_dir.join("modules.alias"), "").unwrap();
        std::fs::write(modules_dir.join("modules.builtin"), "").unwrap();
        let index = ModuleIndex::load(&modules_dir, "6.1.0-t").unwrap();
        let early = index.resolve(&modules::parse_names("b_x"), "t").unwrap();

        let build_once = |out: &Path| {
            let mut tree = Tree::new();
            add_init(&mut tree, &init).unwrap();
            let names = add_early_modules(&mut tree, &index, &modules_dir, &early).unwrap();
            assert_eq!(names, ["a.ko", "b-x.ko"]);
            cpio::write_zstd_file(&tree, out).unwrap();
        };
        build_once(&dir.join("one.img"));
        build_once(&dir.join("two.img"));
        let one = std::fs::read(dir.join("one.img")).unwrap();
        assert_eq!(one, std::fs::read(dir.join("two.img")).unwrap());
        let raw = zstd::decode_all(one.as_slice()).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("early/modules.order\0"), "{text}");
        assert!(text.contains("a.ko\nb-x.ko\n"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
