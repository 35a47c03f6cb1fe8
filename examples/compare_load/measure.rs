//! One timed run: `clients` workers in a closed loop against one system, a warm-up that is not
//! counted, then the measured window; latency percentiles, throughput, failures by kind, and the
//! CPU the system's processes and the generator spent per successful operation.
//!
//! Every worker opens its connection and makes one untimed round trip first (connection set-up
//! is never measured), then all start together. Operations that *start* inside the window are
//! counted (those in flight at its end complete), and throughput is divided by the time until the
//! last of them ended, as `kvctl bench` does. CPU comes from `/proc/<pid>/stat` (user + system
//! time of every thread) read at the start and end of the window, as `docs/BENCHMARKS.md` does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use replikv::{Error, Result};

use crate::systems::{key_name, Connection, Endpoint, Step, Value};

/// Longest latency recorded (one hour in µs) and the precision: the bounds `kvctl bench` uses.
const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;
const HISTOGRAM_PRECISION: u8 = 3;

/// Pause before a worker whose connection broke dials again, so a dead server is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// The shape of one run, the same for every system.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub clients: usize,
    pub value_size: usize,
    pub key_space: u64,
    pub warmup: Duration,
    pub duration: Duration,
    /// Deadline of each operation.
    pub timeout: Duration,
}

/// What one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measurement {
    /// Successful operations per second in the window.
    pub throughput: f64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failures by kind, with one message each as an example.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Successful reads that found their key.
    pub read_hits: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// CPU µs per successful operation of the system's processes (`None` without pids).
    pub server_cpu_us_per_op: Option<f64>,
    /// CPU µs per successful operation of this generator process.
    pub generator_cpu_us_per_op: Option<f64>,
    /// CPU of the system's processes, in cores (1.0 = one core busy all the window).
    pub server_cores: Option<f64>,
    pub generator_cores: Option<f64>,
    /// The 1-minute load average when the window opened.
    pub load_average: Option<f64>,
}

/// What one worker measured.
struct WorkerOutcome {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, (u64, String)>,
    read_hits: u64,
    /// When its last counted operation ended.
    last_end: Option<Instant>,
}

/// Opens `clients` connections to `endpoint` and warms each; the first failure is returned.
pub async fn open_connections(
    endpoint: &Endpoint<'_>,
    clients: usize,
    key_space: u64,
) -> Result<Vec<Connection>> {
    let mut connections = Vec::with_capacity(clients);
    for number in 0..clients {
        let mut connection = Connection::open(endpoint).await?;
        connection
            .warm(key_name(number as u64 % key_space).as_bytes())
            .await?;
        connections.push(connection);
    }
    Ok(connections)
}

/// Runs `step` on `connections` (one worker each) for the warm-up and then the window of `shape`.
/// `reopen` gives a worker a new connection after an error that may have left its stream
/// half-read; `pids` are the system's processes whose CPU is measured.
pub async fn measure<F, Fut>(
    connections: Vec<Connection>,
    step: Step,
    shape: Shape,
    pids: &[u32],
    reopen: F,
) -> Measurement
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Connection>> + Send + 'static,
{
    let reopen = Arc::new(reopen);
    let start = Instant::now();
    let window_start = start + shape.warmup;
    let window_end = window_start + shape.duration;
    let mut workers = tokio::task::JoinSet::new();
    for connection in connections {
        let reopen = Arc::clone(&reopen);
        workers.spawn(worker(
            connection,
            step,
            shape,
            window_start,
            window_end,
            reopen,
        ));
    }

    tokio::time::sleep_until(window_start.into()).await;
    let load_average = load_average();
    let before = CpuSample::take(pids);
    tokio::time::sleep_until(window_end.into()).await;
    let after = CpuSample::take(pids);

    let mut histogram = latency_histogram();
    let mut errors: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut read_hits = 0;
    let mut last_end = window_start;
    while let Some(joined) = workers.join_next().await {
        let outcome = match joined {
            Ok(outcome) => outcome,
            Err(err) => {
                count_error(
                    &mut errors,
                    &Error::Internal(format!("a worker failed: {err}")),
                );
                continue;
            }
        };
        let _ = histogram.add(&outcome.histogram);
        for (kind, (count, example)) in outcome.errors {
            errors.entry(kind).or_insert((0, example)).0 += count;
        }
        read_hits += outcome.read_hits;
        if let Some(end) = outcome.last_end {
            last_end = last_end.max(end);
        }
    }

    let succeeded = histogram.len();
    let elapsed = last_end.saturating_duration_since(window_start);
    let throughput = if elapsed.is_zero() {
        0.0
    } else {
        succeeded as f64 / elapsed.as_secs_f64()
    };
    // Operations per second times the CPU window: the operations the CPU figures paid for.
    let window_ops = throughput * shape.duration.as_secs_f64();
    let per_op = |cpu: Option<Duration>| {
        cpu.filter(|_| window_ops > 0.0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / window_ops)
    };
    let cores =
        |cpu: Option<Duration>| cpu.map(|cpu| cpu.as_secs_f64() / shape.duration.as_secs_f64());
    let server_cpu = after
        .servers
        .zip(before.servers)
        .map(|(a, b)| a.saturating_sub(b));
    let generator_cpu = after
        .generator
        .zip(before.generator)
        .map(|(a, b)| a.saturating_sub(b));
    let ms = |micros: u64| micros as f64 / 1000.0;
    Measurement {
        throughput,
        succeeded,
        failed: errors.values().map(|(count, _)| count).sum(),
        errors,
        read_hits,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        mean_ms: histogram.mean() / 1000.0,
        server_cpu_us_per_op: if pids.is_empty() {
            None
        } else {
            per_op(server_cpu)
        },
        generator_cpu_us_per_op: per_op(generator_cpu),
        server_cores: if pids.is_empty() {
            None
        } else {
            cores(server_cpu)
        },
        generator_cores: cores(generator_cpu),
        load_average,
    }
}

