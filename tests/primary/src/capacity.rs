//! A capacity limit, as a busy real service has one: at most C API requests in flight; beyond
//! that the request is answered at once with `429 rate-limited` and `Retry-After`, as a load
//! shedder in front of a real primary would. What the fleet benchmark (tests/bench/fleet)
//! puts a herd of agents against.

use crate::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gateway_protocol::ErrorCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The requests being served now, and the most there were at once.
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl InFlight {
    /// Takes a place if fewer than `limit` are taken; `false` when full.
    fn enter(&self, limit: Option<usize>) -> bool {
        let mut current = self.now.load(Ordering::Relaxed);
        loop {
            if limit.is_some_and(|l| current >= l) {
                return false;
            }
            match self.now.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.peak.fetch_max(current + 1, Ordering::Relaxed);
                    return true;
                }
                Err(seen) => current = seen,
            }
        }
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// Leaves its place when the request ends, however it ends (a client gone mid-answer too).
struct Place<'a>(&'a InFlight);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

pub async fn middleware(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !state.in_flight.enter(state.max_concurrent) {
        return crate::api::ApiError::new(
            ErrorCode::RateLimited,
            "the primary is at capacity; retry later",
        )
        .retry_after(1)
        .into_response();
    }
    let _place = Place(&state.in_flight);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_limited_and_the_peak_is_kept() {
        let f = InFlight::default();
        assert!(f.enter(Some(2)));
        assert!(f.enter(Some(2)));
        assert!(!f.enter(Some(2)), "full");
        f.leave();
        assert!(f.enter(Some(2)));
        assert!(f.enter(None), "no limit");
        assert_eq!(f.peak(), 3);
    }
}
