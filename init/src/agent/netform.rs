//! The console's network form (`localapi::types::NetworkForm`) to and from the host network
//! model (`net::NetConfig`). The form edits the management stack (NIC or bond → VLAN → bridge,
//! `net::layers::Stack`) and the host-wide hostname, name servers and NTP servers; whatever the
//! form does not show (the bridge, MTU, IPv6, search domains, interfaces outside the stack) is
//! kept from the running configuration, so applying a form loses nothing it did not show.
//! Validation is `net::validate`'s; its errors are renamed to the form field they come from.

use std::collections::BTreeSet;

use crate::localapi::types::{split_list, FieldError, Ipv4Mode, NetworkForm};
use crate::net::layers::Stack;
use crate::net::model::{BondMode, Dns, Ipv4, NetConfig, MANAGEMENT_BRIDGE};
use crate::net::validate::{self, validate};

/// The bond's name when the form's interface names one of the NICs (the console picks NICs).
pub const DEFAULT_BOND: &str = "bond0";

/// The form showing `config`'s management network. IPv4 `off` shows as DHCP, the form's only
/// other mode, with no address.
pub fn form_of(config: &NetConfig) -> NetworkForm {
    let stack = Stack::of(config);
    let (mut interface, mut bond_members, mut bond_mode, mut vlan) = (
        String::new(),
        Vec::new(),
        BondMode::ActiveBackup,
        String::new(),
    );
    let (mut mode, mut address, mut gateway) = (Ipv4Mode::Dhcp, String::new(), String::new());
    if let Some(stack) = stack {
        match &stack.bond {
            Some((name, m)) => {
                interface.clone_from(name);
                bond_members.clone_from(&stack.nics);
                bond_mode = *m;
            }
            None => interface = stack.nics.first().cloned().unwrap_or_default(),
        }
        vlan = stack.vlan.map(|id| id.to_string()).unwrap_or_default();
        if let Ipv4::Static {
            address: a,
            gateway: g,
        } = stack.ipv4
        {
            mode = Ipv4Mode::Static;
            address = a;
            gateway = g.unwrap_or_default();
        }
    }
    let dns = config.dns.as_ref().map(|d| d.servers.join(", "));
    NetworkForm {
        interface,
        bond_members,
        bond_mode,
        vlan,
        mode,
        address,
        gateway,
        dns: dns.unwrap_or_default(),
        hostname: config.hostname.clone().unwrap_or_default(),
        ntp: config.ntp.as_deref().unwrap_or_default().join(", "),
    }
}

fn error(field: &str, message: String) -> FieldError {
    FieldError {
        field: field.to_string(),
        message,
    }
}

