//! Service definitions: /etc/keel/services/*.json.
//!
//! ```json
//! {"name": "agent", "argv": ["/usr/bin/keel-agent"], "restart": "always", "console": false}
//! ```
//! `restart` defaults to "always" and `console` to false.
//!
//! A service can own a terminal instead (the text console):
//! ```json
//! {"name": "console-ttyS0", "argv": ["/usr/bin/keel", "console"], "tty": "ttyS0",
//!  "only_if_console": true}
//! ```
//! `tty` (a name under /dev) becomes its stdin, stdout and stderr in a session of its own (not
//! its controlling terminal: see `supervisor::spawn_on_tty`), and TERM is set for it; `only_if_console` starts it only when the kernel command line made that
//! terminal a console (`console=ttyS0`), as /sys/class/tty/console/active lists.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// When a service that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// One supervised service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub restart: Restart,
    /// Also copy the service's output lines to the consoles.
    #[serde(default)]
    pub console: bool,
    /// The terminal (under /dev) to run on.
    #[serde(default)]
    pub tty: Option<String>,
    /// Start only when `tty` is one of the kernel's consoles.
    #[serde(default)]
    pub only_if_console: bool,
}

impl ServiceSpec {
    /// Whether to start the service, given the active kernel consoles.
    pub fn wanted(&self, active_consoles: &[String]) -> bool {
        match (&self.tty, self.only_if_console) {
            (Some(tty), true) => active_consoles.iter().any(|c| c == tty),
            _ => true,
        }
    }
}

/// A terminal name under /dev: `tty1`, `ttyS0`, `pts/3`.
fn tty_name_ok(name: &str) -> bool {
    let (base, number) = name.split_once('/').unwrap_or((name, "0"));
    !base.is_empty()
        && base.bytes().all(|b| b.is_ascii_alphanumeric())
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Cannot read service directory {0}: {1}
    #[error("cannot read service directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    /// Cannot read service file {0}: {1}
    #[error("cannot read service file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Service file {0} is not valid: {1}
    #[error("service file {0} is not valid: {1}")]
    Json(PathBuf, serde_json::Error),
    /// Service file {0}: {1}
    #[error("service file {0}: {1}")]
    Invalid(PathBuf, String),
}

/// Parses and checks one service file.
pub fn parse(path: &Path, text: &str) -> Result<ServiceSpec, ServiceError> {
    let spec: ServiceSpec =
        serde_json::from_str(text).map_err(|e| ServiceError::Json(path.to_path_buf(), e))?;
    let invalid = |why: String| ServiceError::Invalid(path.to_path_buf(), why);
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 64
        && spec
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if !name_ok {
        return Err(invalid(format!(
            "name {:?} must be 1..=64 letters, digits, '-', '_', '.' or '@'",
            spec.name
        )));
    }
    match spec.argv.first() {
        None => return Err(invalid(String::from("argv must not be empty"))),
        Some(prog) if prog.is_empty() => return Err(invalid(String::from("argv[0] is empty"))),
        Some(_) => {}
    }
    if let Some(arg) = spec.argv.iter().find(|a| a.contains('\0')) {
        return Err(invalid(format!("argument {arg:?} contains a NUL byte")));
    }
    match &spec.tty {
        Some(tty) if !tty_name_ok(tty) => {
            return Err(invalid(format!(
                "tty {tty:?} must be a device name under /dev such as tty1 or ttyS0"
            )))
        }
        None if spec.only_if_console => {
            return Err(invalid(String::from("only_if_console needs a tty")))
        }
        _ => {}
    }
    Ok(spec)
}

