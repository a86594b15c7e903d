//! The request log: one JSON line per API request (`{"at": unix seconds, "method", "path",
//! "status", "ms"}`), appended to `DB.requests.jsonl` next to the database as each answer
//! goes out, so that tests can check *when* an agent came back (after a `Retry-After`, within
//! its backoff) and benchmarks can count requests per endpoint and status. `requests` prints
//! it; `serve` starts it afresh.

use crate::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where the log of the database at `db` is kept.
pub fn path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".requests.jsonl");
    PathBuf::from(name)
}

pub async fn middleware(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let line = serde_json::json!({
        "at": at,
        "method": method,
        "path": path,
        "status": response.status().as_u16(),
        "ms": started.elapsed().as_millis() as u64,
    });
    if let Some(file) = state.request_log.as_ref() {
        // One write of one line to a file opened for appending: lines never interleave.
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
    response
}
