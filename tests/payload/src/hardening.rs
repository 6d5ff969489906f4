//! Hardening scenarios of the in-host runner (tests/tests/hardening.rs): kernel settings in
//! effect, the firewall seen from outside (the runner listens behind it; the test scans through QEMU), and
//! jails: a probe that reports what it can see, a memory cap breach, a jailed keel-vmm booting Linux;
//! and, for tests/tests/agent.rs, the jail of a VM the agent started, seen from the host.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_init::jail::{probe, CgroupLimits, Expose, JailSpec, JailStdio, Jailer, Rlimit};
use keel_init::pid1::hardening;

const RUNNER: &str = "/usr/bin/keel-e2e-runner";
const WORK: &str = "/run/keel-e2e/jail";
/// A port with a listener that the firewall must still hide.
pub const HIDDEN_PORT: u16 = 9000;
const ZERO_CAPS: &str = "0000000000000000";

/// Every required kernel setting reads back as set; lockdown closes /dev/mem.
pub fn sysctls() -> Result<(), String> {
    for s in hardening::SETTINGS.iter() {
        let path = hardening::path(s.key, Path::new("/proc/sys"));
        match fs::read_to_string(&path) {
            Ok(v) if v.trim() == s.value => println!("sysctl {} = {}", s.key, s.value),
            Ok(v) => return Err(format!("{} is {}, not {}", s.key, v.trim(), s.value)),
            Err(_) if s.optional => println!("sysctl {} absent (optional)", s.key),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        }
    }
    match fs::File::open("/dev/mem") {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
        other => return Err(format!("opening /dev/mem under lockdown gave {other:?}")),
    }
    Ok(())
}

/// Listens on a port the firewall must drop, says `E2E READY firewall`, and keeps listening
/// while the test scans from outside (the agent itself serves the agent port).
pub fn firewall_listen() -> Result<(), String> {
    let hidden = bind(HIDDEN_PORT)?;
    // Were the firewall missing, a scan of this port would get an answer.
    std::thread::spawn(move || {
        for mut stream in hidden.incoming().map_while(Result::ok) {
            let _ = stream.write_all(b"KEEL-FIREWALL-LEAK\n");
        }
    });
    println!("E2E READY firewall");
    let _ = std::io::stdout().flush();
    // The host side scans, then asks the agent (its own service, on the agent port) for health.
    std::thread::sleep(Duration::from_secs(20));
    Ok(())
}

fn bind(port: u16) -> Result<TcpListener, String> {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|e| format!("listen on {port}: {e}"))
}

