//! Netlink attributes (`struct nlattr`: a u16 length, a u16 type, the payload, padding to four
//! bytes): writing them into a message, and reading them back. Reading is total: any byte string
//! yields attributes or a `Malformed` error, never a panic or a read out of bounds, so it can face
//! the kernel's replies and a fuzzer alike (`parse_attributes` is the fuzz entry point).

use std::net::IpAddr;

use super::Error;

/// The attribute's payload holds attributes of its own.
pub const NLA_F_NESTED: u16 = 0x8000;
/// The attribute's payload is in network byte order.
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// The type without the two flags above.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
/// The length and type before an attribute's payload.
pub const NLA_HDRLEN: usize = 4;

/// `len` rounded up to netlink's 4-byte alignment.
pub fn align(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// One attribute as read: its type (flags removed), whether it was flagged nested, its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    pub kind: u16,
    pub nested: bool,
    pub payload: &'a [u8],
}

impl<'a> Attr<'a> {
    /// The attributes inside a nested attribute's payload.
    pub fn attrs(&self) -> Attrs<'a> {
        attrs(self.payload)
    }

    pub fn u8(&self) -> Option<u8> {
        self.payload.first().copied()
    }

    /// A u16 in the host's byte order (rtnetlink's integers).
    pub fn u16_ne(&self) -> Option<u16> {
        Some(u16::from_ne_bytes(self.payload.get(..2)?.try_into().ok()?))
    }

    /// A u32 in the host's byte order (rtnetlink's integers).
    pub fn u32_ne(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.payload.get(..4)?.try_into().ok()?))
    }

    /// A big-endian u32 (nf_tables' integers).
    pub fn u32_be(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.payload.get(..4)?.try_into().ok()?))
    }

    /// A string attribute's text: up to the first NUL (or the whole payload), invalid UTF-8
    /// replaced.
    pub fn str(&self) -> String {
        let end = self
            .payload
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.payload.len());
        String::from_utf8_lossy(self.payload.get(..end).unwrap_or_default()).into_owned()
    }

    /// An IPv4 (4 bytes) or IPv6 (16 bytes) address; any other length is none.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.payload.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(self.payload).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(self.payload).ok()?)),
            _ => None,
        }
    }
}

/// Why a byte string is not a well-formed sequence of attributes.
fn next(data: &[u8]) -> Result<Option<(Attr<'_>, &[u8])>, &'static str> {
    if data.is_empty() {
        return Ok(None);
    }
    let Some(header) = data.get(..NLA_HDRLEN) else {
        return Err("attribute header truncated");
    };
    let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
    let kind = u16::from_ne_bytes([header[2], header[3]]);
    if len < NLA_HDRLEN {
        return Err("attribute length shorter than its header");
    }
    let Some(payload) = data.get(NLA_HDRLEN..len) else {
        return Err("attribute longer than the data holding it");
    };
    // The last attribute's padding may be missing.
    let rest = data.get(align(len)..).unwrap_or_default();
    let attr = Attr {
        kind: kind & NLA_TYPE_MASK,
        nested: kind & NLA_F_NESTED != 0,
        payload,
    };
    Ok(Some((attr, rest)))
}

/// Iterates over the attributes of `data`, stopping quietly at the first malformed one (see
/// `malformed`). Never reads out of bounds and always ends.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
    malformed: Option<&'static str>,
}

impl<'a> Attrs<'a> {
    /// Why the iteration stopped early, if it did.
    pub fn malformed(&self) -> Option<&'static str> {
        self.malformed
    }

    /// The first attribute of type `kind`.
    pub fn find(mut self, kind: u16) -> Option<Attr<'a>> {
        self.by_ref().find(|a| a.kind == kind)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        match next(self.rest) {
            Ok(Some((attr, rest))) => {
                self.rest = rest;
                Some(attr)
            }
            Ok(None) => None,
            Err(why) => {
                self.malformed = Some(why);
                self.rest = &[];
                None
            }
        }
    }
}

/// The attributes of `data`, leniently (see `Attrs`).
pub fn attrs(data: &[u8]) -> Attrs<'_> {
    Attrs {
        rest: data,
        malformed: None,
    }
}

/// The first attribute of type `kind` in `data`.
pub fn find(data: &[u8], kind: u16) -> Option<Attr<'_>> {
    attrs(data).find(kind)
}

/// Every attribute of `data`, strictly: a truncated header, a length shorter than the header or
/// longer than what is left is an error. Total on arbitrary bytes; the fuzz entry point.
pub fn parse_attributes(data: &[u8]) -> Result<Vec<Attr<'_>>, Error> {
    let mut all = attrs(data);
    let out: Vec<Attr<'_>> = all.by_ref().collect();
    match all.malformed() {
        None => Ok(out),
        Some(detail) => Err(Error::Malformed {
            what: "attributes".into(),
            detail,
        }),
    }
}

/// Appends attribute `kind` with `payload` (and padding) to `buf`; false if the payload is too
/// long for an attribute (nothing is written then).
pub(crate) fn put(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) -> bool {
    let Ok(len) = u16::try_from(payload.len().saturating_add(NLA_HDRLEN)) else {
        return false;
    };
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align(buf.len()), 0);
    true
}

