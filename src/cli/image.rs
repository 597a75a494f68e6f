//! `wakafleet image build [FLEET] [--binary PATH] [--fail-health VERSION]...`: the demo
//! platform's image of every release, built on the local Docker engine.

use std::{path::PathBuf, process::ExitCode};

use semver::Version;

use wakafleet::{
    diag::render,
    image::{self, Outcome},
    load::Limits,
    source, validate,
};

use crate::cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build the demo platform's image of every release of a fleet, pulling nothing.
    Build(BuildArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The fleet folder.
    #[arg(default_value = "fleet")]
    pub path: PathBuf,
    /// The demo-platform binary; by default the one next to this program.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Build this release's image with DEMO_FAIL_HEALTH=1, so its health check fails.
    #[arg(long, value_name = "VERSION")]
    pub fail_health: Vec<Version>,
}

pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    match &args.command {
        Command::Build(args) => build(args),
    }
}

fn build(args: &BuildArgs) -> Result<ExitCode, cli::Error> {
    let limits = Limits::default();
    let inputs = source::read_folder(&args.path, &limits)?;
    let mut validation = validate::check(inputs, &limits);
    let Some(fleet) = validation.take_valid() else {
        cli::print(&render::text(
            &validation.diagnostics,
            &validation.sources,
            cli::stdout_color(),
        ))?;
        return Err(format!(
            "the fleet at `{}` is not valid; its diagnostics are above",
            args.path.display()
        )
        .into());
    };
    let specs = image::specs(&fleet, &args.fail_health)?;
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe()
            .map_err(|error| format!("cannot find this program's folder: {error}"))?
            .with_file_name("demo-platform"),
    };
    let payload = image::payload(&binary)?;
    cli::store::block_on(async {
        let docker = image::connect().await?;
        for spec in &specs {
            let outcome = image::build(&docker, spec, &payload).await?;
            let word = match outcome {
                Outcome::Built => "built",
                Outcome::UpToDate => "up to date",
            };
            let fails = if spec.fail_health {
                " (fails its health check)"
            } else {
                ""
            };
            cli::print(&format!("{} {}: {word}{fails}\n", spec.version, spec.image))?;
        }
        Ok::<_, cli::Error>(ExitCode::SUCCESS)
    })?
}
