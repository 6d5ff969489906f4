//! Kernel modules: the early modules of stage 1 and cold plug in stage 2 (what udev and modprobe
//! do at boot: match every device's modalias against modules.alias, load with dependencies).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use keel_kmod::{alias_entry, dep_entries, glob_match, module_name, GlobStyle};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Cannot read {0}: {1}
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Cannot load module {0}: {1}
    #[error("cannot load module {0}: {1}")]
    Load(PathBuf, std::io::Error),
    /// Module {0} is not listed in modules.dep
    #[error("module {0} is not listed in modules.dep")]
    Unknown(String),
}

/// modules.alias and modules.dep of one kernel release.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// (glob, module name) in file order.
    aliases: Vec<(String, String)>,
    /// module name → (path, dependency paths as listed: each before its own dependencies).
    deps: HashMap<String, (String, Vec<String>)>,
}

impl ModuleIndex {
    /// Parses the text of modules.alias and modules.dep.
    pub fn parse(alias_text: &str, dep_text: &str) -> Self {
        let aliases = alias_text
            .lines()
            .filter_map(alias_entry)
            .map(|(glob, module)| (glob.to_string(), module))
            .collect();
        // Malformed lines are skipped: PID 1 loads what it can rather than nothing.
        let deps = dep_entries(dep_text)
            .flatten()
            .map(|entry| {
                let needs = entry.needs.iter().map(|need| need.to_string()).collect();
                (module_name(entry.path), (entry.path.to_string(), needs))
            })
            .collect();
        ModuleIndex { aliases, deps }
    }

    /// Reads modules.alias and modules.dep from `dir` (/lib/modules/<release>).
    pub fn read(dir: &Path) -> Result<Self, ModuleError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| ModuleError::Read(path, e))
        };
        Ok(Self::parse(&read("modules.alias")?, &read("modules.dep")?))
    }

    /// Names of the modules whose alias glob matches `modalias`.
    pub fn modules_for(&self, modalias: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (glob, module) in &self.aliases {
            if !out.contains(&module.as_str()) && glob_match(glob, modalias, GlobStyle::Plain) {
                out.push(module);
            }
        }
        out
    }

    /// Paths (relative to the modules directory) to insert for `name`, dependencies first.
    pub fn load_order(&self, name: &str) -> Result<Vec<String>, ModuleError> {
        let key = name.replace('-', "_");
        let (path, deps) = self
            .deps
            .get(&key)
            .ok_or_else(|| ModuleError::Unknown(name.to_string()))?;
        // modules.dep lists each module before the modules it needs: insert in reverse.
        let mut order: Vec<String> = deps.iter().rev().cloned().collect();
        order.push(path.clone());
        Ok(order)
    }
}

/// Inserts one module file; a module that is already loaded counts as success.
pub fn insert(path: &Path) -> Result<(), ModuleError> {
    insert_with(path, c"")
}

/// `insert` with module parameters (`"max_bonds=0"`).
pub fn insert_with(path: &Path, params: &std::ffi::CStr) -> Result<(), ModuleError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| ModuleError::Load(path.to_path_buf(), e))?;
    // SAFETY: the fd is open for the duration of the call and params is a NUL-terminated string.
    let ret =
        unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if ret == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(ModuleError::Load(path.to_path_buf(), err))
}

/// The module file names listed in an early modules.order, one per line (`#` comments allowed).
pub fn parse_order(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let base = l.rsplit('/').next().unwrap_or(l);
            if base.contains(".ko") {
                base.to_string()
            } else {
                format!("{base}.ko")
            }
        })
        .collect()
}

/// Loads the early modules of stage 1 in the order of `order_file`, from `dir`.
pub fn load_early(order_file: &Path, dir: &Path) -> Result<Vec<String>, ModuleError> {
    let text = std::fs::read_to_string(order_file)
        .map_err(|e| ModuleError::Read(order_file.to_path_buf(), e))?;
    let names = parse_order(&text);
    for name in &names {
        insert(&dir.join(name))?;
    }
    Ok(names)
}