fn jailer() -> Jailer {
    Jailer::default()
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: two new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// This runner jailed as a probe (`keel-e2e-runner probe`), /vm/ro exposed read-only.
fn probe_spec(vm_id: &str, uid: u32, limits: CgroupLimits) -> Result<JailSpec, String> {
    let dir = Path::new(WORK);
    fs::create_dir_all(dir).map_err(|e| format!("create {WORK}: {e}"))?;
    let ro = dir.join(format!("{vm_id}-ro"));
    fs::write(&ro, "ro").map_err(|e| format!("write {}: {e}", ro.display()))?;
    // The VM's own file: only the read-only mount can refuse the write.
    std::os::unix::fs::chown(&ro, Some(uid), Some(uid))
        .map_err(|e| format!("chown {}: {e}", ro.display()))?;
    Ok(JailSpec {
        vm_id: vm_id.into(),
        uid,
        gid: uid,
        program: RUNNER.into(),
        files: vec![Expose {
            host: ro,
            jail: "/vm/ro".into(),
            read_only: true,
            executable: false,
        }],
        sockets_dir: dir.join(format!("{vm_id}-sockets")),
        devices: vec!["/dev/kvm".into(), "/dev/urandom".into()],
        rlimits: vec![Rlimit::NoFile(64), Rlimit::Core(0)],
        cgroup: limits,
        proc: true,
    })
}

/// What runs inside the probe jail: the report, then `end`.
pub fn probe_main(args: &[String]) {
    let mut lines = probe::report(Path::new("/"), Some(Path::new("/vm/ro")));
    let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    lines.push(format!("cgroup={}", cgroups.trim()));
    lines.push(format!(
        "kvm={}",
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_or_else(|e| format!("{:?}", e.kind()), |_| "ok".into())
    ));
    lines.push(format!("privileged={}", probe::privileged_call()));
    for line in lines {
        println!("{line}");
    }
    if args.first().map(String::as_str) == Some("oom") {
        let _ = std::io::stdout().flush();
        // Touch far more than the cap, a MiB at a time, until the OOM killer ends us.
        let mut hog: Vec<Vec<u8>> = Vec::new();
        for _ in 0..256 {
            hog.push(vec![1u8; 1 << 20]);
        }
        println!("allocated={} MiB", hog.len());
    }
    println!("end");
}

fn run_probe(
    spec: &JailSpec,
    args: &[&str],
) -> Result<(Vec<String>, std::process::ExitStatus), String> {
    let (out_r, out_w) = pipe()?;
    let mut argv = vec!["probe".to_string(), "probe".to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let stdio = JailStdio {
        stdin: None,
        stdout: Some(out_w),
        stderr: None,
    };
    let jailed = jailer()
        .spawn(spec, &argv, stdio)
        .map_err(|e| e.to_string())?;
    let lines: Vec<String> = BufReader::new(fs::File::from(out_r))
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = jailed.wait().map_err(|e| format!("wait: {e}"))?;
    Ok((lines, status))
}

fn expect(report: &[String], key: &str, want: &str) -> Result<(), String> {
    match probe::field(report, key) {
        Some(v) if v == want => Ok(()),
        other => Err(format!(
            "{key} is {other:?}, expected {want:?}; report: {report:?}"
        )),
    }
}

/// A jailed probe sees only its jail, is PID 1 alone, unprivileged, without capabilities, with
/// no_new_privs, in its cgroup; /dev/kvm works for it.
pub fn jail_probe() -> Result<(), String> {
    let spec = probe_spec("probe", 2000, CgroupLimits::for_vm(16, 1))?;
    let (report, status) = run_probe(&spec, &[])?;
    let _ = jailer().cleanup("probe");
    report.iter().for_each(|l| println!("probe| {l}"));
    if !status.success() {
        return Err(format!("probe ended with {status}"));
    }
    expect(&report, "pid", "1")?;
    expect(&report, "procs", "1")?;
    expect(&report, "Uid", "2000 2000 2000 2000")?;
    expect(&report, "Groups", "")?;
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        expect(&report, caps, ZERO_CAPS)?;
    }
    expect(&report, "NoNewPrivs", "1")?;
    expect(&report, "env", "0")?;
    expect(&report, "fds", "0,1,2")?;
    expect(&report, "write /vm/ro", "ReadOnlyFilesystem")?;
    expect(&report, "privileged", "PermissionDenied")?;
    expect(&report, "cgroup", "0::/")?;
    expect(&report, "kvm", "ok")?;
    expect(
        &report,
        "paths",
        "/bin,/bin/keel-e2e-runner,/dev,/dev/kvm,/dev/urandom,/proc,/run,/run/vm,/vm,/vm/ro",
    )
}

/// A probe allocating past its memory cap is OOM-killed inside its cgroup; the event is
/// reported and this runner (the host) carries on.
pub fn jail_memory_cap() -> Result<(), String> {
    let limits = CgroupLimits {
        memory_max: Some(32 << 20),
        pids_max: Some(16),
        ..CgroupLimits::default()
    };
    let spec = probe_spec("oom", 2001, limits)?;
    let (report, status) = run_probe(&spec, &["oom"])?;
    let events = jailer().cgroup_events("oom").map_err(|e| e.to_string());
    let cleanup = jailer().cleanup("oom").map_err(|e| e.to_string());
    let events = events?;
    println!("oom probe ended with {status}; events {events:?}");
    cleanup?;
    use std::os::unix::process::ExitStatusExt;
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!(
            "the probe ended with {status}, not SIGKILL; {report:?}"
        ));
    }
    if events.oom_kill == 0 || events.memory_max == 0 {
        return Err(format!(
            "memory.events did not record the breach: {events:?}"
        ));
    }
    Ok(())
}

