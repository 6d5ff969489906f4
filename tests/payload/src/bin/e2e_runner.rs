//! Runs end-to-end scenarios inside a booted Keel test image, where the host side of the test
//! (QEMU's serial console) cannot reach: it starts keel-vmm on the host's real /dev/kvm with Debian's
//! guest kernel, talks to its control socket, and prints one `E2E PASS <name>` or
//! `E2E FAIL <name>: <why>` line per scenario, then `E2E DONE`.
//!
//! The scenarios come from `keel_e2e=<name>,<name>` on the kernel command line. This program ships
//! only in the test image (`make test-image`), never in the production root filesystem.

use keel_api::vmm::{DiskConfig, NicConfig, SerialConfig, VmConfig};
use keel_api::MacAddr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

#[path = "../hardening.rs"]
mod hardening;

const VMM: &str = "/usr/bin/keel-vmm";
const PAYLOAD: &str = "/usr/lib/keel-tests";
const WORK: &str = "/run/keel-e2e";
const GUEST_MEMORY_MIB: u32 = 256;
/// vCPUs of the SMP scenario: more than a byte of CPU mask and than the 2 of `vmm-boot`, few
/// enough to boot in seconds under nested KVM on TCG.
const SMP_VCPUS: u8 = 32;
/// Firecracker's published overhead figure is for 1 vCPU and 128 MiB; the benchmark uses the same.
const BENCH_MEMORY_MIB: u32 = 128;
const BENCH_RUNS: usize = 5;

/// A test VM's configuration: the guest kernel and /init, which acts as `guest_mode` says.
fn config(vcpus: u8, memory_mib: u32, guest_mode: &str, devices: Devices) -> VmConfig {
    VmConfig {
        vcpus,
        memory_mib,
        kernel: format!("{PAYLOAD}/vmlinuz").into(),
        initrd: Some(format!("{PAYLOAD}/initrd.img").into()),
        cmdline: format!("console=ttyS0 quiet panic=-1 keel_guest.mode={guest_mode}"),
        serial: SerialConfig::Stdout,
        disks: devices.disks,
        nics: devices.nics,
        rng: devices.rng,
    }
}

/// The virtio devices of a test VM.
#[derive(Default)]
struct Devices {
    disks: Vec<DiskConfig>,
    nics: Vec<NicConfig>,
    rng: bool,
}

fn disk(path: &Path, read_only: bool, serial: Option<&str>) -> DiskConfig {
    DiskConfig {
        path: path.to_owned(),
        read_only,
        serial: serial.map(String::from),
        direct: false,
    }
}

fn nic(tap: &str, mac: [u8; 6], bridge: &str) -> NicConfig {
    NicConfig {
        tap: Some(tap.into()),
        mac: MacAddr::new(mac),
        bridge: Some(bridge.into()),
    }
}

/// A running keel-vmm and the lines its guest prints on the serial console.
struct Vm {
    child: Child,
    lines: Receiver<String>,
    api_sock: PathBuf,
}

impl Vm {
    fn start(name: &str, vcpus: u8, memory_mib: u32, guest_mode: &str) -> Result<Vm, String> {
        Self::start_with(name, vcpus, memory_mib, guest_mode, Devices::default())
    }

    /// As `start`, with `devices` in vm.json.
    fn start_with(
        name: &str,
        vcpus: u8,
        memory_mib: u32,
        guest_mode: &str,
        devices: Devices,
    ) -> Result<Vm, String> {
        Self::launch(name, &config(vcpus, memory_mib, guest_mode, devices))
    }

    /// Writes `config` as `<name>.json` and starts keel-vmm on it.
    fn launch(name: &str, config: &VmConfig) -> Result<Vm, String> {
        fs::create_dir_all(WORK).map_err(|e| format!("create {WORK}: {e}"))?;
        let config_path = Path::new(WORK).join(format!("{name}.json"));
        let api_sock = Path::new(WORK).join(format!("{name}.sock"));
        let json = serde_json::to_string(config).map_err(|e| format!("encode vm.json: {e}"))?;
        fs::write(&config_path, json)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let mut child = Command::new(VMM)
            .arg("--config")
            .arg(&config_path)
            .arg("--api-sock")
            .arg(&api_sock)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {VMM}: {e}"))?;
        let (sender, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            forward_lines(stdout, "guest", sender.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            forward_lines(stderr, "vmm", sender);
        }
        Ok(Vm {
            child,
            lines,
            api_sock,
        })
    }

    /// Waits for a console line containing `needle`; returns it.
    fn expect_line(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no line with {needle:?} within {timeout:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("keel-vmm closed its output before {needle:?}"))
                }
            }
        }
    }

    fn expect_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    return Err(format!("keel-vmm still running after {timeout:?}"))
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(format!("wait for keel-vmm: {e}")),
            }
        }
    }

    /// One HTTP/1.1 request on the control socket; returns (status code, body).
    fn api(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        api_call(&self.api_sock, method, path)
    }

    fn api_ok(&self, method: &str, path: &str) -> Result<String, String> {
        match self.api(method, path)? {
            (200..=299, body) => Ok(body),
            (status, body) => Err(format!("{method} {path} answered {status}: {body}")),
        }
    }
}

