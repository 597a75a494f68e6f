//! `wakafleet jobs`: list, show, retry and cancel the store's jobs. The operator verbs are
//! audited with the operator as actor.

use std::{fmt::Write as _, process::ExitCode};

use chrono::Utc;
use serde_json::json;

use wakafleet::store::{
    Store,
    audit::{Filter, Record},
    jobs::{Job, JobFilter, JobStatus, Step},
};

use crate::cli::{self, Format, store::StoreArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The jobs, newest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only jobs with this status: pending, running, cancelling, succeeded, failed, dead
        /// or cancelled.
        #[arg(long, value_parser = parse_status)]
        status: Option<JobStatus>,
        /// Only the jobs of this instance.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// One job: its steps, attempts, errors and audit records.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Send a dead or failed job back to the queue, its attempts counted afresh.
    Retry {
        #[command(flatten)]
        store: StoreArgs,
        id: String,
    },
    /// Cancel a job: a pending one at once, a running one at its next step boundary.
    Cancel {
        #[command(flatten)]
        store: StoreArgs,
        id: String,
    },
}

fn parse_status(text: &str) -> Result<JobStatus, String> {
    JobStatus::parse(text).ok_or_else(|| {
        let names: Vec<&str> = JobStatus::ALL
            .iter()
            .map(|status| status.as_str())
            .collect();
        format!(
            "`{text}` is not a job status: use one of {}",
            names.join(", ")
        )
    })
}

pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    let store_args = match &args.command {
        Command::List { store, .. }
        | Command::Show { store, .. }
        | Command::Retry { store, .. }
        | Command::Cancel { store, .. } => store,
    };
    cli::store::block_on(async {
        let store = store_args.open(false).await?;
        let result = command(&store, &args.command).await;
        store.close().await;
        result
    })?
}

