//! `status`: where provisioning stands, from the persisted state. Exit status: 0 trusted,
//! 1 failed, 2 trusted with warnings, 3 waiting for authorization, 4 in progress.

use crate::cli::StatusArgs;
use crate::progress;
use crate::protocol::{TrustState, short_fingerprint};
use crate::root::Root;
use crate::state::{Phase, State};
use std::time::{Duration, Instant};

pub const TRUSTED: u8 = 0;
pub const FAILED: u8 = 1;
pub const WARNINGS: u8 = 2;
pub const WAITING: u8 = 3;
pub const IN_PROGRESS: u8 = 4;

fn verdict(state: &State) -> (u8, &'static str) {
    let failed = state.trust == Some(TrustState::Rejected)
        || state.last_error.as_ref().is_some_and(|e| e.permanent());
    match state.phase {
        _ if failed => (FAILED, "failed"),
        // Re-enrolled once its certificate expired: waits for Authorize again.
        Phase::Trusted if state.trust == Some(TrustState::Untrusted) => {
            (WAITING, "waiting-for-authorization")
        }
        Phase::Trusted if state.all_warnings().is_empty() => (TRUSTED, "trusted"),
        Phase::Trusted => (WARNINGS, "trusted-with-warnings"),
        Phase::HandedOff => (WAITING, "waiting-for-authorization"),
        _ => (IN_PROGRESS, "in-progress"),
    }
}

pub async fn run(root: &Root, args: &StatusArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let (state, code, word) = loop {
        let state = match State::load(root) {
            Ok(s) => s,
            Err(f) => {
                println!("error: {f}");
                return Ok(FAILED);
            }
        };
        let (code, word) = verdict(&state);
        let timed_out = args.timeout.is_some_and(|t| started.elapsed() >= t);
        if !args.wait || code != IN_PROGRESS || timed_out {
            break (state, code, word);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let certificate = certificate(root);
    if args.json {
        let mut doc = progress::state_json(&state);
        if let Some((ends, due)) = &certificate {
            doc.insert("certificate_expires".into(), ends.clone().into());
            doc.insert("certificate_renewal_due".into(), due.clone().into());
        }
        doc.insert("status".into(), word.into());
        doc.insert("exit".into(), code.into());
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(code);
    }
    println!("status:      {word} ({})", progress::describe(state.phase));
    if let Some(id) = &state.server_id {
        println!("server:      {id}");
    }
    if let Some(a) = &state.account {
        println!("account:     {a}");
    }
    if let Some(p) = &state.primary {
        println!("primary:     {}", p.url);
    }
    if let Some(fp) = &state.key_fingerprint {
        println!("key:         {} ({fp})", short_fingerprint(fp));
    }
    if let Some((ends, due)) = &certificate {
        println!("certificate: valid until {ends}, renewal due at {due}");
    }
    if let Some(d) = &state.dns {
        let status = serde_json::to_value(d.status)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        println!("dns:         {} {status}", d.fqdn);
        for r in &state.dns_records_missing {
            println!("             create: {r}");
        }
        for r in &state.dns_records_to_delete {
            println!("             delete: {r}");
        }
        for r in &state.dns_reverse_missing {
            println!("             suggested: {r}");
        }
    }
    for w in &state.all_warnings() {
        println!("warning:     {w}");
    }
    if let Some(e) = &state.last_error {
        println!("last error:  {} [{}]\n  fix: {}", e.message, e.code, e.fix);
    }
    Ok(code)
}

/// The client certificate's end and when renewal is due (RFC 3339), once there is one.
fn certificate(root: &Root) -> Option<(String, String)> {
    let pem = std::fs::read_to_string(root.path(crate::identity::CERT_FILE)).ok()?;
    let v = crate::validity::Validity::of_pem(&pem).ok()?;
    let at = crate::validity::rfc3339;
    Some((at(v.not_after), at(v.renew_at())))
}
