//! `/init` of the Linux guests that the end-to-end tests boot under keel-vmm.
//!
//! It reports what the guest sees (CPUs, memory) on its console, in lines starting `KEEL-GUEST:`,
//! then acts as `keel_guest.mode=` on the kernel command line says:
//! - `poweroff` (default): power off at once (ACPI S5, so keel-vmm exits with its power-off status);
//! - `wait-button`: load the ACPI button driver, wait for the power button, then power off (graceful
//!   shutdown as a real guest OS does it).
//! - `virtio-write`: load the virtio drivers, read /dev/hwrng, report the disks' serials, write a
//!   test pattern to /dev/vda and flush it, check the read-only /dev/vdb refuses writes, power off.
//! - `virtio-read`: read the pattern back from /dev/vda (after a power cycle) and report its sum.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;

use keel_test_payload::modules::{load_module, load_modules};

fn say(line: &str) {
    println!("KEEL-GUEST: {line}");
}

fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    let _ = fs::create_dir_all(target);
    let (source, target, fstype) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    // SAFETY: the three pointers are valid NUL-terminated strings for the duration of the call;
    // no data argument is passed.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn mem_total_kib() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(0)
}

fn mode_from_cmdline(cmdline: &str) -> &str {
    cmdline
        .split_whitespace()
        .find_map(|p| p.strip_prefix("keel_guest.mode="))
        .unwrap_or("poweroff")
}

/// The input device the ACPI button driver creates for the power button.
fn find_power_button() -> Option<File> {
    let entries = fs::read_dir("/sys/class/input").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("event") {
            continue;
        }
        let device_name = fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if device_name.contains("Power Button") {
            return File::open(format!("/dev/input/{name}")).ok();
        }
    }
    None
}

/// Blocks until a KEY_POWER press arrives on `device`.
fn wait_for_power_key(mut device: File) -> io::Result<()> {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    // struct input_event on x86_64: timeval (16 bytes), type u16, code u16, value i32.
    let mut event = [0u8; 24];
    loop {
        device.read_exact(&mut event)?;
        let kind = u16::from_ne_bytes([event[16], event[17]]);
        let code = u16::from_ne_bytes([event[18], event[19]]);
        let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
        if kind == EV_KEY && code == KEY_POWER && value == 1 {
            return Ok(());
        }
    }
}

fn wait_button() -> io::Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let modules = Path::new("/lib/modules")
        .join(release.trim())
        .join("kernel");
    load_module(&modules.join("drivers/input/evdev.ko"))?;
    load_module(&modules.join("drivers/acpi/button.ko"))?;
    // The driver binds asynchronously; give the input device a moment to appear.
    let mut device = None;
    for _ in 0..100 {
        device = find_power_button();
        if device.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let device = device.ok_or_else(|| io::Error::other("no power button input device"))?;
    say("waiting for power button");
    wait_for_power_key(device)?;
    say("power button pressed, powering off");
    Ok(())
}

/// keel-vmm's boot timer (as Firecracker's): writing this byte at this guest-physical address
/// makes the VMM log the time since it started, which is how `make bench` measures boot.
const BOOT_TIMER_ADDRESS: libc::off_t = 0xd000_0000;
const BOOT_TIMER_MAGIC: u8 = 123;

fn signal_boot_timer() -> io::Result<()> {
    let mem = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")?;
    // SAFETY: maps one page of /dev/mem (device memory, not RAM) at the boot timer's address;
    // the mapping is checked before use and unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            BOOT_TIMER_ADDRESS,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `page` is a valid, writable mapping of at least one byte; the volatile write is
    // the MMIO access the VMM traps.
    unsafe {
        std::ptr::write_volatile(page.cast::<u8>(), BOOT_TIMER_MAGIC);
        libc::munmap(page, 4096);
    }
    Ok(())
}

