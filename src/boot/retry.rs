//! `retry_every`: try something now and then every N seconds until it works, the
//! caller stops, or a bound is reached; say so once, not every time.
//!
//! A head retries a few things that fail for reasons outside it and that fix
//! themselves: a TFTP address or a DHCP interface that is not up yet, a registration
//! that needs a leader. Each used to be its own loop with its own "failing" flag.
//! Here it is one loop, with one policy for the log:
//! - the **first failure** is logged at the level the caller chose (an operator must
//!   see "TFTP cannot start yet: …"), with the retry interval;
//! - **later failures** go to debug level only: a missing interface must not write a
//!   line every 2 s for as long as it is missing;
//! - **recovery** after failures is logged at info level, with the number of attempts;
//! - **giving up** (the attempt bound) is logged at the first failure's level with the
//!   last error.
//!
//! Every loop is bounded: by `stop` (raced against each attempt *and* each wait, so a
//! shutdown never waits for a hung attempt), and optionally by a number of attempts.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tracing::Level;

/// How [`RetryEvery::run`] retries. [`retry_every`] is the common case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryEvery {
    /// The wait between the end of a failed attempt and the next one.
    pub every: Duration,
    /// Give up after this many attempts; `None` retries until `stop` resolves.
    pub attempts: Option<u64>,
    /// The level of the first failure's (and of giving up's) log line.
    pub first_failure: Level,
}

impl RetryEvery {
    /// Retry every `every` until stopped; the first failure is logged as an error.
    pub const fn new(every: Duration) -> RetryEvery {
        RetryEvery {
            every,
            attempts: None,
            first_failure: Level::ERROR,
        }
    }

    /// Give up after `n` attempts (at least one is always made).
    pub const fn at_most(self, n: u64) -> RetryEvery {
        RetryEvery {
            attempts: Some(n),
            ..self
        }
    }

    /// Log the first failure at `level` (e.g. debug, for failures that are expected
    /// while a cluster forms).
    pub const fn first_failure_at(self, level: Level) -> RetryEvery {
        RetryEvery {
            first_failure: level,
            ..self
        }
    }

