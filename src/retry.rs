//! Retrying transient failures: exponential backoff with full jitter, the primary's
//! `Retry-After` honoured, an overall deadline.

use crate::failure::{Code, Failure};
use std::time::{Duration, Instant};

pub struct Backoff {
    base: Duration,
    cap: Duration,
    started: Instant,
    deadline: Option<Duration>,
    pub attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, deadline: Option<Duration>) -> Backoff {
        Backoff {
            base,
            cap,
            started: Instant::now(),
            deadline,
            attempt: 0,
        }
    }

    /// The wait before the next attempt after `failure`, or the failure that ends the retrying:
    /// the failure itself when permanent, a `deadline` failure when time is up.
    pub fn next(&mut self, failure: Failure) -> Result<Duration, Failure> {
        if failure.permanent() {
            return Err(failure);
        }
        self.attempt += 1;
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(self.attempt.min(20)))
            .min(self.cap);
        let jitter = Duration::from_millis(rand::random_range(0..=ceiling.as_millis() as u64));
        let wait = match failure.retry_after {
            // As asked, plus a little jitter so that many servers do not return at once.
            Some(asked) => {
                asked
                    + Duration::from_millis(rand::random_range(
                        0..=(asked.as_millis() as u64 / 10).min(1000),
                    ))
            }
            None => jitter,
        };
        if let Some(deadline) = self.deadline {
            let elapsed = self.started.elapsed();
            if elapsed + wait >= deadline {
                return Err(Failure {
                    code: Code::Deadline,
                    message: format!(
                        "gave up after {}s and {} attempts: {} [{}]",
                        elapsed.as_secs(),
                        self.attempt,
                        failure.message,
                        failure.code
                    ),
                    fix: failure.fix,
                    retry_after: None,
                });
            }
        }
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_within_the_cap_and_retry_after_wins() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), None);
        for _ in 0..30 {
            let w = b.next(Failure::new(Code::PrimaryRefused, "m")).unwrap();
            assert!(w <= Duration::from_secs(2));
        }
        let mut asked = Failure::new(Code::RateLimited, "m");
        asked.retry_after = Some(Duration::from_secs(3));
        let w = b.next(asked).unwrap();
        assert!(
            w >= Duration::from_secs(3) && w <= Duration::from_millis(3300),
            "{w:?}"
        );
    }

    #[test]
    fn permanent_failures_and_the_deadline_stop() {
        let mut b = Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(20),
            Some(Duration::ZERO),
        );
        assert_eq!(
            b.next(Failure::new(Code::KeyRejected, "m"))
                .unwrap_err()
                .code,
            Code::KeyRejected
        );
        let end = b
            .next(Failure::with_fix(
                Code::PrimaryRefused,
                "refused",
                "start it",
            ))
            .unwrap_err();
        assert_eq!(end.code, Code::Deadline);
        assert!(
            end.permanent() && end.message.contains("refused [primary-refused]"),
            "{}",
            end.message
        );
    }
}
