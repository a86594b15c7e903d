//! Fault injection: latency, a share of 503s, rate limiting with 429 + Retry-After, "down
//! until" (connections refused), responses that never end, and answers held after the commit. Set at start (`serve` flags)
//! or at run time (`faults set`, which writes the database the server re-reads every 200 ms).

use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gateway_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added before every API response.
    pub latency_ms: u64,
    /// Share of API requests answered 503 `unavailable`.
    pub error_percent: u8,
    /// API requests allowed per second; the rest get 429 with Retry-After.
    pub rate_limit_per_second: Option<u32>,
    /// Seconds in the Retry-After header of 429s (default 1).
    pub retry_after_secs: Option<u64>,
    /// Unix time until which connections are refused (the listener is closed).
    pub down_until: Option<i64>,
    /// Share of API requests whose response starts and never ends.
    pub hang_percent: u8,
    /// Held after a POST's handler has run, its change committed (a registration recorded),
    /// before the answer goes out: a power cut in that window loses only the answer.
    pub commit_delay_ms: u64,
}

impl Faults {
    pub fn is_down(&self, now: i64) -> bool {
        self.down_until.is_some_and(|t| t > now)
    }
}

/// Counts requests in the current one-second window for the rate limit.
#[derive(Debug)]
pub struct Window {
    start: Instant,
    count: u32,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            start: Instant::now(),
            count: 0,
        }
    }
}

fn chance(percent: u8) -> bool {
    percent > 0 && rand::random_range(0..100u8) < percent
}

pub async fn middleware(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let faults = state.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if let Some(limit) = faults.rate_limit_per_second {
        let over = {
            let mut w = state.window.lock().unwrap_or_else(|e| e.into_inner());
            if w.start.elapsed() >= Duration::from_secs(1) {
                *w = Window::default();
            }
            w.count += 1;
            w.count > limit
        };
        if over {
            let retry = faults.retry_after_secs.unwrap_or(1);
            return crate::api::ApiError::new(
                ErrorCode::RateLimited,
                "too many requests; retry later",
            )
            .retry_after(retry)
            .into_response();
        }
    }
    if chance(faults.error_percent) {
        return crate::api::ApiError::new(
            ErrorCode::Unavailable,
            "the primary is busy; retry later",
        )
        .retry_after(1)
        .into_response();
    }
    if chance(faults.hang_percent) {
        // Headers and the start of a body, then nothing, for ever.
        let stream = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\""))
        })
        .chain(futures_util::stream::pending());
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_default();
    }
    next.run(req).await
}

/// The commit delay, outermost (outside the request log, which so records the answer when
/// it is ready, not when it is let go): a POST's answer is held after its handler has run.
pub async fn hold_after_commit(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let post = req.method() == axum::http::Method::POST;
    let response = next.run(req).await;
    let hold = state.faults().commit_delay_ms;
    if post && hold > 0 {
        tokio::time::sleep(Duration::from_millis(hold)).await;
    }
    response
}

use futures_util::StreamExt as _;

/// Parses `250ms`, `2s`, `5m`, `1h`, `2d`; a bare number is milliseconds.
pub fn parse_millis(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, factor) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else if let Some(n) = s.strip_suffix('d') {
        (n, 86_400_000)
    } else {
        (s, 1)
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * factor)
        .map_err(|_| format!("{s:?} is not a duration (250ms, 2s, 5m, 1h)"))
}
