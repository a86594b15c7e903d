//! `/ui`: the primary's web tree. Accounts and their servers on the left; the selected
//! server's information on the right, with Authorize, Reject and Remove buttons. Plain HTML.

use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use gateway_protocol::{TrustState, short_fingerprint};
use serde::Deserialize;
use std::fmt::Write;
use std::sync::Arc;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// " replaces srv_…" for a server that replaces an earlier record of the same hardware
/// (Authorize retires that one), or nothing.
fn replaces(r: &gateway_protocol::ServerRecord) -> String {
    r.replaces
        .as_deref()
        .map(|old| format!(" <small>replaces {}</small>", esc(old)))
        .unwrap_or_default()
}

fn label(state: TrustState) -> &'static str {
    match state {
        TrustState::Untrusted => "not trusted",
        TrustState::Trusted => "trusted",
        TrustState::Rejected => "rejected",
    }
}

#[derive(Deserialize)]
pub struct Selected {
    server: Option<String>,
}

const STYLE: &str = "body{font-family:sans-serif;margin:0;display:flex;min-height:100vh}\
nav{width:22rem;background:#f3f4f6;padding:1rem;border-right:1px solid #ddd}\
main{padding:1rem 2rem;flex:1}ul{list-style:none;padding-left:1rem}a{text-decoration:none;color:#1d4ed8}\
.untrusted{color:#b45309}.trusted{color:#15803d}.rejected{color:#b91c1c}\
table td{padding:.25rem 1rem .25rem 0;vertical-align:top}button{font-size:1rem;padding:.4rem 1.2rem;margin-right:.5rem}\
code{font-size:1.1rem}";

pub async fn page(State(st): State<Arc<AppState>>, Query(q): Query<Selected>) -> Response {
    let db = st.db();
    let (Ok(accounts), Ok(servers)) = (db.accounts(), db.servers(None)) else {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "database error",
        )
            .into_response();
    };
    let mut html = format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>\
         <title>Primary server</title><style>{STYLE}</style></head><body><nav><h2>Accounts</h2><ul>"
    );
    for account in &accounts {
        let _ = write!(html, "<li><b>{}</b><ul>", esc(&account.domain));
        for s in servers.iter().filter(|s| s.account_id == account.id) {
            let r = &s.record;
            let _ = write!(
                html,
                "<li><a href=\"/ui?server={id}\">{host}</a> <span class={cls}>({state})</span>{replaces}</li>",
                id = esc(&r.server_id),
                host = esc(r.fqdn.as_deref().unwrap_or(&r.hostname)),
                cls = crate::db::state_str(r.state),
                state = label(r.state),
                replaces = replaces(r),
            );
        }
        html.push_str("</ul></li>");
    }
    html.push_str("</ul></nav><main>");
    match q
        .server
        .as_deref()
        .and_then(|id| servers.iter().find(|s| s.record.server_id == id))
    {
        None => html.push_str(
            "<h1>Primary server</h1><p>Select a server in the tree to see its information.</p>",
        ),
        Some(s) => {
            let r = &s.record;
            let _ = write!(
                html,
                "<h1>Server information</h1><table>\
                 <tr><td>Server</td><td>{id}</td></tr>\
                 <tr><td>Account</td><td>{account}</td></tr>\
                 <tr><td>Host name</td><td>{host}</td></tr>\
                 <tr><td>FQDN</td><td>{fqdn}</td></tr>\
                 <tr><td>Addresses</td><td>{addrs}</td></tr>\
                 <tr><td>DNS record</td><td>{dns}</td></tr>\
                 <tr><td>Serial</td><td>{serial}</td></tr>\
                 <tr><td>Replaces</td><td>{replaces}</td></tr>\
                 <tr><td>Agent</td><td>{agent}</td></tr>\
                 <tr><td>Key fingerprint</td><td><code>{short}</code><br><small>{fp}</small></td></tr>\
                 <tr><td>State</td><td class={cls}>{state}</td></tr>\
                 <tr><td>Registered</td><td>{reg} ({n} registration(s))</td></tr>\
                 <tr><td>Authorized</td><td>{auth}</td></tr>\
                 <tr><td>Secure connection</td><td>{secure} ({contacts} contact(s))</td></tr>\
                 <tr><td>Certificate</td><td>{expires} ({renewals} renewal(s))</td></tr></table>",
                id = esc(&r.server_id),
                account = esc(&r.account),
                host = esc(&r.hostname),
                fqdn = esc(r.fqdn.as_deref().unwrap_or("-")),
                addrs = esc(&r
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")),
                dns = esc(&format!("{:?}", r.dns).to_lowercase()),
                serial = esc(r.serial.as_deref().unwrap_or("-")),
                replaces = match &r.replaces {
                    Some(_) => replaces(r),
                    None => "-".to_string(),
                },
                agent = esc(&r.agent_version),
                short = esc(&short_fingerprint(&r.key_fingerprint)),
                fp = esc(&r.key_fingerprint),
                cls = crate::db::state_str(r.state),
                state = label(r.state),
                reg = esc(&r.registered_at),
                n = s.registrations,
                auth = esc(r.authorized_at.as_deref().unwrap_or("-")),
                secure = esc(r.last_secure_contact.as_deref().unwrap_or("never")),
                contacts = s.secure_contacts,
                expires = esc(&r
                    .certificate_expires
                    .as_deref()
                    .map(|t| format!("valid until {t}"))
                    .unwrap_or_else(|| "-".into())),
                renewals = r.renewals,
            );
            let id = esc(&r.server_id);
            if r.state != TrustState::Trusted {
                let _ = write!(
                    html,
                    "<form method=post action=\"/ui/servers/{id}/authorize\" style=display:inline><button>Authorize</button></form>"
                );
            }
            if r.state != TrustState::Rejected {
                let _ = write!(
                    html,
                    "<form method=post action=\"/ui/servers/{id}/reject\" style=display:inline><button>Reject</button></form>"
                );
            }
            let _ = write!(
                html,
                "<form method=post action=\"/ui/servers/{id}/remove\" style=display:inline \
                 onsubmit=\"return confirm('Remove server {id}? Its token and certificate stop working.')\">\
                 <button>Remove</button></form>"
            );
        }
    }
    html.push_str("</main></body></html>");
    Html(html).into_response()
}

async fn act(st: Arc<AppState>, id: String, state: TrustState) -> Response {
    let db = st.db();
    match crate::api::set_trust(&db, &id, state, st.cert_lifetime) {
        Ok(s) => Redirect::to(&format!("/ui?server={}", s.record.server_id)).into_response(),
        Err(e) => (
            axum::http::StatusCode::NOT_FOUND,
            Html(format!("<p>{}</p>", esc(&e.to_string()))),
        )
            .into_response(),
    }
}

pub async fn authorize(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    act(st, id, TrustState::Trusted).await
}

pub async fn reject(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    act(st, id, TrustState::Rejected).await
}

/// The Remove button: the server's record goes; back to the tree.
pub async fn remove(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let db = st.db();
    match crate::api::remove(&db, &id) {
        Ok(_) => Redirect::to("/ui").into_response(),
        Err(e) => (
            axum::http::StatusCode::NOT_FOUND,
            Html(format!("<p>{}</p>", esc(&e.to_string()))),
        )
            .into_response(),
    }
}
