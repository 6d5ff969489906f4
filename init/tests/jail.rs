//! The jail for real (needs root and cgroup v2): this test binary jails itself as the probe
//! (`jail probe <file>...`), with only its own shared libraries, two files and a device, and
//! checks what the probe reports from inside: its root, its PID namespace, no capabilities,
//! no_new_privs, its own uid, its cgroup; and that a second jail cannot see the first.
//! Memory limits are checked in the Keel test image (tests/tests/hardening.rs), where PID 1 owns
//! the cgroup v2 hierarchy; here the memory controller may belong to a v1 hierarchy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use keel_init::jail::{probe, CgroupLimits, Expose, JailSpec, JailStdio, Jailer};

const ZERO_CAPS: &str = "0000000000000000";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        return run_probe(&args[2..]);
    }
    // libtest-style filters are ignored; the tests are few and share one setup.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("jail: skipped, needs root");
        return;
    }
    let Some(cgroup2) = cgroup2_mount() else {
        println!("jail: skipped, no cgroup2 mount");
        return;
    };
    let env = Env::new(&cgroup2);
    let _cleanup = Cleanup(env);
    let tests: [(&str, Test); 3] = [
        (
            "a_jailed_probe_sees_only_its_jail",
            a_jailed_probe_sees_only_its_jail,
        ),
        ("jails_cannot_see_each_other", jails_cannot_see_each_other),
        ("a_failing_step_is_named", a_failing_step_is_named),
    ];
    for (name, test) in tests {
        test(env);
        println!("test {name} ... ok");
    }
    println!("test result: ok. {} passed", tests.len());
}

type Test = fn(&Env);

/// Removes every jail, the test slice and the work directory, also when a test panics.
struct Cleanup(&'static Env);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let env = self.0;
        for id in ["a", "b", "c", "d", "e"] {
            let _ = env.jailer.cleanup(id);
        }
        let _ = fs::remove_dir(&env.jailer.slice);
        let _ = fs::remove_dir_all(&env.work);
    }
}

/// Inside the jail: the report, whether each file can be appended to, whether a privileged call
/// works; then `end`, and wait for stdin to close (so the parent can look at us meanwhile).
fn run_probe(files: &[String]) {
    let mut out = std::io::stdout();
    for line in probe::report(Path::new("/"), None) {
        writeln!(out, "{line}").unwrap();
    }
    for file in files {
        let result = fs::OpenOptions::new().append(true).open(file);
        let result = result.map_or_else(|e| format!("{:?}", e.kind()), |_| "ok".into());
        writeln!(out, "write {file}={result}").unwrap();
    }
    let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let v2 = cgroups.lines().find(|l| l.starts_with("0::")).unwrap_or("");
    writeln!(out, "cgroup={v2}").unwrap();
    writeln!(out, "privileged={}", probe::privileged_call()).unwrap();
    writeln!(out, "end").unwrap();
    out.flush().unwrap();
    let _ = std::io::stdin().lines().count();
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
    })
}

struct Env {
    jailer: Jailer,
    work: PathBuf,
    uid: u32,
}

impl Env {
    fn new(cgroup2: &Path) -> &'static Env {
        let pid = std::process::id();
        let work = std::env::temp_dir().join(format!("keel-jail-test-{pid}"));
        fs::create_dir_all(&work).unwrap();
        Box::leak(Box::new(Env {
            jailer: Jailer {
                slice: cgroup2.join(format!("keel-test-{pid}.slice")),
                roots: work.join("roots"),
            },
            uid: 60000 + pid % 4000,
            work,
        }))
    }

    /// A jail running this binary as the probe, with its shared libraries at their own paths,
    /// `/vm/ro` read-only and `/vm/rw` writable, /dev/urandom, and /proc.
    fn spec(&self, vm_id: &str) -> JailSpec {
        let exe = std::env::current_exe().unwrap();
        let mut files = shared_libraries();
        for (name, read_only) in [("ro", true), ("rw", false)] {
            let host = self.work.join(format!("{vm_id}-{name}"));
            fs::write(&host, name).unwrap();
            std::os::unix::fs::chown(&host, Some(self.uid), Some(self.uid)).unwrap();
            files.push(Expose {
                host,
                jail: PathBuf::from(format!("/vm/{vm_id}-{name}")),
                read_only,
                executable: false,
            });
        }
        JailSpec {
            vm_id: vm_id.to_string(),
            uid: self.uid,
            gid: self.uid,
            program: exe,
            files,
            sockets_dir: self.work.join(format!("{vm_id}-sockets")),
            devices: vec!["/dev/urandom".into()],
            rlimits: vec![keel_init::jail::Rlimit::NoFile(64)],
            cgroup: CgroupLimits::default(),
            proc: true,
        }
    }
}

/// The shared objects this process has mapped, exposed read-only at the same paths (plus the
/// dynamic loader at the path the executable names).
fn shared_libraries() -> Vec<Expose> {
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    let mut paths: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .map(PathBuf::from)
        .collect();
    paths.sort();
    paths.dedup();
    let mut files: Vec<Expose> = paths
        .iter()
        .map(|p| Expose {
            host: p.clone(),
            jail: p.clone(),
            read_only: true,
            executable: true,
        })
        .collect();
    let loader = Path::new("/lib64/ld-linux-x86-64.so.2");
    if let Ok(real) = fs::canonicalize(loader) {
        if real != loader {
            files.push(Expose {
                host: real,
                jail: loader.to_path_buf(),
                read_only: true,
                executable: true,
            });
        }
    }
    files
}

