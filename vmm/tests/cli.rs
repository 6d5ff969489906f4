//! The keel-vmm binary's command line: help, version, and the exit status and message of every
//! kind of bad invocation or configuration (none of which needs a guest).

use std::path::PathBuf;
use std::process::{Command, Output};

fn keel_vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel-vmm"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run keel-vmm: {e}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A scratch directory for config files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("keel-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn help_and_version_exit_zero() {
    let help = keel_vmm(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("Usage: keel-vmm --config PATH"));

    let version = keel_vmm(&["-V"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("keel-vmm {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_and_name_the_argument() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "keel-vmm: --config is required"),
        (&["--config"], "keel-vmm: --config needs a value"),
        (&["--bogus"], "keel-vmm: unknown argument \"--bogus\""),
    ];
    for (args, want) in cases {
        let out = keel_vmm(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).starts_with(want), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("Usage: keel-vmm"), "{args:?}");
    }
}

#[test]
fn bad_configs_exit_2_and_name_the_value() {
    let dir = Dir::new("bad");
    let kernel = dir.write("vmlinuz", "not really a kernel");
    let unknown = dir.write(
        "unknown.json",
        &format!(
            "{{\n  \"vcpus\": 1,\n  \"foo\": 2,\n  \"memory_mib\": 64, \"kernel\": \"{kernel}\"}}"
        ),
    );
    let small = dir.write(
        "small.json",
        &format!(r#"{{"vcpus": 1, "memory_mib": 8, "kernel": "{kernel}"}}"#),
    );
    let no_kernel = dir.write(
        "nokernel.json",
        r#"{"vcpus": 1, "memory_mib": 64, "kernel": "/nonexistent/vmlinuz"}"#,
    );
    let cases = [
        (
            unknown.clone(),
            format!("keel-vmm: {unknown}: unknown field `foo`"),
        ),
        (
            small.clone(),
            format!("keel-vmm: {small}: memory_mib 8: below the minimum"),
        ),
        (
            no_kernel.clone(),
            format!("keel-vmm: {no_kernel}: kernel /nonexistent/vmlinuz: cannot open"),
        ),
        (
            "/nonexistent/vm.json".to_owned(),
            "keel-vmm: /nonexistent/vm.json: cannot read".to_owned(),
        ),
    ];
    for (config, want) in cases {
        let out = keel_vmm(&["--config", &config]);
        if stderr(&out).contains("cannot open /dev/kvm") {
            eprintln!("no /dev/kvm: validation cases need it to learn the vCPU limit");
            continue;
        }
        assert_eq!(out.status.code(), Some(2), "{config}: {}", stderr(&out));
        assert!(stderr(&out).starts_with(&want), "{}", stderr(&out));
    }
    let out = keel_vmm(&["--config", &unknown]);
    assert!(
        stderr(&out).contains("at line 3 column 7"),
        "{}",
        stderr(&out)
    );
}
