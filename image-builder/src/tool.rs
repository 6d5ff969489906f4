//! Running the Debian tools the builder shells out to, with errors that say what failed.

use std::process::Command;

/// Errors from an external tool.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Cannot run {0}: {1} (is it installed? `make deps` installs it)
    #[error("Cannot run {0}: {1} (is it installed? `make deps` installs it)")]
    Spawn(String, std::io::Error),
    /// {0} failed ({1}): {2}
    #[error("{0} failed ({1}): {2}")]
    Failed(String, std::process::ExitStatus, String),
}

/// Runs `cmd` to completion, capturing its output; a non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command) -> Result<Vec<u8>, ToolError> {
    let shown = describe(cmd);
    let output = cmd
        .output()
        .map_err(|e| ToolError::Spawn(shown.clone(), e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(ToolError::Failed(shown, output.status, stderr));
    }
    Ok(output.stdout)
}

fn describe(cmd: &Command) -> String {
    let mut shown = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_missing_program_and_failure_with_stderr() {
        let missing = run(&mut Command::new("keel-no-such-tool"));
        assert!(matches!(missing, Err(ToolError::Spawn(ref p, _)) if p == "keel-no-such-tool"));
        let failed = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]));
        match failed {
            Err(ToolError::Failed(shown, status, stderr)) => {
                assert_eq!(shown, "sh -c echo boom >&2; exit 3");
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "boom");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            run(Command::new("sh").args(["-c", "printf ok"])).ok(),
            Some(b"ok".to_vec())
        );
    }
}
