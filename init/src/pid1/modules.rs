//! Kernel modules: the early modules of stage 1 and cold plug in stage 2 (what udev and modprobe
//! do at boot: match every device's modalias against modules.alias, load with dependencies).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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

/// Matches one `[...]` class at the start of `p` against `c`: `Some((matched, length))`, or
/// `None` if the class is not terminated (then '[' is an ordinary character).
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        match (p.get(i + 1), p.get(i + 2)) {
            (Some(b'-'), Some(&hi)) if hi != b']' => {
                matched |= lo <= c && c <= hi;
                i += 3;
            }
            _ => {
                matched |= lo == c;
                i += 1;
            }
        }
    }
}

/// If the single (non-'*') pattern element at `p[pi..]` matches `c`, the index after it.
fn step(p: &[u8], pi: usize, c: u8) -> Option<usize> {
    match p.get(pi)? {
        b'?' => Some(pi + 1),
        b'[' => match class(&p[pi..], c) {
            Some((true, len)) => Some(pi + len),
            Some((false, _)) => None,
            None => (c == b'[').then_some(pi + 1),
        },
        b'\\' if pi + 1 < p.len() => (p[pi + 1] == c).then_some(pi + 2),
        &lit => (lit == c).then_some(pi + 1),
    }
}

/// fnmatch(3)-style glob matching as used in modules.alias: `*`, `?`, `[a-z]`, `[!x]`, `\x`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last '*': (pattern index after it, text index it absorbed up to).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if p.get(pi) == Some(&b'*') {
            pi += 1;
            star = Some((pi, ti));
            continue;
        }
        if let Some(next) = step(p, pi, t[ti]) {
            pi = next;
            ti += 1;
            continue;
        }
        match star {
            Some((sp, st)) => {
                star = Some((sp, st + 1));
                pi = sp;
                ti = st + 1;
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A module's name from its path: `kernel/arch/x86/kvm/kvm-amd.ko` → `kvm_amd`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.find(".ko").map_or(base, |i| &base[..i]);
    stem.replace('-', "_")
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
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                match (f.next(), f.next(), f.next()) {
                    (Some("alias"), Some(glob), Some(module)) => {
                        Some((glob.to_string(), module.replace('-', "_")))
                    }
                    _ => None,
                }
            })
            .collect();
        let deps = dep_text
            .lines()
            .filter_map(|line| {
                let (path, rest) = line.split_once(':')?;
                let path = path.trim();
                if path.is_empty() {
                    return None;
                }
                let list = rest.split_whitespace().map(String::from).collect();
                Some((module_name(path), (path.to_string(), list)))
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
            if !out.contains(&module.as_str()) && glob_match(glob, modalias) {
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

    #[test]
    fn globs() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("a*", "a", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[abc]x", "bx", true),
            ("[abc]x", "dx", false),
            ("[a-f]", "e", true),
            ("[a-f]", "g", false),
            ("[!a-f]", "g", true),
            ("[^a-f]", "a", false),
            ("[]]", "]", true),
            ("[a-]", "-", true),
            ("[abc", "[abc", true),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("*a*b*c*", "xxaxxcxxbxx", false),
            (
                "pci:v00008086d00001099sv*sd*bc*sc*i*",
                "pci:v00008086d00001099sv00008086sd00000001bc02sc00i00",
                true,
            ),
            (
                "pci:v00008086d00001099sv*sd*bc*sc*i*",
                "pci:v00008086d0000109Asv00008086sd00000001bc02sc00i00",
                false,
            ),
            (
                "cpu:type:x86,ven*fam*mod*:feature:*00C2*",
                "cpu:type:x86,ven0002fam0017mod0001:feature:,0000,0001,00C2,00E0",
                true,
            ),
            ("acpi*:LNXPWRBN:*", "acpi:LNXPWRBN:", true),
            ("acpi*:PNP0C0C:*", "acpi:LNXPWRBN:", false),
            (
                "input:b*v*p*e*-e*k*r*a*m*l*s*f*w*",
                "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw",
                true,
            ),
            ("virtio:d00000001v*", "virtio:d00000001v00001AF4", true),
            ("virtio:d00000001v*", "virtio:d00000002v00001AF4", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob_match(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn names_from_paths() {
        let cases = [
            ("kernel/arch/x86/kvm/kvm-amd.ko", "kvm_amd"),
            ("kernel/drivers/block/loop.ko", "loop"),
            ("kernel/fs/squashfs/squashfs.ko.xz", "squashfs"),
            ("evdev.ko", "evdev"),
        ];
        for (path, want) in cases {
            assert_eq!(module_name(path), want);
        }
    }

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
