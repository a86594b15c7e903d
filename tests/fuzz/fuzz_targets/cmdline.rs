//! The kernel command line (`/proc/cmdline`): split as the kernel splits it, then read for
//! `gateway.*` parameters. A split command line, written out again with the kernel's quoting,
//! must split to the same parameters.
#![no_main]

use gateway_firstboot::settings::cmdline::{self, Param};
use libfuzzer_sys::fuzz_target;

/// The kernel's isspace().
fn is_kernel_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// One parameter as it would be written on a command line.
fn render(param: &Param) -> String {
    let name_needs_quotes = param.name.is_empty() || param.name.contains(is_kernel_space);
    match (&param.value, name_needs_quotes) {
        (None, false) => param.name.clone(),
        (None, true) => format!("\"{}\"", param.name),
        (Some(value), true) => format!("\"{}={value}\"", param.name),
        (Some(value), false) if value.contains(is_kernel_space) => {
            format!("{}=\"{value}\"", param.name)
        }
        (Some(value), false) => format!("{}={value}", param.name),
    }
}

fuzz_target!(|data: &[u8]| {
    // The kernel's command line is at most a few KiB (COMMAND_LINE_SIZE is 2048 on x86).
    if data.len() > 64 * 1024 {
        return;
    }
    let (layer, problems) = cmdline::parse(data);
    let params = cmdline::split(data);
    let named = |prefix: &str| params.iter().filter(|p| p.name.starts_with(prefix)).count();
    let (ours, credentials) = (named("gateway."), named("systemd.set_credential"));
    // A value only from a gateway.* parameter; at most one problem per parameter read.
    assert!(layer.entries.len() <= ours);
    assert!(problems.len() <= ours + credentials);

    // Quotes inside names and values cannot be written back unambiguously (the kernel has
    // no escape); everything else must survive a round trip.
    let quoted = |s: &str| s.contains('"');
    if params
        .iter()
        .any(|p| quoted(&p.name) || p.value.as_deref().is_some_and(quoted))
    {
        return;
    }
    let line: Vec<String> = params.iter().map(render).collect();
    let line = line.join(" ");
    assert_eq!(cmdline::split(line.as_bytes()), params, "{line:?}");
});
