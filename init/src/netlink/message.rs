//! Netlink messages (`struct nlmsghdr`, a family header, attributes): building requests, splitting
//! a received datagram into messages, and reading the kernel's acknowledgements and end-of-dump
//! markers, with the error code and extended acknowledgement they carry.

use std::fmt;

use super::attr::{self, align, NLA_F_NESTED};
use super::Error;

/// The size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
/// Set by the kernel on a dump's messages when the table changed while it was dumped.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
/// On an acknowledgement: the request is not echoed back (NETLINK_CAP_ACK, or a success).
pub const NLM_F_CAPPED: u16 = 0x100;
/// On an acknowledgement or NLMSG_DONE: extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

/// Extended-ack attributes (`enum nlmsgerr_attrs`).
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;
const NLMSGERR_ATTR_MISS_TYPE: u16 = 5;

/// A request under construction: header, family header, attributes.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Vec<u8>,
    /// Start offsets of the nested attributes still open.
    open: Vec<usize>,
    /// Something written did not fit its length field; `encode` refuses the message.
    overflow: bool,
}

impl Message {
    /// A request of type `kind` with `flags` (NLM_F_REQUEST is always added) and the family's
    /// fixed header (`ifinfomsg`, `nfgenmsg`, ...).
    pub fn new(kind: u16, flags: u16, family_header: &[u8]) -> Message {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(family_header);
        buf.resize(align(buf.len()), 0);
        Message {
            buf,
            open: Vec::new(),
            overflow: false,
        }
    }

    pub fn kind(&self) -> u16 {
        u16::from_ne_bytes([self.buf[4], self.buf[5]])
    }

