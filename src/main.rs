//! The `wakafleet` command: parse arguments, run one command, report a failure once, exit.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon says what it does at `info`; one-shot commands only warn.
    let default = match cli.command {
        Command::Run(_) | Command::Worker(_) => tracing_subscriber::filter::LevelFilter::INFO,
        _ => tracing_subscriber::filter::LevelFilter::WARN,
    };
    log_to_stderr(default, cli.log_format);
    let result = match &cli.command {
        Command::Validate(args) => cli::validate::run(args),
        Command::Plan(args) => cli::plan::run(args),
        Command::Schema(args) => cli::schema::run(args),
        Command::Audit(args) => cli::audit::run(args),
        Command::State(args) => cli::state::run(args),
        Command::Image(args) => cli::image::run(args),
        Command::Worker(args) => cli::worker::run(args),
        Command::Jobs(args) => cli::jobs::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Token(args) => cli::token::run(args),
    };
    result.unwrap_or_else(|error| {
        report(error.as_ref());
        ExitCode::FAILURE
    })
}

/// Sends log events to stderr, as text or JSON lines, at the level `WAKAFLEET_LOG` names
/// (error, warn, info, debug, trace; `default` when unset).
fn log_to_stderr(default: tracing_subscriber::filter::LevelFilter, format: LogFormat) {
    let level = std::env::var("WAKAFLEET_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(default);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
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
