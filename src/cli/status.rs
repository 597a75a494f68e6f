//! `wakafleet status [--format text|json]`: the fleet as the store sees it, in
//! FLEET-FORMAT.md's Status JSON (the API serves the same).

use std::process::ExitCode;

use chrono::Utc;

use wakafleet::daemon::status;

use crate::cli::{self, Format, store::StoreArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    let status = cli::store::block_on(async {
        let store = args.store.open(false).await?;
        let status = status::read(&store, Utc::now()).await;
        store.close().await;
        Ok::<_, cli::Error>(status?)
    })??;
    let output = match args.format {
        Format::Json => serde_json::to_string_pretty(&status)? + "\n",
        Format::Text => status::text(&status),
    };
    cli::print(&output)?;
    Ok(ExitCode::SUCCESS)
}
