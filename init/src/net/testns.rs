//! Test support: runs a test body in a private user, network and UTS namespace, where it may create
//! links against the real kernel without privileges and without touching the machine's network.
//!
//! A process can only enter a new user namespace while single-threaded, and the test harness is
//! not, so the test re-executes its own binary for just this test with `unshare` done between
//! fork and exec; the child sees `KEEL_TESTNS` and runs the body.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::rtnetlink::Rtnetlink;

const ENV: &str = "KEEL_TESTNS";

/// Runs `body` inside a fresh network namespace. `name` is the test's full path
/// (`module::tests::name`), used to re-run only it.
pub fn run_isolated(name: &str, body: impl FnOnce()) {
    if std::env::var(ENV).as_deref() == Ok(name) {
        body();
        return;
    }
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let files = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ]
    .map(|(path, text)| (CString::new(path).unwrap(), text.into_bytes()));
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, name);
    // SAFETY: between fork and exec the closure only makes raw system calls (unshare, open,
    // write, close) on data prepared before the fork; no allocation happens there.
    unsafe {
        command.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWUTS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (path, text) in &files {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, text.as_ptr().cast(), text.len());
                libc::close(fd);
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = command
        .output()
        .expect("cannot re-run the test in a new namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in a private network namespace: {}\n{stdout}\n{stderr}",
        out.status
    );
}

/// Creates a veth pair in the current (private) namespace.
pub fn veth(a: &str, b: &str) {
    Rtnetlink::open().unwrap().create_veth(a, b).unwrap();
}