/// One HTTP/1.1 request on a keel-vmm control socket; returns (status code, body).
fn api_call(sock: &Path, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        UnixStream::connect(sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;

    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send {method} {path}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read reply to {method} {path}: {e}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("malformed reply to {method} {path}: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies lines from `source` to the console (for the test log) and to `sender`.
fn forward_lines(
    source: impl Read + Send + 'static,
    tag: &'static str,
    sender: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines().map_while(Result::ok) {
            println!("{tag}| {line}");
            if sender.send(line).is_err() {
                break;
            }
        }
    });
}

fn expect_status(status: ExitStatus, code: i32) -> Result<(), String> {
    match status.code() {
        Some(c) if c == code => Ok(()),
        _ => Err(format!(
            "keel-vmm ended with {status}, expected exit status {code}"
        )),
    }
}

/// Parses `KEEL-GUEST: up cpus=N mem_kib=M`.
fn parse_guest_report(line: &str) -> Option<(u64, u64)> {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    Some((field("cpus=")?, field("mem_kib=")?))
}

/// keel-vmm boots Debian's kernel with 2 vCPUs; the guest sees both and the configured memory,
/// then powers off and keel-vmm exits with the guest-power-off status.
fn boot_and_power_off() -> Result<(), String> {
    let mut vm = Vm::start("boot", 2, GUEST_MEMORY_MIB, "poweroff")?;
    let report = vm.expect_line("KEEL-GUEST: up", Duration::from_secs(90))?;
    let (cpus, mem_kib) =
        parse_guest_report(&report).ok_or_else(|| format!("malformed report {report:?}"))?;
    if cpus != 2 {
        return Err(format!("guest sees {cpus} CPUs, expected 2"));
    }
    // The kernel keeps some memory for itself; MemTotal is a little below what was configured.
    let configured_kib = u64::from(GUEST_MEMORY_MIB) * 1024;
    if !(configured_kib * 3 / 4..=configured_kib).contains(&mem_kib) {
        return Err(format!(
            "guest sees {mem_kib} KiB, expected a little under {configured_kib} KiB"
        ));
    }
    expect_status(vm.expect_exit(Duration::from_secs(30))?, 0)
}

/// keel-vmm boots Debian's kernel with 32 vCPUs (APIC IDs, MADT and CPUID topology beyond a
/// handful of CPUs); the guest brings all of them up.
fn boot_smp() -> Result<(), String> {
    let mut config = config(SMP_VCPUS, GUEST_MEMORY_MIB, "poweroff", Devices::default());
    // The kernel's messages show how far the CPUs came if the guest stalls. Its TSC check of
    // every CPU pair would take most of the boot where the host's vCPUs are emulated (TCG).
    config.cmdline = config.cmdline.replace(" quiet", "") + " tsc=reliable";
    let mut vm = Vm::launch("smp", &config)?;
    let report = vm.expect_line("KEEL-GUEST: up", Duration::from_secs(300))?;
    let (cpus, _) =
        parse_guest_report(&report).ok_or_else(|| format!("malformed report {report:?}"))?;
    if cpus != u64::from(SMP_VCPUS) {
        return Err(format!("guest sees {cpus} CPUs, expected {SMP_VCPUS}"));
    }
    expect_status(vm.expect_exit(Duration::from_secs(60))?, 0)
}

/// The control API reports and pauses the VM; a graceful shutdown request presses the ACPI power
/// button and the guest OS powers off by itself.
fn api_and_graceful_shutdown() -> Result<(), String> {
    let mut vm = Vm::start("shutdown", 1, GUEST_MEMORY_MIB, "wait-button")?;
    vm.expect_line(
        "KEEL-GUEST: waiting for power button",
        Duration::from_secs(90),
    )?;
    let info = vm.api_ok("GET", "/vm")?;
    if !info.contains("\"running\"") {
        return Err(format!("GET /vm while running answered {info}"));
    }
    vm.api_ok("PUT", "/vm/pause")?;
    let info = vm.api_ok("GET", "/vm")?;
    if !info.contains("\"paused\"") {
        return Err(format!("GET /vm while paused answered {info}"));
    }
    vm.api_ok("PUT", "/vm/resume")?;
    vm.api_ok("PUT", "/vm/shutdown")?;
    vm.expect_line("KEEL-GUEST: power button pressed", Duration::from_secs(30))?;
    expect_status(vm.expect_exit(Duration::from_secs(30))?, 0)
}

/// Resident memory of keel-vmm beyond the guest memory the guest has touched, in KiB: the VMM's
/// own overhead. The guest memory is the one anonymous mapping exactly `memory_mib` large.
fn vmm_overhead_kib(pid: u32, memory_mib: u64) -> Result<(u64, u64), String> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("read /proc/{pid}/smaps: {e}"))?;
    let (total_rss, guest_rss) = overhead_from_smaps(&smaps, memory_mib * 1024);
    let guest_rss = guest_rss.ok_or("no guest memory mapping in smaps")?;
    Ok((total_rss.saturating_sub(guest_rss), guest_rss))
}

