//! The netlink socket: requests with an acknowledgement, dumps, batches, and the receive path that
//! checks every reply. The receive path runs over a `Transport`, the kernel's socket in use and
//! canned datagrams in the tests.

use std::io;
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::message::{
    parse_messages, parse_status, Message, Received, Status, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
};
use super::Error;

/// How long a reply may take before the exchange fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a dump is tried while the kernel reports it interrupted.
pub const DUMP_ATTEMPTS: u32 = 5;
/// Dump replies are at most 32 KiB (the kernel caps them); acknowledgements are smaller.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// Socket options of SOL_NETLINK (linux/netlink.h; the libc crate has them for Android only).
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// Where datagrams go and come from.
pub trait Transport {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Receives one datagram into `buf`: its whole length (more than `buf` holds if it was
    /// truncated) and the sender's port id (0 is the kernel). Fails with `WouldBlock` or
    /// `TimedOut` when nothing came within the receive timeout.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<(usize, u32)>;
}

/// A netlink socket to the kernel.
#[derive(Debug)]
pub struct Kernel {
    fd: OwnedFd,
}

fn netlink_address() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data, for which all zeroes is valid (pid 0: the kernel).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T of the size given; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Kernel {
    /// Opens a netlink socket of `protocol` (NETLINK_ROUTE, NETLINK_NETFILTER) with a receive
    /// timeout and extended acknowledgements, bound to a port id the kernel chooses; returns it
    /// with that port id.
    pub fn open(protocol: libc::c_int, timeout: Duration) -> io::Result<(Kernel, u32)> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket returned a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A zero timeval would mean no timeout at all.
        let timeout = timeout.max(Duration::from_millis(1));
        let timeval = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeval)?;
        // Best effort: a kernel without them still answers, with less to say.
        let on: libc::c_int = 1;
        let _ = set_option(&fd, libc::SOL_NETLINK, NETLINK_EXT_ACK, &on);
        let _ = set_option(&fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, &on);
        let mut addr = netlink_address();
        // SAFETY: addr is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: addr and len are valid for writes; len holds addr's size.
        let rc = unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                std::ptr::addr_of_mut!(addr).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((Kernel { fd }, addr.nl_pid))
    }
}

impl Transport for Kernel {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let addr = netlink_address();
        loop {
            // SAFETY: bytes and addr are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    std::ptr::addr_of!(addr).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<(usize, u32)> {
        let mut addr = netlink_address();
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: buf is valid for writes of its length, addr and len for the sender's address;
        // MSG_TRUNC only changes the returned length to the datagram's.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                std::ptr::addr_of_mut!(addr).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((n as usize, addr.nl_pid))
    }
}

/// What the receive loop does after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    More,
    Done,
}

/// The kernel's refusal of `request` as an error about `what`.
fn refused(what: &str, status: Status, request: &[u8]) -> Error {
    let mut ext = status.ext;
    ext.locate(request);
    Error::Kernel {
        what: what.into(),
        source: io::Error::from_raw_os_error(status.code.saturating_neg()),
        ext,
    }
}

/// A netlink socket with its sequence numbers: requests, dumps and batches.
#[derive(Debug)]
pub struct Socket<T = Kernel> {
    transport: T,
    /// Our port id: replies to our requests are addressed to it.
    port: u32,
    seq: u32,
    timeout: Duration,
    buf: Vec<u8>,
}

impl Socket<Kernel> {
    /// A socket to the kernel's `protocol` (libc::NETLINK_ROUTE, libc::NETLINK_NETFILTER).
    pub fn open(protocol: libc::c_int) -> Result<Socket, Error> {
        let (kernel, port) = Kernel::open(protocol, TIMEOUT).map_err(Error::Open)?;
        Ok(Socket::new(kernel, port, TIMEOUT))
    }
}

impl<T: Transport> Socket<T> {
    /// A socket over `transport`, whose port id is `port`; an exchange fails after `timeout`
    /// without a reply to it.
    pub fn new(transport: T, port: u32, timeout: Duration) -> Socket<T> {
        Socket {
            transport,
            port,
            seq: 1,
            timeout,
            buf: vec![0; RECEIVE_BUFFER],
        }
    }

