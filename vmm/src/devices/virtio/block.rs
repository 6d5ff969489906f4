//! virtio-blk on a raw image file or block device, served synchronously on the event loop (as
//! Firecracker's synchronous engine): read, write, flush, get-id (the serial), discard and
//! write-zeroes, read-only disks, optional O_DIRECT.
//!
//! Every request is checked against the disk's size before any I/O; a request that does not fit,
//! has no status byte, or comes on a read-only disk with a write fails with IOERR or UNSUPP and
//! the device keeps serving.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::chain::{copy_from, copy_to, Request};
use super::{
    serve_queue, DeviceError, DeviceEvent, Progress, VirtioDevice, VirtioTransport,
    F_RING_INDIRECT_DESC, F_VERSION_1, TYPE_BLOCK,
};
use crate::config::DiskConfig;
use crate::devices::RateLimitedLog;

const QUEUE_SIZE: u16 = 256;
pub const SECTOR: u64 = 512;
/// Largest request: far above what Linux sends (seg_max pages), small enough to bound memory.
const MAX_REQUEST: u64 = 32 << 20;
/// I/O is done through a bounce buffer of at most this many bytes at a time.
const CHUNK: usize = 1 << 20;
/// O_DIRECT wants buffers aligned to the logical block size; a page covers every device.
const DIRECT_ALIGN: usize = 4096;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Serial bytes returned by GET_ID.
const ID_BYTES: usize = 20;
/// Discard and write-zeroes segments per request.
const MAX_RANGE_SEGMENTS: u32 = 1;
const RANGE_SEGMENT_LEN: usize = 16;
/// Largest discard / write-zeroes range, in sectors.
const MAX_RANGE_SECTORS: u32 = 0x3f_ffff;

static REQUEST_FAILED: RateLimitedLog = RateLimitedLog::new();

/// The disk image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Cannot open disk {0}: {1}
    #[error("cannot open disk {0}: {1}")]
    Open(String, std::io::Error),
}

/// A virtio-blk device.
pub struct Block {
    name: String,
    file: File,
    sectors: u64,
    read_only: bool,
    direct: bool,
    serial: [u8; ID_BYTES],
    config: Vec<u8>,
}

