//! Just enough netlink for nf_tables: building messages with (nested) attributes, sending a batch
//! and collecting its acknowledgements, dumping objects and parsing their attributes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLA_F_NESTED: u16 = 0x8000;
const HEADER: usize = 16;

/// Why talking to the kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Netlink socket: {0}
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    /// The kernel refused {0}: {1}
    #[error("the kernel refused {0}: {1}")]
    Refused(String, io::Error),
    /// Malformed netlink reply: {0}
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

/// One netlink message being built: header, the 4-byte nfgenmsg, attributes.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Vec<u8>,
    /// Start offsets of the nested attributes still open.
    open: Vec<usize>,
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

impl Message {
    /// A message of `kind` with `flags`; `family` and `res_id` (big-endian) fill the nfgenmsg.
    pub fn new(kind: u16, flags: u16, family: u8, res_id: u16) -> Message {
        let mut buf = vec![0u8; HEADER];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&[family, 0]);
        buf.extend_from_slice(&res_id.to_be_bytes());
        Message {
            buf,
            open: Vec::new(),
        }
    }

    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Message {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, kind: u16, value: &str) -> &mut Message {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    /// A big-endian u32 attribute (nf_tables' integers).
    pub fn u32(&mut self, kind: u16, value: u32) -> &mut Message {
        self.attr(kind, &value.to_be_bytes())
    }

    pub fn begin(&mut self, kind: u16) -> &mut Message {
        self.open.push(self.buf.len());
        self.attr(kind | NLA_F_NESTED, &[])
    }

    pub fn end(&mut self) -> &mut Message {
        if let Some(start) = self.open.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The finished bytes with length and sequence number filled in.
    pub fn finish(&self, seq: u32) -> Vec<u8> {
        let mut buf = self.buf.clone();
        let len = buf.len() as u32;
        buf[0..4].copy_from_slice(&len.to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        buf
    }
}

/// A received message: type, flags, sequence number, and the bytes after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// Splits a datagram into messages.
pub fn split(mut data: &[u8]) -> Result<Vec<Received>, NetlinkError> {
    let mut out = Vec::new();
    while data.len() >= HEADER {
        let word =
            |at: usize| u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let len = word(0) as usize;
        if len < HEADER || len > data.len() {
            return Err(NetlinkError::Malformed("message length"));
        }
        out.push(Received {
            kind: u16::from_ne_bytes([data[4], data[5]]),
            flags: u16::from_ne_bytes([data[6], data[7]]),
            seq: word(8),
            payload: data[HEADER..len].to_vec(),
        });
        data = &data[align(len).min(data.len())..];
    }
    Ok(out)
}

/// Attributes as (type without flags, payload).
pub fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        data = &data[align(len).min(data.len())..];
    }
    out
}

/// The payload of attribute `kind`.
pub fn attr(data: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(data)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

/// A NUL-terminated string attribute's text.
pub fn attr_str(data: &[u8], kind: u16) -> Option<String> {
    let bytes = attr(data, kind)?;
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

pub fn attr_u32(data: &[u8], kind: u16) -> Option<u32> {
    let b = attr(data, kind)?;
    Some(u32::from_be_bytes([
        *b.first()?,
        *b.get(1)?,
        *b.get(2)?,
        *b.get(3)?,
    ]))
}

/// A NETLINK_NETFILTER socket.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open() -> Result<Socket, NetlinkError> {
        // SAFETY: plain socket creation.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: socket returned a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: timeout is a valid timeval of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Socket { fd, seq: 1 })
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        // SAFETY: a zeroed sockaddr_nl with the family set addresses the kernel.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: bytes and addr are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn recv(&self) -> Result<Vec<Received>, NetlinkError> {
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        split(&buf[..n as usize])
    }

    /// Sends `messages` between `begin` and `end` (the batch markers) as one datagram; each
    /// message asks for an ack. Returns once all are acknowledged, or the first refusal, named by
    /// `names[i]`.
    pub fn batch(
        &mut self,
        begin: &Message,
        messages: &[Message],
        end: &Message,
        names: &[String],
    ) -> Result<(), NetlinkError> {
        let first = self.seq;
        let mut bytes = begin.finish(first);
        for (i, m) in messages.iter().enumerate() {
            bytes.extend(m.finish(first + 1 + i as u32));
        }
        bytes.extend(end.finish(first + 1 + messages.len() as u32));
        self.seq += 2 + messages.len() as u32;
        self.send(&bytes)?;
        let mut acked = 0;
        while acked < messages.len() {
            for reply in self.recv()? {
                if reply.kind != NLMSG_ERROR {
                    continue;
                }
                let code = reply
                    .payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or(NetlinkError::Malformed("short error message"))?;
                if code != 0 {
                    let index = reply.seq.wrapping_sub(first + 1) as usize;
                    let name = names
                        .get(index)
                        .cloned()
                        .unwrap_or_else(|| "the batch".into());
                    return Err(NetlinkError::Refused(
                        name,
                        io::Error::from_raw_os_error(-code),
                    ));
                }
                acked += 1;
            }
        }
        Ok(())
    }

    /// Sends a dump request and returns the payloads of every reply up to NLMSG_DONE.
    pub fn dump(&mut self, request: &Message, what: &str) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let seq = self.seq;
        self.seq += 1;
        self.send(&request.finish(seq))?;
        let mut out = Vec::new();
        loop {
            for reply in self.recv()? {
                match reply.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = reply
                            .payload
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        if code != 0 {
                            return Err(NetlinkError::Refused(
                                what.to_string(),
                                io::Error::from_raw_os_error(-code),
                            ));
                        }
                    }
                    _ => out.push(reply.payload),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_the_parser() {
        let mut m = Message::new(0x0a06, NLM_F_REQUEST, 1, 0);
        m.str(1, "keel")
            .begin(4)
            .u32(1, 7)
            .attr(2, &[1, 2, 3])
            .end()
            .u32(5, 9);
        let bytes = m.finish(42);
        let msgs = split(&bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        let msg = &msgs[0];
        assert_eq!((msg.kind, msg.flags, msg.seq), (0x0a06, NLM_F_REQUEST, 42));
        assert_eq!(&msg.payload[..4], &[1, 0, 0, 0]);
        let body = &msg.payload[4..];
        assert_eq!(attr_str(body, 1).as_deref(), Some("keel"));
        let nested = attr(body, 4).unwrap();
        assert_eq!(attr_u32(nested, 1), Some(7));
        assert_eq!(attr(nested, 2), Some(&[1u8, 2, 3][..]));
        assert_eq!(attr_u32(body, 5), Some(9));
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn truncated_input_is_refused_not_trusted() {
        let bytes = Message::new(1, 0, 0, 0).finish(1);
        assert!(split(&bytes[..10]).unwrap().is_empty());
        let mut bad = bytes.clone();
        bad[0] = 200;
        assert!(split(&bad).is_err());
        assert!(attrs(&[8, 0, 1, 0, 1]).is_empty());
    }
}
