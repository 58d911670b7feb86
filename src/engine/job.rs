//! A whole job: the input checked, the output prepared, then every request not yet answered sent with
//! at most `max_in_flight` at once, each answer's line appended as it comes. Memory stays flat in the
//! file's size: requests are read as they are sent, and only 16 bytes per custom_id are kept (to refuse
//! duplicates and to skip what is answered).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot, watch};

use crate::core::{Cost, Unit};
use crate::engine::finished::Finished;
use crate::engine::input::{self, Request};
use crate::engine::output::{self, Appender};
use crate::engine::progress::Progress;
use crate::engine::send::{Sender, Sent};
use crate::engine::{Guards, JobError, tokens};

/// What a job sends, where, and how.
#[derive(Debug, Clone)]
pub struct JobConfig {
    pub input: PathBuf,
    pub output: PathBuf,
    pub base_url: String,
    pub api_key: Option<String>,
    /// Requests in flight at once (the limiter's own `max_concurrency` may hold fewer).
    pub max_in_flight: usize,
    /// How long one attempt may take, answer read in full.
    pub timeout: Duration,
    /// Dollars this run may spend at the price table; then it stops sending.
    pub budget_usd: Option<f64>,
    /// Send again the requests whose lines in the output say they failed.
    pub retry_failed: bool,
    /// Dollars per million tokens by model.
    pub prices: HashMap<String, f64>,
    /// Keep each request that ends for the metrics to take (`Job::take_finished`).
    pub record: bool,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub total: u64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Requests left unsent (a budget stopped the job, or it was cancelled).
    pub unsent: u64,
    /// Failed requests by reason (`http_500`, `timeout`, `connection_error`, `invalid_json`, ...).
    pub failures: BTreeMap<String, u64>,
    pub server_429s: u64,
    pub retries: u64,
    pub wall: Duration,
    pub cost_usd: f64,
    /// Why requests were left unsent, if any were.
    pub stopped: Option<String>,
}

/// Tells the requests of a job to stop.
#[derive(Debug)]
pub struct Cancel(watch::Sender<bool>);

impl Cancel {
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the job is cancelled.
    pub async fn cancelled(&self) {
        let mut flag = self.0.subscribe();
        let _ = flag.wait_for(|cancelled| *cancelled).await;
    }
}

/// Dollars this run may still commit, in micro-dollars: what answered requests cost plus the estimates
/// of those in flight.
struct Budget {
    limit: u64,
    committed: AtomicU64,
}

impl Budget {
    /// Takes `micro_usd` from the budget if it fits.
    fn reserve(&self, micro_usd: u64) -> bool {
        self.committed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |committed| {
                let after = committed.checked_add(micro_usd)?;
                (after <= self.limit).then_some(after)
            })
            .is_ok()
    }

    /// Replaces an estimate by what the request really cost.
    fn settle(&self, estimated: u64, actual: u64) {
        if actual >= estimated {
            self.committed.fetch_add(actual - estimated, Ordering::AcqRel);
        } else {
            self.committed.fetch_sub(estimated - actual, Ordering::AcqRel);
        }
    }
}

/// A job to run once.
pub struct Job {
    config: JobConfig,
    guards: Guards,
    progress: Arc<Progress>,
    cancel: Arc<Cancel>,
    /// The requests ended since the metrics last took them, when recording.
    finished: Option<Arc<Mutex<Vec<Finished>>>>,
}

impl Job {
    pub fn new(config: JobConfig, guards: Guards) -> Result<Self, JobError> {
        if config.max_in_flight == 0 || config.max_in_flight > Semaphore::MAX_PERMITS.min(u32::MAX as usize) {
            return Err(crate::core::Error::config("max_in_flight", format!("must be at least 1, got {}", config.max_in_flight)).into());
        }
        let finished = config.record.then(Arc::default);
        Ok(Self { config, guards, progress: Arc::default(), cancel: Arc::new(Cancel(watch::Sender::new(false))), finished })
    }

    /// The requests ended since the last call (none unless the config records them).
    pub fn take_finished(&self) -> Vec<Finished> {
        self.finished.as_ref().map_or_else(Vec::new, |finished| std::mem::take(&mut *finished.lock().expect("not poisoned")))
    }

    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    pub fn guards(&self) -> &Guards {
        &self.guards
    }

    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Stops the job: nothing more is sent, requests in flight are dropped (their lines are not
    /// written; a rerun sends them again), and `run` returns its report.
    pub fn cancel(&self) {
        self.cancel.0.send_replace(true);
    }

    /// The price per million tokens of a request's model (0 for a model the table does not know).
    pub fn price(&self, model: Option<&str>) -> f64 {
        model.and_then(|model| self.config.prices.get(model)).copied().unwrap_or(0.0)
    }

    /// What a request is estimated to cost, its price per million tokens, and the model it asks for.
    pub fn estimate(&self, request: &Request) -> (Cost, f64, Option<String>) {
        let estimate = tokens::estimate(request.body.get());
        let price = self.price(estimate.model.as_deref());
        (Cost::priced(estimate.tokens, price), price, estimate.model)
    }

    /// Runs the job on a thread of its own, on a tokio runtime of one thread: the requests share
    /// nothing that needs a second worker, and handing wake-ups between threads would cost more CPU per
    /// request than the request itself (the other cores stay for the caller, or the server). The
    /// report arrives on the returned channel.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<oneshot::Receiver<Result<Report, JobError>>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (done, report) = oneshot::channel();
        let job = Arc::clone(self);
        std::thread::Builder::new().name("holysheep-batch".into()).spawn(move || {
            // The caller may have stopped listening; the output is written either way.
            let _ = done.send(runtime.block_on(job.run()));
        })?;
        Ok(report)
    }