/// (total Rss, Rss of the mapping whose Size is `guest_kib`) from /proc/PID/smaps.
fn overhead_from_smaps(smaps: &str, guest_kib: u64) -> (u64, Option<u64>) {
    let kib = |line: &str, key: &str| -> Option<u64> {
        line.strip_prefix(key)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    };
    let (mut total, mut guest, mut size) = (0, None, 0);
    for line in smaps.lines() {
        if let Some(s) = kib(line, "Size:") {
            size = s;
        } else if let Some(rss) = kib(line, "Rss:") {
            total += rss;
            if size == guest_kib && guest.is_none() {
                guest = Some(rss);
            }
        }
    }
    (total, guest)
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Boot time (VMM start to the guest's /init, from the boot timer) and the VMM's memory overhead
/// with 1 vCPU and 128 MiB, over several runs; prints `E2E BENCH` lines with medians.
fn benchmark() -> Result<(), String> {
    let (mut boot_us, mut overhead_kib) = (Vec::new(), Vec::new());
    for run in 0..BENCH_RUNS {
        let mut vm = Vm::start(&format!("bench{run}"), 1, BENCH_MEMORY_MIB, "wait-button")?;
        let line = vm.expect_line("boot time:", Duration::from_secs(90))?;
        let us = line
            .split_whitespace()
            .skip_while(|w| *w != "time:")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("malformed boot timer line {line:?}"))?;
        boot_us.push(us);
        vm.expect_line(
            "KEEL-GUEST: waiting for power button",
            Duration::from_secs(60),
        )?;
        let (overhead, guest) = vmm_overhead_kib(vm.child.id(), BENCH_MEMORY_MIB.into())?;
        println!("bench run {run}: boot {us} us, VMM overhead {overhead} KiB (guest touched {guest} KiB)");
        overhead_kib.push(overhead);
        vm.api_ok("PUT", "/vm/power-off")?;
        expect_status(vm.expect_exit(Duration::from_secs(30))?, 6)?;
    }
    println!(
        "E2E BENCH vmm-boot-to-init median_us={} runs={BENCH_RUNS}",
        median(&mut boot_us)
    );
    println!(
        "E2E BENCH vmm-memory-overhead median_kib={} vcpus=1 memory_mib={BENCH_MEMORY_MIB}",
        median(&mut overhead_kib)
    );
    Ok(())
}

/// The state partition's burst file: a record whose padding length depends on its sequence number,
/// so a torn or mixed write cannot pass `check_burst_record`.
fn burst_record(n: u64) -> String {
    let pad = "k".repeat(1000 + (n % 7) as usize * 700);
    serde_json::json!({ "n": n, "pad": pad }).to_string()
}

fn check_burst_record(text: &str) -> Result<u64, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("burst record unreadable: {e}"))?;
    let n = value["n"].as_u64().ok_or("burst record has no n")?;
    if burst_record(n) != text {
        return Err(format!("burst record {n} is not what was written"));
    }
    Ok(n)
}

