//! The rust-vmm generation check: every rust-vmm crate must resolve to exactly one version in the
//! workspace, since two generations of vm-memory or kvm-bindings in one binary do not interoperate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::error::Error;

/// The crates published by the rust-vmm project.
pub const RUST_VMM_CRATES: &[&str] = &[
    "acpi_tables",
    "event-manager",
    "kvm-bindings",
    "kvm-ioctls",
    "linux-loader",
    "seccompiler",
    "vfio-bindings",
    "vfio-ioctls",
    "vhost",
    "vhost-user-backend",
    "virtio-bindings",
    "virtio-blk",
    "virtio-console",
    "virtio-device",
    "virtio-queue",
    "virtio-queue-ser",
    "virtio-vsock",
    "vm-allocator",
    "vm-device",
    "vm-fdt",
    "vm-memory",
    "vm-superio",
    "vm-superio-ser",
    "vmm-sys-util",
];

/// A crate that resolved to more than one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub name: String,
    pub versions: Vec<String>,
}

/// What `cargo metadata` says about the rust-vmm crates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Every rust-vmm crate found, with its versions.
    pub found: BTreeMap<String, BTreeSet<String>>,
    pub duplicates: Vec<Duplicate>,
}

/// Checks the `packages` of `cargo metadata --format-version 1` output against `crates`.
pub fn check(metadata: &Value, crates: &[&str]) -> Result<Report, String> {
    let packages = metadata
        .get("packages")
        .and_then(Value::as_array)
        .ok_or("the metadata has no `packages` array")?;
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (index, package) in packages.iter().enumerate() {
        let field = |name: &str| {
            package
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("package #{index} has no string `{name}`: {package}"))
        };
        let name = field("name")?;
        if crates.contains(&name) {
            found
                .entry(name.to_owned())
                .or_default()
                .insert(field("version")?.to_owned());
        }
    }
    let duplicates = found
        .iter()
        .filter(|(_, versions)| versions.len() > 1)
        .map(|(name, versions)| Duplicate {
            name: name.clone(),
            versions: versions.iter().cloned().collect(),
        })
        .collect();
    Ok(Report { found, duplicates })
}

/// One line per duplicated crate: `vm-memory: 0.16.2, 0.18.0`.
pub fn describe(duplicates: &[Duplicate]) -> String {
    duplicates
        .iter()
        .map(|d| format!("{}: {}", d.name, d.versions.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `cargo metadata --format-version 1 --locked` on the workspace manifest.
pub fn workspace_metadata(workspace: &Path) -> Result<Value, Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(workspace.join("Cargo.toml"))
        .output()
        .map_err(|e| Error::Metadata(format!("cannot run {}: {e}", cargo.to_string_lossy())))?;
    if !output.status.success() {
        return Err(Error::Metadata(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| Error::Metadata(format!("output is not JSON: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn packages(list: &[(&str, &str)]) -> Value {
        let packages: Vec<Value> = list
            .iter()
            .map(|(name, version)| json!({"name": name, "version": version, "id": "x"}))
            .collect();
        json!({ "packages": packages, "workspace_members": [] })
    }

    #[test]
    fn check_table() {
        /// Packages in the metadata, expected duplicates as (crate, versions).
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [(&'a str, &'a [&'a str])]);
        let cases: &[Case] = &[
            (&[], &[]),
            (&[("vm-memory", "0.18.0"), ("kvm-ioctls", "0.25.1")], &[]),
            (
                &[
                    ("vm-memory", "0.16.2"),
                    ("vm-memory", "0.18.0"),
                    ("kvm-ioctls", "0.25.1"),
                ],
                &[("vm-memory", &["0.16.2", "0.18.0"])],
            ),
            (
                // Non-rust-vmm crates may be duplicated freely.
                &[
                    ("bitflags", "1.3.2"),
                    ("bitflags", "2.13.2"),
                    ("vmm-sys-util", "0.15.0"),
                ],
                &[],
            ),
            (
                &[
                    ("vmm-sys-util", "0.12.1"),
                    ("kvm-bindings", "0.14.2"),
                    ("vmm-sys-util", "0.15.0"),
                    ("kvm-bindings", "0.10.0"),
                    ("kvm-bindings", "0.14.2"),
                ],
                &[
                    ("kvm-bindings", &["0.10.0", "0.14.2"]),
                    ("vmm-sys-util", &["0.12.1", "0.15.0"]),
                ],
            ),
        ];
        for (list, want) in cases {
            let report = check(&packages(list), RUST_VMM_CRATES).unwrap();
            let want: Vec<Duplicate> = want
                .iter()
                .map(|(name, versions)| Duplicate {
                    name: (*name).to_owned(),
                    versions: versions.iter().map(|v| (*v).to_owned()).collect(),
                })
                .collect();
            assert_eq!(report.duplicates, want, "{list:?}");
        }
    }

    #[test]
    fn describe_names_crate_and_versions() {
        let report = check(
            &packages(&[("vm-memory", "0.16.2"), ("vm-memory", "0.18.0")]),
            RUST_VMM_CRATES,
        )
        .unwrap();
        assert_eq!(describe(&report.duplicates), "vm-memory: 0.16.2, 0.18.0");
        assert_eq!(report.found.len(), 1);
    }

    #[test]
    fn malformed_metadata_is_an_error_naming_the_problem() {
        let cases = [
            (json!({}), "no `packages` array"),
            (
                json!({"packages": [{"version": "1"}]}),
                "package #0 has no string `name`",
            ),
            (
                json!({"packages": [{"name": "vm-memory"}]}),
                "package #0 has no string `version`",
            ),
        ];
        for (metadata, want) in cases {
            let err = check(&metadata, RUST_VMM_CRATES).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
