//! Tiny hand-assembled guests booted through the whole VMM: builder (ELF loader, zero page, ACPI,
//! devices, vCPU set-up), vCPU threads, buses and the event loop. Each runs a few dozen
//! instructions, so the suite stays fast even on a nested, slow /dev/kvm.
//!
//! The code bytes come from GNU as (`.intel_syntax noprefix`); each snippet shows its source.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use keel_vmm::api::{VmControl, VmState};
use keel_vmm::builder::build;
use keel_vmm::config::{SerialConfig, VmConfig};
use keel_vmm::devices::boot_timer::BootTimer;
use keel_vmm::exit::ExitReason;
use keel_vmm::vmm::{RunningVmm, VmHandle};
use kvm_ioctls::Kvm;
use vm_memory::{Bytes, GuestAddress};

/// Where the test kernels' code is linked and loaded (high memory, like a real kernel).
const LOAD_ADDR: u64 = 0x10_0000;
/// No test guest may take longer than this; the watchdog powers it off.
const WATCHDOG: Duration = Duration::from_secs(30);

/// `devices`: serial, unknown port and MMIO reads, boot timer, i8042 reset.
/// ```text
/// mov dx, 0x3f8 ; mov al, 'h' ; out dx, al ; mov al, 'i' ; out dx, al
/// mov dx, 0x1234 ; in al, dx ; mov dx, 0x3f8 ; out dx, al        # unknown port reads 0xff
/// mov eax, 0xc0001000 ; mov al, [rax] ; out dx, al                # unknown MMIO reads 0xff
/// mov eax, 0xd0000000 ; mov byte ptr [rax], 123                  # boot timer
/// mov al, 0xfe ; out 0x64, al                                     # i8042 reset
/// 1: hlt ; jmp 1b
/// ```
const DEVICES: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x68, 0xee, 0xb0, 0x69, 0xee, 0x66, 0xba, 0x34, 0x12, 0xec, 0x66,
    0xba, 0xf8, 0x03, 0xee, 0xb8, 0x00, 0x10, 0x00, 0xc0, 0x8a, 0x00, 0xee, 0xb8, 0x00, 0x00, 0x00,
    0xd0, 0xc6, 0x00, 0x7b, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

/// String port I/O: `mov esi, msg ; mov ecx, 3 ; mov dx, 0x3f8 ; rep outsb`, then the i8042
/// reset; `msg: .ascii "abc"`.
const REP_OUTSB: &[u8] = &[
    0xbe, 0x17, 0x00, 0x10, 0x00, 0xb9, 0x03, 0x00, 0x00, 0x00, 0x66, 0xba, 0xf8, 0x03, 0xf3, 0x6e,
    0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd, 0x61, 0x62, 0x63,
];

/// `ud2` with the boot IDT empty: #UD, #DF, then a triple fault.
const TRIPLE_FAULT: &[u8] = &[0x0f, 0x0b];

/// `mov dx, 0x3f8 ; mov al, 'h' ; out dx, al ; cli ; 1: hlt ; jmp 1b`
const HALT: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x68, 0xee, 0xfa, 0xf4, 0xeb, 0xfd,
];

/// `mov eax, 0x3000 ; 1: inc qword ptr [rax] ; jmp 1b`
const COUNT: &[u8] = &[0xb8, 0x00, 0x30, 0x00, 0x00, 0x48, 0xff, 0x00, 0xeb, 0xfb];
const COUNTER_ADDR: u64 = 0x3000;

/// `mov dx, 0x3c0 ; mov al, 0x34 ; out dx, al ; 1: hlt ; jmp 1b`: ACPI S5 (SLP_TYP 5 | SLP_EN).
const POWER_OFF: &[u8] = &[0x66, 0xba, 0xc0, 0x03, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd];

/// Boot CPU of the 2-vCPU guest: INIT and SIPI (vector 0x10) to APIC 1 through the in-kernel
/// LAPIC, wait for the AP's flag at 0x3000, write 'A', reset.
/// ```text
/// mov eax, 0xfee00310 ; mov dword ptr [rax], 0x01000000 ; mov eax, 0xfee00300
/// mov dword ptr [rax], 0x4500
/// mov eax, 0xfee00310 ; mov dword ptr [rax], 0x01000000 ; mov eax, 0xfee00300
/// mov dword ptr [rax], 0x4610
/// mov eax, 0x3000 ; 1: pause ; cmp byte ptr [rax], 1 ; jne 1b
/// mov dx, 0x3f8 ; mov al, 'A' ; out dx, al ; mov al, 0xfe ; out 0x64, al ; 2: hlt ; jmp 2b
/// ```
const SMP_BSP: &[u8] = &[
    0xb8, 0x10, 0x03, 0xe0, 0xfe, 0xc7, 0x00, 0x00, 0x00, 0x00, 0x01, 0xb8, 0x00, 0x03, 0xe0, 0xfe,
    0xc7, 0x00, 0x00, 0x45, 0x00, 0x00, 0xb8, 0x10, 0x03, 0xe0, 0xfe, 0xc7, 0x00, 0x00, 0x00, 0x00,
    0x01, 0xb8, 0x00, 0x03, 0xe0, 0xfe, 0xc7, 0x00, 0x10, 0x46, 0x00, 0x00, 0xb8, 0x00, 0x30, 0x00,
    0x00, 0xf3, 0x90, 0x80, 0x38, 0x01, 0x75, 0xf9, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xb0,
    0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];
