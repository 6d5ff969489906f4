//! Runs `keelctl` (the manager-side CLI) for end-to-end tests, with a configuration directory of
//! the test's own.

use crate::paths;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

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

/// keelctl with a configuration directory.
pub struct Keelctl {
    pub bin: PathBuf,
    pub config: PathBuf,
}

impl Keelctl {
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

    /// Runs keelctl: success, stdout, stderr.
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

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "keelctl {args:?} failed: {stderr}");
        stdout
    }

    pub fn fails(&self, args: &[&str], want: &str) {
        let (ok, _, stderr) = self.run(args);
        assert!(!ok, "keelctl {args:?} succeeded");
        assert!(stderr.contains(want), "keelctl {args:?}: {stderr}");
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }
}