fn burst_path() -> Result<PathBuf, String> {
    let status = keel_init::state::status();
    let dir = status
        .dir()
        .ok_or_else(|| format!("no state partition: {}", status.console_line()))?;
    Ok(dir.join("e2e-burst.json"))
}

/// The state partition is mounted and the burst record, if any, is whole.
fn state_check() -> Result<(), String> {
    let path = burst_path()?;
    match fs::read_to_string(&path) {
        Ok(text) => {
            let n = check_burst_record(&text)?;
            println!("E2E state-check: burst record {n} intact");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            println!("E2E state-check: no burst record yet");
        }
        Err(e) => return Err(format!("read {}: {e}", path.display())),
    }
    Ok(())
}

/// Replaces the burst record atomically as fast as it can, for the host side to kill QEMU in the
/// middle; stops by itself after 60 s.
fn state_burst() -> Result<(), String> {
    let path = burst_path()?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(60) {
        n += 1;
        keel_init::sys::atomic::write_atomic(&path, burst_record(n).as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
        if n == 10 {
            println!("E2E state-burst: writing");
            let _ = io::stdout().flush();
        }
    }
    Ok(())
}

/// Bytes the host sends the guest over TCP.
const NET_BYTES: usize = 4 << 20;

/// Where the host's ping of the guest reports.
type PingOutcome = Receiver<Result<(), String>>;

/// The host side of the network checks: bridge `TEST_BRIDGE` (`TEST_HOST_IP`/24) that keel-vmm
/// attaches the guest's tap to.
fn start_host_bridge() -> Result<(), String> {
    use keel_test_payload::{modules, net, TEST_BRIDGE, TEST_HOST_IP};
    modules::load_modules(&["tun", "bridge"]).map_err(|e| format!("load tun, bridge: {e}"))?;
    net::create_bridge(TEST_BRIDGE).map_err(|e| e.to_string())?;
    net::configure(TEST_BRIDGE, TEST_HOST_IP, 24).map_err(|e| e.to_string())
}

/// Connects to the guest's TCP `port`; the host is the client because its firewall drops
/// connections to any port but the agent's.
fn connect_to_guest(port: u16) -> Result<TcpStream, String> {
    TcpStream::connect_timeout(
        &(keel_test_payload::TEST_GUEST_IP, port).into(),
        Duration::from_secs(10),
    )
    .map_err(|e| format!("connect to the guest's port {port}: {e}"))
}

/// Sends `data` to the guest's TCP port 7777, pings the guest (`TEST_GUEST_IP`) while the
/// connection is still open, then closes. Returns where the outcome arrives.
fn send_to_guest(data: Vec<u8>) -> PingOutcome {
    use keel_test_payload::{net, TEST_GUEST_IP};
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = connect_to_guest(7777).and_then(|mut conn| {
            conn.write_all(&data).map_err(|e| format!("send: {e}"))?;
            let rtt = net::ping(TEST_GUEST_IP, Duration::from_secs(10))
                .map_err(|e| format!("host pings guest: {e}"))?;
            println!("host pinged guest in {} us", rtt.as_micros());
            Ok(())
        });
        let _ = tx.send(result);
    });
    rx
}

