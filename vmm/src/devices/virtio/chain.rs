//! Descriptor chains as hostile input. `virtio-queue` already stops loops (a chain yields at most
//! queue-size descriptors) and bad indices, but it ends such a chain silently; [`parse`] turns
//! that, wrong-direction descriptors, addresses outside guest memory and oversized chains into
//! errors, and hands devices plain segment lists to copy through.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// A guest buffer: `len` bytes at `addr`, known to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A parsed chain: device-readable segments first, then device-writable ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub head: u16,
    pub readable: Vec<Segment>,
    pub writable: Vec<Segment>,
    pub readable_len: u64,
    pub writable_len: u64,
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Descriptor chain {0} is empty or its head cannot be read
    #[error("descriptor chain {0} is empty or its head cannot be read")]
    Empty(u16),
    /// Descriptor chain {0} loops or points past the descriptor table
    #[error("descriptor chain {0} loops or points past the descriptor table")]
    Broken(u16),
    /// Descriptor chain {0} has a device-readable descriptor after a device-writable one
    #[error("descriptor chain {0} has a device-readable descriptor after a device-writable one")]
    WrongDirection(u16),
    /// Descriptor chain {0} holds more than {1} bytes
    #[error("descriptor chain {0} holds more than {1} bytes")]
    TooLong(u16, u64),
    /// Descriptor chain {0}: buffer {1:#x}+{2:#x} is outside guest memory
    #[error("descriptor chain {0}: buffer {1:#x}+{2:#x} is outside guest memory")]
    OutOfMemory(u16, u64, u32),
}

/// Walks `chain`, checking every descriptor; `max_bytes` bounds the chain's total length.
pub fn parse<M>(chain: DescriptorChain<M>, max_bytes: u64) -> Result<Request, ChainError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let head = chain.head_index();
    let mem: &GuestMemoryMmap = chain.memory();
    let mem = mem.clone();
    let mut req = Request {
        head,
        ..Request::default()
    };
    let mut last: Option<Descriptor> = None;
    for desc in chain {
        last = Some(desc);
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        let in_memory = seg.len == 0
            || mem.check_range(seg.addr, seg.len as usize, vm_memory::Permissions::Read);
        if !in_memory {
            return Err(ChainError::OutOfMemory(head, seg.addr.raw_value(), seg.len));
        }
        if desc.is_write_only() {
            req.writable_len += u64::from(seg.len);
            req.writable.push(seg);
        } else {
            if !req.writable.is_empty() {
                return Err(ChainError::WrongDirection(head));
            }
            req.readable_len += u64::from(seg.len);
            req.readable.push(seg);
        }
        if req.readable_len + req.writable_len > max_bytes {
            return Err(ChainError::TooLong(head, max_bytes));
        }
    }
    match last {
        None => Err(ChainError::Empty(head)),
        // The walk ended on a descriptor that still points onwards: a loop cut short or a next
        // index past the table.
        Some(d) if d.has_next() => Err(ChainError::Broken(head)),
        Some(_) => Ok(req),
    }
}

/// Copies guest bytes from `segs`, starting `skip` bytes in, into `out`. Returns how many bytes
/// were copied (less than `out.len()` when the segments end first).
pub fn copy_from(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    mut skip: u64,
    out: &mut [u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    let mut done = 0;
    for seg in segs {
        if done == out.len() {
            break;
        }
        let len = u64::from(seg.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(out.len() - done);
        mem.read_slice(&mut out[done..done + n], seg.addr.unchecked_add(skip))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// Copies `data` into the guest through `segs`, starting `skip` bytes in. Returns the count copied.
pub fn copy_to(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    mut skip: u64,
    data: &[u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    let mut done = 0;
    for seg in segs {
        if done == data.len() {
            break;
        }
        let len = u64::from(seg.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], seg.addr.unchecked_add(skip))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::virtio::testing::GuestQueue;
    use virtio_queue::QueueT;

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    fn parse_head(q: &mut GuestQueue, head: u16) -> Result<Request, ChainError> {
        q.publish(head);
        let mut queue = q.queue();
        let chain = queue.pop_descriptor_chain(&q.mem).unwrap();
        parse(chain, 1 << 20)
    }

    #[test]
    fn good_chain_splits_by_direction() {
        let mut q = GuestQueue::new(8);
        q.desc(0, 0x10000, 16, NEXT, 1);
        q.desc(1, 0x11000, 512, NEXT | WRITE, 2);
        q.desc(2, 0x12000, 1, WRITE, 0);
        let req = parse_head(&mut q, 0).unwrap();
        assert_eq!(req.readable.len(), 1);
        assert_eq!(req.writable.len(), 2);
        assert_eq!((req.readable_len, req.writable_len), (16, 513));
    }

    #[test]
    fn hostile_chains_are_refused() {
        let gib = 1u64 << 30;
        // (index, address, length, flags, next)
        type Desc = (u16, u64, u32, u16, u16);
        let cases: Vec<(&str, Vec<Desc>, ChainError)> = vec![
            (
                "loop",
                vec![(0, 0x10000, 16, NEXT, 1), (1, 0x11000, 16, NEXT, 0)],
                ChainError::Broken(0),
            ),
            (
                "next past the table",
                vec![(0, 0x10000, 16, NEXT, 200)],
                ChainError::Broken(0),
            ),
            (
                "outside guest memory",
                vec![(0, 4 * gib, 16, 0, 0)],
                ChainError::OutOfMemory(0, 4 * gib, 16),
            ),
            (
                "straddles the end of memory",
                vec![(0, (16 << 20) - 8, 16, 0, 0)],
                ChainError::OutOfMemory(0, (16 << 20) - 8, 16),
            ),
            (
                "readable after writable",
                vec![(0, 0x10000, 16, NEXT | WRITE, 1), (1, 0x11000, 16, 0, 0)],
                ChainError::WrongDirection(0),
            ),
            (
                "oversized",
                vec![
                    (0, 0x10000, 0x80_0000, NEXT, 1),
                    (1, 0x10000, 0x80_0000, 0, 0),
                ],
                ChainError::TooLong(0, 1 << 20),
            ),
        ];
        for (name, descs, want) in cases {
            let mut q = GuestQueue::new(8);
            for (i, addr, len, flags, next) in descs {
                q.desc(i, addr, len, flags, next);
            }
            assert_eq!(parse_head(&mut q, 0).unwrap_err(), want, "{name}");
        }
    }

    #[test]
    fn copies_cross_segments() {
        let q = GuestQueue::new(8);
        let segs = [
            Segment {
                addr: GuestAddress(0x10000),
                len: 3,
            },
            Segment {
                addr: GuestAddress(0x20000),
                len: 5,
            },
        ];
        assert_eq!(copy_to(&q.mem, &segs, 1, b"abcdefghij").unwrap(), 7);
        let mut out = [0u8; 8];
        assert_eq!(copy_from(&q.mem, &segs, 0, &mut out).unwrap(), 8);
        assert_eq!(&out, b"\0abcdefg");
        let mut out = [0u8; 4];
        assert_eq!(copy_from(&q.mem, &segs, 6, &mut out).unwrap(), 2);
    }
}
