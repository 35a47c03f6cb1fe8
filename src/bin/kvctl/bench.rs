//! The load generator behind `kvctl bench`: many concurrent sessions against a running cluster,
//! with latency percentiles, throughput and errors by kind at the end.
//!
//! Each of the `clients` workers is one [`Client::session`]: its own client id and stream, one
//! operation in flight at a time, all of them multiplexed over the client's shared connections,
//! which is how a real application with a connection pool loads the cluster. A worker picks a
//! read with probability `read_ratio` (else a put), a key uniformly from `key_space`, and records
//! the latency of every successful operation in its own hdrhistogram; the histograms are merged
//! once the workers stop, so the hot path shares nothing but two atomic counters.
//!
//! Before the clock starts every worker sends one untimed read, so connection and stream set-up
//! is not measured; with `prefill`, the workers then write every key of the key space once (at
//! `w=majority`, untimed), so that the gets of the run find values. The run stops after
//! `--requests` operations in all or after `--duration`; in the latter case operations in flight
//! at the deadline complete and are counted, and throughput is divided by the time until the last
//! of them ended.
//!
//! Failures are counted by kind ([`replikv::ErrorKind`]) and the run goes on, except those that
//! can never succeed ([`replikv::ErrorKind::is_permanent`]: refused, invalid request, a write
//! concern the cluster cannot meet, bad configuration), which stop the run at once and are
//! returned as the error.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use replikv::client::Client;
use replikv::client::MAX_VALUE_BYTES;
use replikv::config::tuning::{CLIENT_TIMEOUT_MS, MAX_CONCURRENT_BIDI_STREAMS};
use replikv::{Error, ReadConsistency, Result, WriteConcern};

/// Concurrent sessions when none are asked for.
pub const DEFAULT_CLIENTS: usize = 64;

/// How long a run lasts when neither a duration nor a request count is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// Bytes per value when none is given.
pub const DEFAULT_VALUE_SIZE: usize = 100;

/// Distinct keys when none is given.
pub const DEFAULT_KEY_SPACE: u64 = 100_000;

/// Most sessions one bench may open: every session keeps a stream open on the connection to the
/// primary, and a node allows this many per connection.
pub const MAX_CLIENTS: usize = MAX_CONCURRENT_BIDI_STREAMS as usize;

/// Longest latency the histograms hold (one hour, in microseconds); longer ones saturate.
const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;

/// Significant decimal digits of every recorded latency (0.1% resolution).
const HISTOGRAM_PRECISION: u8 = 3;

/// How often the progress bar is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopAfter {
    /// After this many operations in all, successful or not (warm-up not counted).
    Requests(u64),
    /// Once this much time has passed since the clock started.
    #[serde(serialize_with = "as_seconds")]
    Duration(Duration),
}

/// What to run: the flags of `kvctl bench`.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchOptions {
    /// Concurrent sessions, each with one operation in flight.
    pub clients: usize,
    pub stop: StopAfter,
    /// Bytes per value written.
    pub value_size: usize,
    /// Keys are drawn uniformly from `0..key_space`.
    pub key_space: u64,
    pub write_concern: WriteConcern,
    pub consistency: ReadConsistency,
    /// Fraction of operations that are reads, in `[0, 1]`.
    pub read_ratio: f64,
    /// Deadline of each operation, retries included.
    pub timeout: Duration,
    /// Write every key once before the clock starts, so that gets find their keys.
    pub prefill: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            clients: DEFAULT_CLIENTS,
            stop: StopAfter::Duration(DEFAULT_DURATION),
            value_size: DEFAULT_VALUE_SIZE,
            key_space: DEFAULT_KEY_SPACE,
            write_concern: WriteConcern::default(),
            consistency: ReadConsistency::default(),
            read_ratio: 0.0,
            timeout: Duration::from_millis(CLIENT_TIMEOUT_MS),
            prefill: false,
        }
    }
}

