//! A minimal ext4 formatter for the state partition (`state::create`): 4 KiB blocks, extents,
//! a journal, sparse superblock backups, no checksums. mke2fs with its libraries would add about
//! 3 MiB to the root image held in RAM; this is a few hundred lines. The kernel mounts the result
//! as ext4 and `e2fsck -fn` finds it clean (see the tests).
//!
//! Layout of group g: [superblock + group descriptors, in groups 0, 1 and powers of 3, 5, 7]
//! [block bitmap] [inode bitmap] [inode table] [data]. Group 0's data starts with the root
//! directory block, the lost+found block and the journal.

use std::fs::File;
use std::os::unix::fs::FileExt;

const BLOCK: u64 = 4096;
const BLOCKS_PER_GROUP: u64 = 8 * BLOCK;
const INODE_SIZE: u64 = 256;
/// One inode per 64 KiB: the state holds a few dozen files.
const BYTES_PER_INODE: u64 = 64 << 10;
const MIN_INODES_PER_GROUP: u64 = 256;
/// Inodes 1-10 are reserved; 11 is lost+found.
const FIRST_INO: u32 = 11;
const ROOT_INO: u32 = 2;
const JOURNAL_INO: u32 = 8;
/// A last group smaller than its metadata plus this many blocks is left out, as mke2fs does.
const MIN_LAST_GROUP_DATA: u64 = 64;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const EXTENTS_FL: u32 = 0x8_0000;
const JBD2_MAGIC: u32 = 0xc03b_3998;

/// Why formatting failed.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// {0} bytes is too small for an ext4 file system with a journal
    #[error("{0} bytes is too small for an ext4 file system with a journal")]
    TooSmall(u64),
    /// {0} bytes is too large for a file system without 64-bit block numbers
    #[error("{0} bytes is too large for a file system without 64-bit block numbers")]
    TooLarge(u64),
    /// Label {0:?} is longer than 16 bytes
    #[error("Label {0:?} is longer than 16 bytes")]
    Label(String),
    /// Cannot write the file system at byte {0}: {1}
    #[error("Cannot write the file system at byte {0}: {1}")]
    Write(u64, std::io::Error),
}

/// The geometry of a file system of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub blocks: u64,
    pub groups: u64,
    pub inodes_per_group: u64,
    pub journal_blocks: u64,
}

impl Geometry {
    pub fn for_bytes(bytes: u64) -> Result<Geometry, Ext4Error> {
        let mut blocks = bytes / BLOCK;
        if blocks >= 1 << 32 {
            return Err(Ext4Error::TooLarge(bytes));
        }
        let journal_blocks = match blocks {
            b if b < 32768 => 1024,
            b if b < 262_144 => 4096,
            _ => 8192,
        };
        loop {
            let groups = blocks.div_ceil(BLOCKS_PER_GROUP).max(1);
            let inodes = (blocks * BLOCK / BYTES_PER_INODE).div_ceil(groups);
            let inodes_per_group = inodes.clamp(MIN_INODES_PER_GROUP, 8 * BLOCK) / 16 * 16;
            let g = Geometry {
                blocks,
                groups,
                inodes_per_group,
                journal_blocks,
            };
            let last = groups - 1;
            let last_size = blocks - last * BLOCKS_PER_GROUP;
            if groups > 1 && last_size < g.overhead(last) + MIN_LAST_GROUP_DATA {
                blocks = last * BLOCKS_PER_GROUP;
                continue;
            }
            if g.group_size(0) < g.overhead(0) + 2 + journal_blocks + MIN_LAST_GROUP_DATA {
                return Err(Ext4Error::TooSmall(bytes));
            }
            return Ok(g);
        }
    }

    fn gdt_blocks(&self) -> u64 {
        (self.groups * 32).div_ceil(BLOCK)
    }

    fn itable_blocks(&self) -> u64 {
        self.inodes_per_group * INODE_SIZE / BLOCK
    }

    fn group_start(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP
    }

    fn group_size(&self, g: u64) -> u64 {
        (self.blocks - self.group_start(g)).min(BLOCKS_PER_GROUP)
    }

    /// Blocks of group g holding metadata: superblock copy and descriptors, bitmaps, inodes.
    fn overhead(&self, g: u64) -> u64 {
        let sb = if has_super(g) {
            1 + self.gdt_blocks()
        } else {
            0
        };
        sb + 2 + self.itable_blocks()
    }

    fn block_bitmap(&self, g: u64) -> u64 {
        self.group_start(g) + self.overhead(g) - 2 - self.itable_blocks()
    }

    fn inode_table(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 2
    }

    /// Group 0's first data block: the root directory; then lost+found, then the journal.
    fn root_block(&self) -> u64 {
        self.overhead(0)
    }

