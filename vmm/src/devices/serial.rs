//! COM1: an 8250/16550 UART from vm-superio on the PIO bus. Its interrupt is an `InterruptLine`
//! (irqfd on GSI 4); its output goes to the configured sink; its input comes from stdin or from
//! the client of the console socket, fed by the event loop (`SerialInput`) as the receive FIFO has
//! room, as in Firecracker.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::bus::BusDevice;
use super::interrupt::LineTrigger;
use super::RateLimitedLog;
use crate::config::SerialConfig;

static SERIAL_ERRORS: RateLimitedLog = RateLimitedLog::new();

/// The serial console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Cannot open serial output file {0}: {1}
    #[error("Cannot open serial output file {0}: {1}")]
    File(String, io::Error),
    /// Cannot listen on serial socket {0}: {1}
    #[error("Cannot listen on serial socket {0}: {1}")]
    Socket(String, io::Error),
    /// Cannot create the serial input eventfd: {0}
    #[error("Cannot create the serial input eventfd: {0}")]
    EventFd(io::Error),
}

/// The connected client of a socket console, shared by output (vCPU) and input (event loop).
type SocketClient = Arc<Mutex<Option<UnixStream>>>;

/// Where the guest's serial output goes.
pub enum SerialOut {
    Stdout(io::Stdout),
    File(File),
    Socket(SocketClient),
    Off,
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SerialOut::Stdout(out) => out.write(buf),
            SerialOut::File(file) => file.write(buf),
            SerialOut::Socket(client) => {
                let mut client = client.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(stream) = client.as_mut() {
                    if stream.write_all(buf).is_err() {
                        // The client went away: output is dropped until the next one connects.
                        *client = None;
                    }
                }
                Ok(buf.len())
            }
            SerialOut::Off => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SerialOut::Stdout(out) => out.flush(),
            SerialOut::File(file) => file.flush(),
            SerialOut::Socket(_) | SerialOut::Off => Ok(()),
        }
    }
}

/// Tells the event loop that the guest drained the receive FIFO, so input can resume.
pub struct InputEvents {
    fifo_drained: EventFd,
}

impl SerialEvents for InputEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {
        SERIAL_ERRORS.log(format_args!("serial: output byte lost"));
    }
    fn in_buffer_empty(&self) {
        let _ = self.fifo_drained.write(1);
    }
}

/// The UART on the bus.
pub struct SerialDevice {
    uart: Serial<LineTrigger, InputEvents, SerialOut>,
}

impl SerialDevice {
    /// A UART raising `irq`, writing to `out`.
    pub fn new(irq: LineTrigger, out: SerialOut) -> Result<(Self, EventFd), SerialError> {
        let fifo_drained = EventFd::new(EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let events = InputEvents {
            fifo_drained: fifo_drained.try_clone().map_err(SerialError::EventFd)?,
        };
        let uart = Serial::with_events(irq, events, out);
        Ok((SerialDevice { uart }, fifo_drained))
    }

    /// Free room in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues input for the guest and raises the receive interrupt.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                SERIAL_ERRORS.log(format_args!("serial: cannot queue input: {e}"));
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(offset, *byte) {
                SERIAL_ERRORS.log(format_args!("serial: {e}"));
            }
        }
    }
}

/// The output side and, for the event loop, the input side of a serial configuration.
pub struct SerialBackend {
    pub out: SerialOut,
    pub input: InputSource,
}

/// Where guest input comes from.
pub enum InputSource {
    Stdin,
    Socket(UnixListener, SocketClient),
    None,
}

/// Opens what `config` names.
pub fn open_backend(config: &SerialConfig) -> Result<SerialBackend, SerialError> {
    Ok(match config {
        SerialConfig::Stdout => SerialBackend {
            out: SerialOut::Stdout(io::stdout()),
            input: InputSource::Stdin,
        },
        SerialConfig::File { path } => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| SerialError::File(path.display().to_string(), e))?;
            SerialBackend {
                out: SerialOut::File(file),
                input: InputSource::None,
            }
        }
        SerialConfig::Socket { path } => {
            let listener = bind(path)?;
            let client = SocketClient::default();
            SerialBackend {
                out: SerialOut::Socket(client.clone()),
                input: InputSource::Socket(listener, client),
            }
        }
        SerialConfig::Off => SerialBackend {
            out: SerialOut::Off,
            input: InputSource::None,
        },
    })
}