/// The AP, in real mode at 0x10000 (SIPI vector 0x10):
/// `mov dx, 0x3f8 ; mov al, 'B' ; out dx, al ; mov byte ptr [0x3000], 1 ; cli ; 1: hlt ; jmp 1b`
const SMP_AP: &[u8] = &[
    0xba, 0xf8, 0x03, 0xb0, 0x42, 0xee, 0xc6, 0x06, 0x00, 0x30, 0x01, 0xfa, 0xf4, 0xeb, 0xfd,
];
const AP_TRAMPOLINE: u64 = 0x1_0000;

/// Echoes one byte of console input, then resets:
/// ```text
/// mov dx, 0x3fd ; 1: in al, dx ; test al, 1 ; jz 1b     # wait for LSR data-ready
/// mov dx, 0x3f8 ; in al, dx ; out dx, al                # read RBR, write THR
/// mov al, 0xfe ; out 0x64, al ; 2: hlt ; jmp 2b
/// ```
const ECHO: &[u8] = &[
    0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xfb, 0x66, 0xba, 0xf8, 0x03, 0xec, 0xee, 0xb0,
    0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

/// A minimal ELF64 executable: one PT_LOAD per segment, entry at the first segment.
fn elf(segments: &[(u64, &[u8])]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let data_start = EHDR + PHDR * segments.len();
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&segments[0].0.to_le_bytes()); // e_entry
    out.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(EHDR as u16).to_le_bytes());
    out.extend_from_slice(&(PHDR as u16).to_le_bytes());
    out.extend_from_slice(&(segments.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0; 6]); // no sections
    let mut offset = data_start as u64;
    for (addr, bytes) in segments {
        out.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        out.extend_from_slice(&7u32.to_le_bytes()); // RWX
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&addr.to_le_bytes()); // vaddr
        out.extend_from_slice(&addr.to_le_bytes()); // paddr
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&0x1000u64.to_le_bytes());
        offset += bytes.len() as u64;
    }
    for (_, bytes) in segments {
        out.extend_from_slice(bytes);
    }
    out
}

/// A guest booted from a temporary directory holding its kernel and serial output.
struct Guest {
    dir: PathBuf,
    serial: PathBuf,
    vmm: Option<RunningVmm>,
    handle: Arc<VmHandle>,
    /// Guest memory, readable while the VM runs.
    mem: vm_memory::GuestMemoryMmap,
    boot_timer: Arc<std::sync::Mutex<BootTimer>>,
}

impl Guest {
    fn boot(name: &str, vcpus: u8, segments: &[(u64, &[u8])]) -> Guest {
        Guest::boot_with(name, vcpus, segments, |serial| SerialConfig::File {
            path: serial,
        })
    }