/// Sets the length of the nested attribute that starts at `start` to reach the end of `buf`;
/// false if that is too long for an attribute or `start` is not an attribute in `buf`.
pub(crate) fn close_nest(buf: &mut [u8], start: usize) -> bool {
    let Ok(len) = u16::try_from(buf.len().saturating_sub(start)) else {
        return false;
    };
    match buf.get_mut(start..start.saturating_add(2)) {
        Some(field) if len as usize >= NLA_HDRLEN => {
            field.copy_from_slice(&len.to_ne_bytes());
            true
        }
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(len: u16, kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = len.to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// A case: its name, the input, the attributes read as (type, payload), the strict parse's
    /// error.
    type Case = (
        &'static str,
        Vec<u8>,
        Vec<(u16, Vec<u8>)>,
        Option<&'static str>,
    );

    #[test]
    fn attributes_parse_totally() {
        let two = [raw(8, 1, &[1, 2, 3, 4]), raw(6, 2, &[9, 9, 0, 0])].concat();
        let cases: Vec<Case> = vec![
            ("empty", vec![], vec![], None),
            (
                "two",
                two.clone(),
                vec![(1, vec![1, 2, 3, 4]), (2, vec![9, 9])],
                None,
            ),
            (
                "zero-length payload",
                raw(4, 7, &[]),
                vec![(7, vec![])],
                None,
            ),
            (
                "last padding missing",
                raw(5, 3, &[42]),
                vec![(3, vec![42])],
                None,
            ),
            (
                "flags stripped",
                raw(4, 5 | NLA_F_NESTED | NLA_F_NET_BYTEORDER, &[]),
                vec![(5, vec![])],
                None,
            ),
            (
                "header truncated",
                vec![8, 0, 1],
                vec![],
                Some("attribute header truncated"),
            ),
            (
                "garbage after a good one",
                [raw(4, 1, &[]), vec![1]].concat(),
                vec![(1, vec![])],
                Some("attribute header truncated"),
            ),
            (
                "length zero",
                raw(0, 1, &[0, 0, 0, 0]),
                vec![],
                Some("attribute length shorter than its header"),
            ),
            (
                "length under the header",
                raw(3, 1, &[0]),
                vec![],
                Some("attribute length shorter than its header"),
            ),
            (
                "payload truncated",
                raw(8, 1, &[1]),
                vec![],
                Some("attribute longer than the data holding it"),
            ),
            (
                "oversized length",
                raw(u16::MAX, 1, &[0; 64]),
                vec![],
                Some("attribute longer than the data holding it"),
            ),
        ];
        for (name, input, want, error) in cases {
            let got: Vec<(u16, Vec<u8>)> = attrs(&input)
                .map(|a| (a.kind, a.payload.to_vec()))
                .collect();
            assert_eq!(got, want, "{name}");
            match (parse_attributes(&input), error) {
                (Ok(all), None) => assert_eq!(all.len(), want.len(), "{name}"),
                (Err(Error::Malformed { detail, .. }), Some(e)) => assert_eq!(detail, e, "{name}"),
                (other, _) => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_and_every_byte_string_is_handled() {
        let mut nested = Vec::new();
        assert!(put(&mut nested, 1, b"bridge\0"));
        let mut data = Vec::new();
        assert!(put(&mut data, 3, b"br0\0"));
        assert!(put(&mut data, 18 | NLA_F_NESTED, &nested));
        for end in 0..=data.len() {
            let _ = parse_attributes(&data[..end]);
            for a in attrs(&data[..end]) {
                let _ = (a.str(), a.u32_ne(), a.ip(), a.attrs().count());
            }
        }
        // A small exhaustive sweep over short inputs.
        for a in 0..=255u8 {
            for b in [0u8, 1, 4, 5, 8, 255] {
                let input = [a, b, 1, 0, 7, 7, 7];
                for end in 0..=input.len() {
                    let _ = parse_attributes(&input[..end]);
                }
            }
        }
    }

    #[test]
    fn typed_readers_check_lengths() {
        let a = |payload: &'static [u8]| Attr {
            kind: 1,
            nested: false,
            payload,
        };
        assert_eq!(
            a(&[1, 0, 0, 0]).u32_ne(),
            Some(u32::from_ne_bytes([1, 0, 0, 0]))
        );
        assert_eq!(a(&[0, 0, 0, 9]).u32_be(), Some(9));
        assert_eq!(a(&[1, 2]).u32_ne(), None);
        assert_eq!(a(&[]).u8(), None);
        assert_eq!(a(b"eth0\0junk").str(), "eth0");
        assert_eq!(a(b"no-nul").str(), "no-nul");
        assert_eq!(a(&[192, 0, 2, 1]).ip(), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(a(&[1, 2, 3]).ip(), None);
    }

    #[test]
    fn writing_pads_and_refuses_what_does_not_fit() {
        let mut buf = Vec::new();
        assert!(put(&mut buf, 1, &[1]));
        let mut want = 5u16.to_ne_bytes().to_vec();
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[1, 0, 0, 0]);
        assert_eq!(buf, want);
        let before = buf.len();
        assert!(!put(&mut buf, 1, &vec![0; 70_000]));
        assert_eq!(buf.len(), before);
        assert!(!close_nest(&mut buf, 100));
        assert!(close_nest(&mut buf, 0));
    }
}
