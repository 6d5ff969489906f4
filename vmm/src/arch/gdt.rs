//! Segment descriptors for the boot CPU's flat 64-bit GDT (as Firecracker builds it).

use kvm_bindings::kvm_segment;

/// A GDT entry from its flags (access byte in bits 0..8, flags in 12..16), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

fn get_base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

/// The limit in bytes, scaled by the granularity bit.
fn get_limit(entry: u64) -> u32 {
    let limit = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32;
    if (entry >> 55) & 1 == 1 {
        (limit << 12) | 0xfff
    } else {
        limit
    }
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

/// The KVM segment register contents for GDT entry `entry` at `table_index`.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    kvm_segment {
        base: get_base(entry),
        limit: get_limit(entry),
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(entry, 47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(bit(entry, 47) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_gdt_entries_decode_to_flat_segments() {
        // Known encodings of the flat segments (same values Linux's boot code uses).
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);

        let code = kvm_segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!((code.selector, code.type_, code.l, code.db), (8, 0xb, 1, 0));
        assert_eq!(
            (code.base, code.limit, code.g, code.present),
            (0, 0xffff_ffff, 1, 1)
        );
        let data = kvm_segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(
            (data.selector, data.type_, data.db, data.s),
            (0x10, 3, 1, 1)
        );
        let tss = kvm_segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!(
            (tss.selector, tss.type_, tss.s, tss.unusable),
            (0x18, 0xb, 0, 0)
        );
        assert_eq!(kvm_segment_from_gdt(BOOT_GDT[0], 0).unusable, 1);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        assert_eq!(get_base(e), 0x1234_5678);
        assert_eq!(get_limit(e), 0xabcde);
    }
}