    fn journal_start(&self) -> u64 {
        self.root_block() + 2
    }

    /// Blocks in use in group g.
    fn used(&self, g: u64) -> u64 {
        self.overhead(g) + if g == 0 { 2 + self.journal_blocks } else { 0 }
    }
}

/// sparse_super: copies of the superblock in groups 0, 1 and powers of 3, 5 and 7.
fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut n = base;
        while n < g {
            n *= base;
        }
        n == g
    })
}

fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Block numbers fit u32: `for_bytes` refuses file systems of 2^32 blocks or more.
fn b32(v: u64) -> u32 {
    v as u32
}

/// What is specific to one file system.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    pub label: &'a str,
    pub uuid: [u8; 16],
    /// Creation time, seconds since the epoch.
    pub now: u32,
}

fn superblock(g: &Geometry, id: &Identity, jnl_block: &[u8; 60]) -> Vec<u8> {
    let mut sb = vec![0u8; 1024];
    let free_blocks: u64 = (0..g.groups).map(|n| g.group_size(n) - g.used(n)).sum();
    let inodes = g.inodes_per_group * g.groups;
    put32(&mut sb, 0x00, b32(inodes));
    put32(&mut sb, 0x04, b32(g.blocks));
    put32(&mut sb, 0x0c, b32(free_blocks));
    put32(&mut sb, 0x10, b32(inodes - u64::from(FIRST_INO)));
    put32(&mut sb, 0x18, 2); // log2(block size) - 10
    put32(&mut sb, 0x1c, 2);
    put32(&mut sb, 0x20, b32(BLOCKS_PER_GROUP));
    put32(&mut sb, 0x24, b32(BLOCKS_PER_GROUP));
    put32(&mut sb, 0x28, b32(g.inodes_per_group));
    put32(&mut sb, 0x30, id.now);
    put16(&mut sb, 0x36, 0xffff); // no mount-count checks
    put16(&mut sb, 0x38, 0xef53);
    put16(&mut sb, 0x3a, 1); // clean
    put16(&mut sb, 0x3c, 1); // errors: continue (Keel mounts with errors=remount-ro)
    put32(&mut sb, 0x40, id.now);
    put32(&mut sb, 0x4c, 1); // dynamic revision
    put32(&mut sb, 0x54, FIRST_INO);
    put16(&mut sb, 0x58, INODE_SIZE as u16);
    put32(&mut sb, 0x5c, COMPAT_HAS_JOURNAL);
    put32(&mut sb, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS);
    put32(&mut sb, 0x64, RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE);
    sb[0x68..0x78].copy_from_slice(&id.uuid);
    sb[0x78..0x78 + id.label.len()].copy_from_slice(id.label.as_bytes());
    put32(&mut sb, 0xe0, JOURNAL_INO);
    sb[0xfd] = 1; // s_jnl_blocks holds a copy of the journal inode's extents and size
    put32(&mut sb, 0x108, id.now);
    sb[0x10c..0x10c + 60].copy_from_slice(jnl_block);
    put32(&mut sb, 0x10c + 16 * 4, b32(g.journal_blocks * BLOCK));
    put16(&mut sb, 0x15c, 32);
    put16(&mut sb, 0x15e, 32);
    put32(&mut sb, 0x160, 1); // signed directory hash, as mke2fs on x86
    sb
}

fn group_descriptors(g: &Geometry) -> Vec<u8> {
    let mut gdt = vec![0u8; (g.gdt_blocks() * BLOCK) as usize];
    for n in 0..g.groups {
        let d = &mut gdt[(n * 32) as usize..(n * 32 + 32) as usize];
        put32(d, 0x00, b32(g.block_bitmap(n)));
        put32(d, 0x04, b32(g.block_bitmap(n) + 1));
        put32(d, 0x08, b32(g.inode_table(n)));
        put16(d, 0x0c, (g.group_size(n) - g.used(n)) as u16);
        let (free_inodes, dirs) = if n == 0 {
            (g.inodes_per_group - u64::from(FIRST_INO), 2)
        } else {
            (g.inodes_per_group, 0)
        };
        put16(d, 0x0e, free_inodes as u16);
        put16(d, 0x10, dirs);
    }
    gdt
}

/// A bitmap block with the first `used` bits set and everything past `valid` set (padding).
fn bitmap(used: u64, valid: u64) -> Vec<u8> {
    let mut map = vec![0u8; BLOCK as usize];
    for bit in (0..used).chain(valid..8 * BLOCK) {
        map[(bit / 8) as usize] |= 1 << (bit % 8);
    }
    map
}

