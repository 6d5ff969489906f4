//! `keel`: one static multi-call binary. argv[0] "init" is PID 1; `keel <subcommand>` otherwise.

use keel_init::{agent, pid1};

use std::process::ExitCode;

/// What to run, from argv[0] and the first argument.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Pid1,
    Agent,
    Version,
    Help,
    Console,
    Unknown(String),
}

fn command_for(argv0: &str, first: Option<&str>) -> Command {
    let name = argv0.rsplit('/').next().unwrap_or(argv0);
    match (name, first) {
        ("init", _) | ("keel", Some("init")) => Command::Pid1,
        ("keel", Some("version" | "--version")) => Command::Version,
        ("keel", Some("agent")) => Command::Agent,
        ("keel", Some("console")) => Command::Console,
        ("keel", None | Some("help" | "--help" | "-h")) => Command::Help,
        ("keel", Some(other)) => Command::Unknown(other.to_string()),
        (other, _) => Command::Unknown(other.to_string()),
    }
}

const USAGE: &str = "usage: keel <command>\n\
    \n\
    commands:\n\
    \x20 init      run as PID 1 (also when started as /sbin/init or /init)\n\
    \x20 agent     run the host agent (HTTPS API on 8443; `keel agent --help`)\n\
    \x20 console   the text console on this terminal (see docs/console.md)\n\
    \x20 version   print the version\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let argv0 = args.first().map_or("keel", String::as_str);
    match command_for(argv0, args.get(1).map(String::as_str)) {
        Command::Pid1 => pid1::run(),
        Command::Agent if args.iter().skip(2).any(|a| a == "--help" || a == "-h") => {
            print!("{}", agent::service::USAGE);
            ExitCode::SUCCESS
        }
        Command::Agent => agent::service::run(&args[2..]),
        Command::Version => {
            println!("keel {}", pid1::VERSION);
            ExitCode::SUCCESS
        }
        Command::Console => keel_init::console::run(args.get(2..).unwrap_or_default()),
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Unknown(what) => {
            eprintln!("keel: unknown command {what:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch() {
        let cases = [
            ("/init", None, Command::Pid1),
            ("/sbin/init", None, Command::Pid1),
            ("init", Some("x"), Command::Pid1),
            ("/usr/bin/keel", Some("init"), Command::Pid1),
            ("keel", Some("version"), Command::Version),
            ("keel", Some("agent"), Command::Agent),
            ("keel", None, Command::Help),
            ("keel", Some("--help"), Command::Help),
            ("keel", Some("console"), Command::Console),
            ("keel", Some("frob"), Command::Unknown("frob".into())),
            ("keel-frob", None, Command::Unknown("keel-frob".into())),
        ];
        for (argv0, first, want) in cases {
            assert_eq!(command_for(argv0, first), want, "{argv0} {first:?}");
        }
    }
}
