//! `wakafleet schema [--out DIR]`: the JSON Schemas of the fleet file kinds, from `model`,
//! of the state snapshot, from `plan::snapshot`, and the API's OpenAPI document, from
//! `http::openapi`.

use std::{fs, path::PathBuf, process::ExitCode};

use wakafleet::model;

use crate::cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder the `<kind>.schema.json` files are written to.
    #[arg(long, value_name = "DIR", default_value = "schemas")]
    pub out: PathBuf,
}

pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    fs::create_dir_all(&args.out)
        .map_err(|error| format!("creating `{}`: {error}", args.out.display()))?;
    for kind in model::FILE_KINDS {
        let path = args.out.join(format!("{kind}.schema.json"));
        let text = model::schema_text(kind).expect("FILE_KINDS name schemas");
        fs::write(&path, text).map_err(|error| format!("writing `{}`: {error}", path.display()))?;
        cli::print(&format!("wrote {}\n", path.display()))?;
    }
    for (name, text) in [
        (
            "state.schema.json",
            wakafleet::plan::snapshot::schema_text(),
        ),
        ("openapi.json", wakafleet::http::openapi::text()),
    ] {
        let path = args.out.join(name);
        fs::write(&path, text).map_err(|error| format!("writing `{}`: {error}", path.display()))?;
        cli::print(&format!(
            "wrote {}
",
            path.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
