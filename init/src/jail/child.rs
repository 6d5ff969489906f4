//! Runs a plan in the freshly cloned child. Only raw system calls on memory prepared before the
//! clone: no allocation, no locks (the parent may be multi-threaded). A failing step writes its
//! index and errno to the error pipe and the child exits; a successful exec closes the pipe.

use std::os::fd::RawFd;

use super::plan::Step;

/// Exit status of a child whose jail could not be built (the parent reports the step).
pub const SETUP_FAILED: libc::c_int = 127;

fn check(ret: libc::c_long) -> Result<(), libc::c_int> {
    if ret < 0 {
        // SAFETY: __errno_location returns this thread's errno slot, always valid.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(())
    }
}

fn ptr(c: &Option<std::ffi::CString>) -> *const libc::c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// Linux capability header and data (capset(2), version 3: two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn run(step: &Step) -> Result<(), libc::c_int> {
    // SAFETY: every call below gets pointers from CStrings and arrays owned by `step` (or local),
    // alive for the call; the calls only read them, or write into the local buffers given.
    unsafe {
        match step {
            Step::JoinCgroup(fd) => {
                let n = libc::write(*fd, b"0".as_ptr().cast(), 1);
                check(n as libc::c_long)
            }
            Step::Unshare(flags) => check(libc::unshare(*flags).into()),
            Step::Setsid => check(libc::setsid().into()),
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => check(
                libc::mount(
                    ptr(source),
                    target.as_ptr(),
                    ptr(fstype),
                    *flags,
                    ptr(data).cast(),
                )
                .into(),
            ),
            Step::Mkdir(path) => check(libc::mkdir(path.as_ptr(), 0o755).into()),
            Step::Touch(path) => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o600,
                );
                check(fd.into())?;
                libc::close(fd);
                Ok(())
            }
            Step::Mknod(path, dev) => {
                check(libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, *dev).into())
            }
            Step::Chown(path, uid, gid) => check(libc::chown(path.as_ptr(), *uid, *gid).into()),
            Step::PivotRoot(root) => {
                check(libc::chdir(root.as_ptr()).into())?;
                // pivot_root(".", "."): the old root ends up stacked under the new one, and is
                // then detached, so no path leads back to the host's files.
                let dot = c".".as_ptr();
                check(libc::syscall(libc::SYS_pivot_root, dot, dot))?;
                check(libc::umount2(dot, libc::MNT_DETACH).into())?;
                check(libc::chdir(c"/".as_ptr()).into())
            }
            Step::Hostname(name) => {
                check(libc::sethostname(name.as_ptr(), name.as_bytes().len()).into())
            }
            Step::Rlimit(resource, value) => {
                let limit = libc::rlimit {
                    rlim_cur: *value,
                    rlim_max: *value,
                };
                check(libc::setrlimit(*resource, &limit).into())
            }
            Step::Stdio(fds) => stdio(fds),
            Step::ResetSignals => {
                for sig in 1..32 {
                    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                        libc::signal(sig, libc::SIG_DFL);
                    }
                }
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                check(libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()).into())
            }
            Step::DropBoundingSet(last) => {
                for cap in 0..=*last {
                    check(
                        libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0).into(),
                    )?;
                }
                check(
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                        0,
                        0,
                        0,
                    )
                    .into(),
                )
            }
            Step::SetIds(uid, gid) => {
                check(libc::setgroups(0, std::ptr::null()).into())?;
                check(libc::setresgid(*gid, *gid, *gid).into())?;
                check(libc::setresuid(*uid, *uid, *uid).into())
            }
            Step::ClearCapabilities => {
                let header = CapHeader {
                    version: LINUX_CAPABILITY_VERSION_3,
                    pid: 0,
                };
                let data = [CapData {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                }; 2];
                check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()))
            }
            Step::NoNewPrivs => check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into()),
            Step::CloseFds => check(libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )),
            Step::Exec(path, args) => {
                // Built here from `args` without allocating: a fixed array of pointers.
                let mut argv = [std::ptr::null::<libc::c_char>(); MAX_ARGS + 1];
                for (slot, arg) in argv.iter_mut().zip(args.iter().take(MAX_ARGS)) {
                    *slot = arg.as_ptr();
                }
                let envp = [std::ptr::null::<libc::c_char>()];
                check(libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()).into())
            }
        }
    }
}

/// Arguments the jailed program may get (the parent refuses more).
pub const MAX_ARGS: usize = 64;

/// Moves the three descriptors onto 0, 1, 2 without one clobbering another: first above 2, then
/// down.
fn stdio(fds: &[RawFd; 3]) -> Result<(), libc::c_int> {
    let mut high = [0; 3];
    for (slot, fd) in high.iter_mut().zip(fds) {
        // SAFETY: fcntl(F_DUPFD) only duplicates a descriptor.
        let new = unsafe { libc::fcntl(*fd, libc::F_DUPFD, 3) };
        check(new.into())?;
        *slot = new;
    }
    for (target, fd) in high.iter().enumerate() {
        // SAFETY: dup2 only duplicates a descriptor; targets 0..2 are ours to replace.
        check(unsafe { libc::dup2(*fd, target as RawFd) }.into())?;
        // SAFETY: the temporary copy is ours.
        unsafe { libc::close(*fd) };
    }
    Ok(())
}

/// Runs `steps` in order; on the first failure reports (index, errno) on `error_pipe` and exits.
/// Never returns: the last step is the exec.
pub fn run_plan(steps: &[Step], error_pipe: RawFd) -> ! {
    let mut errno = libc::ENOEXEC;
    let mut failed = steps.len();
    for (index, step) in steps.iter().enumerate() {
        if let Err(e) = run(step) {
            errno = e;
            failed = index;
            break;
        }
    }
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&(failed as u32).to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: report is 8 valid bytes; _exit never returns and runs no destructors or handlers.
    unsafe {
        libc::write(error_pipe, report.as_ptr().cast(), report.len());
        libc::_exit(SETUP_FAILED)
    }
}

/// (step index, errno) from the 8 bytes a failed child wrote.
pub fn decode_report(bytes: &[u8; 8]) -> (usize, i32) {
    let mut index = [0u8; 4];
    let mut errno = [0u8; 4];
    index.copy_from_slice(&bytes[..4]);
    errno.copy_from_slice(&bytes[4..]);
    (
        u32::from_ne_bytes(index) as usize,
        i32::from_ne_bytes(errno),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&7u32.to_ne_bytes());
        bytes[4..].copy_from_slice(&libc::EPERM.to_ne_bytes());
        assert_eq!(decode_report(&bytes), (7, libc::EPERM));
    }
}