/// Waits up to 5 s for `path` to appear (drivers probe asynchronously).
fn wait_for(path: &str) -> io::Result<()> {
    for _ in 0..100 {
        if Path::new(path).exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(io::Error::other(format!("{path} did not appear")))
}

/// `pci virtio blk=N net=N rng=N`: the modern virtio functions on the PCI bus (device IDs
/// 0x1042, 0x1041, 0x1044), as the guest kernel enumerated them.
fn virtio_functions() -> String {
    let ids: Vec<String> = fs::read_dir("/sys/bus/pci/devices")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| fs::read_to_string(e.path().join("device")).ok())
                .map(|d| d.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let count = |id: &str| ids.iter().filter(|d| *d == id).count();
    format!(
        "pci virtio blk={} net={} rng={}",
        count("0x1042"),
        count("0x1041"),
        count("0x1044")
    )
}

/// Whether a virtio-net function (modern device ID 0x1041) sits on the PCI bus.
fn has_virtio_net() -> bool {
    fs::read_dir("/sys/bus/pci/devices").is_ok_and(|entries| {
        entries.flatten().any(|e| {
            fs::read_to_string(e.path().join("device")).is_ok_and(|d| d.trim() == "0x1041")
        })
    })
}

/// Brings eth0 up as `TEST_GUEST_IP`/24 and listens on TCP port 7777, pings the host
/// (`TEST_HOST_IP`), then receives the stream the host sends until it closes and reports its
/// length and checksum. The host connects rather than listens because its firewall drops
/// connections to any port but the agent's.
fn network() -> io::Result<()> {
    use keel_test_payload::{checksum, net};
    use std::net::TcpListener;
    use std::time::Duration;
    load_modules(&["virtio_net"])?;
    wait_for("/sys/class/net/eth0")?;
    net::configure("eth0", keel_test_payload::TEST_GUEST_IP, 24)?;
    let listener = TcpListener::bind((keel_test_payload::TEST_GUEST_IP, 7777))?;
    say("net up");
    let rtt = net::ping(keel_test_payload::TEST_HOST_IP, Duration::from_secs(10))?;
    say(&format!("ping host ok rtt_us={}", rtt.as_micros()));
    let (mut stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut data = Vec::new();
    stream.read_to_end(&mut data)?;
    say(&format!(
        "tcp received bytes={} sum={:016x}",
        data.len(),
        checksum(&data)
    ));
    Ok(())
}

/// Reads /dev/vda with O_DIRECT (the guest's page cache would measure nothing), then sends
/// 16 MiB to the host once it connects to TCP port 7778 if there is a NIC; reports the times.
fn virtio_bench() -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::{Duration, Instant};
    load_modules(&["virtio_pci", "virtio_blk"])?;
    wait_for("/dev/vda")?;
    let sectors: u64 = fs::read_to_string("/sys/block/vda/size")?
        .trim()
        .parse()
        .map_err(io::Error::other)?;
    let disk = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open("/dev/vda")?;
    let size = sectors * 512;
    let (seq, rand) = keel_test_payload::read_benchmark(&disk, size)?;
    say(&format!(
        "bench blk bytes={size} seq_us={} rand_us={}",
        seq.as_micros(),
        rand.as_micros()
    ));
    if has_virtio_net() {
        load_modules(&["virtio_net"])?;
        wait_for("/sys/class/net/eth0")?;
        keel_test_payload::net::configure("eth0", keel_test_payload::TEST_GUEST_IP, 24)?;
        let listener = std::net::TcpListener::bind((keel_test_payload::TEST_GUEST_IP, 7778))?;
        say("bench tcp listening");
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let chunk = vec![0x5au8; 1 << 20];
        let start = Instant::now();
        for _ in 0..16 {
            std::io::Write::write_all(&mut stream, &chunk)?;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut ack = [0u8; 1];
        let _ = stream.read(&mut ack);
        say(&format!(
            "bench tcp bytes={} us={}",
            16 << 20,
            start.elapsed().as_micros()
        ));
    }
    Ok(())
}

fn virtio(write: bool) -> io::Result<()> {
    use keel_test_payload::{checksum, pattern, DISK_PATTERN_LEN};
    use std::io::{Seek, SeekFrom, Write};
    load_modules(&["virtio_pci", "virtio_blk", "virtio-rng"])?;
    if write && has_virtio_net() {
        if let Err(e) = network() {
            say(&format!("network check failed: {e}"));
        }
    }
    wait_for("/dev/vda")?;
    let pattern = pattern(0x6b65_656c, DISK_PATTERN_LEN);
    if write {
        wait_for("/dev/vdb")?;
        wait_for("/dev/hwrng")?;
        let rng = fs::read_to_string("/sys/class/misc/hw_random/rng_current").unwrap_or_default();
        let mut random = [0u8; 64];
        File::open("/dev/hwrng")?.read_exact(&mut random)?;
        let distinct = {
            let mut seen = random.to_vec();
            seen.sort_unstable();
            seen.dedup();
            seen.len()
        };
        say(&format!("hwrng {} read=64 distinct={distinct}", rng.trim()));
        for disk in ["vda", "vdb"] {
            let serial =
                fs::read_to_string(format!("/sys/block/{disk}/serial")).unwrap_or_default();
            let ro = fs::read_to_string(format!("/sys/block/{disk}/ro")).unwrap_or_default();
            say(&format!(
                "disk {disk} serial={} ro={}",
                serial.trim(),
                ro.trim()
            ));
        }
        let mut vda = fs::OpenOptions::new().write(true).open("/dev/vda")?;
        vda.seek(SeekFrom::Start(0))?;
        vda.write_all(&pattern)?;
        vda.sync_all()?;
        say(&format!(
            "vda wrote bytes={} sum={:016x}",
            pattern.len(),
            checksum(&pattern)
        ));
        match fs::OpenOptions::new().write(true).open("/dev/vdb") {
            Ok(mut f) => match f.write_all(&[0u8; 512]).and_then(|()| f.sync_all()) {
                Ok(()) => say("vdb write accepted"),
                Err(e) => say(&format!("vdb write refused: {e}")),
            },
            Err(e) => say(&format!("vdb write refused: {e}")),
        }
    } else {
        let mut data = vec![0u8; DISK_PATTERN_LEN];
        File::open("/dev/vda")?.read_exact(&mut data)?;
        say(&format!(
            "vda read bytes={} sum={:016x}",
            data.len(),
            checksum(&data)
        ));
    }
    if Path::new("/sys/block/vdc").exists() || wait_for("/dev/vdc").is_ok() {
        ext4_file(write, &pattern)?;
    }
    Ok(())
}

/// On /dev/vdc: formats it as ext4 and writes `/keel.bin` (then syncs and unmounts), or reads
/// the file back; reports its checksum.
fn ext4_file(write: bool, pattern: &[u8]) -> io::Result<()> {
    use keel_test_payload::checksum;
    if write {
        let status = std::process::Command::new("/sbin/mke2fs")
            .args(["-q", "-F", "-t", "ext4", "/dev/vdc"])
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!("mke2fs /dev/vdc: {status}")));
        }
        say("ext4 formatted /dev/vdc");
    }
    mount("/dev/vdc", "/mnt", "ext4")?;
    let path = Path::new("/mnt/keel.bin");
    let result = if write {
        fs::write(path, pattern)
            .and_then(|()| File::open(path)?.sync_all())
            .map(|()| pattern.to_vec())
    } else {
        fs::read(path)
    };
    let target = cstr("/mnt")?;
    // SAFETY: umount takes a valid NUL-terminated path.
    if unsafe { libc::umount(target.as_ptr()) } != 0 {
        say(&format!("umount /mnt: {}", io::Error::last_os_error()));
    }
    let data = result?;
    let verb = if write { "wrote" } else { "read" };
    say(&format!(
        "ext4 {verb} bytes={} sum={:016x}",
        data.len(),
        checksum(&data)
    ));
    Ok(())
}

