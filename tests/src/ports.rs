//! TCP port forwarding through QEMU's user network (`hostfwd`), on free ports of 127.0.0.1.

use std::net::{Ipv4Addr, TcpListener};

use crate::error::Error;

/// A guest TCP port reachable on the host at `127.0.0.1:host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

/// Picks a distinct free host port for each guest port: all are held open together so the kernel
/// cannot hand out one twice. They are released before QEMU binds them, so another process could
/// take one in between; QEMU then fails to start and says so on stderr.
pub fn allocate(guest_ports: &[u16]) -> Result<Vec<Forward>, Error> {
    let listeners = guest_ports
        .iter()
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::Port))
        .collect::<Result<Vec<_>, _>>()?;
    guest_ports
        .iter()
        .zip(&listeners)
        .map(|(&guest, listener)| {
            let host = listener.local_addr().map_err(Error::Port)?.port();
            Ok(Forward { host, guest })
        })
        .collect()
}

/// The `-netdev user` options for `forwards`, such as `,hostfwd=tcp:127.0.0.1:40001-:22`.
pub fn hostfwd_options(forwards: &[Forward]) -> String {
    forwards
        .iter()
        .map(|f| format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hostfwd_options_table() {
        let cases: &[(&[Forward], &str)] = &[
            (&[], ""),
            (
                &[Forward {
                    host: 40001,
                    guest: 22,
                }],
                ",hostfwd=tcp:127.0.0.1:40001-:22",
            ),
            (
                &[
                    Forward {
                        host: 40001,
                        guest: 22,
                    },
                    Forward {
                        host: 40002,
                        guest: 443,
                    },
                ],
                ",hostfwd=tcp:127.0.0.1:40001-:22,hostfwd=tcp:127.0.0.1:40002-:443",
            ),
        ];
        for (forwards, want) in cases {
            assert_eq!(hostfwd_options(forwards), *want);
        }
    }

    #[test]
    fn allocated_ports_are_bindable_and_distinct() {
        let forwards = allocate(&[22, 443]).unwrap();
        assert_eq!(
            forwards.iter().map(|f| f.guest).collect::<Vec<_>>(),
            [22, 443]
        );
        assert_ne!(forwards[0].host, forwards[1].host);
        for f in &forwards {
            assert_ne!(f.host, 0);
            TcpListener::bind((Ipv4Addr::LOCALHOST, f.host)).unwrap();
        }
    }
}