impl BenchOptions {
    /// Checks every option, with a message that names the flag and its range.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::InvalidRequest(message));
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            return invalid(format!(
                "--clients {} is out of range: use 1 to {MAX_CLIENTS}",
                self.clients
            ));
        }
        match self.stop {
            StopAfter::Requests(0) => {
                return invalid("--requests 0 would measure nothing: use at least 1".into())
            }
            StopAfter::Duration(duration) if duration.is_zero() => {
                return invalid("--duration must be positive, e.g. 10s".into())
            }
            _ => {}
        }
        if self.value_size > MAX_VALUE_BYTES {
            return invalid(format!(
                "--value-size {} is larger than a request may carry: use at most {MAX_VALUE_BYTES} bytes",
                self.value_size
            ));
        }
        if self.key_space == 0 {
            return invalid("--key-space 0 leaves no key to use: use at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return invalid(format!(
                "--read-ratio {} is not a fraction: use 0.0 (only puts) to 1.0 (only gets)",
                self.read_ratio
            ));
        }
        if self.timeout.is_zero() {
            return invalid("--timeout must be positive, e.g. 5s".into());
        }
        Ok(())
    }

    fn does_writes(&self) -> bool {
        self.read_ratio < 1.0
    }
}

/// The outcome of a run, printed by `kvctl bench` (as JSON with `--json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    pub clients: usize,
    pub stop: StopAfter,
    pub value_size: usize,
    pub key_space: u64,
    pub write_concern: String,
    pub consistency: String,
    pub read_ratio: f64,
    pub prefill: bool,
    /// Seconds from the start of the clock until the last operation ended.
    pub elapsed_secs: f64,
    /// Operations that succeeded (a read of a missing key succeeds).
    pub succeeded: u64,
    /// Operations that failed, by kind in `errors`.
    pub failed: u64,
    /// Successful operations per second.
    pub throughput: f64,
    /// Every successful operation.
    pub latency: LatencySummary,
    /// Successful puts only, if the run made any.
    pub writes: Option<LatencySummary>,
    /// Successful gets only, if the run made any.
    pub reads: Option<LatencySummary>,
    /// Successful gets that found their key.
    pub read_hits: u64,
    /// Failures by the name of their kind ([`replikv::ErrorKind::name`]).
    pub errors: BTreeMap<String, ErrorTally>,
    /// The run was stopped early (Ctrl-C); the figures cover what ran.
    pub interrupted: bool,
}

/// Latency percentiles of the successful operations, in milliseconds (microsecond resolution).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// The summary of a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// How often one kind of failure happened, and one message as an example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorTally {
    pub count: u64,
    pub example: String,
}

/// Successful operations per second; zero when no time passed.
pub fn throughput(succeeded: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        succeeded as f64 / seconds
    } else {
        0.0
    }
}

/// A histogram of latencies in microseconds, from 1 µs to one hour at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, HISTOGRAM_PRECISION)
        .expect("constant histogram bounds are valid")
}

/// What one worker measured.
struct WorkerResult {
    reads: Histogram<u64>,
    writes: Histogram<u64>,
    read_hits: u64,
    errors: BTreeMap<&'static str, ErrorTally>,
}

impl WorkerResult {
    fn new() -> Self {
        WorkerResult {
            reads: latency_histogram(),
            writes: latency_histogram(),
            read_hits: 0,
            errors: BTreeMap::new(),
        }
    }

    fn count_error(&mut self, error: &Error) {
        self.errors
            .entry(error.kind().name())
            .and_modify(|tally| tally.count += 1)
            .or_insert_with(|| ErrorTally {
                count: 1,
                example: error.to_string(),
            });
    }
}

/// What the workers share: the stop flag and the counters the progress bar reads.
#[derive(Default)]
struct Shared {
    /// Operations claimed so far, in `--requests` mode.
    claimed: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Set on Ctrl-C, on a fatal error, or when the duration is up.
    stop: AtomicBool,
}