fn bind(path: &Path) -> Result<UnixListener, SerialError> {
    let err = |e| SerialError::Socket(path.display().to_string(), e);
    // A stale socket from an earlier run would make bind fail.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Event-loop side of the console: moves input into the UART as its FIFO has room, and accepts
/// socket clients.
pub struct SerialInput {
    device: Arc<Mutex<SerialDevice>>,
    source: InputSource,
    fifo_drained: EventFd,
    /// The fd input is read from now (stdin or the socket client), if registered.
    reading: Option<RawFd>,
    /// Input stopped because the FIFO is full; resumes on `fifo_drained`.
    throttled: bool,
}

impl SerialInput {
    pub fn new(
        device: Arc<Mutex<SerialDevice>>,
        source: InputSource,
        fifo_drained: EventFd,
    ) -> Self {
        SerialInput {
            device,
            source,
            fifo_drained,
            reading: None,
            throttled: false,
        }
    }

    fn input_fd(&self) -> Option<RawFd> {
        match &self.source {
            InputSource::Stdin => Some(io::stdin().as_raw_fd()),
            InputSource::Socket(_, client) => client
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|s| s.as_raw_fd()),
            InputSource::None => None,
        }
    }

    fn start_reading(&mut self, ops: &mut EventOps) {
        if let Some(fd) = self.input_fd() {
            if ops.add(Events::new_raw(fd, EventSet::IN)).is_ok() {
                self.reading = Some(fd);
            }
        }
    }

    fn stop_reading(&mut self, ops: &mut EventOps) {
        if let Some(fd) = self.reading.take() {
            let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
        }
    }

    /// Reads what fits into the FIFO. Returns false at end of input.
    fn pump(&mut self, fd: RawFd) -> bool {
        let mut device = self.device.lock().unwrap_or_else(|e| e.into_inner());
        let room = device.input_room();
        if room == 0 {
            self.throttled = true;
            return true;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        let read = match &self.source {
            InputSource::Stdin => io::stdin().lock().read(&mut buf[..want]),
            InputSource::Socket(_, client) => {
                match client.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    Some(stream) if stream.as_raw_fd() == fd => stream.read(&mut buf[..want]),
                    _ => Ok(0),
                }
            }
            InputSource::None => Ok(0),
        };
        match read {
            Ok(0) => false,
            Ok(n) => {
                device.enqueue_input(&buf[..n]);
                true
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                true
            }
            Err(_) => false,
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let InputSource::Socket(listener, client) = &self.source else {
            return;
        };
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        // One client at a time: a new connection replaces the old one.
        *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
        self.stop_reading(ops);
        self.throttled = false;
        self.start_reading(ops);
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let InputSource::Socket(listener, _) = &self.source {
            let _ = ops.add(Events::new(listener, EventSet::IN));
        }
        let _ = ops.add(Events::new(&self.fifo_drained, EventSet::IN));
        self.start_reading(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.fifo_drained.as_raw_fd() {
            let _ = self.fifo_drained.read();
            if self.throttled {
                self.throttled = false;
                self.start_reading(ops);
            }
            return;
        }
        if let InputSource::Socket(listener, _) = &self.source {
            if fd == listener.as_raw_fd() {
                self.accept(ops);
                return;
            }
        }
        if Some(fd) == self.reading {
            if !self.pump(fd) {
                self.stop_reading(ops);
                if let InputSource::Socket(_, client) = &self.source {
                    *client.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
            } else if self.throttled {
                // Level-triggered epoll would spin on pending input: wait for the guest to read.
                self.stop_reading(ops);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::devices::interrupt::InterruptLine;

    /// Counts triggers.
    #[derive(Default)]
    struct CountingLine(std::sync::atomic::AtomicUsize);
    impl InterruptLine for CountingLine {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn file_sink_receives_output_and_input_reaches_the_guest() {
        let dir = std::env::temp_dir().join(format!("keel-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        let backend = open_backend(&SerialConfig::File { path: path.clone() }).unwrap();
        let line = Arc::new(CountingLine::default());
        let (mut dev, drained) = SerialDevice::new(LineTrigger(line.clone()), backend.out).unwrap();

        dev.write(0, b"h");
        dev.write(0, b"i");
        dev.write(0, b"xy"); // wider than the register: ignored
        assert_eq!(std::fs::read(&path).unwrap(), b"hi");

        // Enable the receive interrupt (IER bit 0), queue input, read it back through RBR.
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"k"), 1);
        assert!(line.0.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        let mut byte = [0u8];
        dev.read(0, &mut byte);
        assert_eq!(byte, *b"k");
        assert_eq!(drained.read().unwrap(), 1, "drained FIFO signalled");

        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_file_path_is_named_in_the_error() {
        let err = open_backend(&SerialConfig::File {
            path: "/nonexistent-dir/x".into(),
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("/nonexistent-dir/x"), "{err}");
    }
}
