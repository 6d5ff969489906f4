//! Checking the kernel's own `.config` against the options Keel requires
//! (`kernel-config/host.config`: `CONFIG_X=y`, `CONFIG_X=m` or `CONFIG_X=y|m`, `#` comments).

use std::collections::BTreeMap;
use std::fmt;

/// Errors in a requirements file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KconfigError {
    /// Requirement on line {0} is not CONFIG_X=y, CONFIG_X=m or CONFIG_X=y|m: {1}
    #[error("Requirement on line {0} is not CONFIG_X=y, CONFIG_X=m or CONFIG_X=y|m: {1}")]
    BadRequirement(usize, String),
}

/// One required option and the values that satisfy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub option: String,
    /// Any of these values satisfies the requirement (`y`, `m`).
    pub accepted: Vec<String>,
}

/// A requirement the kernel does not meet, with what the kernel has instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub option: String,
    pub wanted: String,
    /// `None` when the option is unset or absent.
    pub actual: Option<String>,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actual = self.actual.as_deref().unwrap_or("not set");
        write!(f, "{}={} (kernel has {actual})", self.option, self.wanted)
    }
}

/// Parses a requirements file.
pub fn parse_requirements(text: &str) -> Result<Vec<Requirement>, KconfigError> {
    let mut requirements = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = || KconfigError::BadRequirement(index + 1, raw.to_string());
        let (option, values) = line.split_once('=').ok_or_else(bad)?;
        let valid_name = option.strip_prefix("CONFIG_").is_some_and(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        let accepted: Vec<String> = values.split('|').map(|v| v.trim().to_string()).collect();
        if !valid_name || accepted.iter().any(|v| v != "y" && v != "m") {
            return Err(bad());
        }
        requirements.push(Requirement {
            option: option.to_string(),
            accepted,
        });
    }
    Ok(requirements)
}

/// Parses a kernel `.config` into option -> value; `# CONFIG_X is not set` lines are left out.
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|line| line.starts_with("CONFIG_"))
        .filter_map(|line| line.split_once('='))
        .map(|(option, value)| (option.to_string(), value.to_string()))
        .collect()
}

/// The requirements `config` does not meet, in the order they were listed.
pub fn unmet(requirements: &[Requirement], config: &BTreeMap<String, String>) -> Vec<Unmet> {
    requirements
        .iter()
        .filter_map(|req| {
            let actual = config.get(&req.option);
            if actual.is_some_and(|value| req.accepted.contains(value)) {
                return None;
            }
            Some(Unmet {
                option: req.option.clone(),
                wanted: req.accepted.join("|"),
                actual: actual.cloned(),
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
# comment
CONFIG_KVM=m
CONFIG_TMPFS=y
# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set
CONFIG_HZ=250
";

    #[test]
    fn reports_exactly_the_unmet_requirements() {
        let config = parse_config(CONFIG);
        /// (option, wanted, what the kernel has)
        type Expected<'a> = &'a [(&'a str, &'a str, Option<&'a str>)];
        let cases: &[(&str, Expected)] = &[
            ("CONFIG_KVM=m", &[]),
            ("CONFIG_KVM=y|m\nCONFIG_TMPFS=y|m", &[]),
            ("CONFIG_KVM=y", &[("CONFIG_KVM", "y", Some("m"))]),
            ("CONFIG_TMPFS=m", &[("CONFIG_TMPFS", "m", Some("y"))]),
            (
                "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
                &[("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y", None)],
            ),
            (
                "CONFIG_ABSENT=y|m # trailing comment\nCONFIG_KVM=m\nCONFIG_HZ_X=y",
                &[("CONFIG_ABSENT", "y|m", None), ("CONFIG_HZ_X", "y", None)],
            ),
        ];
        for (requirements, want) in cases {
            let got = unmet(&parse_requirements(requirements).unwrap(), &config);
            let want: Vec<Unmet> = want
                .iter()
                .map(|(option, wanted, actual)| Unmet {
                    option: option.to_string(),
                    wanted: wanted.to_string(),
                    actual: actual.map(str::to_string),
                })
                .collect();
            assert_eq!(got, want, "{requirements}");
        }
    }

    #[test]
    fn rejects_malformed_requirements_naming_the_line() {
        let cases = [
            ("CONFIG_KVM", 1),
            ("\nCONFIG_KVM=n", 2),
            ("CONFIG_KVM=y|n", 1),
            ("KVM=y", 1),
            ("CONFIG_kvm=y", 1),
            ("CONFIG_=y", 1),
        ];
        for (text, line) in cases {
            match parse_requirements(text) {
                Err(KconfigError::BadRequirement(got, _)) => assert_eq!(got, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn unmet_display_says_what_the_kernel_has() {
        let missing = Unmet {
            option: "CONFIG_X".into(),
            wanted: "y|m".into(),
            actual: None,
        };
        assert_eq!(missing.to_string(), "CONFIG_X=y|m (kernel has not set)");
    }

    #[test]
    fn repository_requirements_parse() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel-config/host.config");
        let text = std::fs::read_to_string(path).unwrap();
        let requirements = parse_requirements(&text).unwrap();
        assert!(requirements.iter().any(|r| r.option == "CONFIG_KVM_AMD"));
    }
}
