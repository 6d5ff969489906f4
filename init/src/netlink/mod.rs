//! Keel's one netlink codec, shared by rtnetlink (`net::rtnetlink`: links, addresses, routes) and
//! nf_tables (`firewall::nft`): messages and attributes (`message`, `attr`) and the socket
//! (`socket`) that sends requests, batches and dumps and reads the replies.
//!
//! What it guarantees the callers: every reply is checked against the request's sequence number
//! and our port id, and only datagrams from the kernel are read; a reply that does not come
//! within the receive timeout is an error instead of a hang (PID 1 must not block forever); dumps
//! the kernel marks interrupted (`NLM_F_DUMP_INTR`) are retried a bounded number of times; the
//! error code in `NLMSG_DONE` is checked; the kernel's extended acknowledgement (its reason in
//! words and the offending attribute) is part of every refusal; parsing is total on arbitrary
//! bytes. Written by hand (a few hundred lines) rather than pulling in an async netlink stack.

pub mod attr;
pub mod message;
pub mod socket;

use std::io;
use std::time::Duration;

pub use attr::{parse_attributes, Attr};
pub use message::{ExtAck, Message};
pub use socket::Socket;

/// A netlink exchange with the kernel failed. `what` names the operation.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum Error {
    /// cannot open a netlink socket: {0}
    Open(#[source] io::Error),
    /// {what}: cannot send to the kernel: {source}
    Send { what: String, source: io::Error },
    /// {what}: cannot receive from the kernel: {source}
    Receive { what: String, source: io::Error },
    /// {what}: no reply from the kernel within {timeout:?}
    Timeout { what: String, timeout: Duration },
    /// {what}: {source}{ext}
    Kernel {
        what: String,
        source: io::Error,
        ext: ExtAck,
    },
    /// {what}: the kernel's table kept changing during the dump ({attempts} attempts)
    DumpInterrupted { what: String, attempts: u32 },
    /// {what}: malformed netlink data: {detail}
    Malformed { what: String, detail: &'static str },
    /// no link named {0}
    NoLink(String),
    /// {what}: {source}
    Io { what: String, source: io::Error },
}

impl Error {
    /// The errno the kernel (or a system call) refused with, if that is what happened.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Open(e) => e.raw_os_error(),
            Error::Send { source, .. }
            | Error::Receive { source, .. }
            | Error::Kernel { source, .. }
            | Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The same error about `what` (for errors found where the operation was not known).
    pub(crate) fn about(self, what: &str) -> Error {
        match self {
            Error::Malformed { detail, .. } => Error::Malformed {
                what: what.into(),
                detail,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_operation_then_the_cause() {
        let refused = Error::Kernel {
            what: "create bond bond0".into(),
            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            ext: ExtAck {
                message: Some("Unknown device type".into()),
                ..ExtAck::default()
            },
        };
        assert_eq!(
            refused.to_string(),
            format!(
                "create bond bond0: {}: Unknown device type",
                io::Error::from_raw_os_error(libc::EOPNOTSUPP)
            )
        );
        assert_eq!(refused.errno(), Some(libc::EOPNOTSUPP));
        let timeout = Error::Timeout {
            what: "netlink link dump".into(),
            timeout: socket::TIMEOUT,
        };
        assert_eq!(
            timeout.to_string(),
            "netlink link dump: no reply from the kernel within 5s"
        );
        assert_eq!(timeout.errno(), None);
        assert_eq!(
            Error::NoLink("eth9".into()).to_string(),
            "no link named eth9"
        );
        let malformed = Error::Malformed {
            what: "reply".into(),
            detail: "message length",
        };
        assert_eq!(
            malformed.about("route dump").to_string(),
            "route dump: malformed netlink data: message length"
        );
    }
}