/// virtio over PCI with Debian's stock kernel: the guest's NIC sits on a host bridge, guest and
/// host ping each other and 4 MiB cross over TCP intact; the guest reads /dev/hwrng, sees both disks with
/// their serials, writes a 4 MiB pattern to the first and finds the read-only second refusing
/// writes; after a power-off the pattern reads back from a second boot and from the host file.
/// The guest formats a blank third disk as ext4 (mke2fs), writes the same pattern into a file
/// on it, and reads it back from the file system after the power cycle.
fn virtio_devices() -> Result<(), String> {
    use keel_test_payload::{checksum, pattern, DISK_PATTERN_LEN, TEST_BRIDGE};
    let data = Path::new(WORK).join("data.img");
    let ro = Path::new(WORK).join("ro.img");
    fs::create_dir_all(WORK).map_err(|e| format!("create {WORK}: {e}"))?;
    fs::write(&data, vec![0u8; 8 << 20]).map_err(|e| format!("write {}: {e}", data.display()))?;
    fs::write(&ro, vec![0x5au8; 1 << 20]).map_err(|e| format!("write {}: {e}", ro.display()))?;
    let ext4 = Path::new(WORK).join("ext4.img");
    fs::write(&ext4, vec![0u8; 16 << 20]).map_err(|e| format!("write {}: {e}", ext4.display()))?;
    let disks = vec![
        disk(&data, false, Some("keel-data")),
        disk(&ro, true, Some("keel-ro")),
        disk(&ext4, false, Some("keel-ext4")),
    ];
    let want = format!(
        "sum={:016x}",
        checksum(&pattern(0x6b65_656c, DISK_PATTERN_LEN))
    );
    start_host_bridge()?;
    let server = pattern(0x006e_6574, NET_BYTES);
    let devices = Devices {
        rng: true,
        disks: disks.clone(),
        nics: vec![nic(
            "keeltap0",
            [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            TEST_BRIDGE,
        )],
    };

    let mut vm = Vm::start_with("virtio1", 1, GUEST_MEMORY_MIB, "virtio-write", devices)?;
    let timeout = Duration::from_secs(90);
    vm.expect_line("KEEL-GUEST: net up", timeout)?;
    let host_ping = send_to_guest(server.clone());
    let ping = vm.expect_line("KEEL-GUEST: ping host", timeout)?;
    if !ping.contains(" ok ") {
        return Err(format!("guest ping: {ping}"));
    }
    let tcp = vm.expect_line("KEEL-GUEST: tcp received", timeout)?;
    let net_want = format!("bytes={NET_BYTES} sum={:016x}", checksum(&server));
    if !tcp.contains(&net_want) {
        return Err(format!("guest received {tcp}, expected {net_want}"));
    }
    host_ping
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| format!("host ping: {e}"))??;
    let rng = vm.expect_line("KEEL-GUEST: hwrng", timeout)?;
    if !rng.contains("virtio_rng") || rng.contains("distinct=1 ") {
        return Err(format!("hwrng: {rng}"));
    }
    for (disk, serial, ro) in [("vda", "keel-data", 0), ("vdb", "keel-ro", 1)] {
        let line = vm.expect_line(&format!("KEEL-GUEST: disk {disk}"), timeout)?;
        if !line.contains(&format!("serial={serial} ro={ro}")) {
            return Err(format!("{disk}: {line}"));
        }
    }
    let wrote = vm.expect_line("KEEL-GUEST: vda wrote", timeout)?;
    if !wrote.contains(&want) {
        return Err(format!("guest wrote {wrote}, expected {want}"));
    }
    let refused = vm.expect_line("KEEL-GUEST: vdb write", timeout)?;
    if !refused.contains("refused") {
        return Err(format!("read-only disk: {refused}"));
    }
    let ext4_wrote = vm.expect_line("KEEL-GUEST: ext4 wrote", timeout)?;
    if !ext4_wrote.contains(&want) {
        return Err(format!("guest wrote {ext4_wrote}, expected {want}"));
    }
    expect_status(vm.expect_exit(Duration::from_secs(30))?, 0)?;

    let image = fs::read(&data).map_err(|e| format!("read {}: {e}", data.display()))?;
    let host_sum = format!("sum={:016x}", checksum(&image[..DISK_PATTERN_LEN]));
    if host_sum != want {
        return Err(format!("host file holds {host_sum}, expected {want}"));
    }
    if fs::read(&ro)
        .map_err(|e| e.to_string())?
        .iter()
        .any(|b| *b != 0x5a)
    {
        return Err("the read-only image changed".into());
    }

    let devices = Devices {
        disks,
        ..Devices::default()
    };
    let mut vm = Vm::start_with("virtio2", 1, GUEST_MEMORY_MIB, "virtio-read", devices)?;
    let read = vm.expect_line("KEEL-GUEST: vda read", timeout)?;
    if !read.contains(&want) {
        return Err(format!("second boot read {read}, expected {want}"));
    }
    let ext4_read = vm.expect_line("KEEL-GUEST: ext4 read", timeout)?;
    if !ext4_read.contains(&want) {
        return Err(format!(
            "second boot read {ext4_read} from ext4, expected {want}"
        ));
    }
    expect_status(vm.expect_exit(Duration::from_secs(30))?, 0)
}

/// Extracts `key=<number>` from a guest report line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// MiB/s of `bytes` in `us` microseconds.
fn mib_s(bytes: u64, us: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / (us.max(1) as f64 / 1e6)
}

