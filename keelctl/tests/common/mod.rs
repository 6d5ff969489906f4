//! What keelctl's integration tests share: a scratch directory and running the binary with a
//! configuration directory of the test's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An empty scratch directory `<temp>/keelctl-<tag>-<pid>`.
pub fn tmp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keelctl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs keelctl with `config` as its configuration directory.
pub fn keelctl(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keelctl"))
        .arg("--config-dir")
        .arg(config)
        .args(args)
        .env_remove("KEELCTL_HOST")
        .output()
        .unwrap()
}

/// Runs keelctl, which must succeed; its stdout.
pub fn ok(config: &Path, args: &[&str]) -> String {
    let out = keelctl(config, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "keelctl {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}
