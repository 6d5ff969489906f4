//! The `keel.*` kernel command-line parameters.
//!
//! Tokenising follows the kernel's `next_arg()`: parameters are separated by spaces, double quotes
//! group spaces into a value (`keel.x="a b"` or `"keel.x=a b"`) and are removed, and `--` ends the
//! kernel's parameters. Anything not starting with `keel.` belongs to someone else and is ignored.

/// The typed `keel.*` parameters. Add a field here and a row to `PARAMS` to support a new one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeelParams {
    /// `keel.hostname=`: the host name to set.
    pub hostname: Option<String>,
    /// `keel.adopt_token=`: one-time token a manager presents to adopt this host.
    pub adopt_token: Option<String>,
    /// `keel.manager=`: `https://host[:port][/path]` of the manager to register with
    /// (validated by `agent::register::Settings`, which reports a bad value).
    pub manager: Option<String>,
    /// `keel.manager_ca=`: `sha256:<hex>` of the manager's CA certificate, the only CA trusted
    /// when registering.
    pub manager_ca: Option<String>,
    /// `keel.join_token=`: lets the manager adopt this host without an operator's approval.
    pub join_token: Option<String>,
    /// `keel.debug` / `keel.debug=1`: verbose boot messages.
    pub debug: bool,
    /// `keel.ip=`: network configuration in dracut's `ip=` syntax, read by `net::layers`.
    pub ip: Option<String>,
}

/// Parameters and the console lines reporting what was ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub params: KeelParams,
    pub warnings: Vec<String>,
}

type Setter = fn(&mut KeelParams, Option<&str>) -> Result<(), String>;

/// Every known parameter: name (without `keel.`) and how to store its value.
const PARAMS: &[(&str, Setter)] = &[
    ("hostname", |p, v| {
        p.hostname = Some(hostname(v)?);
        Ok(())
    }),
    ("adopt_token", |p, v| {
        p.adopt_token = Some(text(v)?);
        Ok(())
    }),
    ("manager", |p, v| {
        p.manager = Some(text(v)?);
        Ok(())
    }),
    ("manager_ca", |p, v| {
        p.manager_ca = Some(text(v)?);
        Ok(())
    }),
    ("join_token", |p, v| {
        p.join_token = Some(text(v)?);
        Ok(())
    }),
    ("debug", |p, v| {
        p.debug = boolean(v)?;
        Ok(())
    }),
    ("ip", |p, v| {
        p.ip = Some(text(v)?);
        Ok(())
    }),
];

fn text(value: Option<&str>) -> Result<String, String> {
    match value {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(String::from("a value is required")),
    }
}

fn boolean(value: Option<&str>) -> Result<bool, String> {
    match value {
        None => Ok(true),
        Some("1" | "y" | "yes" | "true" | "on") => Ok(true),
        Some("0" | "n" | "no" | "false" | "off") => Ok(false),
        Some(_) => Err(String::from(
            "expected a boolean (1/0, yes/no, true/false, on/off)",
        )),
    }
}

/// A host name: 1..=64 characters of letters, digits, '-' and '.', not starting with '-' or '.'.
fn hostname(value: Option<&str>) -> Result<String, String> {
    let v = text(value)?;
    let ok_chars = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if v.len() > 64 || !ok_chars || v.starts_with(['-', '.']) {
        return Err(String::from(
            "expected at most 64 letters, digits, '-' or '.', not starting with '-' or '.'",
        ));
    }
    Ok(v)
}

/// Splits a command line into `(name, value)` pairs the way the kernel does.
pub fn tokenize(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = cmdline.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut token = String::new();
        let mut in_quote = false;
        let mut eq_at: Option<usize> = None;
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() && !in_quote {
                break;
            }
            chars.next();
            if c == '"' {
                in_quote = !in_quote;
                continue;
            }
            if c == '=' && eq_at.is_none() {
                eq_at = Some(token.len());
            }
            token.push(c);
        }
        if token == "--" {
            break;
        }
        match eq_at {
            Some(i) => out.push((token[..i].to_string(), Some(token[i + 1..].to_string()))),
            None => out.push((token, None)),
        }
    }
    out
}

