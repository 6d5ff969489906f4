//! Thin, checked wrappers over the few raw syscalls PID 1 needs.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Turns a path into a C string; a NUL byte inside it is an `InvalidInput` error naming the path.
pub fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains a NUL byte", path.display()),
        )
    })
}

/// Maps a libc return value (-1 on failure) to `io::Result`, taking errno on failure.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Seconds since the kernel started, read from /proc/uptime ("12.34 56.78").
pub fn uptime() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    parse_uptime(&text)
}

/// The first field of /proc/uptime as seconds.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; an all-zero value is valid and uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::from("unknown");
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_parses_first_field() {
        let cases = [
            ("12.34 56.78\n", Some(12.34)),
            ("0.5 0.1", Some(0.5)),
            ("", None),
            ("abc 1", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_uptime(text), want, "{text:?}");
        }
    }

    #[test]
    fn cpath_rejects_nul() {
        assert!(cpath(Path::new("/a\0b")).is_err());
        assert!(cpath(Path::new("/proc")).is_ok());
    }

    #[test]
    fn release_is_not_empty() {
        assert!(!kernel_release().is_empty());
    }
}