impl Block {
    /// Opens the disk `cfg` names.
    pub fn open(cfg: &DiskConfig) -> Result<Self, BlockError> {
        let name = cfg.path.display().to_string();
        let mut options = OpenOptions::new();
        options.read(true).write(!cfg.read_only);
        if cfg.direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options
            .open(&cfg.path)
            .map_err(|e| BlockError::Open(name.clone(), e))?;
        // A block device's size comes from seeking to its end; a file's from its metadata.
        let size = {
            use std::io::Seek;
            (&file)
                .seek(std::io::SeekFrom::End(0))
                .map_err(|e| BlockError::Open(name.clone(), e))?
        };
        let mut serial = [0u8; ID_BYTES];
        if let Some(s) = &cfg.serial {
            let n = s.len().min(ID_BYTES);
            serial[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        let sectors = size / SECTOR;
        Ok(Block {
            name,
            file,
            sectors,
            read_only: cfg.read_only,
            direct: cfg.direct,
            serial,
            config: config_space(sectors),
        })
    }

    fn capacity_bytes(&self) -> u64 {
        self.sectors * SECTOR
    }

    /// Checks that `len` bytes from `sector` lie inside the disk; returns the byte offset.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR)?;
        let end = start.checked_add(len)?;
        (end <= self.capacity_bytes()).then_some(start)
    }

    fn bounce(&self, len: usize) -> (Vec<u8>, usize) {
        if self.direct {
            let buf = vec![0u8; len + DIRECT_ALIGN];
            let off = buf.as_ptr().align_offset(DIRECT_ALIGN);
            (buf, off)
        } else {
            (vec![0u8; len], 0)
        }
    }

    /// Executes one parsed request; returns (status, bytes written into the guest's buffers
    /// before the status byte).
    fn execute(&mut self, mem: &GuestMemoryMmap, req: &Request) -> Result<(u8, u64), String> {
        let mut header = [0u8; 16];
        if copy_from(mem, &req.readable, 0, &mut header).map_err(|e| e.to_string())? < 16 {
            return Err("request header shorter than 16 bytes".into());
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        // The status byte is the last writable byte; data comes before it.
        let data_in_len = req.writable_len - 1;
        let data_out_len = req.readable_len - 16;
        // Data flows one way per request: a read carrying device-readable data, or a write
        // carrying device-writable data, has its descriptors the wrong way round.
        if (kind == T_IN || kind == T_GET_ID) && data_out_len != 0 {
            return Err(format!("request {kind} carries device-readable data"));
        }
        if kind != T_IN && kind != T_GET_ID && data_in_len != 0 {
            return Err(format!("request {kind} carries device-writable data"));
        }
        match kind {
            T_IN => {
                let offset = self.range(sector, data_in_len).ok_or_else(|| {
                    format!("read of {data_in_len} bytes at sector {sector} past the end")
                })?;
                let mut done = 0u64;
                while done < data_in_len {
                    let n = (data_in_len - done).min(CHUNK as u64) as usize;
                    let (mut buf, off) = self.bounce(n);
                    let slice = &mut buf[off..off + n];
                    self.file
                        .read_exact_at(slice, offset + done)
                        .map_err(|e| format!("read at {}: {e}", offset + done))?;
                    copy_to(mem, &req.writable, done, slice).map_err(|e| e.to_string())?;
                    done += n as u64;
                }
                Ok((S_OK, data_in_len))
            }
            T_OUT => {
                if self.read_only {
                    return Err("write to a read-only disk".into());
                }
                let offset = self.range(sector, data_out_len).ok_or_else(|| {
                    format!("write of {data_out_len} bytes at sector {sector} past the end")
                })?;
                let mut done = 0u64;
                while done < data_out_len {
                    let n = (data_out_len - done).min(CHUNK as u64) as usize;
                    let (mut buf, off) = self.bounce(n);
                    let slice = &mut buf[off..off + n];
                    copy_from(mem, &req.readable, 16 + done, slice).map_err(|e| e.to_string())?;
                    self.file
                        .write_all_at(slice, offset + done)
                        .map_err(|e| format!("write at {}: {e}", offset + done))?;
                    done += n as u64;
                }
                Ok((S_OK, 0))
            }
            T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data().map_err(|e| format!("flush: {e}"))?;
                }
                Ok((S_OK, 0))
            }
            T_GET_ID => {
                let n = (data_in_len as usize).min(ID_BYTES);
                copy_to(mem, &req.writable, 0, &self.serial[..n]).map_err(|e| e.to_string())?;
                Ok((S_OK, n as u64))
            }
            T_DISCARD | T_WRITE_ZEROES => {
                if self.read_only {
                    return Err("discard or write-zeroes on a read-only disk".into());
                }
                let mut seg = [0u8; RANGE_SEGMENT_LEN];
                if data_out_len != RANGE_SEGMENT_LEN as u64
                    || copy_from(mem, &req.readable, 16, &mut seg).map_err(|e| e.to_string())?
                        != RANGE_SEGMENT_LEN
                {
                    return Err(format!(
                        "range request of {data_out_len} bytes, expected one segment"
                    ));
                }
                let mut start = [0u8; 8];
                start.copy_from_slice(&seg[..8]);
                let start = u64::from_le_bytes(start);
                let count = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
                let len = u64::from(count) * SECTOR;
                let offset = self
                    .range(start, len)
                    .filter(|_| count <= MAX_RANGE_SECTORS)
                    .ok_or_else(|| format!("range of {count} sectors at {start} past the end"))?;
                self.zero_range(offset, len, kind == T_DISCARD)?;
                Ok((S_OK, 0))
            }
            _ => Ok((S_UNSUPP, 0)),
        }
    }

    /// Discard punches a hole; write-zeroes zeroes the range (through fallocate when the file
    /// system can, by writing zeros otherwise). Either way the range reads back as zeros.
    fn zero_range(&self, offset: u64, len: u64, discard: bool) -> Result<(), String> {
        let mode = if discard {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        // SAFETY: fallocate only takes integers and a descriptor we own.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if rc == 0 {
            return Ok(());
        }
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let (buf, off) = self.bounce(n);
            self.file
                .write_all_at(&buf[off..off + n], offset + done)
                .map_err(|e| format!("write zeros at {}: {e}", offset + done))?;
            done += n as u64;
        }
        Ok(())
    }

    /// Serves one chain; returns the used length.
    fn serve(&mut self, mem: &GuestMemoryMmap, req: &Request) -> u32 {
        if req.writable_len == 0 || req.readable_len < 16 {
            REQUEST_FAILED.log(format_args!(
                "virtio-blk {}: request {} has no header or no status byte",
                self.name, req.head
            ));
            return 0;
        }
        let (status, written) = match self.execute(mem, req) {
            Ok(r) => r,
            Err(why) => {
                REQUEST_FAILED.log(format_args!("virtio-blk {}: {why}", self.name));
                (S_IOERR, 0)
            }
        };
        let status_offset = req.writable_len - 1;
        if copy_to(mem, &req.writable, status_offset, &[status]).is_err() {
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }
}