    pub fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.buf[6], self.buf[7]])
    }

    /// Appends raw bytes (a family header inside a nested attribute), padded.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Message {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Message {
        if !attr::put(&mut self.buf, kind, payload) {
            self.overflow = true;
        }
        self
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, kind: u16, value: &str) -> &mut Message {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    pub fn u8(&mut self, kind: u16, value: u8) -> &mut Message {
        self.attr(kind, &[value])
    }

    /// A u16 in the host's byte order (rtnetlink's integers).
    pub fn u16_ne(&mut self, kind: u16, value: u16) -> &mut Message {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A u32 in the host's byte order (rtnetlink's integers).
    pub fn u32_ne(&mut self, kind: u16, value: u32) -> &mut Message {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A big-endian u32 (nf_tables' integers).
    pub fn u32_be(&mut self, kind: u16, value: u32) -> &mut Message {
        self.attr(kind, &value.to_be_bytes())
    }

    /// Opens a nested attribute; what follows goes inside it until `end`.
    pub fn begin(&mut self, kind: u16) -> &mut Message {
        self.open.push(self.buf.len());
        self.attr(kind | NLA_F_NESTED, &[])
    }

    /// Closes the innermost open nested attribute.
    pub fn end(&mut self) -> &mut Message {
        match self.open.pop() {
            Some(start) if attr::close_nest(&mut self.buf, start) => {}
            _ => self.overflow = true,
        }
        self
    }

    /// The bytes to send, with sequence number `seq` and `flags` added to the message's own.
    /// Refused if an attribute or the message outgrew its length field, or a nest is still open.
    pub fn encode(&self, seq: u32, flags: u16) -> Result<Vec<u8>, Error> {
        let malformed = |detail| Error::Malformed {
            what: "request".into(),
            detail,
        };
        if self.overflow {
            return Err(malformed("an attribute too long or a nest closed twice"));
        }
        if !self.open.is_empty() {
            return Err(malformed("a nested attribute left open"));
        }
        let len = u32::try_from(self.buf.len()).map_err(|_| malformed("message too long"))?;
        let mut buf = self.buf.clone();
        buf[0..4].copy_from_slice(&len.to_ne_bytes());
        buf[6..8].copy_from_slice(&(self.flags() | flags).to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        Ok(buf)
    }
}

/// A received message: its header's fields and the bytes after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// The port id it is addressed to (ours, for replies to our requests).
    pub port: u32,
    pub payload: &'a [u8],
}

fn word(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn half(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

/// Splits a datagram into messages. A message whose length is under the header's or beyond the
/// datagram is an error; bytes too few for another header are ignored. Total on arbitrary bytes.
pub fn parse_messages(mut data: &[u8]) -> Result<Vec<Received<'_>>, Error> {
    let mut out = Vec::new();
    while let (Some(len), Some(kind), Some(flags), Some(seq), Some(port)) = (
        word(data, 0),
        half(data, 4),
        half(data, 6),
        word(data, 8),
        word(data, 12),
    ) {
        let len = len as usize;
        let payload = match data.get(NLMSG_HDRLEN..len) {
            Some(payload) if len >= NLMSG_HDRLEN => payload,
            _ => {
                return Err(Error::Malformed {
                    what: "reply".into(),
                    detail: "message length",
                })
            }
        };
        out.push(Received {
            kind,
            flags,
            seq,
            port,
            payload,
        });
        data = data.get(align(len)..).unwrap_or_default();
    }
    Ok(out)
}

/// The kernel's extended acknowledgement (NETLINK_EXT_ACK): why it refused a request, in words,
/// and where in the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtAck {
    /// NLMSGERR_ATTR_MSG, e.g. "Unknown device type".
    pub message: Option<String>,
    /// NLMSGERR_ATTR_OFFS: the offending attribute's offset in the request message.
    pub offset: Option<u32>,
    /// The type of the attribute at `offset`, read from the request we sent.
    pub attribute: Option<u16>,
    /// NLMSGERR_ATTR_MISS_TYPE: the type of a required attribute that was missing.
    pub missing: Option<u32>,
}

impl ExtAck {
    fn parse(data: &[u8]) -> ExtAck {
        let mut ext = ExtAck::default();
        for a in attr::attrs(data) {
            match a.kind {
                NLMSGERR_ATTR_MSG => ext.message = Some(a.str()).filter(|m| !m.is_empty()),
                NLMSGERR_ATTR_OFFS => ext.offset = a.u32_ne(),
                NLMSGERR_ATTR_MISS_TYPE => ext.missing = a.u32_ne(),
                _ => {}
            }
        }
        ext
    }

    /// Fills `attribute` from the request the offset points into.
    pub fn locate(&mut self, request: &[u8]) {
        self.attribute = self
            .offset
            .and_then(|at| half(request, (at as usize).checked_add(2)?))
            .map(|kind| kind & attr::NLA_TYPE_MASK);
    }
}

/// Nothing when the kernel said nothing more; else ": message (attribute type T at byte N)".
impl fmt::Display for ExtAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        match (self.attribute, self.offset) {
            (Some(kind), Some(at)) => write!(f, " (attribute type {kind} at byte {at})")?,
            (None, Some(at)) => write!(f, " (at byte {at} of the request)")?,
            _ => {}
        }
        if let Some(kind) = self.missing {
            write!(f, " (missing attribute type {kind})")?;
        }
        Ok(())
    }
}

/// What an NLMSG_ERROR or NLMSG_DONE message reports: 0 or a negative errno, and the extended
/// acknowledgement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub code: i32,
    pub ext: ExtAck,
}

