//! Driving `keelctl`, the manager's command line, from end-to-end tests: build it, run it with a
//! private configuration directory, and read the agent's ready line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::paths;

/// Builds keelctl (a no-op when it is up to date) and returns its path.
pub fn binary() -> PathBuf {
    let root = paths::workspace_root();
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "keelctl"])
        .current_dir(&root)
        .status();
    assert!(status.is_ok_and(|s| s.success()), "cannot build keelctl");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root.join("target"), PathBuf::from);
    target.join("debug").join("keelctl")
}

/// keelctl with its own configuration directory (manager CA, adopted hosts).
pub struct Keelctl {
    pub bin: PathBuf,
    pub config: PathBuf,
}

impl Keelctl {
    /// A keelctl with an empty configuration directory named after `tag`, and a manager CA.
    pub fn with_new_ca(tag: &str) -> Keelctl {
        let config = std::env::temp_dir().join(format!("keel-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&config);
        let k = Keelctl {
            bin: binary(),
            config,
        };
        k.ok(&["ca", "init"]);
        k
    }

    /// A command for `args`, not started (for long-running ones such as `manager serve`).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .arg("--config-dir")
            .arg(&self.config)
            .args(args)
            .env_remove("KEELCTL_HOST");
        command
    }

    /// Runs keelctl: (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs keelctl, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "keelctl {args:?} failed: {stderr}");
        stdout
    }

    /// Runs keelctl, which must fail saying `want`.
    pub fn fails(&self, args: &[&str], want: &str) {
        let (ok, _, stderr) = self.run(args);
        assert!(!ok, "keelctl {args:?} succeeded");
        assert!(stderr.contains(want), "keelctl {args:?}: {stderr}");
    }

    /// Runs keelctl with `-o json`.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Points the adopted host `name` at a new address, keeping its pinned fingerprint: after a
    /// reboot QEMU forwards another local port to it.
    pub fn moved(&self, name: &str, addr: &str) {
        let path = self.config.join("hosts").join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut entry: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()));
        entry["addr"] = Value::from(addr);
        std::fs::write(&path, entry.to_string())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// A nested guest boots in well under a minute under TCG; leave room for a loaded machine.
pub const GUEST: Duration = Duration::from_secs(300);

/// What the test guest (`keel_guest.mode=wait-button`) prints once up.
pub const GUEST_WAITING: &str = "KEEL-GUEST: waiting for power button";

/// A VM's state in `vm get -o json`.
pub fn vm_state(vm: &Value) -> &str {
    vm["state"].as_str().unwrap_or_default()
}

/// Images and VMs through keelctl.
impl Keelctl {
    /// Uploads `file` to the host's image store as a `kind` image.
    pub fn upload(&self, kind: &str, file: &Path) {
        let path = file.to_string_lossy();
        let out = self.ok(&["image", "upload", kind, &path]);
        assert!(out.contains(kind), "{out}");
    }

    /// Uploads the test guest's kernel and initramfs from `payload` (the test image's
    /// `overlay/usr/lib/keel-tests`) as `vmlinuz` and `initrd.img`.
    pub fn upload_guest(&self, payload: &Path) {
        self.upload("kernel", &payload.join("vmlinuz"));
        self.upload("initrd", &payload.join("initrd.img"));
    }

    /// Creates and starts VM `name` running the test guest (256 MiB, waiting for its power
    /// button once up), with `devices` (`--disk`, `--nic` arguments) added.
    pub fn start_guest(&self, name: &str, devices: &[&str]) {
        let mut args = vec![
            "vm",
            "create",
            name,
            "--kernel",
            "vmlinuz",
            "--initrd",
            "initrd.img",
            "--memory",
            "256",
            "--cmdline",
            "console=ttyS0 quiet panic=-1 keel_guest.mode=wait-button",
            "--start",
        ];
        args.extend(devices);
        self.ok(&args);
    }

    /// Polls `vm get` until `done` holds.
    pub fn wait_vm(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + GUEST;
        loop {
            let vm = self.json(&["vm", "get", name]);
            if done(&vm) {
                return vm;
            }
            assert!(Instant::now() < deadline, "VM {name} never {what}: {vm}");
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// How many times `marker` is in the console history now.
    pub fn console_count(&self, name: &str, marker: &str) -> usize {
        self.ok(&["vm", "console", name]).matches(marker).count()
    }

    /// Polls the console until `marker` appears `count` times.
    pub fn wait_console(&self, name: &str, marker: &str, count: usize) {
        let deadline = Instant::now() + GUEST;
        loop {
            let console = self.ok(&["vm", "console", name]);
            if console.matches(marker).count() >= count {
                return;
            }
            let tail: String = {
                let chars: Vec<char> = console.chars().collect();
                chars[chars.len().saturating_sub(2000)..].iter().collect()
            };
            assert!(
                Instant::now() < deadline,
                "{marker:?} x{count} not on the console of {name}; it ends: {tail}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

impl Drop for Keelctl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config);
    }
}

/// The fingerprint and adoption token of the agent's ready line,
/// `keel ready: api=https://<ip>:8443 fingerprint=sha256:<hex> adopt-token=<token>`.
pub fn ready_fields(line: &str) -> (String, String) {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_default()
            .to_string()
    };
    (field("fingerprint="), field("adopt-token="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ready_line() {
        let line = "keel ready: api=https://10.0.2.15:8443 fingerprint=sha256:ab adopt-token=-x";
        assert_eq!(
            ready_fields(line),
            ("sha256:ab".to_string(), "-x".to_string())
        );
        assert_eq!(ready_fields("keel ready:"), (String::new(), String::new()));
    }
}