async fn worker<F, Fut>(
    mut connection: Connection,
    step: Step,
    shape: Shape,
    window_start: Instant,
    window_end: Instant,
    reopen: Arc<F>,
) -> WorkerOutcome
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Connection>> + Send + 'static,
{
    let mut rng = SmallRng::from_entropy();
    let value = Value::new(
        (0..shape.value_size)
            .map(|_| rng.sample(rand::distributions::Alphanumeric))
            .collect(),
    );
    let mut outcome = WorkerOutcome {
        histogram: latency_histogram(),
        errors: BTreeMap::new(),
        read_hits: 0,
        last_end: None,
    };
    loop {
        let begun = Instant::now();
        if begun >= window_end {
            break;
        }
        let key = key_name(rng.gen_range(0..shape.key_space));
        let result = connection
            .run(step, key.as_bytes(), &value, shape.timeout)
            .await;
        let ended = Instant::now();
        let counted = begun >= window_start;
        match result {
            Ok(found) if counted => {
                let micros = u64::try_from((ended - begun).as_micros()).unwrap_or(u64::MAX);
                outcome.histogram.saturating_record(micros);
                outcome.read_hits += u64::from(found);
                outcome.last_end = Some(ended);
            }
            Ok(_) => {}
            Err(error) => {
                if counted {
                    count_error(&mut outcome.errors, &error);
                    outcome.last_end = Some(ended);
                }
                if connection.reopen_after_error() {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    match reopen().await {
                        Ok(fresh) => connection = fresh,
                        Err(error) if counted => count_error(&mut outcome.errors, &error),
                        Err(_) => {}
                    }
                }
            }
        }
    }
    outcome
}

fn count_error(errors: &mut BTreeMap<String, (u64, String)>, error: &Error) {
    errors
        .entry(error.kind().name().to_string())
        .or_insert_with(|| (0, error.to_string()))
        .0 += 1;
}

/// A histogram of latencies in microseconds, with the bounds of `kvctl bench`.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, HISTOGRAM_PRECISION)
        .expect("constant histogram bounds are valid")
}

/// CPU used so far by the system's processes (summed) and by this process.
struct CpuSample {
    /// `None` if any pid could not be read (a process died: its CPU would be missing).
    servers: Option<Duration>,
    generator: Option<Duration>,
}

impl CpuSample {
    fn take(pids: &[u32]) -> CpuSample {
        let servers = pids
            .iter()
            .map(|pid| process_cpu(&format!("/proc/{pid}/stat")))
            .sum::<Option<Duration>>();
        CpuSample {
            servers,
            generator: process_cpu("/proc/self/stat"),
        }
    }
}

/// User + system time of every thread of a process, from its `/proc/<pid>/stat`.
fn process_cpu(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    let ticks = cpu_ticks(&stat)?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|hz| *hz > 0)?;
    Some(Duration::from_micros(
        ticks.saturating_mul(1_000_000) / per_second,
    ))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (kv node (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("4242 (kvnode) S 1"), None);
        assert_eq!(cpu_ticks("no name"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(process_cpu("/proc/self/stat").is_some());
        assert!(process_cpu("/proc/0/stat").is_none());
    }
}
