//! Retrying transient failures: exponential backoff with full jitter, the primary's
//! `Retry-After` honoured, an overall deadline; and [`retry`], the one loop every step that
//! waits for something (DNS, the primary, an administrator) runs.

use crate::failure::{Code, Failure};
use crate::netwatch::NetWatch;
use crate::progress::Progress;
use crate::state::State;
use std::time::Duration;
// Tokio's clock: the same as the system's, except in tests, which pause and advance it.
use tokio::time::Instant;

pub struct Backoff {
    base: Duration,
    cap: Duration,
    started: Instant,
    deadline: Option<Duration>,
    /// At most this many attempts, if set (a bounded wait a person sits through).
    max_attempts: Option<u32>,
    pub attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, deadline: Option<Duration>) -> Backoff {
        Backoff {
            base,
            cap,
            started: Instant::now(),
            deadline,
            max_attempts: None,
            attempt: 0,
        }
    }

    /// Gives up after `n` attempts too (or at the deadline, whichever comes first).
    pub fn at_most(mut self, n: u32) -> Backoff {
        self.max_attempts = Some(n);
        self
    }

    /// The wait before the next attempt after `failure`, or the failure that ends the retrying:
    /// the failure itself when permanent, a `deadline` failure when time or the attempts
    /// allowed are up.
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
            // At least as asked, spread over as long again: a primary at capacity tells a
            // thousand boxes the same Retry-After, and if they all came back within the same
            // tenth of a second only the first few would get in each time (tests/bench/fleet
            // measured 6x the ideal registration time with a 10% spread). Told again and again,
            // the spread widens (up to four times as long): the primary is still full, and a
            // herd that keeps asking only spends its capacity on refusals.
            Some(asked) => {
                let spread = asked.as_millis() as u64 * u64::from(self.attempt.clamp(1, 4));
                asked + Duration::from_millis(rand::random_range(0..=spread))
            }
            None => jitter,
        };
        let out_of_attempts = self.max_attempts.is_some_and(|n| self.attempt >= n);
        let out_of_time = self
            .deadline
            .is_some_and(|d| self.started.elapsed() + wait >= d);
        if out_of_attempts || out_of_time {
            return Err(Failure {
                code: Code::Deadline,
                message: format!(
                    "gave up after {}s and {} attempts: {} [{}]",
                    self.started.elapsed().as_secs(),
                    self.attempt,
                    failure.message,
                    failure.code
                ),
                fix: failure.fix,
                retry_after: None,
            });
        }
        Ok(wait)
    }
}

/// How a retry loop reports the failures it waits out.
#[derive(Clone, Copy)]
pub struct Report<'a> {
    /// How long an attempt itself may take: systemd's start timeout is extended by the wait
    /// plus this.
    pub attempt_time: Duration,
    /// Failures that are the expected wait, not an error (an administrator has not clicked
    /// Authorize yet): neither recorded as the last error nor announced; only the timeout is
    /// extended.
    pub quiet: &'a dyn Fn(&Failure) -> bool,
}