/// The merged results of every worker: the arithmetic of the report, apart from the I/O.
#[derive(Debug)]
pub struct Tally {
    pub reads: Histogram<u64>,
    pub writes: Histogram<u64>,
    pub read_hits: u64,
    pub errors: BTreeMap<String, ErrorTally>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            reads: latency_histogram(),
            writes: latency_histogram(),
            read_hits: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Tally {
    fn merge(&mut self, worker: WorkerResult) {
        // Both sides share the bounds of `latency_histogram`, so adding cannot fail.
        let _ = self.reads.add(&worker.reads);
        let _ = self.writes.add(&worker.writes);
        self.read_hits += worker.read_hits;
        for (kind, tally) in worker.errors {
            self.errors
                .entry(kind.to_string())
                .and_modify(|merged| merged.count += tally.count)
                .or_insert(tally);
        }
    }

    /// The report of a run with `options` whose clock ran for `elapsed`.
    pub fn report(
        &self,
        options: &BenchOptions,
        elapsed: Duration,
        interrupted: bool,
    ) -> BenchReport {
        let mut all = self.reads.clone();
        let _ = all.add(&self.writes);
        let succeeded = all.len();
        let failed = self.errors.values().map(|tally| tally.count).sum();
        let summary_if_any = |histogram: &Histogram<u64>| {
            (!histogram.is_empty()).then(|| LatencySummary::of(histogram))
        };
        BenchReport {
            clients: options.clients,
            stop: options.stop,
            value_size: options.value_size,
            key_space: options.key_space,
            write_concern: options.write_concern.to_string(),
            consistency: options.consistency.to_string(),
            read_ratio: options.read_ratio,
            prefill: options.prefill,
            elapsed_secs: elapsed.as_secs_f64(),
            succeeded,
            failed,
            throughput: throughput(succeeded, elapsed),
            latency: LatencySummary::of(&all),
            writes: summary_if_any(&self.writes),
            reads: summary_if_any(&self.reads),
            read_hits: self.read_hits,
            errors: self.errors.clone(),
            interrupted,
        }
    }
}

/// Runs the benchmark described by `options` against the cluster `client` reaches. Shows a
/// progress bar on stderr when `show_progress` is set. Ends early, with the figures so far, when
/// `interrupt` resolves (pass `std::future::pending()` for none).
pub async fn run(
    client: &Client,
    options: &BenchOptions,
    show_progress: bool,
    interrupt: impl Future<Output = ()>,
) -> Result<BenchReport> {
    options.validate()?;
    let shared = Arc::new(Shared::default());
    let mut sessions = warm_up(client, options).await?;
    if options.prefill {
        sessions = prefill(sessions, options, show_progress).await?;
    }

    let progress = Progress::new(options, show_progress);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for session in sessions {
        workers.spawn(worker(
            session,
            options.clone(),
            Arc::clone(&shared),
            started,
        ));
    }

    let mut tally = Tally::default();
    let mut fatal: Option<Error> = None;
    let mut interrupted = false;
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    tokio::pin!(interrupt);
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(Ok(result))) => tally.merge(result),
                Some(Ok(Err(error))) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    fatal.get_or_insert(error);
                }
                Some(Err(err)) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    fatal.get_or_insert(Error::Internal(format!("a bench worker failed: {err}")));
                }
            },
            _ = ticker.tick() => progress.update(&shared, started.elapsed()),
            _ = &mut interrupt, if !interrupted => {
                interrupted = true;
                shared.stop.store(true, Ordering::Relaxed);
            }
        }
    }
    let elapsed = started.elapsed();
    progress.finish();
    match fatal {
        Some(error) => Err(error),
        None => Ok(tally.report(options, elapsed, interrupted)),
    }
}

