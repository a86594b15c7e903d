//! `stats`: the request log (requests.rs) summed up, for benchmarks: requests by endpoint
//! (the route, ids and domains as placeholders) and status, the most in flight at once (from
//! each request's start and duration), the most that started within one second.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Deserialize)]
struct Line {
    at: f64,
    method: String,
    path: String,
    status: u16,
    ms: u64,
}

/// `/api/v1/servers/srv_x/certificate` → `/api/v1/servers/{id}/certificate`.
fn route(path: &str) -> String {
    let mut out = Vec::new();
    let mut previous = "";
    for part in path.split('/') {
        out.push(match previous {
            "servers" if !part.is_empty() => "{id}",
            "accounts" if !part.is_empty() => "{domain}",
            _ => part,
        });
        previous = part;
    }
    out.join("/")
}

pub fn summary(log: &Path, since: Option<f64>, until: Option<f64>) -> Result<serde_json::Value> {
    let text = match std::fs::read_to_string(log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", log.display())),
    };
    let lines: Vec<Line> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &Line| since.is_none_or(|s| l.at >= s) && until.is_none_or(|u| l.at < u))
        .collect();
    let mut by_endpoint: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_second: BTreeMap<i64, u64> = BTreeMap::new();
    // Starts (+1) and ends (-1); an end sorts before a start at the same instant.
    let mut edges: Vec<(f64, i64)> = Vec::with_capacity(lines.len() * 2);
    for l in &lines {
        let endpoint = format!("{} {}", l.method, route(&l.path));
        *by_endpoint
            .entry(endpoint)
            .or_default()
            .entry(l.status.to_string())
            .or_default() += 1;
        *by_status.entry(l.status.to_string()).or_default() += 1;
        *per_second.entry(l.at.floor() as i64).or_default() += 1;
        edges.push((l.at, 1));
        edges.push((l.at + l.ms as f64 / 1000.0, -1));
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak_in_flight) = (0i64, 0i64);
    for (_, step) in edges {
        now += step;
        peak_in_flight = peak_in_flight.max(now);
    }
    let first = lines.iter().map(|l| l.at).reduce(f64::min);
    let last = lines.iter().map(|l| l.at).reduce(f64::max);
    Ok(serde_json::json!({
        "requests": lines.len(),
        "first_at": first,
        "last_at": last,
        "by_endpoint": by_endpoint,
        "by_status": by_status,
        "peak_in_flight": peak_in_flight,
        "peak_per_second": per_second.values().max().copied().unwrap_or(0),
        "per_second": per_second.iter().map(|(t, n)| serde_json::json!([t, n])).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_hide_ids_and_domains() {
        assert_eq!(
            route("/api/v1/servers/srv_x/certificate"),
            "/api/v1/servers/{id}/certificate"
        );
        assert_eq!(
            route("/api/v1/accounts/acme.example/servers"),
            "/api/v1/accounts/{domain}/servers"
        );
        assert_eq!(route("/api/v1/health"), "/api/v1/health");
    }

    #[test]
    fn the_log_is_summed_up() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            concat!(
                r#"{"at":100.0,"method":"GET","path":"/api/v1/health","status":200,"ms":500}"#,
                "\n",
                r#"{"at":100.2,"method":"POST","path":"/api/v1/accounts/a.example/servers","status":201,"ms":100}"#,
                "\n",
                r#"{"at":100.9,"method":"POST","path":"/api/v1/accounts/a.example/servers","status":429,"ms":0}"#,
                "\n",
                r#"{"at":102.5,"method":"GET","path":"/api/v1/servers/srv_1","status":409,"ms":1}"#,
                "\n",
                "not json\n",
            ),
        )
        .unwrap();
        let s = summary(&log, None, None).unwrap();
        assert_eq!(s["requests"], 4);
        assert_eq!(s["peak_in_flight"], 2, "{s}");
        assert_eq!(s["peak_per_second"], 3);
        assert_eq!(
            s["by_endpoint"]["POST /api/v1/accounts/{domain}/servers"]["429"],
            1
        );
        assert_eq!(s["by_status"]["409"], 1);
        let later = summary(&log, Some(101.0), None).unwrap();
        assert_eq!(later["requests"], 1);
    }
}
