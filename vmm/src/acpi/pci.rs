//! ACPI for the PCI root: the MCFG table pointing at ECAM, the host bridge `\_SB_.PCI0`
//! (PNP0A08, so Linux probes it as a PCI Express root with ECAM) with its bus number, the
//! 0xCF8 ports and the BAR window in `_CRS`, and a motherboard resource (PNP0C02) reserving the
//! ECAM range, which Linux requires before it trusts MCFG.

use acpi_tables::mcfg::MCFG;
use acpi_tables::{aml, Aml};

use super::OEM_ID;
use crate::arch::layout::{PCI_ECAM_START, PCI_MMIO_SIZE, PCI_MMIO_START};
use crate::devices::pci::{ECAM_BUS_SIZE, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN};

/// The MCFG table: one ECAM segment for bus 0.
pub fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, *b"KEELMCFG", 1);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, 0);
    let mut bytes = Vec::new();
    mcfg.to_aml_bytes(&mut bytes);
    bytes
}

/// DSDT AML for the host bridge and the ECAM reservation.
pub fn pci_aml() -> Vec<u8> {
    let mut aml = Vec::new();
    let window_end = (PCI_MMIO_START + PCI_MMIO_SIZE - 1) as u32;
    aml::Device::new(
        "_SB_.PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_ADR".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::AddressSpace::new_bus_number(0u16, 0u16),
                    &aml::IO::new(
                        PCI_CONFIG_PORT,
                        PCI_CONFIG_PORT,
                        1,
                        PCI_CONFIG_PORT_LEN as u8,
                    ),
                    &aml::AddressSpace::new_memory(
                        aml::AddressSpaceCacheable::NotCacheable,
                        true,
                        PCI_MMIO_START as u32,
                        window_end,
                        None,
                    ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut aml);
    aml::Device::new(
        "_SB_.MBRD".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::Memory32Fixed::new(
                    false,
                    PCI_ECAM_START as u32,
                    ECAM_BUS_SIZE as u32,
                )]),
            ),
        ],
    )
    .to_aml_bytes(&mut aml);
    aml
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mcfg_points_at_ecam_for_bus_zero() {
        let t = mcfg();
        assert_eq!(&t[..4], b"MCFG");
        assert_eq!(t.len(), 36 + 8 + 16);
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(
            u64::from_le_bytes(t[44..52].try_into().unwrap()),
            PCI_ECAM_START
        );
        assert_eq!((t[54], t[55]), (0, 0), "buses 0..=0");
    }

    #[test]
    fn host_bridge_is_named() {
        let aml = pci_aml();
        for needle in [&b"PCI0"[..], b"MBRD", b"_CRS", b"_BBN"] {
            assert!(aml.windows(needle.len()).any(|w| w == needle));
        }
    }
}