/// keel-vmm, jailed as the agent will run it, boots Debian's kernel and the guest powers off.
pub fn jail_vmm() -> Result<(), String> {
    let sockets = PathBuf::from(WORK).join("vm1");
    let kernel = PathBuf::from("/usr/lib/keel-tests/vmlinuz");
    let initrd = PathBuf::from("/usr/lib/keel-tests/initrd.img");
    let spec = JailSpec::for_vmm(
        "vm1",
        2002,
        2002,
        Path::new("/usr/bin/keel-vmm"),
        &kernel,
        Some(&initrd),
        &[],
        &sockets,
        128,
        1,
    );
    // Nothing loads the tun module in this branch yet; a VM without a NIC needs no /dev/net/tun.
    let mut spec = spec;
    spec.devices.retain(|d| d.exists());
    let map = |p: &Path| {
        spec.jail_path(p)
            .ok_or_else(|| format!("{} is not in the jail", p.display()))
    };
    let config = keel_api::vmm::VmConfig {
        vcpus: 1,
        memory_mib: 128,
        kernel: map(&kernel)?,
        initrd: Some(map(&initrd)?),
        cmdline: "console=ttyS0 quiet panic=-1 keel_guest.mode=poweroff".into(),
        serial: keel_api::vmm::SerialConfig::Stdout,
        disks: Vec::new(),
        nics: Vec::new(),
        rng: false,
    };
    let config = serde_json::to_string(&config).map_err(|e| format!("encode vm.json: {e}"))?;
    fs::create_dir_all(&sockets).map_err(|e| format!("create {}: {e}", sockets.display()))?;
    let config_path = sockets.join("vm.json");
    fs::write(&config_path, config).map_err(|e| format!("write vm.json: {e}"))?;
    let argv = [
        "keel-vmm".to_string(),
        "--config".into(),
        map(&config_path)?.display().to_string(),
        "--api-sock".into(),
        map(&sockets.join("api.sock"))?.display().to_string(),
    ];
    let (out_r, out_w) = pipe()?;
    let err_w = out_w.try_clone().map_err(|e| e.to_string())?;
    let stdio = JailStdio {
        stdin: None,
        stdout: Some(out_w),
        stderr: Some(err_w),
    };
    let started = Instant::now();
    let jailed = jailer()
        .spawn(&spec, &argv, stdio)
        .map_err(|e| e.to_string())?;
    let mut up = false;
    for line in BufReader::new(fs::File::from(out_r))
        .lines()
        .map_while(Result::ok)
    {
        println!("jailed-vmm| {line}");
        up |= line.contains("KEEL-GUEST: up");
        if up && sockets.join("api.sock").exists() {
            // The API socket the VMM made inside the jail is on the host, owned by the VM.
            use std::os::unix::fs::MetadataExt;
            let uid = fs::metadata(sockets.join("api.sock")).map(|m| m.uid()).ok();
            println!("api.sock owner {uid:?}");
        }
    }
    let status = jailed.wait().map_err(|e| format!("wait: {e}"))?;
    let events = jailer().cgroup_events("vm1").map_err(|e| e.to_string());
    let _ = jailer().cleanup("vm1");
    println!(
        "jailed keel-vmm: {status} after {:?}, events {events:?}",
        started.elapsed()
    );
    if !up {
        return Err("the jailed guest never came up".into());
    }
    match status.code() {
        Some(0) => Ok(()),
        _ => Err(format!("jailed keel-vmm ended with {status}")),
    }
}

/// Where the agent keeps its VMs' run directories.
const AGENT_RUN: &str = "/run/keel/vms";

/// A VM the agent runs, as the host sees it.
pub struct AgentVm {
    pub name: String,
    pub dir: PathBuf,
    /// From the agent's pid file.
    pub pid: Option<u32>,
    /// What keel-vmm's control socket says ("running", "paused", ...).
    pub state: String,
}