    fn boot_with(
        name: &str,
        vcpus: u8,
        segments: &[(u64, &[u8])],
        serial_config: impl FnOnce(PathBuf) -> SerialConfig,
    ) -> Guest {
        let dir = std::env::temp_dir().join(format!("keel-vmm-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("kernel.elf");
        std::fs::write(&kernel, elf(segments)).unwrap();
        let serial = dir.join("serial.out");
        let _ = std::fs::remove_file(&serial);
        let config = VmConfig {
            vcpus,
            memory_mib: 16,
            kernel,
            initrd: None,
            cmdline: "console=ttyS0".to_owned(),
            serial: serial_config(serial.clone()),
            disks: Vec::new(),
            nics: Vec::new(),
            rng: false,
        };
        let kvm = Kvm::new().unwrap();
        let vmm = build(&kvm, &config, Instant::now()).unwrap();
        let mem = vmm.memory().clone();
        let boot_timer = vmm.boot_timer();
        let vmm = vmm.start().unwrap();
        let handle = vmm.handle();
        Guest {
            dir,
            serial,
            vmm: Some(vmm),
            handle,
            mem,
            boot_timer,
        }
    }

    /// Runs the event loop until the VM ends (or the watchdog powers it off).
    fn run(&mut self) -> ExitReason {
        let handle = self.handle.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = thread::spawn(move || {
            if done_rx.recv_timeout(WATCHDOG).is_err() {
                handle.power_off().unwrap();
            }
        });
        let reason = self.vmm.take().unwrap().run();
        let _ = done_tx.send(());
        watchdog.join().unwrap();
        reason
    }

    /// Runs the loop on a thread so the test can drive the VM meanwhile.
    fn run_in_background(&mut self) -> thread::JoinHandle<ExitReason> {
        let vmm = self.vmm.take().unwrap();
        thread::spawn(move || vmm.run())
    }

    fn serial_output(&self) -> Vec<u8> {
        std::fs::read(&self.serial).unwrap_or_default()
    }

    fn wait_for(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + WATCHDOG;
        while !ready() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn counter(&self) -> u64 {
        self.mem.read_obj(GuestAddress(COUNTER_ADDR)).unwrap()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn port_and_mmio_exits_reach_devices_and_reset_reboots() {
    let mut guest = Guest::boot("devices", 1, &[(LOAD_ADDR, DEVICES)]);
    assert_eq!(guest.run(), ExitReason::GuestReboot);
    assert_eq!(guest.serial_output(), b"hi\xff\xff");
    assert!(guest.boot_timer.lock().unwrap().measured().is_some());
}

#[test]
fn string_port_io_is_split_into_byte_accesses() {
    let mut guest = Guest::boot("outsb", 1, &[(LOAD_ADDR, REP_OUTSB)]);
    assert_eq!(guest.run(), ExitReason::GuestReboot);
    assert_eq!(guest.serial_output(), b"abc");
}

#[test]
fn triple_fault_ends_the_vm() {
    let mut guest = Guest::boot("triple", 1, &[(LOAD_ADDR, TRIPLE_FAULT)]);
    assert_eq!(guest.run(), ExitReason::TripleFault);
}

#[test]
fn acpi_s5_powers_the_guest_off() {
    let mut guest = Guest::boot("s5", 1, &[(LOAD_ADDR, POWER_OFF)]);
    assert_eq!(guest.run(), ExitReason::GuestPowerOff);
}

#[test]
fn halted_guest_is_powered_off_by_the_host() {
    let mut guest = Guest::boot("halt", 1, &[(LOAD_ADDR, HALT)]);
    let running = guest.run_in_background();
    guest.wait_for("serial output", || guest.serial_output() == b"h");
    // The vCPU sleeps in the kernel (in-kernel LAPIC HLT); power-off must still stop it.
    guest.handle.power_off().unwrap();
    assert_eq!(running.join().unwrap(), ExitReason::HostPowerOff);
    assert_eq!(guest.handle.info().state, VmState::ShuttingDown);
}

#[test]
fn pause_parks_the_vcpu_and_resume_continues() {
    let mut guest = Guest::boot("pause", 1, &[(LOAD_ADDR, COUNT)]);
    let running = guest.run_in_background();
    guest.wait_for("the guest to count", || guest.counter() > 0);

    assert!(guest.handle.resume().is_err(), "resume of a running VM");
    guest.handle.pause().unwrap();
    assert_eq!(guest.handle.info().state, VmState::Paused);
    assert!(guest.handle.pause().is_err(), "second pause");
    let paused_at = guest.counter();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(guest.counter(), paused_at, "guest ran while paused");

    guest.handle.resume().unwrap();
    assert_eq!(guest.handle.info().state, VmState::Running);
    guest.wait_for("the guest to count again", || guest.counter() > paused_at);

    guest.handle.power_off().unwrap();
    assert_eq!(running.join().unwrap(), ExitReason::HostPowerOff);
    assert!(guest.handle.pause().is_err(), "no pause once stopping");
}

#[test]
fn two_vcpus_each_write_to_the_serial_port() {
    let mut guest = Guest::boot("smp", 2, &[(LOAD_ADDR, SMP_BSP), (AP_TRAMPOLINE, SMP_AP)]);
    assert_eq!(guest.run(), ExitReason::GuestReboot);
    // The AP writes first: the BSP waits for its flag.
    assert_eq!(guest.serial_output(), b"BA");
}

#[test]
fn console_socket_input_reaches_the_guest_and_output_comes_back() {
    use std::io::{Read, Write};
    let mut guest = Guest::boot_with("echo", 1, &[(LOAD_ADDR, ECHO)], |serial| {
        SerialConfig::Socket { path: serial }
    });
    let running = guest.run_in_background();
    let mut client = std::os::unix::net::UnixStream::connect(&guest.serial).unwrap();
    client.set_read_timeout(Some(WATCHDOG)).unwrap();
    client.write_all(b"x").unwrap();
    let mut echoed = [0u8];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"x");
    assert_eq!(running.join().unwrap(), ExitReason::GuestReboot);
}

#[test]
fn bad_kernel_is_named_in_the_error() {
    let dir = std::env::temp_dir().join(format!("keel-vmm-badkernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("not-a-kernel");
    std::fs::write(&kernel, b"hello").unwrap();
    let config = VmConfig {
        vcpus: 1,
        memory_mib: 16,
        kernel: kernel.clone(),
        initrd: None,
        cmdline: String::new(),
        serial: SerialConfig::Off,
        disks: Vec::new(),
        nics: Vec::new(),
        rng: false,
    };
    let err = build(&Kvm::new().unwrap(), &config, Instant::now())
        .err()
        .unwrap();
    assert!(err.to_string().contains("not-a-kernel"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
