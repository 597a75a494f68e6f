//! `wakafleet validate [PATH] [--rev REF] [--format text|json]`

use std::{path::PathBuf, process::ExitCode};

use wakafleet::{
    diag::render,
    load::Limits,
    source,
    validate::{self, Validation},
};

use crate::cli::{self, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The fleet folder.
    #[arg(default_value = "fleet")]
    pub path: PathBuf,
    /// Validate the fleet folder as it is in this commit of its git repository.
    #[arg(long, value_name = "REF")]
    pub rev: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Exit code 0 when the fleet has no errors (warnings allowed), 1 otherwise.
pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    let limits = Limits::default();
    let inputs = match &args.rev {
        Some(rev) => source::read_commit(&args.path, rev, &limits)?.inputs,
        None => source::read_folder(&args.path, &limits)?,
    };
    let validation = validate::check(inputs, &limits);
    match args.format {
        Format::Json => {
            cli::print(&(render::json(&validation.diagnostics, &validation.sources) + "\n"))?
        }
        Format::Text => cli::print(&text(&validation))?,
    }
    Ok(if validation.has_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn text(validation: &Validation) -> String {
    let mut out = render::text(
        &validation.diagnostics,
        &validation.sources,
        cli::stdout_color(),
    );
    let errors = validation
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .count();
    let warnings = validation.diagnostics.len() - errors;
    let plural =
        |count: usize, word: &str| format!("{count} {word}{}", if count == 1 { "" } else { "s" });
    if errors > 0 {
        out += &format!(
            "the fleet is not valid: {}, {}\n",
            plural(errors, "error"),
            plural(warnings, "warning")
        );
    } else {
        let fleet = &validation.fleet;
        out += &format!(
            "fleet `{}` is valid: {}, {}, {}, {}, {}, {}{}\n",
            fleet.settings.name,
            plural(fleet.settings.regions.len(), "region"),
            plural(fleet.partners.len(), "partner"),
            plural(fleet.tenants.len(), "tenant"),
            plural(fleet.channels.len(), "channel"),
            plural(fleet.releases.len(), "release"),
            plural(fleet.instances.len(), "instance"),
            if warnings > 0 {
                format!(" ({})", plural(warnings, "warning"))
            } else {
                String::new()
            },
        );
    }
    out
}