/// Makes one session per client and has each send one untimed read, so stream (and connection)
/// set-up is not measured. A cluster that cannot answer one read per session is not worth
/// measuring: the first failure is returned.
async fn warm_up(client: &Client, options: &BenchOptions) -> Result<Vec<Client>> {
    let consistency = warmup_consistency(options);
    let mut warmups = tokio::task::JoinSet::new();
    for number in 0..options.clients {
        let session = client.session();
        let key = key_name(number as u64 % options.key_space);
        warmups.spawn(async move {
            match session.get(&key, consistency).await {
                Ok(_) => Ok(session),
                Err(error) => Err(error),
            }
        });
    }
    collect_sessions(warmups, "warm-up").await
}

/// Writes every key of the key space once at `w=majority`, spread over the sessions, so that the
/// gets of the run find their keys. Untimed; any failure stops the run.
async fn prefill(
    sessions: Vec<Client>,
    options: &BenchOptions,
    show_progress: bool,
) -> Result<Vec<Client>> {
    let bar = progress_bar(
        show_progress,
        options.key_space,
        "prefill {bar:40} {pos}/{len} keys",
    );
    let stride = sessions.len() as u64;
    let mut writers = tokio::task::JoinSet::new();
    for (first, session) in (0u64..).zip(sessions) {
        let bar = bar.clone();
        let (key_space, value_size, timeout) =
            (options.key_space, options.value_size, options.timeout);
        writers.spawn(async move {
            let value = vec![b'p'; value_size];
            let mut key = first;
            while key < key_space {
                session
                    .put(key_name(key), &value, WriteConcern::Majority, timeout)
                    .await?;
                bar.inc(1);
                key += stride;
            }
            Ok(session)
        });
    }
    let sessions = collect_sessions(writers, "prefill").await;
    bar.finish_and_clear();
    sessions
}

/// Waits for every task of `tasks`; the sessions they hand back, or the first error.
async fn collect_sessions(
    mut tasks: tokio::task::JoinSet<Result<Client>>,
    phase: &str,
) -> Result<Vec<Client>> {
    let mut sessions = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        let session =
            joined.map_err(|err| Error::Internal(format!("a {phase} task failed: {err}")))?;
        sessions.push(session?);
    }
    Ok(sessions)
}

