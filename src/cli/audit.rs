//! `wakafleet audit verify | query | export | checkpoint | keygen`: the audit log, checked,
//! searched, exported and anchored outside the database.

use std::{
    fs,
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use wakafleet::store::{
    Store,
    audit::{Anchor, Filter, StoredRow},
    checkpoint::{self, Checkpoint},
};

use crate::cli::{self, Format, store::StoreArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check the whole hash chain (and signed checkpoints); exit 1 naming the first bad record.
    Verify(VerifyArgs),
    /// Show the records that match, a page at a time.
    Query(QueryArgs),
    /// Write the records that match as NDJSON or CSV, streaming.
    Export(ExportArgs),
    /// Sign the chain's head into a checkpoint file kept outside the database.
    Checkpoint(CheckpointArgs),
    /// Make a key pair for signing checkpoints.
    Keygen,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// A checkpoint file written by `audit checkpoint`; needs --public-key.
    #[arg(long, value_name = "FILE", requires = "public_key")]
    pub checkpoints: Option<PathBuf>,
    /// The public key the checkpoints must be signed with: hex, or `env:NAME`.
    #[arg(long, value_name = "KEY")]
    pub public_key: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Records at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Records before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// The action, or a prefix ending in `*` (`instance.upgrade*`).
    #[arg(long)]
    pub action: Option<String>,
    /// The resource, or a prefix ending in `*` (`instance/*`).
    #[arg(long)]
    pub resource: Option<String>,
    /// The actor's id or email.
    #[arg(long)]
    pub actor: Option<String>,
    /// The commit, or a prefix of its sha.
    #[arg(long)]
    pub commit: Option<String>,
}

impl FilterArgs {
    fn filter(&self, after: Option<i64>) -> Filter {
        Filter {
            since: self.since,
            until: self.until,
            action: self.action.clone(),
            resource: self.resource.clone(),
            actor: self.actor.clone(),
            commit: self.commit.clone(),
            after,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only records after this sequence number: the cursor printed for the next page.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<i64>,
    /// Records per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub limit: i64,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Ndjson,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Write here instead of to stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The signing key: `env:NAME`, a variable holding the secret made by `audit keygen`.
    #[arg(long, value_name = "env:NAME")]
    pub key: String,
    /// The checkpoint file to append to (created when missing).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|error| format!("`{text}` is not an RFC 3339 time: {error}"))
}

/// Records read per query while walking the whole log.
const PAGE: i64 = 10_000;

pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    match &args.command {
        Command::Verify(args) => cli::store::block_on(verify(args))?,
        Command::Query(args) => cli::store::block_on(query(args))?,
        Command::Export(args) => cli::store::block_on(export(args))?,
        Command::Checkpoint(args) => cli::store::block_on(sign(args))?,
        Command::Keygen => keygen(),
    }
}

/// The anchors of a checkpoint file, each signature checked against `public_key`.
fn anchors(file: &PathBuf, public_key: &str) -> Result<Vec<Anchor>, cli::Error> {
    let trusted = checkpoint::verifying_key(public_key)?;
    let text = fs::read_to_string(file)
        .map_err(|error| format!("reading checkpoints `{}`: {error}", file.display()))?;
    checkpoint::parse_file(&text, &trusted)
        .map_err(|error| format!("`{}`: {error}", file.display()).into())
}

#[derive(Serialize)]
struct VerifyReport {
    records: u64,
    valid: bool,
    checkpoints: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<HeadReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<ProblemReport>,
}

#[derive(Serialize)]
struct HeadReport {
    seq: i64,
    hash: String,
}

#[derive(Serialize)]
struct ProblemReport {
    /// The first record that is not as it was written.
    seq: i64,
    message: String,
}

async fn verify(args: &VerifyArgs) -> Result<ExitCode, cli::Error> {
    let anchors = match (&args.checkpoints, &args.public_key) {
        (Some(file), Some(key)) => anchors(file, key)?,
        _ => Vec::new(),
    };
    let store = args.store.open(false).await?;
    let verification = store.audit_verify(&anchors, PAGE).await?;
    store.close().await;
    let report = VerifyReport {
        records: verification.records,
        valid: verification.outcome.is_ok(),
        checkpoints: anchors.len(),
        head: verification.outcome.as_ref().ok().map(|head| HeadReport {
            seq: head.seq,
            hash: head.hash.to_hex(),
        }),
        problem: verification
            .outcome
            .as_ref()
            .err()
            .map(|problem| ProblemReport {
                seq: problem.seq(),
                message: problem.to_string(),
            }),
    };
    let output = match args.format {
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Text => match (&verification.outcome, &report.head) {
            (Ok(_), Some(head)) => format!(
                "the audit log of {} holds: {} records, head {} {}, {} checkpoints agree\n",
                store.url(),
                report.records,
                head.seq,
                head.hash,
                report.checkpoints
            ),
            (Err(problem), _) => format!("the audit log of {} is broken: {problem}\n", store.url()),
            (Ok(_), None) => String::new(),
        },
    };
    cli::print(&output)?;
    Ok(if report.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn export_json(row: &StoredRow) -> Result<serde_json::Value, cli::Error> {
    Ok(row.export()?)
}

async fn query(args: &QueryArgs) -> Result<ExitCode, cli::Error> {
    let store = args.store.open(false).await?;
    let rows = store
        .audit_query(&args.filter.filter(args.after), args.limit)
        .await?;
    store.close().await;
    let next = (rows.len() as i64 == args.limit)
        .then(|| rows.last().map(|row| row.seq))
        .flatten();
    let output = match args.format {
        Format::Json => {
            let records = rows
                .iter()
                .map(export_json)
                .collect::<Result<Vec<_>, _>>()?;
            serde_json::to_string_pretty(&serde_json::json!({
                "records": records,
                "next_after": next,
            }))? + "\n"
        }
        Format::Text => {
            let mut text = String::new();
            for row in &rows {
                let entry = row.entry()?;
                let actor = entry.record.actor.email.as_deref().unwrap_or(&row.actor_id);
                text += &format!(
                    "{:>8}  {}  {:<8} {:<24} {:<32} {:<36} {}",
                    row.seq,
                    entry.at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    row.actor_kind,
                    actor,
                    row.action,
                    row.resource,
                    row.result
                );
                if let Some(reason) = &entry.record.reason {
                    text += &format!("  {reason}");
                }
                if let Some(error) = &entry.record.error {
                    text += &format!("  error: {error}");
                }
                text.push('\n');
            }
            match next {
                Some(seq) => text += &format!("more: run again with --after {seq}\n"),
                None if rows.is_empty() => text += "no records match\n",
                None => {}
            }
            text
        }
    };
    cli::print(&output)?;
    Ok(ExitCode::SUCCESS)
}

const CSV_HEADER: &[&str] = &[
    "seq",
    "id",
    "at",
    "actor_kind",
    "actor_id",
    "actor_email",
    "action",
    "resource",
    "result",
    "commit_sha",
    "reason",
    "error",
    "body",
    "prev_hash",
    "hash",
];

/// Where exported records go, in their format.
enum Sink {
    Ndjson(BufWriter<Box<dyn Write>>),
    Csv(Box<csv::Writer<Box<dyn Write>>>),
}

impl Sink {
    fn new(format: ExportFormat, out: Box<dyn Write>) -> Result<Sink, cli::Error> {
        Ok(match format {
            ExportFormat::Ndjson => Sink::Ndjson(BufWriter::with_capacity(1 << 16, out)),
            ExportFormat::Csv => {
                let mut writer = csv::Writer::from_writer(out);
                writer.write_record(CSV_HEADER)?;
                Sink::Csv(Box::new(writer))
            }
        })
    }

    fn write(&mut self, row: &StoredRow) -> Result<(), cli::Error> {
        match self {
            Sink::Ndjson(out) => {
                serde_json::to_writer(&mut *out, &export_json(row)?)?;
                out.write_all(b"\n")?;
            }
            Sink::Csv(writer) => {
                let entry = row.entry()?;
                writer.write_record([
                    row.seq.to_string().as_str(),
                    &row.id,
                    &time_text(entry.at),
                    &row.actor_kind,
                    &row.actor_id,
                    row.actor_email.as_deref().unwrap_or(""),
                    &row.action,
                    &row.resource,
                    &row.result,
                    row.commit_sha.as_deref().unwrap_or(""),
                    entry.record.reason.as_deref().unwrap_or(""),
                    entry.record.error.as_deref().unwrap_or(""),
                    &row.body,
                    &hex::encode(&row.prev_hash),
                    &hex::encode(&row.hash),
                ])?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Ndjson(out) => out.flush(),
            Sink::Csv(writer) => writer.flush(),
        }
    }
}

async fn export(args: &ExportArgs) -> Result<ExitCode, cli::Error> {
    let store = args.store.open(false).await?;
    let out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(
            fs::File::create(path)
                .map_err(|error| format!("creating `{}`: {error}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut sink = Sink::new(args.format, out)?;
    // The scan stops at the first record that cannot be written; that error is the one
    // to report.
    let mut failure: Option<cli::Error> = None;
    let scanned = store
        .audit_scan(&args.filter.filter(None), PAGE, |row| {
            sink.write(row).map_err(|error| {
                let message = error.to_string();
                failure = Some(error);
                wakafleet::store::Error::Invalid(message)
            })
        })
        .await;
    store.close().await;
    if let Some(failure) = failure {
        return if is_broken_pipe(failure.as_ref()) {
            Ok(ExitCode::SUCCESS)
        } else {
            Err(failure)
        };
    }
    scanned?;
    match sink.flush() {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Whether writing failed because the reader went away (`audit export | head`).
fn is_broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    let io = error.downcast_ref::<std::io::Error>().or_else(|| {
        match error.downcast_ref::<csv::Error>().map(csv::Error::kind) {
            Some(csv::ErrorKind::Io(io)) => Some(io),
            _ => None,
        }
    });
    io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn sign(args: &CheckpointArgs) -> Result<ExitCode, cli::Error> {
    let key = checkpoint::signing_key(&args.key)?;
    let public_key = hex::encode(key.verifying_key().as_bytes());
    let anchors = if args.out.exists() {
        anchors(&args.out, &public_key)?
    } else {
        Vec::new()
    };
    let store: Store = args.store.open(false).await?;
    // Never vouch for a chain that is already broken.
    let verification = store.audit_verify(&anchors, PAGE).await?;
    store.close().await;
    let head = verification.outcome.map_err(|problem| {
        format!(
            "the audit log of {} is broken, so it is not signed: {problem}",
            store.url()
        )
    })?;
    let checkpoint = Checkpoint::sign(head, Utc::now(), &key);
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .map_err(|error| format!("opening `{}`: {error}", args.out.display()))?;
    file.write_all(checkpoint.to_line().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| format!("writing `{}`: {error}", args.out.display()))?;
    cli::print(&format!(
        "signed record {} ({}) into {}; keep it outside the database (a git note, an object store)\n",
        head.seq,
        head.hash,
        args.out.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn keygen() -> Result<ExitCode, cli::Error> {
    let (secret, public) = checkpoint::generate()?;
    cli::print(&format!(
        "# The secret: keep it in your secret store and give it to `audit checkpoint --key env:WAKAFLEET_AUDIT_KEY`.\n\
         WAKAFLEET_AUDIT_KEY={secret}\n\
         # The public key: give it to `audit verify --public-key`.\n\
         public key: {public}\n"
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn time_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}
