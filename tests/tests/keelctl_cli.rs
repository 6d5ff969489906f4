//! keelctl, the binary, against a real agent in this process over TLS on loopback.

#![allow(clippy::unwrap_used)]

#[path = "keelctl_common/mod.rs"]
mod common;
use common::{keelctl, ok};

use keel_init::agent::clock::SystemClock;
use keel_init::agent::server::{Agent, AgentConfig};
use keel_trust::fingerprint::{Fingerprint, FingerprintExt};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const TOKEN: &str = "cli-token-0123456789abc";

fn tmp(tag: &str) -> PathBuf {
    common::tmp(&format!("cli-{tag}"))
}

fn fails(config: &Path, args: &[&str], want: &str) {
    let out = keelctl(config, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "keelctl {args:?} succeeded");
    assert!(stderr.contains(want), "keelctl {args:?}: {stderr}");
}

#[test]
fn adopt_and_manage_a_host() {
    let dir = tmp("adopt");
    let mut config = AgentConfig::new(dir.join("state"), vec!["127.0.0.1".into()]);
    config.preset_token = Some(TOKEN.into());
    config.vmm = "/bin/false".into();
    let agent = Agent::open(config, Arc::new(SystemClock)).unwrap();
    let server = agent
        .spawn(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .unwrap();
    let addr = server.local_addr().to_string();
    let fp = agent.fingerprint().to_string();
    let cfg = dir.join("config");

    let adopt = |token: &'static str, fp: &str, name: Option<&'static str>| -> Vec<String> {
        let mut args = vec![
            "host",
            "adopt",
            &addr,
            "--token",
            token,
            "--fingerprint",
            fp,
        ];
        args.extend(name.iter().flat_map(|n| ["--name", *n]));
        args.into_iter().map(String::from).collect()
    };
    let run = |args: Vec<String>, want: Option<&str>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match want {
            Some(want) => fails(&cfg, &args, want),
            None => {
                ok(&cfg, &args);
            }
        }
    };
    run(adopt(TOKEN, &fp, None), Some("keelctl ca init"));
    ok(&cfg, &["ca", "init"]);
    fails(&cfg, &["ca", "init"], "--force");
    let other = Fingerprint::of_spki(b"someone else").to_string();
    for (args, want) in [
        (adopt(TOKEN, &other, None), Some("mismatch")),
        (adopt("wrong-token-000000000", &fp, None), Some("401")),
        (adopt(TOKEN, "sha256:zz", None), Some("--fingerprint")),
        (adopt(TOKEN, &fp, Some("h1")), None),
        (adopt(TOKEN, &fp, None), Some("409")),
    ] {
        run(args, want);
    }

    let info = ok(&cfg, &["host", "info"]);
    assert!(info.contains(&fp), "{info}");
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&cfg, &["host", "stats", "-o", "json"])).unwrap();
    assert!(stats["memory_total"].as_u64().unwrap() > 0);

    // The host's log with levels (root can write a record of its own to the kernel log).
    let marker = format!("keel-agent: cli-logs-{}", std::process::id());
    let wrote = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("<28>{marker}\n").as_bytes()));
    if wrote.is_ok() {
        let logs = ok(&cfg, &["host", "logs"]);
        let line = logs.lines().find(|l| l.ends_with(&marker)).unwrap();
        assert!(
            line.starts_with('[') && line.contains(&format!("] warning {marker}")),
            "{line}"
        );
        let records: Vec<serde_json::Value> =
            serde_json::from_str(&ok(&cfg, &["host", "logs", "-o", "json"])).unwrap();
        let mine = records
            .iter()
            .find(|r| r["message"] == marker.as_str())
            .unwrap();
        assert_eq!(mine["level"], 4);
        let after = mine["seq"].as_u64().unwrap().to_string();
        let later = ok(&cfg, &["host", "logs", "--after", &after]);
        assert!(!later.contains(&marker), "{later}");
    }

    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, vec![1u8; 300 * 1024]).unwrap();
    ok(
        &cfg,
        &["image", "upload", "kernel", kernel.to_str().unwrap()],
    );
    let images = ok(&cfg, &["image", "list"]);
    assert!(
        images.contains("vmlinuz") && images.contains("store: Ram"),
        "{images}"
    );

    ok(
        &cfg,
        &[
            "vm", "create", "web", "--kernel", "vmlinuz", "--memory", "64",
        ],
    );
    fails(
        &cfg,
        &["vm", "create", "web", "--kernel", "vmlinuz"],
        "exists already",
    );
    fails(&cfg, &["vm", "start", "web"], "exited at start");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&cfg, &["vm", "list", "-o", "json"])).unwrap();
    assert_eq!(list["vms"][0]["state"], "stopped");
    assert_eq!(list["vms"][0]["last_exit"]["code"], 1);
    assert_eq!(ok(&cfg, &["vm", "console", "web"]), "");
    fails(&cfg, &["vm", "pause", "web"], "cannot pause");
    fails(
        &cfg,
        &["image", "delete", "kernel", "vmlinuz"],
        "uses kernel image",
    );
    ok(&cfg, &["vm", "delete", "web"]);
    ok(&cfg, &["image", "delete", "kernel", "vmlinuz"]);
    fails(&cfg, &["vm", "get", "web"], "No VM named \"web\"");

    ok(&cfg, &["host", "release"]);
    fails(&cfg, &["host", "info"], "No host given");
    let _ = std::fs::remove_dir_all(&dir);
}
