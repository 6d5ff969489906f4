//! What keelctl's command-line tests share: a scratch directory and running the binary with a
//! configuration directory of the test's own. These tests run a real agent in-process, so they
//! live here rather than in keelctl, which stays free of keel-init.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The keelctl binary, built once per test process.
pub fn keelctl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(keel_tests::keelctl::binary)
}

/// An empty scratch directory `<temp>/keelctl-<tag>-<pid>`.
pub fn tmp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keelctl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs keelctl with `config` as its configuration directory.
pub fn keelctl(config: &Path, args: &[&str]) -> Output {
    Command::new(keelctl_bin())
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
