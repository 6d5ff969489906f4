//! Runs end-to-end scenarios inside a booted Keel test image, where the host side of the test
//! (QEMU's serial console) cannot reach: it starts keel-vmm on the host's real /dev/kvm with Debian's
//! guest kernel, talks to its control socket, and prints one `E2E PASS <name>` or
//! `E2E FAIL <name>: <why>` line per scenario, then `E2E DONE`.
//!
//! The scenarios come from `keel_e2e=<name>,<name>` on the kernel command line. This program ships
//! only in the test image (`make test-image`), never in the production root filesystem.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const VMM: &str = "/usr/bin/keel-vmm";
const PAYLOAD: &str = "/usr/lib/keel-tests";
const WORK: &str = "/run/keel-e2e";
const GUEST_MEMORY_MIB: u64 = 256;
/// Firecracker's published overhead figure is for 1 vCPU and 128 MiB; the benchmark uses the same.
const BENCH_MEMORY_MIB: u64 = 128;
const BENCH_RUNS: usize = 5;

/// A running keel-vmm and the lines its guest prints on the serial console.
struct Vm {
    child: Child,
    lines: Receiver<String>,
    api_sock: PathBuf,
}

impl Vm {
    fn start(name: &str, vcpus: u8, memory_mib: u64, guest_mode: &str) -> Result<Vm, String> {
        fs::create_dir_all(WORK).map_err(|e| format!("create {WORK}: {e}"))?;
        let config_path = Path::new(WORK).join(format!("{name}.json"));
        let api_sock = Path::new(WORK).join(format!("{name}.sock"));
        let config = serde_json::json!({
            "vcpus": vcpus,
            "memory_mib": memory_mib,
            "kernel": format!("{PAYLOAD}/vmlinuz"),
            "initrd": format!("{PAYLOAD}/initrd.img"),
            "cmdline": format!("console=ttyS0 quiet panic=-1 keel_guest.mode={guest_mode}"),
            "serial": { "mode": "stdout" }
        });
        fs::write(&config_path, config.to_string())
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
    let configured_kib = GUEST_MEMORY_MIB * 1024;
    if !(configured_kib * 3 / 4..=configured_kib).contains(&mem_kib) {
        return Err(format!(
            "guest sees {mem_kib} KiB, expected a little under {configured_kib} KiB"
        ));
    }
    expect_status(vm.expect_exit(Duration::from_secs(30))?, 0)
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
        let (overhead, guest) = vmm_overhead_kib(vm.child.id(), BENCH_MEMORY_MIB)?;
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
    let deadline = Instant::now() + Duration::from_secs(900);
    let runs = Path::new("/run/keel/vms");
    while Instant::now() < deadline {
        let paused = fs::read_dir(runs)
            .into_iter()
            .flatten()
            .flatten()
            .any(|vm| {
                api_call(&vm.path().join("api.sock"), "GET", "/vm")
                    .is_ok_and(|(status, body)| status == 200 && body.contains("\"paused\""))
            });
        if paused {
            let pid = pid_of(&["/usr/bin/keel", "agent"]).ok_or("no agent process")?;
            // SAFETY: kill has no memory effects.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
                return Err(format!("kill {pid}: {}", io::Error::last_os_error()));
            }
            println!("E2E killed the agent (pid {pid})");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err("no VM was paused".into())
}

type Scenario = fn() -> Result<(), String>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("vmm-boot", boot_and_power_off),
    ("vmm-shutdown", api_and_graceful_shutdown),
    ("vmm-bench", benchmark),
    ("agent-kill-on-pause", kill_agent_when_a_vm_pauses),
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