/// Every agent VM whose keel-vmm answers on its control socket.
pub fn agent_vms() -> Vec<AgentVm> {
    let Ok(dirs) = fs::read_dir(AGENT_RUN) else {
        return Vec::new();
    };
    dirs.flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            let (api, _) = keel_init::agent::launch::sockets(&dir);
            let reply = keel_init::agent::vms::vmm_call(&api, "GET", "/vm").ok()?;
            let body: serde_json::Value = reply.json_body().ok()?;
            Some(AgentVm {
                name: entry.file_name().to_string_lossy().into_owned(),
                pid: fs::read_to_string(dir.join("pid"))
                    .ok()
                    .and_then(|p| p.trim().parse().ok()),
                state: body["state"].as_str().unwrap_or_default().to_string(),
                dir,
            })
        })
        .collect()
}

/// Waits up to 15 minutes for an agent VM in `state`.
pub fn wait_agent_vm(state: &str) -> Result<AgentVm, String> {
    let deadline = Instant::now() + Duration::from_secs(900);
    while Instant::now() < deadline {
        if let Some(vm) = agent_vms().into_iter().find(|v| v.state == state) {
            return Ok(vm);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!("no agent VM became {state}"))
}

/// `key:` of /proc/<pid>/status, whitespace collapsed.
fn status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| {
        let value = l.strip_prefix(key)?.strip_prefix(':')?;
        Some(value.split_whitespace().collect::<Vec<_>>().join(" "))
    })
}

/// The VM's cgroup limits, as the agent sizes them from its vm.json.
fn expected_limits(dir: &Path) -> Result<CgroupLimits, String> {
    let path = dir.join("vm.json");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let memory = config["memory_mib"]
        .as_u64()
        .ok_or("vm.json has no memory_mib")?;
    let vcpus = config["vcpus"].as_u64().ok_or("vm.json has no vcpus")?;
    Ok(CgroupLimits::for_vm(
        memory,
        u32::try_from(vcpus).map_err(|e| e.to_string())?,
    ))
}