/// virtio-blk sequential and random reads in the guest (O_DIRECT on /dev/vda) beside the same
/// reads by the host kernel on the same image file, and guest-to-host TCP throughput. Prints
/// `E2E BENCH` lines; under nested emulation only the ratios mean something.
fn virtio_benchmark() -> Result<(), String> {
    use keel_test_payload::{read_benchmark, BENCH_RANDOM_BLOCK, BENCH_RANDOM_READS, TEST_BRIDGE};
    let image = Path::new(WORK).join("bench.img");
    fs::create_dir_all(WORK).map_err(|e| format!("create {WORK}: {e}"))?;
    let size: u64 = 64 << 20;
    fs::write(&image, keel_test_payload::pattern(1, size as usize))
        .map_err(|e| format!("write {}: {e}", image.display()))?;
    let host_file = fs::File::open(&image).map_err(|e| e.to_string())?;
    let (host_seq, host_rand) = read_benchmark(&host_file, size).map_err(|e| e.to_string())?;

    start_host_bridge()?;
    let devices = Devices {
        disks: vec![disk(&image, true, None)],
        nics: vec![nic(
            "keeltap1",
            [0x52, 0x54, 0x00, 0x12, 0x34, 0x57],
            TEST_BRIDGE,
        )],
        rng: false,
    };
    let mut vm = Vm::start_with("vbench", 1, GUEST_MEMORY_MIB, "virtio-bench", devices)?;
    let blk = vm.expect_line("KEEL-GUEST: bench blk", Duration::from_secs(300))?;
    let (seq_us, rand_us) = field(&blk, "seq_us")
        .zip(field(&blk, "rand_us"))
        .ok_or_else(|| format!("malformed {blk:?}"))?;
    let rand_bytes = (BENCH_RANDOM_READS * BENCH_RANDOM_BLOCK) as u64;
    let (g_seq, h_seq) = (
        mib_s(size, seq_us),
        mib_s(size, host_seq.as_micros() as u64),
    );
    let (g_rand, h_rand) = (
        mib_s(rand_bytes, rand_us),
        mib_s(rand_bytes, host_rand.as_micros() as u64),
    );
    println!(
        "E2E BENCH virtio-blk-seq-read guest_mib_s={g_seq:.1} host_mib_s={h_seq:.1} ratio={:.3}",
        g_seq / h_seq
    );
    println!(
        "E2E BENCH virtio-blk-rand-4k-read guest_mib_s={g_rand:.2} host_mib_s={h_rand:.2} ratio={:.3}",
        g_rand / h_rand
    );
    vm.expect_line("KEEL-GUEST: bench tcp listening", Duration::from_secs(300))?;
    let mut conn = connect_to_guest(7778)?;
    let mut sink = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while let Ok(n @ 1..) = conn.read(&mut sink) {
        got += n as u64;
    }
    let _ = conn.write_all(b"k");
    let tcp = vm.expect_line("KEEL-GUEST: bench tcp bytes", Duration::from_secs(300))?;
    let (bytes, us) = field(&tcp, "bytes")
        .zip(field(&tcp, "us"))
        .ok_or_else(|| format!("malformed {tcp:?}"))?;
    if got != bytes {
        return Err(format!("host received {got} bytes, guest sent {bytes}"));
    }
    println!(
        "E2E BENCH virtio-net-guest-to-host-tcp mib_s={:.1} bytes={bytes}",
        mib_s(bytes, us)
    );
    expect_status(vm.expect_exit(Duration::from_secs(30))?, 0)
}

/// The pid of the process whose command line is `argv` (NUL-separated in /proc).
fn pid_of(argv: &[&str]) -> Option<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        cmdline.starts_with(&want).then_some(pid)
    })
}

/// For tests/tests/agent.rs: once a VM the agent runs is paused (the test's signal), kills the
/// agent with SIGKILL, as a crash would, so PID 1 restarts it and the test checks the VM survived.
fn kill_agent_when_a_vm_pauses() -> Result<(), String> {
    hardening::wait_agent_vm("paused")?;
    let pid = pid_of(&["/usr/bin/keel", "agent"]).ok_or("no agent process")?;
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
        return Err(format!("kill {pid}: {}", io::Error::last_os_error()));
    }
    println!("E2E killed the agent (pid {pid})");
    Ok(())
}

