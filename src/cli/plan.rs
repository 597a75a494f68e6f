//! `wakafleet plan [PATH] [--base REF | --state FILE] [--head REF] [--at RFC3339]
//! [--format text|markdown|json] [--max-bytes N] [--whole-plan URL] [--verbose]
//! [--detailed-exitcode]`

use std::{path::PathBuf, process::ExitCode};

use chrono::{DateTime, Utc};

use wakafleet::{
    diag::render as diag_render,
    load::Limits,
    plan::{self, render::Commits},
    source,
    validate::{self, Cache, CachedInput, Validation},
};

use crate::cli::{self, store::StoreArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The fleet folder.
    #[arg(default_value = "fleet")]
    pub path: PathBuf,
    /// Plan against the converged state of this commit of the repository holding PATH.
    #[arg(long, value_name = "REF", conflicts_with = "state")]
    pub base: Option<String>,
    /// Plan against a state snapshot written by `wakafleet state export`, or the one a
    /// running daemon serves (`http://HOST:PORT`, with the token in `WAKAFLEET_TOKEN`).
    #[arg(long, value_name = "FILE|URL")]
    pub state: Option<String>,
    /// Plan this commit instead of the work tree at PATH.
    #[arg(long, value_name = "REF")]
    pub head: Option<String>,
    /// The moment to plan for (RFC 3339); now when left out.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The most bytes the Markdown plan takes (GitHub refuses comments over 65,536
    /// characters); past it the least risky entries are left out and counted.
    #[arg(long, value_name = "N", default_value_t = plan::render::DEFAULT_MAX_BYTES,
          value_parser = parse_max_bytes)]
    pub max_bytes: usize,
    /// Where the whole plan can be read (the CI run's artifact of `--format json`), linked
    /// from the Markdown plan's closing line when entries are left out.
    #[arg(long, value_name = "URL")]
    pub whole_plan: Option<String>,
    /// The text plan lists every name of a group of alike actions.
    #[arg(long)]
    pub verbose: bool,
    /// Exit 0 when there is nothing to do, 2 when there are actions, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Without --base or --state, the plan is made against the state this store records.
    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_max_bytes(text: &str) -> Result<usize, String> {
    let bytes: usize = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of bytes"))?;
    if bytes < plan::render::MIN_MAX_BYTES {
        return Err(format!(
            "{bytes} bytes cannot hold a plan's heading, summary and closing line; give at least {}",
            plan::render::MIN_MAX_BYTES
        ));
    }
    Ok(bytes)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|error| {
            format!("`{text}` is not an RFC 3339 time such as 2026-01-31T00:00:00Z: {error}")
        })
}

/// Reads the fleet at PATH, from the work tree or from a commit; blobs `cache` holds are
/// not read again. The work tree's files are identified (hashed) only when a base will be
/// read after them, as nothing else could reuse them.
fn read(
    args: &Args,
    rev: Option<&str>,
    limits: &Limits,
    cache: &Cache,
) -> Result<(Vec<CachedInput>, Option<String>), cli::Error> {
    match rev {
        Some(rev) => {
            let snapshot = source::read_commit_cached(&args.path, rev, limits, cache)?;
            Ok((snapshot.inputs, Some(snapshot.commit)))
        }
        None => {
            let inputs = source::read_folder(&args.path, limits)?;
            Ok(match args.base {
                Some(_) => (source::identify(inputs), None),
                None => (
                    inputs.into_iter().map(CachedInput::uncached).collect(),
                    None,
                ),
            })
        }
    }
}

pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    let limits = Limits::default();
    let at = args.at.unwrap_or_else(Utc::now);
    // One cache for head and base: the base decodes only the files the head changed.
    let mut cache = Cache::default();
    let (inputs, head_commit) = read(args, args.head.as_deref(), &limits, &cache)?;
    let mut head = validate::check_cached(inputs, &limits, &mut cache);
    let Some(desired) = head.take_valid() else {
        print_diagnostics(&head, args.format)?;
        return Ok(ExitCode::FAILURE);
    };

    let (actual, base_commit) = match (&args.base, &args.state) {
        (Some(rev), _) => {
            let (inputs, commit) = read(args, Some(rev), &limits, &cache)?;
            let mut base = validate::check_cached(inputs, &limits, &mut cache);
            let Some(base_fleet) = base.take_valid() else {
                print_diagnostics(&base, args.format)?;
                return Err(format!(
                    "the base `{rev}` is not a valid fleet; its diagnostics are above"
                )
                .into());
            };
            (plan::converged_base(base_fleet.fleet()), commit)
        }
        (None, Some(source)) if source.starts_with("http://") || source.starts_with("https://") => {
            (cli::store::block_on(read_served_snapshot(source))??, None)
        }
        (None, Some(file)) => (read_snapshot(std::path::Path::new(file))?, None),
        (None, None) => (cli::store::block_on(read_store(&args.store))??, None),
    };

    let plan = plan::compute(&desired, &head.sources, &actual, at);
    let commits = Commits {
        base: base_commit.as_deref(),
        head: head_commit.as_deref(),
    };
    let output = match args.format {
        Format::Text => plan::render::text(&plan, commits, cli::stdout_color(), args.verbose),
        Format::Markdown => plan::render::markdown(
            &plan,
            commits,
            plan::render::Budget {
                max_bytes: args.max_bytes,
                whole_plan: args.whole_plan.as_deref(),
            },
        ),
        Format::Json => {
            let entries = diag_render::entries(&head.diagnostics, &head.sources);
            plan::render::json(&plan, commits, entries) + "\n"
        }
    };
    cli::print(&output)?;
    Ok(match (args.detailed_exitcode, plan.is_empty()) {
        (true, false) => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

fn read_snapshot(file: &std::path::Path) -> Result<plan::Actual, cli::Error> {
    let text = cli::read_limited(file, "state snapshot")?;
    Ok(plan::snapshot::parse(&text)
        .map_err(|error| format!("reading state snapshot `{}`: {error}", file.display()))?)
}

/// The largest snapshot read from a daemon (a 100,000-entity fleet's is some 30 MB).
const MAX_SERVED_SNAPSHOT: u64 = 256 << 20;

/// The snapshot a daemon serves at `GET /api/v1/state`, read with the token in
/// `WAKAFLEET_TOKEN`.
async fn read_served_snapshot(url: &str) -> Result<plan::Actual, cli::Error> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "`{url}`: this wakafleet is built without TLS; reach the daemon over http:// (a tunnel, or its loopback address) or plan against `wakafleet state export`'s file"
        )
        .into());
    };
    let (address, path) = match rest.split_once('/') {
        Some((address, path)) if !path.is_empty() => (address, format!("/{path}")),
        _ => (address_of(rest), "/api/v1/state".to_string()),
    };
    let token = std::env::var("WAKAFLEET_TOKEN").map_err(|_| {
        "reading the state from a daemon needs its token in WAKAFLEET_TOKEN (`wakafleet token create` makes one)"
    })?;
    let authorization = format!("Bearer {token}");
    let (status, body) = wakafleet::driver::http::send(
        address,
        &wakafleet::driver::http::Exchange {
            method: "GET",
            path: &path,
            headers: &[
                ("Authorization", &authorization),
                ("Accept", "application/json"),
            ],
            body: b"",
            max_response: MAX_SERVED_SNAPSHOT,
            limit: std::time::Duration::from_secs(120),
        },
    )
    .await?;
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|error| {
                error
                    .pointer("/error/message")?
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.chars().take(200).collect());
        return Err(format!("the daemon at {address} answered {status}: {message}").into());
    }
    Ok(plan::snapshot::parse(&text)
        .map_err(|error| format!("the state the daemon at {address} served: {error}"))?)
}

/// `HOST:PORT` of `HOST:PORT/…`.
fn address_of(rest: &str) -> &str {
    rest.split('/').next().unwrap_or(rest)
}

/// The actual state the store records.
async fn read_store(args: &StoreArgs) -> Result<plan::Actual, cli::Error> {
    let store = args.open(false).await.map_err(|error| {
        format!("{error}; or plan against a commit with `--base REF` or a state snapshot with `--state FILE`")
    })?;
    let actual = store.actual().await;
    store.close().await;
    Ok(actual?)
}

fn print_diagnostics(validation: &Validation, format: Format) -> Result<(), cli::Error> {
    let output = match format {
        Format::Json => diag_render::json(&validation.diagnostics, &validation.sources) + "\n",
        Format::Text | Format::Markdown => diag_render::text(
            &validation.diagnostics,
            &validation.sources,
            cli::stdout_color(),
        ),
    };
    cli::print(&output)
}