/// One session's loop: claim an operation, run it, record it, until told to stop.
async fn worker(
    session: Client,
    options: BenchOptions,
    shared: Arc<Shared>,
    started: Instant,
) -> Result<WorkerResult> {
    let mut rng = SmallRng::from_entropy();
    let value: Vec<u8> = (0..options.value_size)
        .map(|_| rng.sample(rand::distributions::Alphanumeric))
        .collect();
    let mut result = WorkerResult::new();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        match options.stop {
            StopAfter::Requests(total) => {
                if shared.claimed.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
            }
            StopAfter::Duration(duration) => {
                if started.elapsed() >= duration {
                    break;
                }
            }
        }
        let key = key_name(rng.gen_range(0..options.key_space));
        let is_read = rng.gen::<f64>() < options.read_ratio;
        let begun = Instant::now();
        let outcome = if is_read {
            session
                .get(&key, options.consistency)
                .await
                .map(|(value, _)| value.is_some())
        } else {
            session
                .put(&key, &value, options.write_concern, options.timeout)
                .await
                .map(|_| false)
        };
        let micros = u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Ok(found) => {
                if is_read {
                    result.reads.saturating_record(micros);
                    result.read_hits += u64::from(found);
                } else {
                    result.writes.saturating_record(micros);
                }
                shared.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) if error.kind().is_permanent() => return Err(error),
            Err(error) => {
                result.count_error(&error);
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(result)
}

/// The warm-up read goes where the run's operations go: the primary, unless the run only reads
/// stale (then to any node).
fn warmup_consistency(options: &BenchOptions) -> ReadConsistency {
    if options.does_writes() || options.consistency != ReadConsistency::Stale {
        ReadConsistency::Local
    } else {
        ReadConsistency::Stale
    }
}

/// The key of number `n`: fixed width, so every key has the same size.
pub fn key_name(n: u64) -> String {
    format!("bench-{n:012}")
}

/// A bar of `length` steps on stderr drawn with `template`, or a hidden one.
fn progress_bar(visible: bool, length: u64, template: &str) -> ProgressBar {
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(length), target);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// The progress bar of the run on stderr (hidden when not wanted).
struct Progress {
    bar: ProgressBar,
    stop: StopAfter,
}

impl Progress {
    fn new(options: &BenchOptions, visible: bool) -> Progress {
        let (length, template) = match options.stop {
            StopAfter::Requests(total) => (total, "{bar:40} {pos}/{len} ops  {msg}"),
            StopAfter::Duration(duration) => (
                u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                "{bar:40} {elapsed}/{duration}  {msg}",
            ),
        };
        Progress {
            bar: progress_bar(visible, length, template),
            stop: options.stop,
        }
    }

    fn update(&self, shared: &Shared, elapsed: Duration) {
        let succeeded = shared.succeeded.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let position = match self.stop {
            StopAfter::Requests(_) => succeeded + failed,
            StopAfter::Duration(_) => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        };
        self.bar.set_position(position);
        self.bar.set_message(format!(
            "{succeeded} ok, {failed} failed, {:.0} ops/s",
            throughput(succeeded, elapsed)
        ));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn as_seconds<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::render_bench_report;

    fn options() -> BenchOptions {
        BenchOptions::default()
    }

    fn invalid_message(options: BenchOptions) -> String {
        match options.validate() {
            Err(Error::InvalidRequest(message)) => message,
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(options().validate(), Ok(()));
    }

    #[test]
    fn bad_options_name_their_flag() {
        let cases = [
            (
                BenchOptions {
                    clients: 0,
                    ..options()
                },
                "--clients",
            ),
            (
                BenchOptions {
                    clients: MAX_CLIENTS + 1,
                    ..options()
                },
                "--clients",
            ),
            (
                BenchOptions {
                    stop: StopAfter::Requests(0),
                    ..options()
                },
                "--requests",
            ),
            (
                BenchOptions {
                    stop: StopAfter::Duration(Duration::ZERO),
                    ..options()
                },
                "--duration",
            ),
            (
                BenchOptions {
                    value_size: MAX_VALUE_BYTES + 1,
                    ..options()
                },
                "--value-size",
            ),
            (
                BenchOptions {
                    key_space: 0,
                    ..options()
                },
                "--key-space",
            ),
            (
                BenchOptions {
                    read_ratio: 1.5,
                    ..options()
                },
                "--read-ratio",
            ),
            (
                BenchOptions {
                    read_ratio: -0.1,
                    ..options()
                },
                "--read-ratio",
            ),
            (
                BenchOptions {
                    read_ratio: f64::NAN,
                    ..options()
                },
                "--read-ratio",
            ),
            (
                BenchOptions {
                    timeout: Duration::ZERO,
                    ..options()
                },
                "--timeout",
            ),
        ];
        for (options, flag) in cases {
            let message = invalid_message(options);
            assert!(message.contains(flag), "{flag}: {message}");
        }
    }

    #[test]
    fn edge_values_are_accepted() {
        for options in [
            BenchOptions {
                clients: 1,
                stop: StopAfter::Requests(1),
                value_size: 0,
                key_space: 1,
                read_ratio: 1.0,
                ..options()
            },
            BenchOptions {
                clients: MAX_CLIENTS,
                value_size: MAX_VALUE_BYTES,
                read_ratio: 0.0,
                ..options()
            },
        ] {
            assert_eq!(options.validate(), Ok(()), "{options:?}");
        }
    }

    #[test]
    fn throughput_divides_by_elapsed_time() {
        assert_eq!(throughput(1000, Duration::from_secs(2)), 500.0);
        assert_eq!(throughput(15, Duration::from_millis(1500)), 10.0);
        assert_eq!(throughput(10, Duration::ZERO), 0.0);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut histogram = latency_histogram();
        // 1..=1000 ms, one each: p50 is 500 ms, p99 990 ms, max 1000 ms (within 0.1%).
        for millis in 1..=1000u64 {
            histogram.record(millis * 1000).unwrap();
        }
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.count, 1000);
        let close = |actual: f64, expected: f64| (actual - expected).abs() <= expected * 0.001;
        assert!(close(summary.mean_ms, 500.5), "{summary:?}");
        assert!(close(summary.p50_ms, 500.0), "{summary:?}");
        assert!(close(summary.p90_ms, 900.0), "{summary:?}");
        assert!(close(summary.p99_ms, 990.0), "{summary:?}");
        assert!(close(summary.p999_ms, 999.0), "{summary:?}");
        assert!(close(summary.max_ms, 1000.0), "{summary:?}");
        assert_eq!(
            LatencySummary::of(&latency_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn workers_merge_into_one_report() {
        let mut first = WorkerResult::new();
        first.writes.record(1_000).unwrap();
        first.writes.record(3_000).unwrap();
        first.count_error(&Error::Unavailable("no primary".into()));
        let mut second = WorkerResult::new();
        second.reads.record(2_000).unwrap();
        second.read_hits = 1;
        second.count_error(&Error::Unavailable("still none".into()));
        second.count_error(&Error::WriteConcernNotMet {
            acknowledged: 1,
            required: 2,
        });

        let mut tally = Tally::default();
        tally.merge(first);
        tally.merge(second);
        let options = BenchOptions {
            read_ratio: 0.5,
            ..options()
        };
        let report = tally.report(&options, Duration::from_secs(2), false);

        assert_eq!(report.succeeded, 3);
        assert_eq!(report.failed, 3);
        assert_eq!(report.throughput, 1.5);
        assert_eq!(report.latency.count, 3);
        // hdrhistogram reports the top of the value's bucket: within 0.1%.
        assert!((report.latency.max_ms - 3.0).abs() <= 0.003, "{report:?}");
        assert_eq!(report.writes.map(|w| w.count), Some(2));
        assert_eq!(report.reads.map(|r| r.count), Some(1));
        assert_eq!(report.read_hits, 1);
        assert_eq!(report.errors["unavailable"].count, 2);
        assert!(report.errors["unavailable"].example.contains("no primary"));
        assert_eq!(report.errors["write_concern_not_met"].count, 1);

        let text = render_bench_report(&report);
        assert!(text.contains("3 ok, 3 failed"), "{text}");
        assert!(text.contains("unavailable: 2"), "{text}");
        assert!(text.contains("puts") && text.contains("gets"), "{text}");
    }

    #[test]
    fn a_run_without_reads_reports_no_read_latency() {
        let mut worker = WorkerResult::new();
        worker.writes.record(500).unwrap();
        let mut tally = Tally::default();
        tally.merge(worker);
        let report = tally.report(&options(), Duration::from_secs(1), true);
        assert_eq!(report.reads, None);
        assert!(report.interrupted);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["stop"]["duration"], 30.0);
        assert_eq!(json["latency"]["p50_ms"], 0.5);
        assert!(json["reads"].is_null());
        assert!(render_bench_report(&report).contains("(interrupted)"));
    }

    #[test]
    fn only_hopeless_errors_stop_the_run() {
        let stops = |error: Error| error.kind().is_permanent();
        assert!(stops(Error::Refused("readonly".into())));
        assert!(stops(Error::WriteConcernImpossible {
            required: 5,
            voters: 3
        }));
        assert!(!stops(Error::Unavailable("election".into())));
        assert!(!stops(Error::WriteConcernNotMet {
            acknowledged: 1,
            required: 3
        }));
    }

    #[test]
    fn keys_have_a_fixed_width() {
        assert_eq!(key_name(7), "bench-000000000007");
        assert_eq!(key_name(99_999).len(), key_name(0).len());
    }
}