fn power_off() -> ! {
    // SAFETY: sync and reboot have no memory-safety preconditions; reboot does not return on
    // success.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    say("power off failed");
    loop {
        std::thread::park();
    }
}

fn main() {
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        if let Err(e) = mount(source, target, fstype) {
            say(&format!("mount {target} failed: {e}"));
        }
    }
    if let Err(e) = signal_boot_timer() {
        say(&format!("boot timer write failed: {e}"));
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    say(&format!(
        "up cpus={} mem_kib={}",
        online_cpus(),
        mem_total_kib().unwrap_or(0)
    ));
    say(&virtio_functions());
    match mode_from_cmdline(&cmdline) {
        "wait-button" => {
            if let Err(e) = wait_button() {
                say(&format!("waiting for the power button failed: {e}"));
            }
        }
        "poweroff" => {}
        "virtio-bench" => {
            if let Err(e) = virtio_bench() {
                say(&format!("virtio benchmark failed: {e}"));
            }
        }
        mode @ ("virtio-write" | "virtio-read") => {
            if let Err(e) = virtio(mode == "virtio-write") {
                say(&format!("virtio check failed: {e}"));
            }
        }
        other => say(&format!("unknown keel_guest.mode={other}, powering off")),
    }
    power_off()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_comes_from_the_command_line() {
        for (cmdline, mode) in [
            ("console=ttyS0 quiet", "poweroff"),
            ("console=ttyS0 keel_guest.mode=wait-button", "wait-button"),
            ("keel_guest.mode=poweroff quiet", "poweroff"),
        ] {
            assert_eq!(mode_from_cmdline(cmdline), mode, "{cmdline}");
        }
    }
}
