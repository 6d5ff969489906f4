//! `make bench`: time from QEMU start to `keel: boot complete` for each boot medium (ISO under
//! SeaBIOS and OVMF, PXE, USB image under OVMF), median of several boots (`KEEL_BENCH_RUNS`,
//! default 3). QEMU runs TCG here: compare runs, not absolutes. Image sizes come from the manifest
//! (`keel-image-builder size-report`, run by `make bench` before this).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use keel_tests::{Boot, Error, Firmware, Image, QemuBuilder};

const READY: &str = "keel: boot complete in";

fn time_to_ready(name: &str, boot: Boot, firmware: Firmware) -> Result<Duration, Error> {
    let mut vm = QemuBuilder::new(name, boot).firmware(firmware).spawn()?;
    let line =
        vm.wait_for_line_matching(READY, |l| l.starts_with(READY), Duration::from_secs(300))?;
    Ok(line.at)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn run() -> Result<(), Error> {
    let image = Image::locate()?;
    let runs: usize = std::env::var("KEEL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let usb = image.dir.join("keel-usb.img");
    let usb_copy: PathBuf =
        std::env::temp_dir().join(format!("keel-bench-{}.img", std::process::id()));
    let cases: Vec<(&str, Boot, Firmware)> = vec![
        ("kernel+initrd", Boot::image(&image), Firmware::SeaBios),
        (
            "iso-seabios",
            Boot::Cdrom(image.dir.join("keel.iso")),
            Firmware::SeaBios,
        ),
        (
            "iso-ovmf",
            Boot::Cdrom(image.dir.join("keel.iso")),
            Firmware::Ovmf,
        ),
        (
            "pxe-ipxe",
            Boot::Pxe {
                tftp_dir: image.dir.join("pxe"),
                bootfile: "keel.ipxe".into(),
            },
            Firmware::SeaBios,
        ),
        ("usb-ovmf", Boot::Disk(usb_copy.clone()), Firmware::Ovmf),
    ];
    println!("medium          median s  runs (QEMU start to \"{READY}\")");
    for (name, boot, firmware) in cases {
        let mut times = Vec::new();
        for run in 0..runs {
            if let Boot::Disk(copy) = &boot {
                std::fs::copy(&usb, copy).map_err(|source| Error::Create {
                    path: copy.clone(),
                    source,
                })?;
            }
            times.push(time_to_ready(
                &format!("bench-{name}-{run}"),
                boot.clone(),
                firmware,
            )?);
        }
        let shown: Vec<String> = times
            .iter()
            .map(|t| format!("{:.1}", t.as_secs_f64()))
            .collect();
        println!(
            "{name:<15} {:>8.1}  {}",
            median(times).as_secs_f64(),
            shown.join(" ")
        );
    }
    let _ = std::fs::remove_file(&usb_copy);
    Ok(())
}

fn main() -> ExitCode {
    keel_tests::bench_main(run)
}
