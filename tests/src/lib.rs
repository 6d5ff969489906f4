//! Test harness for Keel: boots the built image in QEMU, reads and types on its serial console,
//! forwards TCP ports to it and drives it through QMP. The end-to-end tests live in `tests/`.

pub mod console;
pub mod error;
pub mod keelctl;
pub mod machine;
pub mod paths;
pub mod ports;
pub mod qemu;
pub mod qmp;
pub mod rust_vmm;
pub mod screen;

pub use console::Line;
pub use error::Error;
pub use machine::Qemu;
pub use paths::Image;
pub use qemu::{Boot, Firmware, QemuBuilder};
pub use qmp::{Qmp, QmpError};

/// A benchmark's `main`: runs it, and on failure says why and exits non-zero.
pub fn bench_main(run: fn() -> Result<(), Error>) -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}