/// An inode's i_block with one extent of `len` blocks at `start`.
fn one_extent(start: u64, len: u64) -> [u8; 60] {
    let mut b = [0u8; 60];
    put16(&mut b, 0, 0xf30a);
    put16(&mut b, 2, 1);
    put16(&mut b, 4, 4);
    put32(&mut b, 12, 0);
    put16(&mut b, 16, len as u16);
    put16(&mut b, 18, (start >> 32) as u16);
    put32(&mut b, 20, b32(start));
    b
}

fn inode(mode: u16, links: u16, blocks: u64, extent: &[u8; 60], now: u32) -> Vec<u8> {
    let mut i = vec![0u8; INODE_SIZE as usize];
    put16(&mut i, 0x00, mode);
    put32(&mut i, 0x04, b32(blocks * BLOCK));
    for at in [0x08, 0x0c, 0x10] {
        put32(&mut i, at, now);
    }
    put16(&mut i, 0x1a, links);
    put32(&mut i, 0x1c, b32(blocks * BLOCK / 512));
    put32(&mut i, 0x20, EXTENTS_FL);
    i[0x28..0x28 + 60].copy_from_slice(extent);
    put16(&mut i, 0x80, 32); // i_extra_isize
    put32(&mut i, 0x90, now); // creation time
    i
}

/// A directory block: `entries` (inode, name), the last one stretched to the block's end.
fn dir_block(entries: &[(u32, &str)]) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK as usize];
    let mut at = 0usize;
    for (n, (ino, name)) in entries.iter().enumerate() {
        let len = if n + 1 == entries.len() {
            BLOCK as usize - at
        } else {
            (8 + name.len()).div_ceil(4) * 4
        };
        put32(&mut block, at, *ino);
        put16(&mut block, at + 4, len as u16);
        block[at + 6] = name.len() as u8;
        block[at + 7] = 2; // directory
        block[at + 8..at + 8 + name.len()].copy_from_slice(name.as_bytes());
        at += len;
    }
    block
}

fn journal_superblock(g: &Geometry, uuid: &[u8; 16]) -> Vec<u8> {
    let mut j = vec![0u8; BLOCK as usize];
    let mut be = |at: usize, v: u32| j[at..at + 4].copy_from_slice(&v.to_be_bytes());
    be(0x00, JBD2_MAGIC);
    be(0x04, 4); // superblock v2
    be(0x0c, b32(BLOCK));
    be(0x10, b32(g.journal_blocks));
    be(0x14, 1); // first log block
    be(0x18, 1); // first expected sequence
    be(0x40, 1); // users: this file system
    j[0x30..0x40].copy_from_slice(uuid);
    j
}