    /// `count` consecutive sequence numbers (never wrapping within them); the first.
    fn next_seqs(&mut self, count: u32) -> u32 {
        if self.seq.checked_add(count).is_none() {
            self.seq = 1;
        }
        let first = self.seq;
        self.seq = self.seq.saturating_add(count);
        first
    }

    fn send(&mut self, bytes: &[u8], what: &str) -> Result<(), Error> {
        self.transport.send(bytes).map_err(|source| Error::Send {
            what: what.into(),
            source,
        })
    }

    /// Reads replies whose sequence number is in `seqs` and that are addressed to our port,
    /// handing each to `handle` until it says `Done`. Anything else (a datagram not from the
    /// kernel, a late reply to an earlier request) is passed over; if nothing but such comes for
    /// the timeout, that is an error too.
    fn receive(
        &mut self,
        what: &str,
        seqs: RangeInclusive<u32>,
        mut handle: impl FnMut(&Received<'_>) -> Result<Flow, Error>,
    ) -> Result<(), Error> {
        let timeout = Error::Timeout {
            what: what.into(),
            timeout: self.timeout,
        };
        let mut quiet_since = Instant::now();
        loop {
            if quiet_since.elapsed() > self.timeout {
                return Err(timeout);
            }
            let (len, sender) = match self.transport.recv(&mut self.buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timeout)
                }
                Err(source) => {
                    return Err(Error::Receive {
                        what: what.into(),
                        source,
                    })
                }
            };
            if sender != 0 {
                continue;
            }
            let data = self.buf.get(..len).ok_or_else(|| Error::Malformed {
                what: what.into(),
                detail: "a reply larger than the receive buffer",
            })?;
            for msg in parse_messages(data).map_err(|e| e.about(what))? {
                if msg.port != self.port || !seqs.contains(&msg.seq) {
                    continue;
                }
                quiet_since = Instant::now();
                if handle(&msg)? == Flow::Done {
                    return Ok(());
                }
            }
        }
    }

    /// Sends `message` asking for an acknowledgement, and waits for it.
    pub fn request(&mut self, message: &Message, what: &str) -> Result<(), Error> {
        let seq = self.next_seqs(1);
        let bytes = message.encode(seq, NLM_F_ACK).map_err(|e| e.about(what))?;
        self.send(&bytes, what)?;
        self.receive(what, seq..=seq, |msg| match msg.kind {
            NLMSG_ERROR | NLMSG_DONE => {
                let status = parse_status(msg).map_err(|e| e.about(what))?;
                if status.code == 0 {
                    Ok(Flow::Done)
                } else {
                    Err(refused(what, status, &bytes))
                }
            }
            _ => Ok(Flow::More),
        })
    }

    /// Dumps with `message` (NLM_F_DUMP is added): the payload of every reply up to NLMSG_DONE.
    /// A dump the kernel marks interrupted is dumped again, up to `DUMP_ATTEMPTS` times in all.
    pub fn dump(&mut self, message: &Message, what: &str) -> Result<Vec<Vec<u8>>, Error> {
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.next_seqs(1);
            let bytes = message.encode(seq, NLM_F_DUMP).map_err(|e| e.about(what))?;
            self.send(&bytes, what)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            self.receive(what, seq..=seq, |msg| {
                interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
                match msg.kind {
                    // An NLMSG_ERROR ends a dump that could not start.
                    NLMSG_DONE | NLMSG_ERROR => {
                        let status = parse_status(msg).map_err(|e| e.about(what))?;
                        if status.code != 0 {
                            return Err(refused(what, status, &bytes));
                        }
                        Ok(Flow::Done)
                    }
                    NLMSG_NOOP => Ok(Flow::More),
                    NLMSG_OVERRUN => Err(Error::Malformed {
                        what: what.into(),
                        detail: "the kernel overran the receive buffer",
                    }),
                    _ => {
                        out.push(msg.payload.to_vec());
                        Ok(Flow::More)
                    }
                }
            })?;
            if !interrupted {
                return Ok(out);
            }
        }
        Err(Error::DumpInterrupted {
            what: what.into(),
            attempts: DUMP_ATTEMPTS,
        })
    }

    /// Sends `messages` in one datagram with consecutive sequence numbers (an nfnetlink batch,
    /// markers included) and waits for the acknowledgement of each that asks for one
    /// (NLM_F_ACK). The first refusal of any is the error, naming the message by `names[i]`
    /// ("the batch" where there is no name).
    pub fn batch(&mut self, messages: &[Message], names: &[String]) -> Result<(), Error> {
        const WHAT: &str = "the batch";
        let name = |i: usize| names.get(i).map_or(WHAT, String::as_str);
        let count = u32::try_from(messages.len()).map_err(|_| Error::Malformed {
            what: WHAT.into(),
            detail: "too many messages",
        })?;
        if count == 0 {
            return Ok(());
        }
        let first = self.next_seqs(count);
        let mut encoded = Vec::with_capacity(messages.len());
        let mut awaited = Vec::with_capacity(messages.len());
        for (i, (seq, m)) in (first..).zip(messages).enumerate() {
            encoded.push(m.encode(seq, 0).map_err(|e| e.about(name(i)))?);
            awaited.push(m.flags() & NLM_F_ACK != 0);
        }
        let mut pending = awaited.iter().filter(|a| **a).count();
        self.send(&encoded.concat(), WHAT)?;
        if pending == 0 {
            return Ok(());
        }
        self.receive(WHAT, first..=first + (count - 1), |msg| {
            if msg.kind != NLMSG_ERROR {
                return Ok(Flow::More);
            }
            let i = msg.seq.wrapping_sub(first) as usize;
            let status = parse_status(msg).map_err(|e| e.about(name(i)))?;
            if status.code != 0 {
                let request = encoded.get(i).map_or(&[][..], Vec::as_slice);
                let what = format!("the kernel refused {}", name(i));
                return Err(refused(&what, status, request));
            }
            if let Some(waiting) = awaited.get_mut(i).filter(|w| **w) {
                *waiting = false;
                pending -= 1;
            }
            Ok(if pending == 0 { Flow::Done } else { Flow::More })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::VecDeque;

    use super::super::message::{NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_MULTI};
    use super::*;

    const PORT: u32 = 4242;

    /// Datagrams as (sender port id, bytes).
    type Datagrams = Vec<(u32, Vec<u8>)>;
    /// Answers a request with datagrams.
    type Answer = Box<dyn FnMut(&[u8]) -> Datagrams>;

    /// A kernel of canned replies: `answer` gets each request sent and returns the datagrams
    /// (sender port id, bytes) it is answered with.
    struct Canned {
        answer: Answer,
        queue: VecDeque<(u32, Vec<u8>)>,
        sent: Vec<Vec<u8>>,
        /// Replies forever with this instead of timing out, once the queue is empty.
        babble: Option<Vec<u8>>,
    }

    impl Transport for Canned {
        fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.sent.push(bytes.to_vec());
            let replies = (self.answer)(bytes);
            self.queue.extend(replies);
            Ok(())
        }

        fn recv(&mut self, buf: &mut [u8]) -> io::Result<(usize, u32)> {
            let (sender, bytes) = match (self.queue.pop_front(), &self.babble) {
                (Some(next), _) => next,
                (None, Some(babble)) => (0, babble.clone()),
                (None, None) => return Err(io::ErrorKind::WouldBlock.into()),
            };
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            Ok((bytes.len(), sender))
        }
    }

    fn socket(answer: impl FnMut(&[u8]) -> Datagrams + 'static) -> Socket<Canned> {
        let canned = Canned {
            answer: Box::new(answer),
            queue: VecDeque::new(),
            sent: Vec::new(),
            babble: None,
        };
        Socket::new(canned, PORT, Duration::from_millis(200))
    }

    fn seq_of(request: &[u8]) -> u32 {
        u32::from_ne_bytes(request[8..12].try_into().unwrap())
    }

    /// One message as the kernel sends it.
    fn reply(kind: u16, flags: u16, seq: u32, port: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&port.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    }

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0; 16]);
        reply(NLMSG_ERROR, NLM_F_CAPPED, seq, PORT, &payload)
    }

    fn done(seq: u32, flags: u16, code: i32) -> Vec<u8> {
        reply(
            NLMSG_DONE,
            NLM_F_MULTI | flags,
            seq,
            PORT,
            &code.to_ne_bytes(),
        )
    }

    fn object(seq: u32, flags: u16, name: &[u8]) -> Vec<u8> {
        reply(24, NLM_F_MULTI | flags, seq, PORT, name)
    }

    fn dump_request() -> Message {
        Message::new(26, 0, &[0; 12])
    }

    #[test]
    fn interrupted_dumps_are_dumped_again() {
        let mut attempt = 0;
        let mut s = socket(move |request| {
            attempt += 1;
            let seq = seq_of(request);
            let datagram = if attempt < 3 {
                // The table changed under the dump: the kernel flags the rest of it.
                [
                    object(seq, 0, b"old1"),
                    object(seq, NLM_F_DUMP_INTR, b"old2"),
                    done(seq, NLM_F_DUMP_INTR, 0),
                ]
                .concat()
            } else {
                [
                    object(seq, 0, b"new1"),
                    object(seq, 0, b"new2"),
                    done(seq, 0, 0),
                ]
                .concat()
            };
            vec![(0, datagram)]
        });
        let got = s.dump(&dump_request(), "route dump").unwrap();
        assert_eq!(got, [b"new1".to_vec(), b"new2".to_vec()]);
        let sent = &s.transport.sent;
        assert_eq!(sent.len(), 3);
        assert!(sent
            .iter()
            .all(|r| { u16::from_ne_bytes([r[6], r[7]]) & NLM_F_DUMP == NLM_F_DUMP }));
        assert_ne!(seq_of(&sent[0]), seq_of(&sent[2]));
    }

    #[test]
    fn a_dump_that_keeps_being_interrupted_fails_after_bounded_attempts() {
        let mut s = socket(|request| {
            let seq = seq_of(request);
            vec![(
                0,
                [object(seq, NLM_F_DUMP_INTR, b"x"), done(seq, 0, 0)].concat(),
            )]
        });
        let err = s.dump(&dump_request(), "link dump").unwrap_err();
        assert!(
            matches!(
                err,
                Error::DumpInterrupted {
                    attempts: DUMP_ATTEMPTS,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("link dump: the kernel's table kept changing during the dump ({DUMP_ATTEMPTS} attempts)")
        );
        assert_eq!(s.transport.sent.len(), DUMP_ATTEMPTS as usize);
    }

    #[test]
    fn an_error_in_done_fails_the_dump() {
        let mut s = socket(|request| {
            let seq = seq_of(request);
            let mut payload = (-libc::EMSGSIZE).to_ne_bytes().to_vec();
            let mut tlv = Message::new(0, 0, &[]);
            tlv.str(1, "Dump too large");
            payload.extend_from_slice(&tlv.encode(0, 0).unwrap()[16..]);
            let done = reply(
                NLMSG_DONE,
                NLM_F_MULTI | NLM_F_ACK_TLVS,
                seq,
                PORT,
                &payload,
            );
            vec![(0, [object(seq, 0, b"a"), done].concat())]
        });
        let err = s.dump(&dump_request(), "address dump").unwrap_err();
        assert_eq!(err.errno(), Some(libc::EMSGSIZE));
        let text = err.to_string();
        assert!(text.starts_with("address dump: "), "{text}");
        assert!(text.ends_with(": Dump too large"), "{text}");
        // Without ext-ack: the code alone.
        let mut s = socket(|request| vec![(0, done(seq_of(request), 0, -libc::EINVAL))]);
        let err = s.dump(&dump_request(), "dump").unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL));
        // A dump that cannot start ends in NLMSG_ERROR.
        let mut s = socket(|request| vec![(0, ack(seq_of(request), -libc::EOPNOTSUPP))]);
        let err = s.dump(&dump_request(), "dump").unwrap_err();
        assert_eq!(err.errno(), Some(libc::EOPNOTSUPP));
    }

    #[test]
    fn refusals_carry_the_kernels_extended_ack() {
        let mut s = socket(|request| {
            let seq = seq_of(request);
            let mut payload = (-libc::EINVAL).to_ne_bytes().to_vec();
            payload.extend_from_slice(&request[..16]);
            let mut tlv = Message::new(0, 0, &[]);
            tlv.str(1, "Unknown device type").u32_ne(2, 32);
            payload.extend_from_slice(&tlv.encode(0, 0).unwrap()[16..]);
            vec![(
                0,
                reply(
                    NLMSG_ERROR,
                    NLM_F_CAPPED | NLM_F_ACK_TLVS,
                    seq,
                    PORT,
                    &payload,
                ),
            )]
        });
        let mut m = Message::new(16, 0, &[0; 16]);
        m.begin(18).str(1, "nosuch").end();
        let err = s.request(&m, "create nosuch x").unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL));
        assert_eq!(
            err.to_string(),
            format!(
                "create nosuch x: {}: Unknown device type (attribute type 18 at byte 32)",
                io::Error::from_raw_os_error(libc::EINVAL)
            )
        );
        let sent = &s.transport.sent[0];
        assert_eq!(
            u16::from_ne_bytes([sent[6], sent[7]]) & NLM_F_ACK,
            NLM_F_ACK
        );
    }

    #[test]
    fn only_replies_to_this_request_from_the_kernel_count() {
        let mut s = socket(|request| {
            let seq = seq_of(request);
            vec![
                // A late reply to an earlier request.
                (0, ack(seq - 1, -libc::EEXIST)),
                // Addressed to another port.
                (
                    0,
                    reply(NLMSG_ERROR, 0, seq, PORT + 1, &(-libc::EPERM).to_ne_bytes()),
                ),
                // Not from the kernel.
                (77, ack(seq, -libc::EACCES)),
                (0, ack(seq, 0)),
            ]
        });
        s.request(&Message::new(16, 0, &[0; 16]), "set up").unwrap();
    }

    #[test]
    fn a_lost_reply_is_a_timeout_not_a_hang() {
        let mut s = socket(|_| Vec::new());
        let err = s
            .request(&Message::new(16, 0, &[0; 16]), "set up eth0")
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "set up eth0: no reply from the kernel within 200ms"
        );
        // Stale replies arriving without end do not keep the exchange alive either.
        let mut s = socket(|_| Vec::new());
        s.transport.babble = Some(ack(9999, 0));
        let started = Instant::now();
        let err = s.request(&Message::new(16, 0, &[0; 16]), "x").unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn malformed_and_truncated_replies_are_errors() {
        let mut s = socket(|request| {
            let mut bad = ack(seq_of(request), 0);
            bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
            vec![(0, bad)]
        });
        let err = s.request(&Message::new(16, 0, &[]), "x").unwrap_err();
        assert!(
            matches!(err, Error::Malformed { ref what, .. } if what == "x"),
            "{err:?}"
        );
        let mut s = socket(|_| vec![(0, vec![0; RECEIVE_BUFFER + 1])]);
        let err = s.request(&Message::new(16, 0, &[]), "x").unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn batches_wait_for_every_ack_and_name_the_refused_message() {
        let messages = [
            Message::new(0x10, 0, &[0; 4]),
            Message::new(0x0a00, NLM_F_ACK, &[1, 0, 0, 0]),
            Message::new(0x0a03, NLM_F_ACK, &[1, 0, 0, 0]),
            Message::new(0x11, 0, &[0; 4]),
        ];
        let names = ["the batch".to_string(), "table".into(), "chain".into()];
        // The acks come one datagram at a time, one repeated.
        let mut s = socket(|request| {
            let first = seq_of(request);
            vec![
                (0, ack(first + 1, 0)),
                (0, ack(first + 1, 0)),
                (0, ack(first + 2, 0)),
            ]
        });
        s.batch(&messages, &names).unwrap();
        let sent = parse_messages(&s.transport.sent[0]).unwrap();
        let seqs: Vec<u32> = sent.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let mut s = socket(|request| {
            let first = seq_of(request);
            vec![(
                0,
                [ack(first + 1, 0), ack(first + 2, -libc::ENOENT)].concat(),
            )]
        });
        let err = s.batch(&messages, &names).unwrap_err();
        assert!(
            err.to_string().starts_with("the kernel refused chain: "),
            "{err}"
        );
        assert_eq!(err.errno(), Some(libc::ENOENT));
        // Only a refusal can answer the markers (nf_tables missing); the error names the batch.
        let mut s = socket(|request| vec![(0, ack(seq_of(request), -libc::EOPNOTSUPP))]);
        let err = s.batch(&messages, &names).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the kernel refused the batch: "),
            "{err}"
        );
    }
}