    /// Run `attempt` now and again every [`Self::every`] until it returns `Ok`
    /// (its value is returned), `stop` resolves or the attempts run out (`None`).
    /// `what` names the thing in log lines: "`what`: `error`; retrying every 2 s".
    pub async fn run<T, E, Fut>(
        &self,
        what: &str,
        stop: impl Future<Output = ()>,
        mut attempt: impl FnMut() -> Fut,
    ) -> Option<T>
    where
        E: Display,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut stop = std::pin::pin!(stop);
        let mut failures: u64 = 0;
        loop {
            let result = tokio::select! {
                _ = &mut stop => return None,
                r = attempt() => r,
            };
            match result {
                Ok(v) => {
                    if failures > 0 {
                        tracing::info!("{what}: succeeded after {failures} failed attempt(s)");
                    }
                    return Some(v);
                }
                Err(e) => {
                    failures += 1;
                    if self.attempts.is_some_and(|n| failures >= n) {
                        log_at(
                            self.first_failure,
                            format_args!("{what}: {e}; gave up after {failures} attempt(s)"),
                        );
                        return None;
                    }
                    if failures == 1 {
                        log_at(
                            self.first_failure,
                            format_args!("{what}: {e}; retrying every {}", Secs(self.every)),
                        );
                    } else {
                        tracing::debug!("{what}: {e} (attempt {failures})");
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => return None,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }
}

/// Try `attempt` now and then every `every` until it works (its value) or `stop`
/// resolves (`None`); the first failure is logged as an error, the rest at debug
/// level (see the module notes).
pub async fn retry_every<T, E, Fut>(
    every: Duration,
    what: &str,
    stop: impl Future<Output = ()>,
    attempt: impl FnMut() -> Fut,
) -> Option<T>
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    RetryEvery::new(every).run(what, stop, attempt).await
}

fn log_at(level: Level, msg: std::fmt::Arguments<'_>) {
    match level {
        Level::ERROR => tracing::error!("{msg}"),
        Level::WARN => tracing::warn!("{msg}"),
        Level::INFO => tracing::info!("{msg}"),
        Level::DEBUG => tracing::debug!("{msg}"),
        _ => tracing::trace!("{msg}"),
    }
}

/// "2 s", "500 ms".
struct Secs(Duration);

impl Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.subsec_millis() == 0 && self.0.as_secs() > 0 {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    const FAST: Duration = Duration::from_millis(5);

    /// Every event's level and message, on the test's thread.
    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<Vec<(Level, String)>>>);

    impl<S: tracing::Subscriber> Layer<S> for Events {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            struct Msg(String);
            impl tracing::field::Visit for Msg {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut m = Msg(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push((*event.metadata().level(), m.0));
        }
    }

    fn capture() -> (Events, tracing::subscriber::DefaultGuard) {
        let events = Events::default();
        let sub = tracing_subscriber::registry().with(events.clone());
        (events.clone(), tracing::subscriber::set_default(sub))
    }

    /// An attempt that fails `n` times, then returns how many calls it took.
    fn fails(n: u32, calls: &Arc<Mutex<u32>>) -> impl FnMut() -> std::future::Ready<Result<u32, String>> + '_ {
        move || {
            let mut c = calls.lock().unwrap();
            *c += 1;
            std::future::ready(if *c > n { Ok(*c) } else { Err(format!("not yet ({c})")) })
        }
    }

    #[tokio::test]
    async fn retries_until_success_logging_the_first_failure_then_quietly() {
        let (events, _guard) = capture();
        let calls = Arc::new(Mutex::new(0));
        let got = retry_every(FAST, "thing", std::future::pending(), fails(4, &calls)).await;
        assert_eq!(got, Some(5), "the fifth call succeeds and its value is returned");
        let events = events.0.lock().unwrap().clone();
        let at = |l: Level| {
            events
                .iter()
                .filter(|(lv, _)| *lv == l)
                .map(|(_, m)| m.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(at(Level::ERROR), ["thing: not yet (1); retrying every 5 ms"]);
        assert_eq!(at(Level::DEBUG).len(), 3, "failures 2-4 at debug: {events:?}");
        assert_eq!(at(Level::INFO), ["thing: succeeded after 4 failed attempt(s)"]);
    }

    #[tokio::test]
    async fn success_at_once_logs_nothing() {
        let (events, _guard) = capture();
        let calls = Arc::new(Mutex::new(0));
        assert_eq!(
            retry_every(FAST, "thing", std::future::pending(), fails(0, &calls)).await,
            Some(1)
        );
        assert!(events.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn gives_up_after_the_bound_at_the_chosen_level() {
        let (events, _guard) = capture();
        let calls = Arc::new(Mutex::new(0));
        let policy = RetryEvery::new(FAST).at_most(3).first_failure_at(Level::WARN);
        let got = policy.run("thing", std::future::pending(), fails(10, &calls)).await;
        assert_eq!(got, None);
        assert_eq!(*calls.lock().unwrap(), 3);
        let events = events.0.lock().unwrap().clone();
        assert_eq!(events.first().map(|e| e.0), Some(Level::WARN));
        assert_eq!(
            events.last().cloned(),
            Some((Level::WARN, "thing: not yet (3); gave up after 3 attempt(s)".to_owned()))
        );
        assert!(!events.iter().any(|(l, _)| *l == Level::ERROR));
    }

    #[tokio::test]
    async fn stop_ends_a_wait_and_a_hung_attempt() {
        // Stopped while waiting between attempts.
        let calls = Arc::new(Mutex::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let policy = RetryEvery::new(Duration::from_secs(3600));
        let task = {
            let calls = calls.clone();
            tokio::spawn(async move {
                policy
                    .run(
                        "thing",
                        async {
                            let _ = rx.await;
                        },
                        fails(10, &calls),
                    )
                    .await
            })
        };
        while *calls.lock().unwrap() == 0 {
            tokio::task::yield_now().await;
        }
        tx.send(()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops")
            .unwrap();
        assert_eq!(got, None);
        assert_eq!(*calls.lock().unwrap(), 1);

        // Stopped while an attempt never finishes.
        let hung = || std::future::pending::<Result<(), String>>();
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            retry_every(FAST, "thing", std::future::ready(()), hung),
        )
        .await
        .expect("a stopped retry does not wait for the attempt");
        assert_eq!(got, None);
    }
}
