//! The command line: one file per command, each a thin layer over the library.
//!
//! Commands print what the user asked for to stdout and return an exit code; failures that
//! stop a command are returned as errors and reported once by `main`.

pub mod audit;
pub mod image;
pub mod jobs;
pub mod plan;
pub mod run;
pub mod schema;
pub mod state;
pub mod status;
pub mod store;
pub mod token;
pub mod validate;
pub mod worker;

use std::io::{IsTerminal, Write};

use clap::{Parser, Subcommand, ValueEnum};

use wakafleet::diag::render::Color;

/// GitOps reconcile daemon for fleets of multi-tenant platform instances.
#[derive(Debug, Parser)]
#[command(name = "wakafleet", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log events are written to stderr: text, or JSON lines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a fleet folder (or a commit of it) and report every problem.
    Validate(validate::Args),
    /// Show what would change, when, and why: the dry run a pull request is reviewed by.
    Plan(plan::Args),
    /// Write the JSON Schema of each kind of fleet file.
    Schema(schema::Args),
    /// Verify, search, export and checkpoint the audit log.
    Audit(audit::Args),
    /// Export or import the recorded actual state.
    State(state::Args),
    /// Build the demo platform's images, one per release.
    Image(image::Args),
    /// Run jobs from the store, woken by a queue, on this host.
    Worker(worker::Args),
    /// List, show, retry and cancel jobs.
    Jobs(jobs::Args),
    /// The reconcile daemon: follow the fleet, converge the instances, heal drift.
    Run(run::Args),
    /// Show the fleet as the store sees it: instances, their jobs and what they wait for.
    Status(status::Args),
    /// Make tokens for the HTTP API.
    Token(token::Args),
}

/// How a command formats its report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// A failure that stops a command; `main` prints it with its causes.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Colours for text written to stdout: only on a terminal, and never when `NO_COLOR` is
/// set to a non-empty value (no-color.org).
pub fn stdout_color() -> Color {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    Color::for_terminal(std::io::stdout().is_terminal(), no_color)
}

/// Writes to stdout; a closed pipe (`wakafleet validate | head`) is not an error.
pub fn print(text: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

/// Files read whole (snapshots) larger than this are refused rather than read.
const MAX_READ_BYTES: u64 = 256 << 20;

/// Reads a text file of at most 256 MiB; `what` names it in errors.
pub fn read_limited(path: &std::path::Path, what: &str) -> Result<String, Error> {
    let context =
        |error: &dyn std::fmt::Display| format!("reading {what} `{}`: {error}", path.display());
    let size = std::fs::metadata(path)
        .map_err(|error| context(&error))?
        .len();
    if size > MAX_READ_BYTES {
        return Err(context(&format!(
            "{size} bytes is more than the limit of {MAX_READ_BYTES}"
        ))
        .into());
    }
    Ok(std::fs::read_to_string(path).map_err(|error| context(&error))?)
}

/// The person running a command, for the audit log: `$USER` (or "unknown").
pub fn operator() -> wakafleet::store::audit::Actor {
    let id = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_string());
    wakafleet::store::audit::Actor {
        kind: wakafleet::store::audit::ActorKind::Operator,
        id,
        email: None,
    }
}