/// Reads an NLMSG_ERROR (`struct nlmsgerr`: the code, the request's header, its payload unless
/// capped, then the extended-ack attributes) or NLMSG_DONE (the code, then the attributes)
/// message. Other types report success.
pub fn parse_status(msg: &Received<'_>) -> Result<Status, Error> {
    let code = i32::from_ne_bytes([0, 1, 2, 3].map(|i| msg.payload.get(i).copied().unwrap_or(0)));
    let tlvs = match msg.kind {
        NLMSG_ERROR => {
            if msg.payload.len() < 4 {
                return Err(Error::Malformed {
                    what: "reply".into(),
                    detail: "error message shorter than its code",
                });
            }
            if msg.flags & NLM_F_ACK_TLVS == 0 {
                None
            } else if msg.flags & NLM_F_CAPPED != 0 {
                Some(4 + NLMSG_HDRLEN)
            } else {
                // The whole request is echoed: its header's length says how much to skip.
                word(msg.payload, 4).map(|len| 4 + align(len as usize))
            }
        }
        // An old kernel's DONE may carry no code.
        NLMSG_DONE => (msg.flags & NLM_F_ACK_TLVS != 0).then_some(4),
        _ => return Ok(Status::default()),
    };
    let ext = tlvs
        .and_then(|at| msg.payload.get(at..))
        .map(ExtAck::parse)
        .unwrap_or_default();
    Ok(Status { code, ext })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_the_parser() {
        let mut m = Message::new(0x0a06, 0, &[1, 0, 0, 0]);
        m.str(1, "keel")
            .begin(4)
            .u32_be(1, 7)
            .attr(2, &[1, 2, 3])
            .end()
            .u32_be(5, 9);
        let bytes = m.encode(42, NLM_F_ACK).unwrap();
        let msgs = parse_messages(&bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        let msg = &msgs[0];
        assert_eq!(
            (msg.kind, msg.flags, msg.seq),
            (0x0a06, NLM_F_REQUEST | NLM_F_ACK, 42)
        );
        assert_eq!(&msg.payload[..4], &[1, 0, 0, 0]);
        let body = &msg.payload[4..];
        assert_eq!(attr::find(body, 1).unwrap().str(), "keel");
        let nested = attr::find(body, 4).unwrap();
        assert!(nested.nested);
        assert_eq!(nested.attrs().find(1).unwrap().u32_be(), Some(7));
        assert_eq!(nested.attrs().find(2).unwrap().payload, &[1u8, 2, 3][..]);
        assert_eq!(attr::find(body, 5).unwrap().u32_be(), Some(9));
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn truncated_input_is_refused_not_trusted() {
        let bytes = Message::new(1, 0, &[0; 4]).encode(1, 0).unwrap();
        assert!(parse_messages(&bytes[..10]).unwrap().is_empty());
        let mut bad = bytes.clone();
        bad[0] = 200;
        assert!(parse_messages(&bad).is_err());
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse_messages(&bad).is_err());
        assert_eq!(attr::attrs(&[8, 0, 1, 0, 1]).count(), 0);
        // Any prefix of two messages parses or is refused; none panics.
        let two = [bytes.clone(), bytes].concat();
        for end in 0..=two.len() {
            let _ = parse_messages(&two[..end]);
        }
    }

    #[test]
    fn what_does_not_fit_is_refused_at_encoding() {
        let mut m = Message::new(1, 0, &[]);
        m.attr(1, &vec![0; 70_000]);
        assert!(m.encode(1, 0).is_err());
        let mut m = Message::new(1, 0, &[]);
        m.begin(1);
        assert!(m.encode(1, 0).is_err());
        let mut m = Message::new(1, 0, &[]);
        m.end();
        assert!(m.encode(1, 0).is_err());
        let mut m = Message::new(1, 0, &[]);
        m.begin(1).u8(2, 1).end();
        assert!(m.encode(1, 0).is_ok());
    }

    /// An NLMSG_ERROR as Linux 6.18 sent it (x86-64, NETLINK_EXT_ACK and NETLINK_CAP_ACK on, read
    /// with `Kernel::recv` in a private network namespace) for RTM_NEWLINK "x0" of kind "nosuch":
    /// -EOPNOTSUPP, the request's header, NLMSGERR_ATTR_MSG "Unknown device type".
    const CAPTURED_EOPNOTSUPP: &[u8] = &[
        60, 0, 0, 0, 2, 0, 0, 3, 5, 0, 0, 0, 135, 53, 0, 0, // len 60, ERROR, CAPPED|ACK_TLVS
        161, 255, 255, 255, // -95
        56, 0, 0, 0, 16, 0, 5, 6, 5, 0, 0, 0, 0, 0, 0, 0, // the request's header
        24, 0, 1, 0, 85, 110, 107, 110, 111, 119, 110, 32, 100, 101, 118, 105, 99, 101, 32, 116,
        121, 112, 101, 0, // NLMSGERR_ATTR_MSG
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn extended_acks_are_read_from_captured_bytes() {
        let msgs = parse_messages(CAPTURED_EOPNOTSUPP).unwrap();
        assert_eq!((msgs.len(), msgs[0].seq, msgs[0].port), (1, 5, 13703));
        assert_eq!(msgs[0].flags, NLM_F_CAPPED | NLM_F_ACK_TLVS);
        let status = parse_status(&msgs[0]).unwrap();
        assert_eq!(status.code, -libc::EOPNOTSUPP);
        assert_eq!(status.ext.message.as_deref(), Some("Unknown device type"));
        assert_eq!(status.ext.to_string(), ": Unknown device type");
        // Cut anywhere, it is refused or read without the message; never a panic.
        for end in 0..CAPTURED_EOPNOTSUPP.len() {
            if let Ok(msgs) = parse_messages(&CAPTURED_EOPNOTSUPP[..end]) {
                for m in msgs {
                    let _ = parse_status(&m);
                }
            }
        }
    }

    fn error_message(flags: u16, code: i32, request: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(request);
        payload.resize(align(payload.len()), 0);
        payload.extend_from_slice(tlvs);
        let mut m = Message::new(NLMSG_ERROR, 0, &payload);
        m.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        m.encode(9, 0).unwrap()
    }

    #[test]
    fn extended_acks_after_an_echoed_request_and_in_done() {
        // Without NETLINK_CAP_ACK the whole request is echoed before the attributes.
        let mut request = Message::new(16, NLM_F_ACK, &[0; 16]);
        request.str(3, "br0").begin(18).str(1, "bogus").end();
        let request = request.encode(9, 0).unwrap();
        let mut tlvs = Message::new(0, 0, &[]);
        tlvs.str(NLMSGERR_ATTR_MSG, "Unknown device type")
            .u32_ne(NLMSGERR_ATTR_OFFS, 40)
            .u32_ne(NLMSGERR_ATTR_MISS_TYPE, 7);
        let tlvs = &tlvs.encode(0, 0).unwrap()[NLMSG_HDRLEN..];
        let bytes = error_message(NLM_F_ACK_TLVS, -libc::EINVAL, &request, tlvs);
        let msg = parse_messages(&bytes).unwrap()[0];
        let mut status = parse_status(&msg).unwrap();
        status.ext.locate(&request);
        assert_eq!(
            status.ext,
            ExtAck {
                message: Some("Unknown device type".into()),
                offset: Some(40),
                attribute: Some(18),
                missing: Some(7),
            }
        );
        assert_eq!(
            status.ext.to_string(),
            ": Unknown device type (attribute type 18 at byte 40) (missing attribute type 7)"
        );
        // The flags decide: without ACK_TLVS nothing after the code is read as attributes.
        let bytes = error_message(0, -libc::EINVAL, &request, tlvs);
        let status = parse_status(&parse_messages(&bytes).unwrap()[0]).unwrap();
        assert_eq!(status.ext, ExtAck::default());
        assert_eq!(status.ext.to_string(), "");
        // An echoed length pointing past the message yields no ext-ack rather than garbage.
        let mut lying = request.clone();
        lying[0..4].copy_from_slice(&4000u32.to_ne_bytes());
        let bytes = error_message(NLM_F_ACK_TLVS, -libc::EINVAL, &lying, tlvs);
        let status = parse_status(&parse_messages(&bytes).unwrap()[0]).unwrap();
        assert_eq!(
            (status.code, status.ext),
            (-libc::EINVAL, ExtAck::default())
        );

        // DONE: the code, then attributes.
        let mut done = Message::new(NLMSG_DONE, 0, &(-libc::EMSGSIZE).to_ne_bytes());
        done.str(NLMSGERR_ATTR_MSG, "dump too big");
        done.buf[6..8].copy_from_slice(&(NLM_F_MULTI | NLM_F_ACK_TLVS).to_ne_bytes());
        let bytes = done.encode(3, 0).unwrap();
        let status = parse_status(&parse_messages(&bytes).unwrap()[0]).unwrap();
        assert_eq!(status.code, -libc::EMSGSIZE);
        assert_eq!(status.ext.message.as_deref(), Some("dump too big"));
        // A bare DONE is success; a short NLMSG_ERROR is malformed.
        let bare = Received {
            kind: NLMSG_DONE,
            flags: NLM_F_MULTI,
            seq: 1,
            port: 1,
            payload: &[],
        };
        assert_eq!(parse_status(&bare).unwrap(), Status::default());
        let short = Received {
            kind: NLMSG_ERROR,
            payload: &[1, 2],
            ..bare
        };
        assert!(parse_status(&short).is_err());
    }
}