/// Prints each link with what the host networking made of it: `E2E LINK <name> master=<bridge
/// or bond> vlan=<id>@<parent>` (from /sys/class/net and /proc/net/vlan/config).
fn print_links() -> Result<(), String> {
    let vlans = fs::read_to_string("/proc/net/vlan/config").unwrap_or_default();
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .map_err(|e| format!("/sys/class/net: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let master = fs::read_link(format!("/sys/class/net/{name}/master"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "-".into());
        // Lines of /proc/net/vlan/config: `eth0.42 | 42 | eth0`.
        let vlan = vlans
            .lines()
            .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
            .find(|f| f.len() == 3 && f[0] == name)
            .map_or_else(|| "-".into(), |f| format!("{}@{}", f[1], f[2]));
        println!("E2E LINK {name} master={master} vlan={vlan}");
    }
    Ok(())
}

type Scenario = fn() -> Result<(), String>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("vmm-boot", boot_and_power_off),
    ("vmm-smp", boot_smp),
    ("net-links", print_links),
    ("vmm-shutdown", api_and_graceful_shutdown),
    ("vmm-bench", benchmark),
    ("hardening-sysctl", hardening::sysctls),
    ("jail-probe", hardening::jail_probe),
    ("jail-memory-cap", hardening::jail_memory_cap),
    ("jail-vmm", hardening::jail_vmm),
    ("firewall-listen", hardening::firewall_listen),
    ("state-check", state_check),
    ("state-burst", state_burst),
    ("vmm-virtio", virtio_devices),
    ("vmm-virtio-bench", virtio_benchmark),
    ("agent-kill-on-pause", kill_agent_when_a_vm_pauses),
    ("agent-jail", hardening::agent_vm_jailed),
    ("agent-squeeze", hardening::agent_vm_squeeze),
];

fn requested_scenarios(cmdline: &str) -> Vec<&str> {
    cmdline
        .split_whitespace()
        .filter_map(|p| p.strip_prefix("keel_e2e="))
        .flat_map(|list| list.split(','))
        .filter(|name| !name.is_empty())
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        return hardening::probe_main(&args[2..]);
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for name in requested_scenarios(&cmdline) {
        let started = Instant::now();
        let result = match SCENARIOS.iter().find(|(n, _)| *n == name) {
            Some((_, scenario)) => scenario(),
            None => Err("no such scenario".to_string()),
        };
        match result {
            Ok(()) => println!("E2E PASS {name} ({} ms)", started.elapsed().as_millis()),
            Err(why) => println!("E2E FAIL {name}: {why}"),
        }
        let _ = io::stdout().flush();
    }
    println!("E2E DONE");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_records_detect_tearing() {
        for n in [1, 6, 7, 100] {
            assert_eq!(check_burst_record(&burst_record(n)), Ok(n));
        }
        let torn = burst_record(3);
        assert!(check_burst_record(&torn[..torn.len() - 10]).is_err());
        let mixed = burst_record(3).replace("\"n\":3", "\"n\":4");
        assert!(check_burst_record(&mixed).is_err());
        assert!(check_burst_record("").is_err());
    }

    #[test]
    fn scenarios_come_from_the_command_line() {
        assert_eq!(
            requested_scenarios("quiet keel_e2e=vmm-boot,vmm-shutdown console=ttyS0"),
            vec!["vmm-boot", "vmm-shutdown"]
        );
        assert!(requested_scenarios("quiet").is_empty());
    }

    #[test]
    fn overhead_is_rss_outside_the_guest_mapping() {
        let smaps = "7f00-7f10 rw-p 0 00:00 0\nSize: 131072 kB\nRss: 20000 kB\n\
                     5500-5600 r-xp 0 00:01 7 /usr/bin/keel-vmm\nSize: 1000 kB\nRss: 900 kB\n\
                     7ff0-7ff1 rw-p 0 00:00 0 [stack]\nSize: 132 kB\nRss: 12 kB\n";
        assert_eq!(overhead_from_smaps(smaps, 131072), (20912, Some(20000)));
        assert_eq!(overhead_from_smaps(smaps, 4), (20912, None));
        assert_eq!(median(&mut [5, 1, 3]), 3);
    }

    #[test]
    fn guest_report_is_parsed() {
        assert_eq!(
            parse_guest_report("KEEL-GUEST: up cpus=2 mem_kib=251000"),
            Some((2, 251000))
        );
        assert_eq!(parse_guest_report("KEEL-GUEST: up cpus=x mem_kib=1"), None);
    }
}
