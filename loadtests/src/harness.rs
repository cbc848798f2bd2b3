//! Running load: each load thread has its own actix `System` (awc clients are
//! single-threaded) and runs its share of the workers; results come back to the
//! caller's runtime without blocking it. Timed scenarios describe one worker
//! ([`Worker`]) and [`timed`] runs as many as asked until the deadline.

use std::{
    future::Future,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::anyhow;

use crate::{cli::Common, report::Recorder, util::Rng};

/// Most steps one worker of a timed run takes, whatever the clock says.
const MAX_STEPS: u64 = 10_000_000;

/// Load threads that were started and whose results can be awaited.
pub struct Threads<T> {
    results: Vec<tokio::sync::oneshot::Receiver<T>>,
}

/// Starts `threads` OS threads; thread `t` runs `make(t)` to completion on its own
/// actix `System`. The future need not be `Send`: it is created on its thread.
pub fn spawn<T, F, Fut>(threads: usize, make: F) -> anyhow::Result<Threads<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + 'static,
{
    let make = Arc::new(make);
    let mut results = Vec::with_capacity(threads);
    for t in 0..threads.max(1) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let make = make.clone();
        std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || {
                let out = actix_web::rt::System::new().block_on(make(t));
                let _ = tx.send(out);
            })
            .map_err(|e| anyhow!("starting load thread {t}: {e}"))?;
        results.push(rx);
    }
    Ok(Threads { results })
}

impl<T> Threads<T> {
    /// Waits for every thread's result.
    pub async fn join(self) -> anyhow::Result<Vec<T>> {
        let mut out = Vec::with_capacity(self.results.len());
        for (t, rx) in self.results.into_iter().enumerate() {
            out.push(rx.await.map_err(|_| anyhow!("load thread {t} panicked"))?);
        }
        Ok(out)
    }
}

