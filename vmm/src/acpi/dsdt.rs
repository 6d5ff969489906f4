//! The DSDT's AML: the devices a hardware-reduced ACPI guest needs to find (CPUs, COM1, the i8042
//! keyboard controller, the power button and the Generic Event Device that presses it) and the
//! `_S5_` sleep state that lets it power off.

use acpi_tables::{aml, Aml};

use crate::arch::layout::{
    COM1_GSI, COM1_LEN, COM1_PORT, GED_GSI, GED_START, I8042_KBD_GSI, I8042_PORT,
};
use crate::devices::acpi::{GED_EVENT_POWER_BUTTON, GED_MMIO_LEN, S5_SLEEP_TYPE};

/// i8042 command/status port.
const I8042_COMMAND_PORT: u16 = I8042_PORT + 4;
/// `Notify` value for a button press (ACPI "device-specific" 0x80 on a PNP0C0C device).
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

/// The ACPI name of vCPU `index`: `C000` .. `C0FE`, under `\_SB_`.
fn cpu_path(index: u8) -> String {
    format!("\\_SB_.C{index:03X}")
}

/// AML for the whole DSDT body (everything after the table header).
pub fn dsdt_aml(vcpus: u8) -> Vec<u8> {
    let mut aml = Vec::new();

    // \_S5_: SLP_TYPa = 5, SLP_TYPb and the reserved values 0.
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut aml);

    // Processors: _UID matches the MADT's processor UID.
    for index in 0..vcpus {
        aml::Device::new(
            cpu_path(index).as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"ACPI0007"),
                &aml::Name::new("_UID".into(), &index),
            ],
        )
        .to_aml_bytes(&mut aml);
    }

    let com1_len = u8::try_from(COM1_LEN).unwrap_or(u8::MAX);
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_DDN".into(), &"COM1"),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, com1_len),
                    &aml::Interrupt::new(true, true, false, false, COM1_GSI),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut aml);

    aml::Device::new(
        "_SB_.PS2K".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(I8042_PORT, I8042_PORT, 1, 1),
                    &aml::IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1),
                    &aml::Interrupt::new(true, true, false, false, I8042_KBD_GSI),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut aml);

    aml::Device::new(
        "_SB_.PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(&mut aml);

    ged_aml(&mut aml);
    aml
}

/// `\_SB_.GED_`: an edge-triggered, active-high interrupt on `GED_GSI`, its one-byte event
/// register, and `_EVT`, which Linux's evged driver runs on every interrupt.
///
/// `_CRS` holds the interrupt alone: Linux's evged walks every resource as an interrupt and fails
/// the probe (-EINVAL) on anything else, so the register is reached through an OperationRegion.
fn ged_aml(aml: &mut Vec<u8>) {
    let region_base = GED_START;
    let region_len = GED_MMIO_LEN;
    let event = aml::Path::new("GDAT");
    let button = aml::Path::new("\\_SB_.PWRB");
    aml::Device::new(
        "_SB_.GED_".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::Interrupt::new(
                    true, true, false, false, GED_GSI,
                )]),
            ),
            &aml::OpRegion::new(
                "GDST".into(),
                aml::OpRegionSpace::SystemMemory,
                &region_base,
                &region_len,
            ),
            &aml::Field::new(
                "GDST".into(),
                aml::FieldAccessType::Byte,
                aml::FieldLockRule::NoLock,
                aml::FieldUpdateRule::WriteAsZeroes,
                vec![aml::FieldEntry::Named(*b"GDAT", 8)],
            ),
            &aml::Method::new(
                "_EVT".into(),
                1,
                true,
                vec![
                    // Read once: reading acknowledges every pending event.
                    &aml::Store::new(&aml::Local(0), &event),
                    &aml::And::new(&aml::Local(1), &aml::Local(0), &GED_EVENT_POWER_BUTTON),
                    &aml::If::new(
                        &aml::Equal::new(&aml::Local(1), &GED_EVENT_POWER_BUTTON),
                        vec![&aml::Notify::new(&button, &NOTIFY_BUTTON_PRESSED)],
                    ),
                ],
            ),
        ],
    )
    .to_aml_bytes(aml);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn cpu_names_are_four_characters() {
        assert_eq!(cpu_path(0), "\\_SB_.C000");
        assert_eq!(cpu_path(10), "\\_SB_.C00A");
        assert_eq!(cpu_path(254), "\\_SB_.C0FE");
        assert_eq!(cpu_path(255), "\\_SB_.C0FF");
    }

    #[test]
    fn one_processor_device_per_vcpu() {
        for vcpus in [1u8, 2, 17, 255] {
            let aml = dsdt_aml(vcpus);
            let count = aml.windows(8).filter(|w| w == b"ACPI0007").count();
            assert_eq!(count, usize::from(vcpus));
        }
    }

    #[test]
    fn names_every_device() {
        let aml = dsdt_aml(1);
        for needle in [
            &b"_S5_"[..],
            b"COM1",
            b"PS2K",
            b"PWRB",
            b"GED_",
            b"ACPI0013",
            b"_EVT",
            b"GDAT",
        ] {
            assert!(
                contains(&aml, needle),
                "{}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}
