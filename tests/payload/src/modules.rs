//! Loading kernel modules with their dependencies from `modules.dep`, as modprobe would: both
//! the guest `/init` (virtio drivers) and the in-host runner (tun, bridge) need it.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Loads the module file at `path`; an already loaded module is fine.
pub fn load_module(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let params = CString::new("").map_err(io::Error::other)?;
    // SAFETY: finit_module reads the module from a valid open file descriptor and a valid,
    // NUL-terminated parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    match rc {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            e => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        },
    }
}

/// `/lib/modules/<running release>`.
pub fn modules_dir() -> io::Result<PathBuf> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    Ok(Path::new("/lib/modules").join(release.trim()))
}

fn normalise(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

/// The modules.dep line of module `name`: (path, dependency paths).
fn find<'a>(dep: &'a str, name: &str) -> Option<(&'a str, Vec<&'a str>)> {
    let wanted = normalise(name);
    dep.lines().find_map(|line| {
        let (path, deps) = line.split_once(':')?;
        let file = path.rsplit('/').next()?;
        (normalise(file) == wanted).then(|| (path, deps.split_whitespace().collect()))
    })
}

/// Loads each of `names` after its dependencies. A module built into the kernel or already
/// loaded (`/sys/module/<name>` exists) is skipped.
pub fn load_modules(names: &[&str]) -> io::Result<()> {
    let base = modules_dir()?;
    let dep = fs::read_to_string(base.join("modules.dep"))?;
    for name in names {
        load_with_deps(&dep, &base, name, 0)?;
    }
    Ok(())
}

fn load_with_deps(dep: &str, base: &Path, name: &str, depth: usize) -> io::Result<()> {
    if Path::new("/sys/module").join(normalise(name)).exists() {
        return Ok(());
    }
    let (path, deps) = find(dep, name)
        .ok_or_else(|| io::Error::other(format!("module {name} not in modules.dep")))?;
    if depth < 8 {
        for d in deps.iter().rev() {
            let file = d.rsplit('/').next().unwrap_or(d);
            load_with_deps(dep, base, file, depth + 1)?;
        }
    }
    load_module(&base.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_found_by_normalised_name() {
        let dep = "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio.ko:\n";
        let (path, deps) = find(dep, "virtio_rng").unwrap_or(("", vec![]));
        assert_eq!(path, "kernel/drivers/char/hw_random/virtio-rng.ko");
        assert_eq!(deps, ["kernel/drivers/virtio/virtio.ko"]);
        assert!(find(dep, "virtio_net").is_none());
    }
}