/// For tests/tests/agent.rs: the first VM the agent runs, seen from the host, is jailed: a VM
/// uid, no capabilities, no_new_privs, PID 1 of its own namespace, an empty environment, a root
/// holding only its own files, and its own cgroup with the limits sized from the VM.
pub fn agent_vm_jailed() -> Result<(), String> {
    let vm = wait_agent_vm("running")?;
    let pid = vm.pid.ok_or("the agent wrote no pid file")?;
    // keel-vmm makes its console socket while it builds the VM, around when the API answers.
    let console = keel_init::agent::launch::sockets(&vm.dir).1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !console.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    let field = |key: &str| status_field(&status, key).unwrap_or_default();
    println!(
        "agent-jail| VM {} keel-vmm pid {pid}: Uid {} CapEff {} NSpid {}",
        vm.name,
        field("Uid"),
        field("CapEff"),
        field("NSpid")
    );
    let uid: u32 = field("Uid")
        .split(' ')
        .next()
        .and_then(|u| u.parse().ok())
        .ok_or("no Uid")?;
    if !keel_init::agent::launch::is_vm_uid(uid)
        || field("Uid") != format!("{uid} {uid} {uid} {uid}")
    {
        return Err(format!("keel-vmm runs as Uid {}", field("Uid")));
    }
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        if field(caps) != ZERO_CAPS {
            return Err(format!("{caps} is {}", field(caps)));
        }
    }
    if field("NoNewPrivs") != "1" || !field("Groups").is_empty() {
        return Err(format!(
            "NoNewPrivs {} Groups {:?}",
            field("NoNewPrivs"),
            field("Groups")
        ));
    }
    if !field("NSpid").ends_with(" 1") {
        return Err(format!(
            "not PID 1 of its namespace: NSpid {}",
            field("NSpid")
        ));
    }
    let environ = fs::read(format!("/proc/{pid}/environ")).map_err(|e| e.to_string())?;
    if !environ.is_empty() {
        return Err(format!(
            "environment {:?}",
            String::from_utf8_lossy(&environ)
        ));
    }
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let prefix = root.display().to_string();
    let paths: Vec<String> = probe::paths(&root)
        .iter()
        .map(|p| p.strip_prefix(&prefix).unwrap_or(p).to_string())
        .collect();
    // tests/tests/agent.rs gives the VM a writable private disk copy, a shared read-only disk
    // and a NIC.
    let want = "/bin,/bin/keel-vmm,/dev,/dev/kvm,/dev/net,/dev/net/tun,/dev/urandom,/run,/run/vm,\
                /run/vm/api.sock,/run/vm/console.sock,/vm,/vm/disk0,/vm/disk1,/vm/initrd,\
                /vm/kernel,/vm/vm.json";
    if paths.join(",") != want {
        return Err(format!("its root holds {paths:?}"));
    }
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| e.to_string())?;
    let group = format!("/keel.slice/vm-{}", vm.name);
    if cgroup.trim() != format!("0::{group}") {
        return Err(format!("its cgroup is {cgroup:?}"));
    }
    let mountinfo =
        fs::read_to_string(format!("/proc/{pid}/mountinfo")).map_err(|e| e.to_string())?;
    for (disk, want) in [("/vm/disk0", "rw"), ("/vm/disk1", "ro")] {
        let options = mountinfo.lines().find_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            (fields.get(4) == Some(&disk)).then(|| fields.get(5).copied().unwrap_or_default())
        });
        if !options.is_some_and(|o| o.split(',').any(|o| o == want)) {
            return Err(format!("{disk} is mounted {options:?}, not {want}"));
        }
    }
    use std::os::unix::fs::MetadataExt;
    let owner = fs::metadata(root.join("vm/disk0")).map(|m| m.uid());
    if owner.as_ref().ok() != Some(&uid) {
        return Err(format!(
            "the writable disk is owned by {owner:?}, not {uid}"
        ));
    }
    let config = fs::read_to_string(vm.dir.join("vm.json")).map_err(|e| e.to_string())?;
    let config: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
    let tap = config["nics"][0]["tap"]
        .as_str()
        .ok_or("vm.json has no tap")?;
    let sys = Path::new("/sys/class/net").join(tap);
    let tap_owner = fs::read_to_string(sys.join("owner")).unwrap_or_default();
    let master = fs::read_link(sys.join("master")).unwrap_or_default();
    let mac = fs::read_to_string(sys.join("address")).unwrap_or_default();
    println!(
        "agent-jail| tap {tap}: owner {} master {} address {}",
        tap_owner.trim(),
        master.display(),
        mac.trim()
    );
    // A fe: address never becomes the bridge's own.
    if tap_owner.trim() != uid.to_string()
        || !master.ends_with("keelbr0")
        || !mac.starts_with("fe:")
    {
        return Err(format!("tap {tap} is owned by {tap_owner:?} in {master:?}"));
    }
    let limits = expected_limits(&vm.dir)?;
    for (file, want) in limits.files() {
        let path = format!("/sys/fs/cgroup{group}/{file}");
        match fs::read_to_string(&path) {
            Ok(got) if got.trim() == want => println!("agent-jail| {file} = {want}"),
            Err(_) if file == "memory.swap.max" => {}
            other => return Err(format!("{path} is {other:?}, expected {want}")),
        }
    }
    Ok(())
}

/// For tests/tests/agent.rs: once the agent VM runs again after the agent restart (the test
/// resumed it), lowers its cgroup's memory.max far below what it uses, as a guest or VMM
/// outgrowing its cap would: the kernel OOM-kills keel-vmm in its group, and the agent reports it.
pub fn agent_vm_squeeze() -> Result<(), String> {
    let vm = wait_agent_vm("running")?;
    let path = format!("/sys/fs/cgroup/keel.slice/vm-{}/memory.max", vm.name);
    fs::write(&path, "8M").map_err(|e| format!("write {path}: {e}"))?;
    println!("E2E squeezed VM {}", vm.name);
    Ok(())
}
