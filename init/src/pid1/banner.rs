//! The boot banner. Its line prefixes are a contract: the end-to-end tests match them.

use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `Keel <version> on Linux <release>, <ms> ms after kernel start`.
pub fn headline(version: &str, release: &str, uptime_secs: Option<f64>) -> String {
    match uptime_secs {
        Some(s) => format!(
            "Keel {version} on Linux {release}, {} ms after kernel start",
            millis(s)
        ),
        None => format!("Keel {version} on Linux {release}"),
    }
}

/// Seconds as whole milliseconds.
pub fn millis(secs: f64) -> u64 {
    (secs * 1000.0).round().max(0.0) as u64
}

/// Tries to create (and then removes) a file in `dir`.
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".keel-write-probe-{}", std::process::id()));
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)?;
    // Best effort: the point was made, and a writable root is reported anyway.
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// `keel: root filesystem: read-only` only if every probe failed with EROFS.
pub fn root_fs_verdict(results: &[(&str, std::io::Result<()>)]) -> String {
    let not_rofs: Vec<String> = results
        .iter()
        .filter_map(|(dir, r)| match r {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => None,
            Err(e) if e.kind() == ErrorKind::NotFound => Some(format!("{dir} missing")),
            Err(e) => Some(format!("{dir}: {e}")),
            Ok(()) => Some(format!("created a file in {dir}")),
        })
        .collect();
    if not_rofs.is_empty() && !results.is_empty() {
        String::from("keel: root filesystem: read-only")
    } else {
        format!("keel: root filesystem: WRITABLE ({})", not_rofs.join("; "))
    }
}

/// Probes / and /usr.
pub fn root_fs_line() -> String {
    let results: Vec<(&str, std::io::Result<()>)> = ["/", "/usr"]
        .into_iter()
        .map(|d| (d, probe(Path::new(d))))
        .collect();
    root_fs_verdict(&results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Error;

    type Probes = Vec<(&'static str, std::io::Result<()>)>;

    #[test]
    fn headlines() {
        assert_eq!(
            headline("0.1.0", "6.1.0-56-amd64", Some(1.2345)),
            "Keel 0.1.0 on Linux 6.1.0-56-amd64, 1235 ms after kernel start"
        );
        assert_eq!(headline("0.1.0", "6.1", None), "Keel 0.1.0 on Linux 6.1");
    }

    #[test]
    fn verdicts() {
        let rofs = || Err(Error::from_raw_os_error(libc::EROFS));
        let cases: [(Probes, &str); 4] = [
            (
                vec![("/", rofs()), ("/usr", rofs())],
                "keel: root filesystem: read-only",
            ),
            (
                vec![("/", rofs()), ("/usr", Ok(()))],
                "keel: root filesystem: WRITABLE (created a file in /usr)",
            ),
            (
                vec![
                    ("/", Err(Error::from_raw_os_error(libc::EACCES))),
                    ("/usr", rofs()),
                ],
                "keel: root filesystem: WRITABLE (/: Permission denied (os error 13))",
            ),
            (
                vec![
                    ("/", rofs()),
                    ("/usr", Err(Error::from_raw_os_error(libc::ENOENT))),
                ],
                "keel: root filesystem: WRITABLE (/usr missing)",
            ),
        ];
        for (results, want) in cases {
            assert_eq!(root_fs_verdict(&results), want);
        }
    }

    #[test]
    fn probing_a_writable_directory() {
        let dir = std::env::temp_dir();
        assert!(probe(&dir).is_ok());
        assert!(std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .all(|e| !e
                .file_name()
                .to_string_lossy()
                .starts_with(&format!(".keel-write-probe-{}", std::process::id()))));
    }
}