/// Every distinct modalias under a sysfs devices tree (/sys/devices), not following symlinks.
pub fn read_modaliases(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < 64 {
                walk(&entry.path(), depth + 1, out);
            } else if kind.is_file() && entry.file_name() == "modalias" {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let alias = text.trim();
                    if !alias.is_empty() {
                        out.insert(alias.to_string());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, 0, &mut out);
    out
}

/// Loads modules with their dependencies, each file at most once.
pub struct Loader {
    dir: PathBuf,
    index: ModuleIndex,
    attempted: HashSet<String>,
    /// Module names loaded (or found loaded) so far.
    pub loaded: Vec<String>,
}

impl Loader {
    pub fn new(dir: PathBuf, index: ModuleIndex) -> Self {
        Loader {
            dir,
            index,
            attempted: HashSet::new(),
            loaded: Vec::new(),
        }
    }

    /// Loads `name` and what it depends on. Each module file is tried once per boot.
    pub fn load(&mut self, name: &str) -> Result<(), ModuleError> {
        for path in self.index.load_order(name)? {
            if !self.attempted.insert(path.clone()) {
                continue;
            }
            insert(&self.dir.join(&path))?;
            self.loaded.push(module_name(&path));
        }
        Ok(())
    }

    /// Loads `name` (dependencies first, without parameters) with `params` for `name` itself.
    pub fn load_with(&mut self, name: &str, params: &std::ffi::CStr) -> Result<(), ModuleError> {
        let order = self.index.load_order(name)?;
        let Some((own, deps)) = order.split_last() else {
            return Ok(());
        };
        for path in deps {
            if self.attempted.insert(path.clone()) {
                insert(&self.dir.join(path))?;
                self.loaded.push(module_name(path));
            }
        }
        if self.attempted.insert(own.clone()) {
            insert_with(&self.dir.join(own), params)?;
            self.loaded.push(module_name(own));
        }
        Ok(())
    }

    /// One cold-plug pass over the devices under `sys_devices`: loads every module matching a
    /// device's modalias. Returns the failures (a driver refusing absent hardware is normal).
    pub fn coldplug(&mut self, sys_devices: &Path) -> Vec<ModuleError> {
        let mut wanted: Vec<String> = Vec::new();
        for alias in read_modaliases(sys_devices) {
            for module in self.index.modules_for(&alias) {
                if !wanted.iter().any(|w| w == module) {
                    wanted.push(module.to_string());
                }
            }
        }
        wanted
            .iter()
            .filter_map(|module| self.load(module).err())
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ALIAS: &str = "# Aliases extracted from modules themselves.\n\
        alias cpu:type:x86,ven*fam*mod*:feature:*00C2* kvm_amd\n\
        alias acpi*:LNXPWRBN:* button\n\
        alias acpi*:PNP0C0C:* button\n\
        alias input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev\n\
        alias virtio:d00000001v* virtio_net\n\
        alias devname:loop-control loop\n";
    const DEP: &str = "kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n\
        kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko\n\
        kernel/drivers/acpi/button.ko:\n\
        kernel/drivers/input/evdev.ko:\n\
        kernel/virt/lib/irqbypass.ko:\n\
        kernel/drivers/crypto/ccp/ccp.ko:\n";

    #[test]
    fn aliases_and_dependencies() {
        let index = ModuleIndex::parse(ALIAS, DEP);
        let cases: [(&str, &[&str]); 5] = [
            ("acpi:LNXPWRBN:", &["button"]),
            ("acpi:PNP0C0C:", &["button"]),
            (
                "cpu:type:x86,ven0002fam0017mod0001:feature:,00C2",
                &["kvm_amd"],
            ),
            ("virtio:d00000001v00001AF4", &["virtio_net"]),
            ("pci:v00001234d00001111sv*", &[]),
        ];
        for (alias, want) in cases {
            assert_eq!(index.modules_for(alias), want, "{alias}");
        }
        assert_eq!(
            index.load_order("kvm-amd").unwrap(),
            [
                "kernel/virt/lib/irqbypass.ko",
                "kernel/arch/x86/kvm/kvm.ko",
                "kernel/drivers/crypto/ccp/ccp.ko",
                "kernel/arch/x86/kvm/kvm-amd.ko",
            ]
        );
        assert_eq!(
            index.load_order("button").unwrap(),
            ["kernel/drivers/acpi/button.ko"]
        );
        // virtio_net has an alias but is not shipped: a clear error, not a panic.
        assert!(matches!(
            index.load_order("virtio_net"),
            Err(ModuleError::Unknown(_))
        ));
    }

    #[test]
    fn early_order() {
        let text = "# early\nloop.ko\n\nkernel/fs/squashfs/squashfs.ko\nzstd\n";
        assert_eq!(parse_order(text), ["loop.ko", "squashfs.ko", "zstd.ko"]);
    }

    #[test]
    fn finds_modaliases_in_a_tree() {
        let root = std::env::temp_dir().join(format!("keel-sysfs-{}", std::process::id()));
        let dev = root.join("pci0000:00/0000:00:01.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("modalias"), "pci:v00008086d00001099\n").unwrap();
        std::fs::write(root.join("pci0000:00/modalias"), "\n").unwrap();
        std::os::unix::fs::symlink(&root, dev.join("loop")).unwrap();
        let found = read_modaliases(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            ["pci:v00008086d00001099"]
        );
    }

    #[test]
    fn missing_module_file_is_an_error() {
        let err = insert(Path::new("/nonexistent/foo.ko")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/foo.ko"), "{err}");
    }
}
