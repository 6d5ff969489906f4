//! The terminal: raw mode, its size, and waiting for input with a timeout.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Size to assume when the terminal does not know its own (a serial line).
pub const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// Raw mode on a terminal; the previous mode comes back on drop.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts `fd` in raw mode: bytes as typed, no echo, no signals from Ctrl-C, no output
    /// processing (the drawing code positions the cursor itself).
    pub fn enable(fd: RawFd) -> io::Result<Self> {
        // SAFETY: termios is plain old data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: saved is a valid termios.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: raw is a valid termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: raw is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: saved is the termios read from this fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Columns and rows, when the terminal knows them (a serial line reports 0x0).
pub fn size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain old data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: ws is a valid winsize for TIOCGWINSZ.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } != 0
        || ws.ws_col == 0
        || ws.ws_row == 0
    {
        return None;
    }
    Some((ws.ws_col, ws.ws_row))
}

/// Waits up to `timeout` for input on `fd`; returns the bytes read, empty on timeout.
/// End of input (the terminal hung up) is an error.
pub fn read_timeout(fd: RawFd, timeout: Duration) -> io::Result<Vec<u8>> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: pfd is one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    if ready < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(Vec::new())
        } else {
            Err(e)
        };
    }
    if ready == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; 256];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    match n {
        0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the terminal hung up",
        )),
        n if n < 0 => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(Vec::new()),
                _ => Err(e),
            }
        }
        n => {
            buf.truncate(n as usize);
            Ok(buf)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// A real pseudo-terminal pair.
    fn pty() -> (std::fs::File, std::fs::File) {
        // SAFETY: plain libc calls on fresh descriptors; results checked.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0);
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let name = std::ffi::CStr::from_ptr(libc::ptsname(master)).to_owned();
            let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            assert!(slave >= 0);
            use std::os::fd::FromRawFd;
            (
                std::fs::File::from_raw_fd(master),
                std::fs::File::from_raw_fd(slave),
            )
        }
    }

    #[test]
    fn raw_mode_size_and_reads_on_a_pty() {
        let (mut master, slave) = pty();
        let fd = slave.as_raw_fd();
        assert_eq!(
            size(fd),
            None,
            "a fresh pty, like a serial line, has no size"
        );
        let ws = libc::winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: ws is a valid winsize.
        assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }, 0);
        assert_eq!(size(fd), Some((100, 30)));
        {
            let _raw = RawMode::enable(fd).unwrap();
            master.write_all(b"\x1b[A\r").unwrap();
            let got = read_timeout(fd, Duration::from_secs(2)).unwrap();
            assert_eq!(got, b"\x1b[A\r", "raw mode passes bytes through unchanged");
            assert!(read_timeout(fd, Duration::from_millis(50))
                .unwrap()
                .is_empty());
        }
        // Back in cooked mode: the line discipline maps CR to NL.
        master.write_all(b"x\r").unwrap();
        assert_eq!(read_timeout(fd, Duration::from_secs(2)).unwrap(), b"x\n");
        assert!(RawMode::enable(master.as_raw_fd()).is_ok());
        let (_, not_tty) = (0, std::fs::File::open("/dev/null").unwrap());
        assert!(RawMode::enable(not_tty.as_raw_fd()).is_err());
    }
}