/// Reads every `*.json` in `dir` in file-name order. Bad files (and duplicate names) are returned
/// as errors next to the good services; a missing directory means no services.
pub fn load_dir(dir: &Path) -> (Vec<ServiceSpec>, Vec<ServiceError>) {
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), errors),
        Err(e) => return (Vec::new(), vec![ServiceError::Dir(dir.to_path_buf(), e)]),
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut specs: Vec<ServiceSpec> = Vec::new();
    for path in paths {
        let spec = std::fs::read_to_string(&path)
            .map_err(|e| ServiceError::Read(path.clone(), e))
            .and_then(|text| parse(&path, &text));
        match spec {
            Ok(spec) if specs.iter().any(|s| s.name == spec.name) => {
                errors.push(ServiceError::Invalid(
                    path,
                    format!("service name {:?} is already used", spec.name),
                ))
            }
            Ok(spec) => specs.push(spec),
            Err(e) => errors.push(e),
        }
    }
    (specs, errors)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_files() {
        let ok = |name: &str, argv: &[&str], restart, console| ServiceSpec {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            restart,
            console,
            tty: None,
            only_if_console: false,
        };
        let with_tty = |tty: &str, only| ServiceSpec {
            tty: Some(tty.into()),
            only_if_console: only,
            ..ok("t", &["x"], Restart::Always, false)
        };
        let cases: [(&str, Result<ServiceSpec, &str>); 14] = [
            (
                r#"{"name":"t","argv":["x"],"tty":"ttyS0","only_if_console":true}"#,
                Ok(with_tty("ttyS0", true)),
            ),
            (
                r#"{"name":"t","argv":["x"],"tty":"pts/3"}"#,
                Ok(with_tty("pts/3", false)),
            ),
            (
                r#"{"name":"t","argv":["x"],"tty":"../sda"}"#,
                Err("tty \"../sda\" must be a device name"),
            ),
            (
                r#"{"name":"t","argv":["x"],"tty":""}"#,
                Err("must be a device name"),
            ),
            (
                r#"{"name":"t","argv":["x"],"only_if_console":true}"#,
                Err("only_if_console needs a tty"),
            ),
            (
                r#"{"name":"a","argv":["/bin/true"],"restart":"on-failure","console":true}"#,
                Ok(ok("a", &["/bin/true"], Restart::OnFailure, true)),
            ),
            (
                r#"{"name":"b","argv":["/bin/sh","-c","x"]}"#,
                Ok(ok("b", &["/bin/sh", "-c", "x"], Restart::Always, false)),
            ),
            (
                r#"{"name":"c","argv":["x"],"restart":"never"}"#,
                Ok(ok("c", &["x"], Restart::Never, false)),
            ),
            (
                r#"{"name":"d","argv":["x"],"restart":"sometimes"}"#,
                Err("not valid"),
            ),
            (r#"{"name":"e","argv":[]}"#, Err("argv must not be empty")),
            (r#"{"name":"f","argv":[""]}"#, Err("argv[0] is empty")),
            (r#"{"name":"../g","argv":["x"]}"#, Err("must be 1..=64")),
            (
                r#"{"name":"h","argv":["x"],"user":"root"}"#,
                Err("unknown field"),
            ),
            ("{not json", Err("not valid")),
        ];
        for (text, want) in cases {
            let got = parse(Path::new("/etc/keel/services/x.json"), text);
            match (got, want) {
                (Ok(spec), Ok(want)) => assert_eq!(spec, want, "{text}"),
                (Err(e), Err(fragment)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(fragment), "{text}: {msg}");
                    assert!(msg.contains("/etc/keel/services/x.json"), "{msg}");
                }
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn console_condition() {
        let spec = |tty: Option<&str>, only| ServiceSpec {
            name: "c".into(),
            argv: vec!["x".into()],
            restart: Restart::Always,
            console: false,
            tty: tty.map(String::from),
            only_if_console: only,
        };
        let active = ["tty0".to_string(), "ttyS0".to_string()];
        let cases = [
            (spec(Some("ttyS0"), true), &active[..], true),
            (spec(Some("ttyS0"), true), &active[..1], false),
            (spec(Some("ttyS1"), true), &active[..], false),
            (spec(Some("tty1"), false), &[][..], true),
            (spec(None, false), &[][..], true),
        ];
        for (s, consoles, want) in cases {
            assert_eq!(s.wanted(consoles), want, "{:?} {consoles:?}", s.tty);
        }
    }

    #[test]
    fn loads_a_directory_in_name_order() {
        let dir = std::env::temp_dir().join(format!("keel-services-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("20-b.json"),
            r#"{"name":"b","argv":["/bin/true"]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("10-a.json"),
            r#"{"name":"a","argv":["/bin/true"]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("15-bad.json"), "{").unwrap();
        std::fs::write(
            dir.join("30-dup.json"),
            r#"{"name":"a","argv":["/bin/false"]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("README"), "not a service").unwrap();
        let (specs, errors) = load_dir(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].to_string().contains("15-bad.json"));
        assert!(errors[1].to_string().contains("already used"));
        assert!(load_dir(Path::new("/nonexistent/keel")).0.is_empty());
    }
}
