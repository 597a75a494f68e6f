//! What the commands that read or write the store share: `--store`, `--store-wait`, opening
//! it, and the async runtime the store needs.

use std::time::Duration;

use wakafleet::{
    secret::Secret,
    store::{self, Backend, Options, Store},
};

use crate::cli;

#[derive(Clone, Debug, clap::Args)]
pub struct StoreArgs {
    /// The store: postgres://USER@HOST/DATABASE or sqlite://PATH.
    #[arg(long = "store", value_name = "URL", env = "WAKAFLEET_STORE", default_value = store::DEFAULT_URL, hide_env_values = true)]
    pub url: Secret,
    /// How long to wait for an unreachable database, retrying with backoff.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub store_wait: u64,
}

impl StoreArgs {
    /// Opens the store. Commands that only read it refuse to create a SQLite file that is
    /// not there, instead of reading an empty new store.
    pub async fn open(&self, create: bool) -> Result<Store, cli::Error> {
        if !create && Backend::of_url(self.url.expose()) == Some(Backend::Sqlite) {
            let path = self
                .url
                .expose()
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or(path);
            if path != ":memory:" && !std::path::Path::new(path).exists() {
                return Err(format!(
                    "there is no store at {path}: nothing has been recorded there yet (name another with --store or WAKAFLEET_STORE)"
                )
                .into());
            }
        }
        let options = Options {
            retry_for: Duration::from_secs(self.store_wait),
            ..Options::default()
        };
        Ok(Store::open(&self.url, options).await?)
    }
}

/// Runs `future` on a runtime of two worker threads.
pub fn block_on<T>(future: impl Future<Output = T>) -> Result<T, cli::Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    Ok(runtime.block_on(future))
}
