//! The command line: one file per command, each a thin layer over the library.
//!
//! Commands print what the user asked for to stdout and return an exit code; failures that
//! stop a command are returned as errors and reported once by `main`.

pub mod plan;
pub mod schema;
pub mod validate;

use std::io::{IsTerminal, Write};

use clap::{Parser, Subcommand, ValueEnum};

use wakafleet::diag::render::Color;

/// GitOps reconcile daemon for fleets of multi-tenant platform instances.
#[derive(Debug, Parser)]
#[command(name = "wakafleet", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a fleet folder (or a commit of it) and report every problem.
    Validate(validate::Args),
    /// Show what would change, when, and why: the dry run a pull request is reviewed by.
    Plan(plan::Args),
    /// Write the JSON Schema of each kind of fleet file.
    Schema(schema::Args),
}

/// How a command formats its report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// A failure that stops a command; `main` prints it with its causes.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Colours for text written to stdout.
pub fn stdout_color() -> Color {
    Color::for_terminal(std::io::stdout().is_terminal())
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