impl Report<'_> {
    /// Every failure is announced and recorded.
    pub fn loud(attempt_time: Duration) -> Report<'static> {
        Report {
            attempt_time,
            quiet: &|_| false,
        }
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or `backoff` gives up (its deadline).
/// After each transient failure: the wait from `backoff`, the failure recorded as the state's
/// last error and announced (console, journal, `STATUS=`, status.json) unless `report` calls
/// it quiet, systemd's start timeout extended, then the sleep. `attempt` gets the state and
/// the progress to record what it found (the DNS step's records) or to refresh the console.
pub async fn retry<T>(
    backoff: &mut Backoff,
    state: &mut State,
    progress: &mut Progress,
    report: Report<'_>,
    mut attempt: impl AsyncFnMut(&mut State, &mut Progress) -> Result<T, Failure>,
) -> Result<T, Failure> {
    // Opened at the first failure a network change may mend; `Some(None)`: no netlink here.
    let mut watch: Option<Option<NetWatch>> = None;
    loop {
        let failure = match attempt(state, progress).await {
            Ok(done) => return Ok(done),
            Err(failure) => failure,
        };
        let wait = backoff.next(failure.clone())?;
        if (report.quiet)(&failure) {
            Progress::extend(wait + report.attempt_time);
        } else {
            state.last_error = Some(failure.clone());
            progress.retrying(state, &failure, backoff.attempt, wait, report.attempt_time);
        }
        let watch = match failure.code.network_may_fix() {
            true => watch.get_or_insert_with(NetWatch::open).as_ref(),
            false => None,
        };
        match watch {
            Some(watch) => tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = watch.changed() => log::info!("the network changed: trying again now"),
            },
            None => tokio::time::sleep(wait).await,
        }
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
        // The 31st attempt: at least as asked, spread over at most four times as long again.
        assert!(
            w >= Duration::from_secs(3) && w <= Duration::from_secs(3 + 4 * 3),
            "{w:?}"
        );
    }

    #[test]
    fn a_herd_told_the_same_retry_after_comes_back_spread_over_as_long_again() {
        let mut waits: Vec<u128> = (0..400)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), None);
                let mut busy = Failure::new(Code::RateLimited, "m");
                busy.retry_after = Some(Duration::from_secs(1));
                b.next(busy).unwrap().as_millis()
            })
            .collect();
        waits.sort_unstable();
        assert!(waits[0] >= 1000 && waits[399] <= 2000, "{waits:?}");
        // Spread out, not bunched: each quarter of the second after the asked one gets about a
        // quarter of the herd (a 10% spread put them all in the first tenth).
        for q in 0..4u128 {
            let n = waits
                .iter()
                .filter(|&&w| (1000 + q * 250..1000 + (q + 1) * 250).contains(&w))
                .count();
            assert!(
                (60..=140).contains(&n),
                "quarter {q}: {n} of 400: {waits:?}"
            );
        }
    }

    #[test]
    fn told_to_wait_again_and_again_the_spread_widens_to_four_times_the_asked() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), None);
        let mut widest = Duration::ZERO;
        for attempt in 1..=40u32 {
            let mut busy = Failure::new(Code::RateLimited, "m");
            busy.retry_after = Some(Duration::from_secs(2));
            let w = b.next(busy).unwrap();
            let most = Duration::from_secs(2) * (1 + attempt.min(4));
            assert!(
                w >= Duration::from_secs(2) && w <= most,
                "attempt {attempt}: {w:?}"
            );
            widest = widest.max(w);
        }
        assert!(
            widest > Duration::from_secs(6),
            "the spread widened: {widest:?}"
        );
    }

    #[test]
    fn a_bounded_backoff_gives_up_after_its_attempts() {
        let mut b =
            Backoff::new(Duration::from_millis(1), Duration::from_millis(2), None).at_most(3);
        let refused = || Failure::new(Code::PrimaryRefused, "refused");
        assert!(b.next(refused()).is_ok(), "after the first attempt");
        assert!(b.next(refused()).is_ok(), "after the second");
        let end = b.next(refused()).unwrap_err();
        assert_eq!(end.code, Code::Deadline);
        assert!(end.message.contains("3 attempts"), "{}", end.message);
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

#[cfg(test)]
mod driver_tests {
    use super::*;
    use crate::root::Root;

    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(60);

    struct Run {
        /// When each attempt started, from the start of the loop.
        starts: Vec<Duration>,
        result: Result<u32, Failure>,
        state: State,
    }

    /// Runs the driver over `outcomes`, one per attempt (the last repeats).
    async fn run(
        backoff: &mut Backoff,
        quiet: &dyn Fn(&Failure) -> bool,
        outcomes: Vec<Result<u32, Failure>>,
    ) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let mut progress = Progress::new(&root);
        let mut state = State::default();
        let start = Instant::now();
        let mut starts = Vec::new();
        let report = Report {
            attempt_time: Duration::ZERO,
            quiet,
        };
        let result = retry(backoff, &mut state, &mut progress, report, async |_, _| {
            let n = starts.len().min(outcomes.len() - 1);
            starts.push(start.elapsed());
            outcomes[n].clone()
        })
        .await;
        Run {
            starts,
            result,
            state,
        }
    }

    fn transient(code: Code) -> Failure {
        assert!(!code.permanent(), "{code}");
        Failure::with_fix(code, format!("{code} happened"), "wait")
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_full_jitter_below_the_doubling_ceiling() {
        let mut backoff = Backoff::new(BASE, CAP, None);
        let mut outcomes: Vec<_> = (0..12)
            .map(|_| Err(transient(Code::PrimaryRefused)))
            .collect();
        outcomes.push(Ok(7));
        let run = run(&mut backoff, &|_| false, outcomes).await;
        assert_eq!(run.result, Ok(7));
        assert_eq!(run.starts.len(), 13);
        let waits: Vec<Duration> = run.starts.windows(2).map(|w| w[1] - w[0]).collect();
        for (n, wait) in waits.iter().enumerate() {
            let ceiling = (BASE * 2u32.pow(n as u32 + 1)).min(CAP);
            assert!(*wait <= ceiling, "wait {n}: {wait:?} over {ceiling:?}");
        }
        // Full jitter, not a fixed schedule: the waits are not all at their ceilings.
        let at_ceiling = waits
            .iter()
            .enumerate()
            .filter(|(n, w)| **w == (BASE * 2u32.pow(*n as u32 + 1)).min(CAP))
            .count();
        assert!(at_ceiling < waits.len(), "{waits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured() {
        let mut backoff = Backoff::new(BASE, CAP, None);
        let mut busy = transient(Code::RateLimited);
        busy.retry_after = Some(Duration::from_secs(40));
        let run = run(&mut backoff, &|_| false, vec![Err(busy), Ok(1)]).await;
        assert_eq!(run.result, Ok(1));
        let wait = run.starts[1] - run.starts[0];
        // At least as asked, at most as long again; never the 2 s the backoff alone would allow.
        assert!(
            wait >= Duration::from_secs(40) && wait <= Duration::from_secs(80),
            "{wait:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_gives_up_with_the_last_failure() {
        let mut backoff = Backoff::new(BASE, CAP, Some(Duration::from_secs(120)));
        let outcomes = vec![
            Err(transient(Code::DnsMissing)),
            Err(transient(Code::PrimaryRefused)),
        ];
        let run = run(&mut backoff, &|_| false, outcomes).await;
        let end = run.result.unwrap_err();
        assert_eq!(end.code, Code::Deadline);
        assert!(end.permanent());
        assert!(end.message.starts_with("gave up after "), "{}", end.message);
        assert!(
            end.message
                .ends_with("primary-refused happened [primary-refused]"),
            "{}",
            end.message
        );
        assert_eq!(end.fix, "wait");
        // Never past the deadline.
        assert!(
            *run.starts.last().unwrap() < Duration::from_secs(120),
            "{:?}",
            run.starts
        );
        assert!(run.starts.len() >= 3, "{:?}", run.starts);
    }

    #[tokio::test(start_paused = true)]
    async fn each_failure_waited_out_is_the_last_error() {
        let mut backoff = Backoff::new(BASE, CAP, None);
        let outcomes = vec![
            Err(transient(Code::DnsMissing)),
            Err(transient(Code::PrimaryRefused)),
            Ok(3),
        ];
        let run = run(&mut backoff, &|_| false, outcomes).await;
        assert_eq!(run.result, Ok(3));
        assert_eq!(run.state.last_error, Some(transient(Code::PrimaryRefused)));
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_failures_are_waited_out_but_not_recorded() {
        let mut backoff = Backoff::new(BASE, CAP, None);
        let quiet = |f: &Failure| f.code == Code::NotTrusted;
        let outcomes = vec![
            Err(transient(Code::PrimaryRefused)),
            Err(transient(Code::NotTrusted)),
            Ok(0),
        ];
        let run = run(&mut backoff, &quiet, outcomes).await;
        assert_eq!(run.result, Ok(0));
        assert_eq!(run.starts.len(), 3);
        assert_eq!(run.state.last_error, Some(transient(Code::PrimaryRefused)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_stops_at_once() {
        let mut backoff = Backoff::new(BASE, CAP, None);
        let rejected = Failure::with_fix(Code::KeyRejected, "the key was rejected", "use another");
        let run = run(&mut backoff, &|_| false, vec![Err(rejected.clone()), Ok(1)]).await;
        assert_eq!(run.result, Err(rejected));
        assert_eq!(run.starts, [Duration::ZERO]);
        assert_eq!(run.state.last_error, None);
    }
}