/// The change `form` asks for over the `running` configuration, on a host whose NICs are
/// `nics` (not checked when empty). Every problem is reported against its form field.
pub fn change_of(
    form: &NetworkForm,
    running: &NetConfig,
    nics: &[String],
) -> Result<NetConfig, Vec<FieldError>> {
    let mut errors = Vec::new();
    let interface = form.interface.trim();
    let members: Vec<String> = form
        .bond_members
        .iter()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    let known = |name: &str| nics.is_empty() || nics.iter().any(|n| n == name);
    let listed = nics.join(", ");
    if members.is_empty() {
        if interface.is_empty() {
            errors.push(error("interface", "choose the NIC to use".into()));
        } else if !known(interface) {
            errors.push(error(
                "interface",
                format!("{interface:?} is not a NIC of this host ({listed})"),
            ));
        }
    }
    for member in members.iter().filter(|m| !known(m)) {
        errors.push(error(
            "bond_members",
            format!("{member:?} is not a NIC of this host ({listed})"),
        ));
    }
    let vlan = match form.vlan.trim() {
        "" => None,
        text => match text.parse::<u16>() {
            Ok(id) => Some(id),
            Err(_) => {
                errors.push(error(
                    "vlan",
                    format!("{text:?} is not a VLAN ID (1-4094, empty for none)"),
                ));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let old = Stack::of(running);
    let bond = (!members.is_empty()).then(|| {
        let name =
            if interface.is_empty() || known(interface) || members.iter().any(|m| m == interface) {
                DEFAULT_BOND
            } else {
                interface
            };
        (name.to_string(), form.bond_mode)
    });
    let ipv4 = match form.mode {
        Ipv4Mode::Dhcp => Ipv4::Dhcp {},
        Ipv4Mode::Static => Ipv4::Static {
            address: form.address.trim().to_string(),
            gateway: Some(form.gateway.trim().to_string()).filter(|g| !g.is_empty()),
        },
    };
    let stack = Stack {
        nics: if members.is_empty() {
            vec![interface.to_string()]
        } else {
            members.clone()
        },
        bond,
        vlan,
        bridge: match &old {
            Some(s) => s.bridge.clone(),
            None => Some(MANAGEMENT_BRIDGE.to_string()),
        },
        mtu: old.as_ref().and_then(|s| s.mtu),
        ipv4,
        ipv6: old.as_ref().map(|s| s.ipv6.clone()).unwrap_or_default(),
    };
    let mut change = stack.config();
    // Interfaces outside the old and the new stack (a NIC configured on its own) stay.
    let names = |c: &NetConfig| -> BTreeSet<String> {
        c.interfaces().iter().map(|i| i.name.clone()).collect()
    };
    let mut taken = names(&change);
    taken.extend(old.map(|s| names(&s.config())).unwrap_or_default());
    let others = running
        .interfaces()
        .iter()
        .filter(|i| !taken.contains(&i.name))
        .cloned();
    change
        .interfaces
        .get_or_insert_with(Vec::new)
        .extend(others);
    change.hostname = Some(form.hostname.trim().to_string()).filter(|h| !h.is_empty());
    change.dns = Some(Dns {
        servers: split_list(&form.dns),
        search: running
            .dns
            .as_ref()
            .map(|d| d.search.clone())
            .unwrap_or_default(),
    });
    change.ntp = Some(split_list(&form.ntp));
    match validate(&change) {
        Ok(()) => Ok(change),
        Err(validate::Invalid(found)) => Err(found
            .into_iter()
            .map(|e| error(form_field(&e.field, &members), e.message))
            .collect()),
    }
}

/// The form field a `net::validate` field path comes from; `members` are the bond's.
fn form_field(path: &str, members: &[String]) -> &'static str {
    let Some(rest) = path.strip_prefix("interfaces[") else {
        return match path.split(['.', '[']).next() {
            Some("hostname") => "hostname",
            Some("dns") => "dns",
            Some("ntp") => "ntp",
            // More than one default gateway.
            Some("interfaces") => "gateway",
            _ => "interface",
        };
    };
    let (name, field) = rest.split_once(']').unwrap_or((rest, ""));
    match field {
        ".ipv4.address" => "address",
        ".ipv4.gateway" => "gateway",
        ".kind.id" | ".kind.parent" => "vlan",
        f if f.starts_with(".kind.members") => "bond_members",
        _ if members.iter().any(|m| m == name) => "bond_members",
        _ => "interface",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::net::model::{Interface, Ipv6, Kind};

    fn form() -> NetworkForm {
        NetworkForm {
            interface: "eth0".into(),
            bond_members: vec![],
            bond_mode: BondMode::ActiveBackup,
            vlan: String::new(),
            mode: Ipv4Mode::Static,
            address: "10.0.2.15/24".into(),
            gateway: "10.0.2.2".into(),
            dns: "10.0.2.3".into(),
            hostname: "node-1".into(),
            ntp: String::new(),
        }
    }

    fn nics() -> Vec<String> {
        vec!["eth0".into(), "eth1".into(), "eth2".into()]
    }

    /// What the defaults give: keelbr0 over eth0 by DHCP, with a search domain, an MTU, SLAAC,
    /// and eth2 configured on its own.
    fn running() -> NetConfig {
        let mut stack = Stack {
            nics: vec!["eth0".into()],
            bond: None,
            vlan: None,
            bridge: Some(MANAGEMENT_BRIDGE.into()),
            mtu: Some(1500),
            ipv4: Ipv4::Dhcp {},
            ipv6: Ipv6::Slaac {},
        }
        .config();
        stack
            .interfaces
            .get_or_insert_with(Vec::new)
            .push(Interface {
                name: "eth2".into(),
                kind: Kind::Ethernet {},
                mtu: None,
                ipv4: Ipv4::Dhcp {},
                ipv6: Ipv6::Off {},
            });
        stack.dns = Some(Dns {
            servers: vec![],
            search: vec!["example.com".into()],
        });
        stack
    }

    fn names(config: &NetConfig) -> Vec<&str> {
        config
            .interfaces()
            .iter()
            .map(|i| i.name.as_str())
            .collect()
    }

    #[test]
    fn good_forms_become_changes_that_keep_what_the_form_does_not_show() {
        let change = change_of(&form(), &running(), &nics()).unwrap();
        assert_eq!(names(&change), ["eth0", "keelbr0", "eth2"]);
        let top = change.interface("keelbr0").unwrap();
        assert_eq!(change.management(), "keelbr0");
        assert_eq!(
            top.ipv4,
            Ipv4::Static {
                address: "10.0.2.15/24".into(),
                gateway: Some("10.0.2.2".into())
            }
        );
        assert_eq!((top.mtu, &top.ipv6), (Some(1500), &Ipv6::Slaac {}));
        let dns = change.dns.clone().unwrap();
        assert_eq!(dns.servers, ["10.0.2.3"]);
        assert_eq!(dns.search, ["example.com"]);
        assert_eq!(change.hostname.as_deref(), Some("node-1"));

        // (form edit, interfaces, management, its parent's kind)
        type Edit = fn(&mut NetworkForm);
        let cases: Vec<(Edit, Vec<&str>, &str)> = vec![
            (
                |f| f.vlan = "7".into(),
                vec!["eth0", "eth0.7", "keelbr0", "eth2"],
                "keelbr0",
            ),
            (
                |f| f.bond_members = vec!["eth0".into(), " eth1".into()],
                vec!["eth0", "eth1", "bond0", "keelbr0", "eth2"],
                "keelbr0",
            ),
            (
                |f| {
                    f.interface = "uplink".into();
                    f.bond_members = vec!["eth0".into(), "eth1".into()];
                    f.bond_mode = BondMode::Lacp;
                    f.vlan = "42".into();
                },
                vec!["eth0", "eth1", "uplink", "uplink.42", "keelbr0", "eth2"],
                "keelbr0",
            ),
            // eth2 joins the stack: it is no longer configured on its own.
            (
                |f| f.interface = "eth2".into(),
                vec!["eth2", "keelbr0"],
                "keelbr0",
            ),
        ];
        for (edit, want, management) in cases {
            let mut f = form();
            edit(&mut f);
            let change = change_of(&f, &running(), &nics()).unwrap();
            assert_eq!(names(&change), want, "{f:?}");
            assert_eq!(change.management(), management);
            // What the form shows comes back from the change.
            let mut shown = f.clone();
            shown
                .bond_members
                .iter_mut()
                .for_each(|m| *m = m.trim().into());
            if shown.interface == "eth0" && !shown.bond_members.is_empty() {
                shown.interface = DEFAULT_BOND.into();
            }
            assert_eq!(form_of(&change), shown);
        }

        // DHCP ignores the address fields; empty lists and host name are accepted.
        let mut f = form();
        f.mode = Ipv4Mode::Dhcp;
        f.address = "junk".into();
        f.dns = String::new();
        f.hostname = " ".into();
        let change = change_of(&f, &running(), &nics()).unwrap();
        assert_eq!(change.interface("keelbr0").unwrap().ipv4, Ipv4::Dhcp {});
        assert_eq!(change.hostname, None);
        assert_eq!(change.dns.unwrap().servers, Vec::<String>::new());
    }

    #[test]
    fn bad_forms_name_their_fields() {
        type Edit = fn(&mut NetworkForm);
        let cases: Vec<(Edit, &str, &str)> = vec![
            (
                |f| f.interface = String::new(),
                "interface",
                "choose the NIC",
            ),
            (
                |f| f.interface = "eth9".into(),
                "interface",
                "\"eth9\" is not a NIC of this host (eth0, eth1, eth2)",
            ),
            (
                |f| f.bond_members = vec!["eth0".into(), "wlan0".into()],
                "bond_members",
                "\"wlan0\"",
            ),
            (|f| f.vlan = "x".into(), "vlan", "\"x\" is not a VLAN ID"),
            (
                |f| f.vlan = "70000".into(),
                "vlan",
                "\"70000\" is not a VLAN ID",
            ),
            (|f| f.vlan = "0".into(), "vlan", "0 is outside 1..=4094"),
            (
                |f| f.address = "10.0.2.300/24".into(),
                "address",
                "10.0.2.300/24 is not an IPv4",
            ),
            (
                |f| f.address = String::new(),
                "address",
                "is not an IPv4 address/prefix",
            ),
            (
                |f| f.gateway = "10.9.9.9".into(),
                "gateway",
                "is not another address in 10.0.2.15/24's network",
            ),
            (
                |f| f.gateway = "gw".into(),
                "gateway",
                "gw is not an IPv4 address",
            ),
            (
                |f| f.dns = "10.0.2.3, dns.example".into(),
                "dns",
                "dns.example is not an IP address",
            ),
            (
                |f| f.hostname = "no_underscores".into(),
                "hostname",
                "\"no_underscores\" is not a host name",
            ),
            (
                |f| f.ntp = "pool.ntp.org bad!name".into(),
                "ntp",
                "\"bad!name\"",
            ),
            (
                |f| {
                    f.interface = "bond-with-a-long-name".into();
                    f.bond_members = vec!["eth0".into()];
                },
                "interface",
                "is not an interface name",
            ),
        ];
        for (edit, field, message) in cases {
            let mut f = form();
            edit(&mut f);
            let errors = change_of(&f, &running(), &nics()).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.field == field && e.message.contains(message)),
                "{f:?}: want {field}: {message}; got {errors:?}"
            );
        }
        // Without a NIC list, names are not checked against the host.
        let mut f = form();
        f.interface = "eth9".into();
        assert!(change_of(&f, &running(), &[]).is_ok());
    }

    #[test]
    fn validation_paths_map_to_form_fields() {
        let members = ["eth0".to_string(), "eth1".to_string()];
        let cases = [
            ("hostname", "hostname"),
            ("dns.servers[1]", "dns"),
            ("ntp[0]", "ntp"),
            ("interfaces", "gateway"),
            ("management", "interface"),
            ("interfaces[keelbr0].ipv4.address", "address"),
            ("interfaces[keelbr0].ipv4.gateway", "gateway"),
            ("interfaces[eth0.7].kind.id", "vlan"),
            ("interfaces[bond0].kind.members[1]", "bond_members"),
            ("interfaces[eth1].name", "bond_members"),
            ("interfaces[eth1]", "bond_members"),
            ("interfaces[eth5].name", "interface"),
            ("interfaces[keelbr0].mtu", "interface"),
        ];
        for (path, want) in cases {
            assert_eq!(form_field(path, &members), want, "{path}");
        }
    }

    #[test]
    fn running_configurations_show_in_the_form() {
        assert_eq!(form_of(&NetConfig::default()).interface, "");
        let shown = form_of(&running());
        assert_eq!(
            (shown.interface.as_str(), shown.mode, shown.address.as_str()),
            ("eth0", Ipv4Mode::Dhcp, "")
        );
        assert_eq!(shown.dns, "");
    }
}