/// Parses the `keel.*` parameters of a kernel command line; never fails.
pub fn parse(cmdline: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (name, value) in tokenize(cmdline) {
        let Some(key) = name.strip_prefix("keel.") else {
            continue;
        };
        // The network parameters are read (and reported) by `net::layers`.
        if crate::net::layers::CMDLINE_KEYS.contains(&key) {
            continue;
        }
        let shown = match &value {
            Some(v) => format!("{name}={v}"),
            None => name.clone(),
        };
        match PARAMS.iter().find(|(k, _)| *k == key) {
            None => parsed
                .warnings
                .push(format!("keel: ignoring unknown kernel parameter {shown}")),
            Some((_, set)) => {
                if let Err(why) = set(&mut parsed.params, value.as_deref()) {
                    parsed.warnings.push(format!(
                        "keel: ignoring malformed kernel parameter {shown}: {why}"
                    ));
                }
            }
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    type Tokens = Vec<(String, Option<String>)>;

    fn pair(n: &str, v: Option<&str>) -> (String, Option<String>) {
        (n.to_string(), v.map(String::from))
    }

    #[test]
    fn tokenizes_like_the_kernel() {
        let cases: Vec<(&str, Tokens)> = vec![
            ("", vec![]),
            ("quiet", vec![pair("quiet", None)]),
            (
                "console=ttyS0  panic=-1\n",
                vec![pair("console", Some("ttyS0")), pair("panic", Some("-1"))],
            ),
            ("a=\"b c\" d", vec![pair("a", Some("b c")), pair("d", None)]),
            ("\"a=b c\"", vec![pair("a", Some("b c"))]),
            ("a=b=c", vec![pair("a", Some("b=c"))]),
            ("a= b", vec![pair("a", Some("")), pair("b", None)]),
            ("x -- keel.debug", vec![pair("x", None)]),
            (
                "unterminated=\"a b",
                vec![pair("unterminated", Some("a b"))],
            ),
        ];
        for (line, want) in cases {
            assert_eq!(tokenize(line), want, "{line:?}");
        }
    }

    #[test]
    fn parses_keel_params() {
        let p = parse(
            "console=ttyS0 keel.hostname=node-1 keel.manager=\"https://m:8443\" \
             keel.manager_ca=sha256:ab keel.adopt_token=t1 keel.join_token=j1 keel.debug \
             keel.ip=10.0.0.2/24,10.0.0.1",
        );
        assert_eq!(p.warnings, Vec::<String>::new());
        assert_eq!(
            p.params,
            KeelParams {
                hostname: Some("node-1".into()),
                adopt_token: Some("t1".into()),
                manager: Some("https://m:8443".into()),
                manager_ca: Some("sha256:ab".into()),
                join_token: Some("j1".into()),
                debug: true,
                ip: Some("10.0.0.2/24,10.0.0.1".into()),
            }
        );
    }

    #[test]
    fn values_and_warnings() {
        let cases: [(&str, KeelParams, &[&str]); 8] = [
            ("root=/dev/sda keelx=1 keel keel.dns=1.1.1.1", KeelParams::default(), &[]),
            (
                "keel.foo=1",
                KeelParams::default(),
                &["keel: ignoring unknown kernel parameter keel.foo=1"],
            ),
            (
                "keel.bar",
                KeelParams::default(),
                &["keel: ignoring unknown kernel parameter keel.bar"],
            ),
            ("keel.debug=0", KeelParams::default(), &[]),
            (
                "keel.debug=maybe",
                KeelParams::default(),
                &["keel: ignoring malformed kernel parameter keel.debug=maybe: expected a boolean (1/0, yes/no, true/false, on/off)"],
            ),
            (
                "keel.hostname",
                KeelParams::default(),
                &["keel: ignoring malformed kernel parameter keel.hostname: a value is required"],
            ),
            (
                "keel.hostname=-bad",
                KeelParams::default(),
                &["keel: ignoring malformed kernel parameter keel.hostname=-bad: expected at most 64 letters, digits, '-' or '.', not starting with '-' or '.'"],
            ),
            (
                "keel.hostname=a keel.hostname=b",
                KeelParams {
                    hostname: Some("b".into()),
                    ..KeelParams::default()
                },
                &[],
            ),
        ];
        for (line, params, warnings) in cases {
            let got = parse(line);
            assert_eq!(got.params, params, "{line:?}");
            assert_eq!(got.warnings, warnings, "{line:?}");
        }
    }
}
