//! What a job would take, without sending anything (`--dry-run`): how many requests, their estimated
//! tokens and cost at the price table, and how long the limiter's rate limits make sending them take,
//! found by admitting them through a copy of those limits on a manual clock.

use std::time::Duration;

use crate::core::clock::{Clock, ManualClock};
use crate::core::{Error, Limiter};
use crate::engine::job::Job;
use crate::engine::{JobError, input, output};

/// A job's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub total: u64,
    /// Requests the output answers already.
    pub skipped: u64,
    pub to_send: u64,
    /// Of those, how many a budget (`budget_usd`, or a usd limit of the limiter) lets go.
    pub within_budget: u64,
    pub tokens: u64,
    pub cost_usd: f64,
    /// How long the rate limits make sending them take (answers' latency not included); `None`
    /// without a limiter.
    pub duration: Option<Duration>,
}

impl Job {
    /// The plan of this job; the output file is read, never changed.
    pub fn plan(&self) -> Result<Plan, JobError> {
        let config = self.config();
        let answered = output::prepare(&config.output, config.retry_failed, true)?;
        let clock = ManualClock::new(0);
        let limits = self.guards().limiter.as_ref().map(|limiter| limiter.limits().to_vec());
        let schedule = limits.map(|limits| Limiter::new(limits, None, clock.clone())).transpose()?;
        let budget = config.budget_usd.map(|usd| (usd * 1e6).floor() as u64);
        let mut plan = Plan { total: 0, skipped: 0, to_send: 0, within_budget: 0, tokens: 0, cost_usd: 0.0, duration: None };
        let (mut micro_usd, mut last_ns, mut over_budget) = (0u64, 0u64, false);
        input::scan(&config.input, |request| {
            if answered.contains(&request.custom_id) {
                plan.skipped += 1;
                return;
            }
            plan.to_send += 1;
            let (cost, _, _) = self.estimate(request);
            plan.tokens += cost.tokens;
            micro_usd += cost.micro_usd;
            over_budget |= budget.is_some_and(|budget| micro_usd > budget);
            if over_budget {
                return;
            }
            if let Some(schedule) = &schedule {
                match schedule.reserve(cost, None, "plan") {
                    Ok(admission) => {
                        clock.advance(admission.at_ns.saturating_sub(clock.now_ns()));
                        last_ns = admission.at_ns;
                    }
                    Err(Error::BudgetExceeded { .. }) => over_budget = true,
                    // A request no limit can ever pass is a failed line, not a wait.
                    Err(_) => {}
                }
            }
            if !over_budget {
                plan.within_budget += 1;
            }
        })
        .map(|scan| plan.total = scan.requests)?;
        plan.cost_usd = crate::core::Unit::Usd.amount_of(micro_usd);
        plan.duration = schedule.map(|_| Duration::from_nanos(last_ns));
        Ok(plan)
    }
}