    /// Runs the job to its end; must be polled on a tokio runtime with time enabled.
    pub async fn run(&self) -> Result<Report, JobError> {
        let config = &self.config;
        let answered = output::prepare(&config.output, config.retry_failed, false)?;
        let mut skipped = 0;
        let scan = input::scan(&config.input, |request| skipped += u64::from(answered.contains(&request.custom_id)))?;
        self.progress.total.store(scan.requests, Ordering::Relaxed);
        self.progress.skipped.store(skipped, Ordering::Relaxed);
        let sender = Arc::new(Sender::new(
            &config.base_url,
            config.api_key.as_deref(),
            config.max_in_flight,
            config.timeout,
            self.guards.clone(),
            Arc::clone(&self.progress),
            Arc::clone(&self.cancel),
        )?);
        let appender = Arc::new(Appender::open(&config.output)?);
        let budget = config.budget_usd.map(|usd| Arc::new(Budget { limit: (usd * 1e6).floor() as u64, committed: AtomicU64::new(0) }));
        let failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let stopped: Arc<Mutex<Option<String>>> = Arc::default();
        let slots = Arc::new(Semaphore::new(config.max_in_flight));
        let started = Instant::now();
        let lines = input::lines(&config.input).map_err(|err| JobError::io("input", &config.input, err))?;
        for line in lines {
            if self.cancel.is_set() || stopped.lock().expect("not poisoned").is_some() || appender.has_failed() {
                break;
            }
            let (number, text) = line.map_err(|err| JobError::io("input", &config.input, err))?;
            let request = input::parse(&text, number).map_err(|why| {
                crate::core::Error::config("input", format!("{} line {number} changed while the job ran: {why}", config.input.display()))
            })?;
            if answered.contains(&request.custom_id) {
                continue;
            }
            let (cost, price, model) = self.estimate(&request);
            if let Some(budget) = &budget
                && !budget.reserve(cost.micro_usd) {
                    *stopped.lock().expect("not poisoned") = Some(format!("budget_usd={} spent", config.budget_usd.unwrap_or_default()));
                    break;
                }
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
                () = self.cancel.cancelled() => break,
            };
            let (sender, appender, progress) = (Arc::clone(&sender), Arc::clone(&appender), Arc::clone(&self.progress));
            let (budget, failures, stopped) = (budget.clone(), Arc::clone(&failures), Arc::clone(&stopped));
            let finished = self.finished.clone();
            tokio::spawn(async move {
                let began = Instant::now();
                let sent = sender.send(&request, cost, price).await;
                let actual = match sent {
                    Sent::Done { line, failure, tokens } => {
                        if !appender.append(&line) {
                            // Not written: not answered, so a rerun sends it again.
                            return;
                        }
                        if let Some(finished) = finished {
                            let ended = Finished::read(&request, model, &line, failure.as_deref(), began.elapsed());
                            finished.lock().expect("not poisoned").push(ended);
                        }
                        let counter = if let Some(reason) = failure {
                            *failures.lock().expect("not poisoned").entry(reason).or_default() += 1;
                            &progress.failed
                        } else {
                            &progress.ok
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        progress.sent.fetch_add(1, Ordering::Relaxed);
                        let actual = Cost::priced(tokens, price).micro_usd;
                        progress.micro_usd.fetch_add(actual, Ordering::Relaxed);
                        actual
                    }
                    Sent::Stopped(why) => {
                        stopped.lock().expect("not poisoned").get_or_insert(why);
                        0
                    }
                    Sent::Cancelled => 0,
                };
                if let Some(budget) = budget {
                    budget.settle(cost.micro_usd, actual);
                }
                drop(slot);
            });
        }
        // Every slot back: every request spawned has ended.
        let _all = slots.acquire_many(config.max_in_flight as u32).await.expect("the semaphore is never closed");
        if let Some(err) = appender.take_error() {
            return Err(JobError::io("output", &config.output, err));
        }
        let counts = self.progress.counts();
        let mut stopped = stopped.lock().expect("not poisoned").take();
        if self.cancel.is_set() {
            stopped = stopped.or_else(|| Some("cancelled".to_owned()));
        }
        let failures = std::mem::take(&mut *failures.lock().expect("not poisoned"));
        Ok(Report {
            total: counts.total,
            sent: counts.sent,
            ok: counts.ok,
            failed: counts.failed,
            skipped: counts.skipped,
            unsent: counts.total - counts.skipped - counts.sent,
            failures,
            server_429s: counts.server_429s,
            retries: counts.retries,
            wall: started.elapsed(),
            cost_usd: Unit::Usd.amount_of(counts.micro_usd),
            stopped,
        })
    }
}