async fn command(store: &Store, command: &Command) -> Result<ExitCode, cli::Error> {
    match command {
        Command::List {
            status,
            instance,
            limit,
            format,
            ..
        } => {
            let filter = JobFilter {
                status: *status,
                instance: instance.clone(),
            };
            let jobs = store.list_jobs(&filter, *limit).await?;
            let mut rows = Vec::with_capacity(jobs.len());
            for job in &jobs {
                let steps = store.steps(&job.id).await?;
                rows.push((job, current_step(&steps)));
            }
            match format {
                Format::Json => {
                    let jobs: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|(job, step)| job_json(job, step.as_deref()))
                        .collect();
                    cli::print(&format!("{}\n", json!({ "jobs": jobs })))?;
                }
                Format::Text => cli::print(&list_text(&rows))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id, format, .. } => {
            let job = store
                .job(id)
                .await?
                .ok_or_else(|| format!("there is no job {id}"))?;
            let steps = store.steps(id).await?;
            let filter = Filter {
                resource: Some(format!("instance/{}", job.instance)),
                ..Filter::default()
            };
            let mut records = Vec::new();
            for row in store.audit_query(&filter, 10_000).await? {
                let entry = row.entry()?;
                if entry.record.job.as_deref() == Some(id) {
                    records.push((entry.seq, entry.at, entry.record));
                }
            }
            match format {
                Format::Json => {
                    let mut value = job_json(&job, current_step(&steps).as_deref());
                    value["reason"] = json!(job.reason);
                    value["region"] = json!(job.region);
                    value["stalls"] = json!(job.stalls);
                    value["max_attempts"] = json!(job.max_attempts);
                    value["steps"] = steps.iter().map(step_json).collect();
                    value["audit"] = records
                        .iter()
                        .map(|(seq, at, record)| {
                            json!({"seq": seq, "at": at.to_rfc3339(), "action": record.action,
                                   "result": record.result.as_str(), "error": record.error,
                                   "metadata": record.metadata})
                        })
                        .collect();
                    cli::print(&format!("{value}\n"))?;
                }
                Format::Text => cli::print(&show_text(&job, &steps, &records))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { id, .. } => {
            let job = store.retry(id, Utc::now()).await;
            audit(store, "job.retry", id, job.as_ref().err()).await?;
            let job = job?;
            cli::print(&format!(
                "job {} ({} of {}) is pending again\n",
                job.id,
                job.kind.as_str(),
                job.instance
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, .. } => {
            let job = store.cancel(id, Utc::now()).await;
            audit(store, "job.cancel", id, job.as_ref().err()).await?;
            let job = job?;
            let said = match job.status {
                JobStatus::Cancelling => "is cancelling: its worker stops at the next step",
                _ => "is cancelled",
            };
            cli::print(&format!("job {} {said}\n", job.id))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One audit record of an operator's verb, whether it worked or not.
async fn audit(
    store: &Store,
    action: &str,
    id: &str,
    error: Option<&wakafleet::store::Error>,
) -> Result<(), cli::Error> {
    let mut record = Record::new(cli::operator(), action, &format!("job/{id}"));
    record.job = Some(id.to_string());
    if let Some(error) = error {
        record.result = wakafleet::store::audit::Outcome::Failure;
        record.error = Some(error.to_string());
    }
    store.append_one(record).await?;
    Ok(())
}

/// The step a job is at: the one running, else the last one recorded.
fn current_step(steps: &[Step]) -> Option<String> {
    steps
        .iter()
        .find(|step| step.status == wakafleet::store::jobs::StepStatus::Running)
        .or_else(|| {
            steps
                .iter()
                .max_by_key(|step| (step.started_at, step.position))
        })
        .map(|step| step.name.clone())
}

fn job_json(job: &Job, step: Option<&str>) -> serde_json::Value {
    json!({
        "id": job.id,
        "kind": job.kind.as_str(),
        "instance": job.instance,
        "status": job.status.as_str(),
        "priority": job.priority,
        "attempts": job.attempts,
        "not_before": job.not_before.to_rfc3339(),
        "step": step,
        "last_error": job.error,
        "commit": job.commit_sha,
    })
}

fn step_json(step: &Step) -> serde_json::Value {
    json!({
        "position": step.position,
        "name": step.name,
        "status": step.status.as_str(),
        "attempts": step.attempts,
        "job_attempt": step.job_attempt,
        "started_at": step.started_at.to_rfc3339(),
        "finished_at": step.finished_at.map(|at| at.to_rfc3339()),
        "error": step.error,
    })
}

fn list_text(rows: &[(&Job, Option<String>)]) -> String {
    if rows.is_empty() {
        return "no jobs\n".to_string();
    }
    let mut out = format!(
        "{:<36}  {:<9}  {:<24}  {:<10}  {:>8}  {:<15}  {}\n",
        "ID", "KIND", "INSTANCE", "STATUS", "ATTEMPTS", "STEP", "ERROR"
    );
    for (job, step) in rows {
        let _ = writeln!(
            out,
            "{:<36}  {:<9}  {:<24}  {:<10}  {:>8}  {:<15}  {}",
            job.id,
            job.kind.as_str(),
            job.instance,
            job.status.as_str(),
            format!("{}/{}", job.attempts, job.max_attempts),
            step.as_deref().unwrap_or("-"),
            job.error.as_deref().unwrap_or("")
        );
    }
    out
}

fn show_text(
    job: &Job,
    steps: &[Step],
    records: &[(i64, chrono::DateTime<Utc>, Record)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {}: {} of {}",
        job.id,
        job.kind.as_str(),
        job.instance
    );
    let _ = writeln!(out, "  status     {}", job.status.as_str());
    let _ = writeln!(out, "  why        {}", job.reason);
    let _ = writeln!(
        out,
        "  attempts   {} of {} ({} stalled)",
        job.attempts, job.max_attempts, job.stalls
    );
    let _ = writeln!(out, "  not before {}", job.not_before.to_rfc3339());
    if let Some(commit) = &job.commit_sha {
        let _ = writeln!(out, "  commit     {commit}");
    }
    if let Some(worker) = &job.worker {
        let _ = writeln!(out, "  worker     {worker}");
    }
    if let Some(error) = &job.error {
        let _ = writeln!(out, "  error      {error}");
    }
    let _ = writeln!(out, "steps:");
    for step in steps {
        let _ = writeln!(
            out,
            "  {:>2}. {:<16} {:<11} attempt {} (job attempt {}){}",
            step.position + 1,
            step.name,
            step.status.as_str(),
            step.attempts,
            step.job_attempt,
            step.error
                .as_deref()
                .map(|error| format!(": {error}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out, "audit:");
    for (seq, at, record) in records {
        let _ = writeln!(
            out,
            "  #{seq} {} {} {}{}",
            at.to_rfc3339(),
            record.action,
            record.result.as_str(),
            record
                .error
                .as_deref()
                .map(|error| format!(": {error}"))
                .unwrap_or_default()
        );
    }
    out
}
