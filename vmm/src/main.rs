//! `keel-vmm --config vm.json [--api-sock PATH]`: runs one VM and exits with the status that says
//! why it stopped (`keel_vmm::exit::ExitReason`, documented in README.md).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use keel_vmm::config;
use keel_vmm::exit::ExitReason;
use log::error;

const USAGE: &str = "\
Usage: keel-vmm --config PATH [--api-sock PATH]

Runs one virtual machine described by a JSON file, until it powers off.

Options:
  --config PATH     the VM's configuration (vm.json)
  --api-sock PATH   serve the control API (HTTP/1.1, JSON) on this unix socket
  -h, --help        print this help
  -V, --version     print the version

Exit status: 0 guest powered off, 1 VMM error, 2 bad configuration or usage,
3 guest reboot, 4 triple fault, 5 KVM error, 6 powered off by the host.";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    Version,
    Run(RunArgs),
}

/// The arguments of a VM run.
#[derive(Debug, PartialEq, Eq)]
struct RunArgs {
    config: PathBuf,
    api_sock: Option<PathBuf>,
}

/// A command line that cannot be run; exits with `ExitReason::BadConfig`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum UsageError {
    /// Unknown argument {0}
    #[error("unknown argument {0:?}")]
    Unknown(OsString),
    /// {0} needs a value
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// {0} given twice
    #[error("{0} given twice")]
    Repeated(&'static str),
    /// --config is required
    #[error("--config is required")]
    NoConfig,
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut config = None;
    let mut api_sock = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline_value) = split_flag(&arg);
        let slot = match flag.as_str() {
            "-h" | "--help" if inline_value.is_none() => return Ok(Command::Help),
            "-V" | "--version" if inline_value.is_none() => return Ok(Command::Version),
            "--config" => (&mut config, "--config"),
            "--api-sock" => (&mut api_sock, "--api-sock"),
            _ => return Err(UsageError::Unknown(arg)),
        };
        let (target, name) = slot;
        let value = match inline_value {
            Some(v) => v,
            None => args.next().ok_or(UsageError::MissingValue(name))?,
        };
        if value.is_empty() {
            return Err(UsageError::MissingValue(name));
        }
        if target.replace(PathBuf::from(value)).is_some() {
            return Err(UsageError::Repeated(name));
        }
    }
    Ok(Command::Run(RunArgs {
        config: config.ok_or(UsageError::NoConfig)?,
        api_sock,
    }))
}

/// `--flag=value` into (`--flag`, `value`); anything else into (itself, None). A non-UTF-8
/// argument keeps its lossy spelling as the flag, which then matches no known flag.
fn split_flag(arg: &OsString) -> (String, Option<OsString>) {
    let text = arg.to_string_lossy();
    match text.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") && arg.to_str().is_some() => {
            (flag.to_owned(), Some(OsString::from(value)))
        }
        _ => (text.into_owned(), None),
    }
}

fn main() -> ExitCode {
    let command = match parse_args(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("keel-vmm: {e}\n\n{USAGE}");
            return ExitCode::from(ExitReason::BadConfig.code());
        }
    };
    match command {
        Command::Help => println!("{USAGE}"),
        Command::Version => println!("keel-vmm {}", env!("CARGO_PKG_VERSION")),
        Command::Run(args) => {
            // Only this logger writes to stderr (`vmm.log`) from here on; a second one cannot be.
            let _ = keel_vmm::logging::logger().install();
            return ExitCode::from(run(&args).code());
        }
    }
    ExitCode::SUCCESS
}

fn run(args: &RunArgs) -> ExitReason {
    // Parse before touching KVM, so a bad file is reported the same on any host.
    let config = match config::read_config(&args.config) {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitReason::BadConfig;
        }
    };
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            error!("cannot open /dev/kvm: {e}");
            return ExitReason::VmmError;
        }
    };
    let max_vcpus = u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX);
    let host_memory_mib = config::host_memory_mib();
    if let Err(e) = config::validate(&config, max_vcpus)
        .and_then(|()| config::check_host_memory(&config, host_memory_mib))
    {
        error!("{}: {e}", args.config.display());
        return ExitReason::BadConfig;
    }
    // Compile the filters before any thread exists, so a broken filter file is a start-up error.
    if let Err(e) = keel_vmm::seccomp::prepare() {
        error!("{e}");
        return ExitReason::VmmError;
    }
    keel_vmm::vmm::run(kvm, config, args.api_sock.as_deref())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, UsageError> {
        parse_args(args.iter().map(OsString::from))
    }

    fn run_args(config: &str, api_sock: Option<&str>) -> Command {
        Command::Run(RunArgs {
            config: config.into(),
            api_sock: api_sock.map(PathBuf::from),
        })
    }

    #[test]
    fn parse_table() {
        let cases: &[(&[&str], Result<Command, UsageError>)] = &[
            (&["--config", "vm.json"], Ok(run_args("vm.json", None))),
            (&["--config=vm.json"], Ok(run_args("vm.json", None))),
            (
                &["--config", "vm.json", "--api-sock", "/run/a.sock"],
                Ok(run_args("vm.json", Some("/run/a.sock"))),
            ),
            (
                &["--api-sock=/run/a.sock", "--config", "a=b.json"],
                Ok(run_args("a=b.json", Some("/run/a.sock"))),
            ),
            (&["--help"], Ok(Command::Help)),
            (&["-h", "--bogus"], Ok(Command::Help)),
            (&["--config", "x", "-V"], Ok(Command::Version)),
            (&["--version"], Ok(Command::Version)),
            (&[], Err(UsageError::NoConfig)),
            (&["--api-sock", "a"], Err(UsageError::NoConfig)),
            (&["--config"], Err(UsageError::MissingValue("--config"))),
            (&["--config="], Err(UsageError::MissingValue("--config"))),
            (&["--config", ""], Err(UsageError::MissingValue("--config"))),
            (
                &["--config", "a", "--config", "b"],
                Err(UsageError::Repeated("--config")),
            ),
            (&["vm.json"], Err(UsageError::Unknown("vm.json".into()))),
            (&["--conf", "x"], Err(UsageError::Unknown("--conf".into()))),
            (
                &["--help=yes"],
                Err(UsageError::Unknown("--help=yes".into())),
            ),
        ];
        for (args, want) in cases {
            assert_eq!(&parse(args), want, "{args:?}");
        }
    }

    #[test]
    fn usage_errors_name_the_argument() {
        assert_eq!(
            parse(&["--frobnicate"]).unwrap_err().to_string(),
            "unknown argument \"--frobnicate\""
        );
        assert_eq!(
            parse(&["--config"]).unwrap_err().to_string(),
            "--config needs a value"
        );
    }

    #[test]
    fn non_utf8_arguments_are_refused_not_mangled() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(b"--config=\xff".to_vec());
        assert_eq!(parse_args([odd.clone()]), Err(UsageError::Unknown(odd)));
        let path = OsString::from_vec(b"/tmp/\xff.json".to_vec());
        assert_eq!(
            parse_args([OsString::from("--config"), path.clone()]),
            Ok(Command::Run(RunArgs {
                config: PathBuf::from(path),
                api_sock: None
            }))
        );
    }
}