/// The `virtio_blk_config` image: capacity, seg_max, blk_size, discard and write-zeroes limits.
fn config_space(sectors: u64) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&sectors.to_le_bytes());
    c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
    c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
    c[36..40].copy_from_slice(&MAX_RANGE_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&MAX_RANGE_SEGMENTS.to_le_bytes());
    c[44..48].copy_from_slice(&1u32.to_le_bytes());
    c[48..52].copy_from_slice(&MAX_RANGE_SECTORS.to_le_bytes());
    c[52..56].copy_from_slice(&MAX_RANGE_SEGMENTS.to_le_bytes());
    c[56] = 1;
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let base = F_VERSION_1 | F_RING_INDIRECT_DESC | F_SEG_MAX | F_BLK_SIZE | F_FLUSH;
        if self.read_only {
            base | F_RO
        } else {
            base | F_DISCARD | F_WRITE_ZEROES
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data)
    }

    fn process(
        &mut self,
        event: DeviceEvent,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        transport: &mut dyn VirtioTransport,
    ) -> Result<Progress, DeviceError> {
        if event != DeviceEvent::Queue(0) {
            return Ok(Progress::Done);
        }
        let Some(queue) = queues.first_mut() else {
            return Ok(Progress::Done);
        };
        serve_queue(queue, 0, mem, transport, MAX_REQUEST, |req| match req {
            Ok(r) => self.serve(mem, &r),
            Err(_) => 0,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::devices::virtio::pci::tests::{bring_up, device};
    use crate::devices::virtio::testing::GuestQueue;
    use std::path::PathBuf;
    use vm_memory::{Bytes, GuestAddress};

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const HDR: u64 = 0x10000;
    const DATA: u64 = 0x20000;
    const STATUS: u64 = 0x30000;

    struct Disk {
        path: PathBuf,
    }

    impl Disk {
        fn new(name: &str, len: usize) -> Disk {
            let path = std::env::temp_dir().join(format!("keel-blk-{name}-{}", std::process::id()));
            let bytes: Vec<u8> = (0..len).map(|i| (i / 512) as u8).collect();
            std::fs::write(&path, bytes).unwrap();
            Disk { path }
        }
        fn cfg(&self, read_only: bool) -> DiskConfig {
            DiskConfig {
                path: self.path.clone(),
                read_only,
                serial: Some("keel-serial-1".into()),
                direct: false,
            }
        }
    }

    impl Drop for Disk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Queues one request: header, optional data (direction by `data_write`), status.
    fn request(q: &mut GuestQueue, head: u16, kind: u32, sector: u64, data: Option<(u32, bool)>) {
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        q.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        q.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        match data {
            Some((len, device_writes)) => {
                q.desc(head, HDR, 16, NEXT, head + 1);
                let flags = NEXT | if device_writes { WRITE } else { 0 };
                q.desc(head + 1, DATA, len, flags, head + 2);
                q.desc(head + 2, STATUS, 1, WRITE, 0);
            }
            None => {
                q.desc(head, HDR, 16, NEXT, head + 1);
                q.desc(head + 1, STATUS, 1, WRITE, 0);
            }
        }
        q.publish(head);
    }

    fn status(q: &GuestQueue) -> u8 {
        q.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn setup(
        disk: &Disk,
        read_only: bool,
    ) -> (GuestQueue, crate::devices::virtio::pci::VirtioPciDevice) {
        let q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(Block::open(&disk.cfg(read_only)).unwrap()));
        bring_up(&mut d, 16);
        (q, d)
    }

    #[test]
    fn reads_writes_flushes_and_reports_its_serial() {
        let disk = Disk::new("rw", 64 * 512);
        let (mut q, mut d) = setup(&disk, false);
        request(&mut q, 0, T_IN, 3, Some((1024, true)));
        d.handle(DeviceEvent::Queue(0));
        assert_eq!(status(&q), S_OK);
        assert_eq!(q.used(0), (0, 1025));
        let mut data = [0u8; 1024];
        q.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert!(data[..512].iter().all(|b| *b == 3) && data[512..].iter().all(|b| *b == 4));

        q.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        request(&mut q, 0, T_OUT, 10, Some((512, false)));
        d.handle(DeviceEvent::Queue(0));
        assert_eq!(status(&q), S_OK);
        let file = std::fs::read(&disk.path).unwrap();
        assert!(file[10 * 512..11 * 512].iter().all(|b| *b == 0xab));

        request(&mut q, 0, T_FLUSH, 0, None);
        d.handle(DeviceEvent::Queue(0));
        assert_eq!(status(&q), S_OK);

        request(&mut q, 0, T_GET_ID, 0, Some((20, true)));
        d.handle(DeviceEvent::Queue(0));
        let mut id = [0u8; 20];
        q.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..13], b"keel-serial-1");
        assert_eq!(q.used(3).1, 21);
    }

    #[test]
    fn discard_and_write_zeroes_read_back_as_zeros() {
        let disk = Disk::new("zero", 64 * 512);
        let (mut q, mut d) = setup(&disk, false);
        for (kind, sector) in [(T_DISCARD, 8u64), (T_WRITE_ZEROES, 20)] {
            let mut seg = [0u8; 16];
            seg[..8].copy_from_slice(&sector.to_le_bytes());
            seg[8..12].copy_from_slice(&2u32.to_le_bytes());
            q.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
            request(&mut q, 0, kind, 0, Some((16, false)));
            d.handle(DeviceEvent::Queue(0));
            assert_eq!(status(&q), S_OK, "kind {kind}");
            let file = std::fs::read(&disk.path).unwrap();
            let at = sector as usize * 512;
            assert!(file[at..at + 1024].iter().all(|b| *b == 0), "kind {kind}");
            assert_eq!(file[at + 1024], (sector + 2) as u8, "only the range");
        }
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let disk = Disk::new("ro", 8 * 512);
        let (mut q, mut d) = setup(&disk, true);
        assert_ne!(d_features(&disk, true) & F_RO, 0);
        request(&mut q, 0, T_OUT, 0, Some((512, false)));
        d.handle(DeviceEvent::Queue(0));
        assert_eq!(status(&q), S_IOERR);
        assert_eq!(std::fs::read(&disk.path).unwrap()[0], 0);
    }

    fn d_features(disk: &Disk, ro: bool) -> u64 {
        Block::open(&disk.cfg(ro)).unwrap().features()
    }

    #[test]
    fn bad_requests_fail_and_the_disk_keeps_serving() {
        let disk = Disk::new("bad", 8 * 512);
        let (mut q, mut d) = setup(&disk, false);
        // Past the end, overflowing sector arithmetic, an unknown type.
        for (kind, sector, want) in [
            (T_IN, 7, S_IOERR),
            (T_IN, u64::MAX / 256, S_IOERR),
            (T_OUT, 8, S_IOERR),
            (99, 0, S_UNSUPP),
        ] {
            request(&mut q, 0, kind, sector, Some((1024, kind == T_IN)));
            d.handle(DeviceEvent::Queue(0));
            assert_eq!(status(&q), want, "kind {kind} sector {sector}");
        }
        // No status byte: returned with length 0, nothing written.
        q.desc(0, HDR, 16, 0, 0);
        q.publish(0);
        d.handle(DeviceEvent::Queue(0));
        assert_eq!(q.used(4), (0, 0));
        // Data descriptor device-readable where the device must write (a read request): the
        // data goes nowhere and the status says so.
        request(&mut q, 0, T_IN, 0, Some((512, false)));
        d.handle(DeviceEvent::Queue(0));
        assert_eq!(status(&q), S_IOERR);
        // Still serving.
        request(&mut q, 0, T_IN, 0, Some((512, true)));
        d.handle(DeviceEvent::Queue(0));
        assert_eq!(status(&q), S_OK);
    }

    #[test]
    fn direct_io_uses_aligned_buffers() {
        let disk = Disk::new("direct", 16 * 512);
        let mut cfg = disk.cfg(false);
        cfg.direct = true;
        // tmpfs refuses O_DIRECT; where it is refused there is nothing to test.
        let Ok(block) = Block::open(&cfg) else {
            eprintln!("O_DIRECT unsupported on the temp directory: skipping");
            return;
        };
        let q = GuestQueue::new(16);
        let mut d = device(&q, Box::new(block));
        bring_up(&mut d, 16);
        let mut q = q;
        request(&mut q, 0, T_IN, 4, Some((4096, true)));
        d.handle(DeviceEvent::Queue(0));
        assert_eq!(status(&q), S_OK);
    }
}
