//! The `wakafleet` command: parse arguments, run one command, report a failure once, exit.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    log_to_stderr();
    let result = match &cli.command {
        Command::Validate(args) => cli::validate::run(args),
        Command::Plan(args) => cli::plan::run(args),
        Command::Schema(args) => cli::schema::run(args),
        Command::Audit(args) => cli::audit::run(args),
        Command::State(args) => cli::state::run(args),
        Command::Image(args) => cli::image::run(args),
        Command::Worker(args) => cli::worker::run(args),
        Command::Jobs(args) => cli::jobs::run(args),
    };
    result.unwrap_or_else(|error| {
        report(error.as_ref());
        ExitCode::FAILURE
    })
}

/// Sends log events to stderr at the level `WAKAFLEET_LOG` names (error, warn, info, debug,
/// trace; warn when unset).
fn log_to_stderr() {
    let level = std::env::var("WAKAFLEET_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Prints an error and its chain of causes to stderr.
fn report(error: &(dyn std::error::Error + 'static)) {
    let mut text = format!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text += &format!("\n  caused by: {cause}");
        source = cause.source();
    }
    eprintln!("{text}");
}
