//! The installer's network questions (docs/network.md): asked first when this server has no
//! default route (no DHCP on the server network, the common case for servers) and no source
//! gives network settings. Enter keeps DHCP; `static` asks for the address, gateway, DNS
//! servers, search domain and VLAN, each checked as it is typed, then applies them at once so
//! that the check with the primary runs on the new network.

use super::{Answers, print_error};
use crate::root::Root;
use crate::settings::validate::validate_network;
use crate::settings::{Collected, Entry, Key, Origin, RawValue, Source};
use crate::tty;
use crate::wrap;
use std::time::{Duration, Instant};

/// The kernel's routing tables, for whether a default route exists.
const ROUTES_V4: &str = "/proc/net/route";
const ROUTES_V6: &str = "/proc/net/ipv6_route";

/// The network keys, in the order asked, with their question and whether blank is allowed.
const QUESTIONS: [(Key, &str, bool); 5] = [
    (
        Key::Address,
        "IP address with prefix length (192.0.2.10/24): ",
        false,
    ),
    (
        Key::Gateway,
        "Gateway (router) address (Enter for none): ",
        true,
    ),
    (
        Key::DnsServers,
        "DNS servers, comma-separated (192.0.2.53): ",
        false,
    ),
    (Key::SearchDomains, "Search domain (Enter for none): ", true),
    (
        Key::Vlan,
        "VLAN id (Enter for none, an untagged port): ",
        true,
    ),
];

const NETWORK_KEYS: [Key; 6] = [
    Key::Address,
    Key::Gateway,
    Key::DnsServers,
    Key::SearchDomains,
    Key::Vlan,
    Key::Interface,
];

/// `Some(true)`: a default route exists; `Some(false)`: none; `None`: the tables cannot be read
/// (then nothing is asked).
pub(super) fn has_default_route(root: &Root) -> Option<bool> {
    let v4 = std::fs::read_to_string(root.path(ROUTES_V4)).ok()?;
    // Iface Destination Gateway Flags ...: a default route has destination 00000000.
    let v4_default = v4
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some("00000000"));
    // dest prefix-len src src-len next-hop metric refcnt use flags iface
    let v6_default = std::fs::read_to_string(root.path(ROUTES_V6))
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo"
        });
    Some(v4_default || v6_default)
}

/// Whether to ask: a terminal, no network setting anywhere, and no default route.
pub(super) fn wanted(root: &Root, answers: &Answers, current: &Collected) -> bool {
    let given = NETWORK_KEYS.iter().any(|&k| {
        answers.flags.get(k).is_some()
            || current
                .effective(k)
                .is_some_and(|e| !e.origin.source.is_default())
    });
    !given && has_default_route(root) == Some(false)
}

/// Asks the network questions. `false`: cancelled.
pub(super) fn ask(root: &Root, answers: &mut Answers, console: bool) -> anyhow::Result<bool> {
    wrap::say(
        "This server has no network route (no DHCP here?). Give it a static address, or press \
         Enter to keep waiting for DHCP.",
    );
    let mut stop = || console && super::provisioning_elsewhere(root);
    loop {
        let Some(mode) = tty::ask_unless(
            "Network (Enter for DHCP, or static): ",
            "",
            false,
            &mut stop,
        )?
        else {
            return Ok(false);
        };
        match mode.trim().to_ascii_lowercase().as_str() {
            "" | "dhcp" => return Ok(true),
            "static" => break,
            other => print_error(
                &format!("{other:?} is neither dhcp nor static"),
                Some("press Enter for DHCP, or type static"),
            ),
        }
    }
    for (key, prompt, blank_ok) in QUESTIONS {
        if !ask_one(root, answers, key, prompt, blank_ok, &mut stop)? {
            return Ok(false);
        }
    }
    apply(root, answers)?;
    Ok(true)
}

/// One question until its answer passes the network checks. `false`: cancelled.
fn ask_one(
    root: &Root,
    answers: &mut Answers,
    key: Key,
    prompt: &str,
    blank_ok: bool,
    stop: &mut dyn FnMut() -> bool,
) -> anyhow::Result<bool> {
    let mut initial = String::new();
    loop {
        let Some(answer) = tty::ask_unless(prompt, &initial, false, stop)? else {
            return Ok(false);
        };
        let answer = answer.trim().to_string();
        answers.flags.entries.retain(|e| e.key != key);
        if answer.is_empty() {
            if blank_ok {
                return Ok(true);
            }
            print_error(
                "an answer is needed here",
                Some(prompt.trim_end_matches([':', ' '])),
            );
            continue;
        }
        answers.flags.entries.push(Entry {
            key,
            value: RawValue::from_text(key, &answer),
            origin: Origin::new(Source::Flag),
        });
        let (_, problems) = validate_network(&answers.collect(root));
        let ours: Vec<_> = problems
            .iter()
            .filter(|p| p.is_error() && p.code.question() == Some(key))
            .collect();
        if ours.is_empty() {
            return Ok(true);
        }
        for p in ours {
            print_error(&p.message, p.fix.as_deref());
        }
        initial = answer;
    }
}

/// Writes the answers as networkd files and has networkd read them, then waits (at most 20 s)
/// for the address to be on a link.
fn apply(root: &Root, answers: &Answers) -> anyhow::Result<()> {
    let (config, _) = validate_network(&answers.collect(root));
    let Some(config) = config else {
        return Ok(());
    };
    wrap::say(&format!("Network: {}.", config.describe()));
    if let Err(e) = crate::commands::apply_network::apply_runtime(root, Some(&config)) {
        wrap::say(&format!(
            "warning: {e:#}; the check with the primary may fail until the network is up"
        ));
        return Ok(());
    }
    if !root.is_host() {
        return Ok(());
    }
    let wanted: Vec<_> = config.addresses.iter().map(|c| c.addr).collect();
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if crate::dns::own_addresses()
            .iter()
            .any(|a| wanted.contains(a))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    wrap::say("warning: the address is not on a link yet (networkctl status shows why); going on");
    Ok(())
}