struct Running {
    jailed: keel_init::jail::Jailed,
    report: Vec<String>,
    stdin: Option<OwnedFd>,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two new descriptors owned by nobody else.
    unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    }
}

/// Starts the probe in a jail and reads its report up to `end`.
fn start(env: &Env, spec: &JailSpec) -> Running {
    let (stdin_r, stdin_w) = pipe();
    let (stdout_r, stdout_w) = pipe();
    let files: Vec<String> = spec
        .files
        .iter()
        .rev()
        .take(2)
        .map(|f| f.jail.display().to_string())
        .collect();
    let mut argv = vec!["ignored".to_string(), "probe".into()];
    argv.extend(files);
    let stdio = JailStdio {
        stdin: Some(stdin_r),
        stdout: Some(stdout_w),
        stderr: None,
    };
    let jailed = env
        .jailer
        .spawn(spec, &argv, stdio)
        .expect("spawn the jailed probe");
    let mut report = Vec::new();
    for line in BufReader::new(fs::File::from(stdout_r)).lines() {
        let line = line.unwrap();
        if line == "end" {
            break;
        }
        report.push(line);
    }
    Running {
        jailed,
        report,
        stdin: Some(stdin_w),
    }
}

impl Running {
    fn finish(mut self, env: &Env, vm_id: &str) {
        self.stdin.take();
        let status = self.jailed.wait().unwrap();
        assert!(
            status.success(),
            "probe ended with {status}: {:#?}",
            self.report
        );
        env.jailer.cleanup(vm_id).unwrap();
        assert!(!env.jailer.cgroup_dir(vm_id).exists());
        assert!(!env.jailer.root_dir(vm_id).exists());
    }
}

fn field<'a>(report: &'a [String], key: &str) -> &'a str {
    probe::field(report, key).unwrap_or_else(|| panic!("no {key} in {report:#?}"))
}

fn a_jailed_probe_sees_only_its_jail(env: &Env) {
    let spec = env.spec("a");
    let run = start(env, &spec);
    let r = &run.report;
    // Its own PID namespace: it is PID 1 and alone.
    assert_eq!(field(r, "pid"), "1");
    assert_eq!(field(r, "procs"), "1");
    // Unprivileged, no capabilities anywhere, no way to gain any.
    let uid = env.uid.to_string();
    assert_eq!(field(r, "Uid"), [uid.as_str(); 4].join(" "));
    assert_eq!(field(r, "Gid"), [uid.as_str(); 4].join(" "));
    assert_eq!(field(r, "Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(r, caps), ZERO_CAPS, "{caps}");
    }
    assert_eq!(field(r, "NoNewPrivs"), "1");
    assert_eq!(field(r, "privileged"), "PermissionDenied");
    // Clean environment and descriptors.
    assert_eq!(field(r, "env"), "0");
    assert_eq!(field(r, "fds"), "0,1,2");
    // Its root holds exactly what the spec exposes.
    let mut want: Vec<PathBuf> = spec.files.iter().map(|f| f.jail.clone()).collect();
    want.extend(spec.devices.iter().cloned());
    want.push(spec.program_in_jail());
    want.extend(["/proc", "/run/vm"].map(PathBuf::from));
    let mut want: Vec<String> = want
        .iter()
        .flat_map(|p| p.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
        .filter(|p| p != Path::new("/"))
        .map(|p| p.display().to_string())
        .collect();
    want.sort();
    want.dedup();
    let mut seen: Vec<&str> = field(r, "paths").split(',').collect();
    seen.sort();
    assert_eq!(seen, want);
    // Read-only where asked, writable where asked.
    assert_eq!(field(r, "write /vm/a-ro"), "ReadOnlyFilesystem");
    assert_eq!(field(r, "write /vm/a-rw"), "ok");
    // In its cgroup (seen as the root of its cgroup namespace).
    assert_eq!(field(r, "cgroup"), "0::/");
    let procs = fs::read_to_string(env.jailer.cgroup_dir("a").join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), run.jailed.pid().to_string());
    // The host sees the jail's sockets directory, owned by the VM.
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&spec.sockets_dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (env.uid, 0o700));
    assert!(env.jailer.cgroup_events("a").unwrap() == Default::default());
    run.finish(env, "a");
}

fn jails_cannot_see_each_other(env: &Env) {
    let first = start(env, &env.spec("b"));
    let second = start(env, &env.spec("c"));
    let paths = field(&second.report, "paths");
    assert!(!paths.contains("/vm/b-"), "{paths}");
    assert!(paths.contains("/vm/c-ro"), "{paths}");
    assert_eq!(field(&second.report, "procs"), "1");
    // From the host, each jail is a separate process tree.
    assert_ne!(first.jailed.pid(), second.jailed.pid());
    second.finish(env, "c");
    first.finish(env, "b");
}

fn a_failing_step_is_named(env: &Env) {
    let mut spec = env.spec("d");
    // A program that is not executable: everything is built, then the exec fails.
    let program = env.work.join("not-executable");
    fs::write(&program, "#!/nothing\n").unwrap();
    spec.program = program;
    let err = env
        .jailer
        .spawn(&spec, &["x".to_string()], JailStdio::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("jail of VM d: cannot exec /bin/not-executable"),
        "{err}"
    );
    assert!(
        !env.jailer.cgroup_dir("d").exists(),
        "a failed spawn cleans up"
    );
    assert!(!env.jailer.root_dir("d").exists());
    // A device that is not a device is refused before anything starts.
    let mut spec = env.spec("e");
    spec.devices = vec![spec.program.clone()];
    let err = env
        .jailer
        .spawn(&spec, &[], JailStdio::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a character device"), "{err}");
}
