//! What a process can see of its own confinement, as `key=value` lines: the tests run this inside
//! a jail (on the build machine and in the Keel test image) and check each line.

use std::fs;
use std::path::Path;

/// Fields of /proc/self/status that describe privileges.
const STATUS_FIELDS: [&str; 8] = [
    "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
];

/// Every path under `dir` (depth first, sorted), not descending into /proc.
fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        out.push(path.display().to_string());
        if path.is_dir() && !path.is_symlink() && path != Path::new("/proc") {
            walk(&path, out);
        }
    }
}

/// Every path under `root` (depth first, sorted, not into /proc), as reached from here: the
/// tests list a jail's root this way, from inside or through `/proc/<pid>/root`.
pub fn paths(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// The report: pid, privileges, no_new_privs, environment size, open descriptors, every path
/// reachable from `root` (`/` in a jail), the PIDs in /proc, and whether appending to
/// `write_probe` works.
pub fn report(root: &Path, write_probe: Option<&Path>) -> Vec<String> {
    let mut lines = vec![format!("pid={}", std::process::id())];
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status.lines() {
        if let Some((key, value)) = line.split_once(':') {
            if STATUS_FIELDS.contains(&key) || key == "NoNewPrivs" || key == "Seccomp" {
                let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
                lines.push(format!("{key}={value}"));
            }
        }
    }
    lines.push(format!("env={}", std::env::vars_os().count()));
    // Not counting the descriptor reading the directory itself.
    let mut fds: Vec<String> = fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| fs::read_link(e.path()).is_ok_and(|t| !t.ends_with("fd")))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    lines.push(format!("fds={}", fds.join(",")));
    let mut pids: Vec<String> = fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .collect()
        })
        .unwrap_or_default();
    pids.sort();
    lines.push(format!("procs={}", pids.join(",")));
    lines.push(format!("paths={}", paths(root).join(",")));
    if let Some(path) = write_probe {
        let result = fs::OpenOptions::new().append(true).open(path);
        lines.push(format!(
            "write {}={}",
            path.display(),
            result.map_or_else(|e| format!("{:?}", e.kind()), |_| "ok".into())
        ));
    }
    lines
}

/// Whether a privileged call is refused: `unshare(CLONE_NEWUTS)` needs CAP_SYS_ADMIN. Only call
/// this inside a jail: where it succeeds, the caller is left in a new UTS namespace.
pub fn privileged_call() -> String {
    // SAFETY: unshare only changes this process's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWUTS) } == 0 {
        "allowed".to_string()
    } else {
        format!("{:?}", std::io::Error::last_os_error().kind())
    }
}

/// The value of `key` in a report.
pub fn field<'a>(report: &'a [String], key: &str) -> Option<&'a str> {
    report
        .iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_report_describes_this_process() {
        let dir = std::env::temp_dir().join(format!("keel-probe-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        let file = dir.join("sub/f");
        fs::write(&file, "").unwrap();
        let report = report(&dir, Some(&file));
        fs::remove_dir_all(&dir).unwrap();
        let want = format!("{0}/sub,{0}/sub/f", dir.display());
        assert_eq!(field(&report, "paths"), Some(want.as_str()));
        assert_eq!(
            field(&report, &format!("write {}", file.display())),
            Some("ok")
        );
        assert_eq!(
            field(&report, "pid"),
            Some(std::process::id().to_string().as_str())
        );
        assert!(field(&report, "CapEff").is_some(), "{report:?}");
        assert!(field(&report, "NoNewPrivs").is_some());
        assert!(field(&report, "fds").unwrap().split(',').any(|f| f == "0"));
        assert_eq!(field(&["a=1".into(), "ab=2".into()], "ab"), Some("2"));
    }
}