/// Starts threads and waits for all of them.
pub async fn run<T, F, Fut>(threads: usize, make: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + 'static,
{
    spawn(threads, make)?.join().await
}

/// How many of `total` workers thread `t` of `threads` runs.
pub fn share(total: usize, threads: usize, t: usize) -> usize {
    let threads = threads.max(1);
    total / threads + usize::from(t < total % threads)
}

/// Thread `t`'s share of the workers and an HTTP client sized for them.
pub fn thread_client(
    concurrency: usize,
    threads: usize,
    t: usize,
    timeout: Duration,
) -> (usize, awc::Client) {
    let workers = share(concurrency, threads, t);
    let client = crate::http::client(&crate::http::ClientOptions {
        timeout,
        connections: workers.max(1),
        source: None,
    });
    (workers, client)
}

/// The base URL worker `w` of thread `t` talks to: workers spread over the nodes.
fn base_for(bases: &[String], threads: usize, t: usize, w: usize) -> &str {
    bases[(w * threads + t) % bases.len()].as_str()
}

/// Merges the per-worker recorders of a timed run; also returns when the last worker
/// stopped (or `deadline` when none reported).
fn merge_timed(results: Vec<Vec<(Recorder, Instant)>>, deadline: Instant) -> (Recorder, Instant) {
    let all: Vec<_> = results.into_iter().flatten().collect();
    let end = all.iter().map(|(_, e)| *e).max().unwrap_or(deadline);
    (Recorder::merged(all.iter().map(|(r, _)| r)), end)
}

/// Who a timed run loads, how hard, and until when; the clock starts when it is made.
#[derive(Debug, Clone)]
pub struct Load {
    /// Base URLs; the workers spread over them.
    pub bases: Vec<String>,
    /// Workers in all.
    pub concurrency: usize,
    /// Load threads.
    pub threads: usize,
    /// Timeout of one request.
    pub timeout: Duration,
    /// When the run started.
    pub started: Instant,
    /// When workers stop taking steps.
    pub deadline: Instant,
}

impl Load {
    /// `bases` loaded as the common options say, for `--duration` from now.
    pub fn start(bases: Vec<String>, c: &Common) -> Self {
        let started = Instant::now();
        Self {
            bases,
            concurrency: c.concurrency,
            threads: c.threads,
            timeout: c.timeout,
            started,
            deadline: started + c.duration,
        }
    }
}

/// Where a worker of a timed run stands: its thread's client and the node it talks to.
pub struct Slot {
    /// The thread's HTTP client.
    pub client: awc::Client,
    /// The base URL it talks to.
    pub base: Rc<str>,
}

/// One worker of a timed run: the scenario says what a step is, the harness repeats it
/// until the deadline.
pub trait Worker {
    /// One unit of work: a request, or a short sequence of them.
    async fn step(&mut self, rec: &mut Recorder, rng: &mut Rng);

    /// Tidies up after the deadline, outside the measured time (e.g. empties a cart).
    async fn finish(&mut self, _rec: &mut Recorder) {}
}

/// Runs `load.concurrency` workers made by `make` until the deadline. Returns what they
/// recorded, merged, and when the last one stopped stepping (before it finished).
pub async fn timed<W, F>(load: &Load, make: F) -> anyhow::Result<(Recorder, Instant)>
where
    W: Worker + 'static,
    F: Fn(Slot) -> W + Send + Sync + 'static,
{
    let (bases, concurrency, threads, timeout, deadline) = (
        load.bases.clone(),
        load.concurrency,
        load.threads,
        load.timeout,
        load.deadline,
    );
    let make = Arc::new(make);
    let results = run(threads, move |t| {
        let (bases, make) = (bases.clone(), make.clone());
        async move {
            let (workers, client) = thread_client(concurrency, threads, t, timeout);
            let tasks = (0..workers).map(|w| {
                let mut worker = make(Slot {
                    client: client.clone(),
                    base: Rc::from(base_for(&bases, threads, t, w)),
                });
                async move {
                    let mut rec = Recorder::default();
                    let mut rng = Rng::new((t * 100_000 + w) as u64);
                    for _ in 0..MAX_STEPS {
                        if Instant::now() >= deadline {
                            break;
                        }
                        worker.step(&mut rec, &mut rng).await;
                    }
                    let ended = Instant::now();
                    worker.finish(&mut rec).await;
                    (rec, ended)
                }
            });
            futures_util::future::join_all(tasks).await
        }
    })
    .await?;
    Ok(merge_timed(results, deadline))
}

/// Ends the process if it is still running after `limit`: the last guarantee that a
/// run stops by itself, whatever the server does.
pub fn watchdog(limit: Duration) {
    let _ = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!(
                "surge-loadtest: still running after {} s; stopping (watchdog)",
                limit.as_secs()
            );
            std::process::exit(124);
        });
}

/// Short jittered exponential backoff: `base` doubling per attempt up to `cap`.
pub fn backoff(
    attempt: u32,
    base: Duration,
    cap: Duration,
    rng: &mut crate::util::Rng,
) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(10)).min(cap);
    let half = exp / 2;
    let jitter_us = rng.below(usize::try_from(half.as_micros()).unwrap_or(0) + 1) as u64;
    half + Duration::from_micros(jitter_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for total in [0, 1, 7, 1000] {
            for threads in [1, 2, 3] {
                let sum: usize = (0..threads).map(|t| share(total, threads, t)).sum();
                assert_eq!(sum, total);
            }
        }
    }

    #[test]
    fn backoff_is_bounded() {
        let mut rng = crate::util::Rng::new(3);
        for a in 0..40 {
            let d = backoff(
                a,
                Duration::from_millis(5),
                Duration::from_millis(100),
                &mut rng,
            );
            assert!(d <= Duration::from_millis(100));
        }
    }

    #[test]
    fn threads_return_results() {
        let out = actix_web::rt::System::new()
            .block_on(run(3, |t| async move { t * 10 }))
            .expect("threads");
        assert_eq!(out, vec![0, 10, 20]);
    }
}