/// Formats `bytes` of `file` starting at byte `offset` as ext4 labelled `id.label`.
pub fn format(file: &File, offset: u64, bytes: u64, id: &Identity) -> Result<Geometry, Ext4Error> {
    if id.label.len() > 16 {
        return Err(Ext4Error::Label(id.label.to_string()));
    }
    let g = Geometry::for_bytes(bytes)?;
    let write = |block: u64, data: &[u8]| {
        let at = offset + block * BLOCK;
        file.write_all_at(data, at)
            .map_err(|e| Ext4Error::Write(at, e))
    };
    let jnl_extent = one_extent(g.journal_start(), g.journal_blocks);
    let sb = superblock(&g, id, &jnl_extent);
    let gdt = group_descriptors(&g);
    let zeros = vec![0u8; (g.itable_blocks() * BLOCK) as usize];
    for n in 0..g.groups {
        if has_super(n) {
            let mut head = vec![0u8; BLOCK as usize];
            let mut copy = sb.clone();
            put16(&mut copy, 0x5a, n as u16);
            // Group 0's superblock sits 1 KiB into block 0 (after the boot sector), copies at 0.
            let at = if n == 0 { 1024 } else { 0 };
            head[at..at + 1024].copy_from_slice(&copy);
            write(g.group_start(n), &head)?;
            write(g.group_start(n) + 1, &gdt)?;
        }
        let inodes_used = if n == 0 { u64::from(FIRST_INO) } else { 0 };
        write(g.block_bitmap(n), &bitmap(g.used(n), g.group_size(n)))?;
        write(
            g.block_bitmap(n) + 1,
            &bitmap(inodes_used, g.inodes_per_group),
        )?;
        write(g.inode_table(n), &zeros)?;
    }
    let table = g.inode_table(0) * BLOCK;
    let put_inode = |ino: u32, data: Vec<u8>| {
        let at = offset + table + u64::from(ino - 1) * INODE_SIZE;
        file.write_all_at(&data, at)
            .map_err(|e| Ext4Error::Write(at, e))
    };
    let root = g.root_block();
    put_inode(ROOT_INO, inode(0o40755, 3, 1, &one_extent(root, 1), id.now))?;
    put_inode(
        FIRST_INO,
        inode(0o40700, 2, 1, &one_extent(root + 1, 1), id.now),
    )?;
    put_inode(
        JOURNAL_INO,
        inode(0o100600, 1, g.journal_blocks, &jnl_extent, id.now),
    )?;
    write(
        root,
        &dir_block(&[(ROOT_INO, "."), (ROOT_INO, ".."), (FIRST_INO, "lost+found")]),
    )?;
    write(root + 1, &dir_block(&[(FIRST_INO, "."), (ROOT_INO, "..")]))?;
    // The journal is zeroed: blocks left from an older file system must not look like a log.
    let journal_zeros = vec![0u8; (g.journal_blocks * BLOCK) as usize];
    write(g.journal_start(), &journal_zeros)?;
    write(g.journal_start(), &journal_superblock(&g, &id.uuid))?;
    Ok(g)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::atomic::testdir::TestDir;
    use std::process::Command;

    #[test]
    fn sparse_super_groups() {
        let with: Vec<u64> = (0..60).filter(|&g| has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn geometry() {
        let cases = [
            // bytes, blocks, groups, inodes per group, journal
            (16u64 << 20, 4096u64, 1u64, 256u64, 1024u64),
            (64 << 20, 16384, 1, 1024, 1024),
            (1 << 30, 262_144, 8, 2048, 8192),
            // 128 MiB + 100 blocks: the tiny last group is left out.
            ((128 << 20) + 100 * BLOCK, 32768, 1, 2048, 4096),
        ];
        for (bytes, blocks, groups, ipg, journal) in cases {
            let g = Geometry::for_bytes(bytes).unwrap();
            assert_eq!(
                (g.blocks, g.groups, g.inodes_per_group, g.journal_blocks),
                (blocks, groups, ipg, journal),
                "{bytes}"
            );
        }
        assert!(matches!(
            Geometry::for_bytes(2 << 20),
            Err(Ext4Error::TooSmall(_))
        ));
        assert!(matches!(
            Geometry::for_bytes(16 << 40),
            Err(Ext4Error::TooLarge(_))
        ));
    }

    fn run(program: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(program)
            .args(args)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .output()
            .unwrap_or_else(|e| panic!("{program} (e2fsprogs, make deps installs it): {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// e2fsck, the reference checker, finds every size clean (one group, several groups with
    /// superblock copies, a trimmed last group), and dumpe2fs reads the label and features.
    #[test]
    fn e2fsck_finds_it_clean() {
        let dir = TestDir::new("ext4-format");
        for mib in [16u64, 200, 1100] {
            let path = dir.path().join(format!("fs-{mib}"));
            let file = File::create(&path).unwrap();
            file.set_len(mib << 20).unwrap();
            let id = Identity {
                label: "KEEL-STATE",
                uuid: [7; 16],
                now: 1_700_000_000,
            };
            format(&file, 0, mib << 20, &id).unwrap();
            let p = path.to_str().unwrap();
            let (ok, text) = run("e2fsck", &["-fn", p]);
            assert!(ok, "{mib} MiB: {text}");
            let (ok, text) = run("dumpe2fs", &["-h", p]);
            assert!(ok, "{text}");
            assert!(
                text.contains("Filesystem volume name:   KEEL-STATE"),
                "{text}"
            );
            assert!(text.contains("has_journal"), "{text}");
            assert!(text.contains("extent"), "{text}");
            let (ok, text) = run("debugfs", &["-R", "ls -l /", p]);
            assert!(ok && text.contains("lost+found"), "{text}");
        }
    }

    /// At an offset the same file system lands shifted, and the bytes before it are untouched.
    #[test]
    fn formats_at_an_offset() {
        let dir = TestDir::new("ext4-offset");
        let id = Identity {
            label: "KEEL-STATE",
            uuid: [9; 16],
            now: 1,
        };
        let plain = File::create(dir.path().join("a")).unwrap();
        plain.set_len(16 << 20).unwrap();
        format(&plain, 0, 16 << 20, &id).unwrap();
        let shifted = File::create(dir.path().join("b")).unwrap();
        shifted.set_len(17 << 20).unwrap();
        shifted.write_all_at(&[0xaa; 4096], 0).unwrap();
        format(&shifted, 1 << 20, 16 << 20, &id).unwrap();
        let a = std::fs::read(dir.path().join("a")).unwrap();
        let b = std::fs::read(dir.path().join("b")).unwrap();
        assert_eq!(&b[..4096], &[0xaa; 4096][..]);
        assert!(b[4096..1 << 20].iter().all(|&x| x == 0));
        assert!(a == b[1 << 20..], "shifted file system differs");
        let long = Identity {
            label: "a label too long!",
            ..id
        };
        assert!(matches!(
            format(&plain, 0, 16 << 20, &long),
            Err(Ext4Error::Label(_))
        ));
    }
}
