//! `wakafleet token create NAME --role viewer|operator [--partner ID | --tenant ID]`: a new
//! API token. The token is printed alone on the first line, then the `[[api.tokens]]` entry
//! to paste into the daemon's configuration; only the entry's argon2 hash is kept anywhere,
//! so a lost token is replaced, not recovered.

use std::process::ExitCode;

use wakafleet::http::auth::{self, Role};

use crate::cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make a token: the token on the first line, then its config entry.
    Create {
        /// The token's name (a-z, 0-9, `-`, `_`): it names the caller in the audit log.
        name: String,
        /// viewer (reads) or operator (also retries, cancels, pauses and resumes).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Only this partner's instances, jobs and audit records.
        #[arg(long, value_name = "ID", conflicts_with = "tenant")]
        partner: Option<String>,
        /// Only this tenant's instances, jobs and audit records.
        #[arg(long, value_name = "ID")]
        tenant: Option<String>,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("`{text}` is not a role: viewer or operator"))
}

pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    match &args.command {
        Command::Create {
            name,
            role,
            partner,
            tenant,
        } => {
            let (token, entry) = auth::create(name, *role, partner.as_deref(), tenant.as_deref())?;
            cli::print(&format!(
                "{token}\n\n# Paste into the daemon's configuration; the token above is shown only now.\n{entry}"
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
