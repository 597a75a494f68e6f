//! `wakafleet state export | import`: the recorded actual state as the versioned snapshot
//! `plan --state` reads.

use std::{path::PathBuf, process::ExitCode};

use wakafleet::plan::snapshot::{self, Snapshot};

use crate::cli::{self, store::StoreArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write the recorded state as a snapshot (to stdout, or --out FILE).
    Export(ExportArgs),
    /// Replace the recorded entities and instance configurations by a snapshot's.
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// A snapshot written by `state export` (or by hand, to its schema).
    pub file: PathBuf,
}

pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    match &args.command {
        Command::Export(args) => cli::store::block_on(export(args))?,
        Command::Import(args) => cli::store::block_on(import(args))?,
    }
}

async fn export(args: &ExportArgs) -> Result<ExitCode, cli::Error> {
    let store = args.store.open(false).await?;
    let snapshot = store.snapshot().await;
    store.close().await;
    let text = serde_json::to_string_pretty(&snapshot?)? + "\n";
    match &args.out {
        Some(path) => std::fs::write(path, text)
            .map_err(|error| format!("writing `{}`: {error}", path.display()))?,
        None => cli::print(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn import(args: &ImportArgs) -> Result<ExitCode, cli::Error> {
    let text = cli::read_limited(&args.file, "state snapshot")?;
    let snapshot: Snapshot = serde_json::from_str(&text)
        .map_err(|error| format!("`{}` is not a state snapshot: {error}", args.file.display()))?;
    // Check it converts before the store is touched.
    snapshot::into_actual(snapshot.clone())
        .map_err(|error| format!("`{}`: {error}", args.file.display()))?;
    let store = args.store.open(true).await?;
    let imported = import_audited(&store, &snapshot, &args.file).await;
    store.close().await;
    imported?;
    cli::print(&format!(
        "imported {} entities and {} instances into {}\n",
        snapshot.entities.len(),
        snapshot.instances.len(),
        store.url()
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Imports the snapshot and records who did it in the audit log.
async fn import_audited(
    store: &wakafleet::store::Store,
    snapshot: &Snapshot,
    file: &std::path::Path,
) -> Result<(), cli::Error> {
    use wakafleet::store::audit::Record;
    let before = store.snapshot().await?;
    store.import(snapshot, chrono::Utc::now()).await?;
    let mut record = Record::new(cli::operator(), "state.import", "state");
    record.reason = Some(format!("wakafleet state import {}", file.display()));
    record.before = Some(serde_json::to_value(&before)?);
    record.after = Some(serde_json::to_value(snapshot)?);
    store.append_one(record).await?;
    Ok(())
}
