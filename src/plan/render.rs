//! Renderings of a plan: text for terminals, Markdown for pull-request comments, and the
//! JSON of FLEET-FORMAT.md for machines.

use std::{fmt::Write as _, io::Write as _};

use chrono::SecondsFormat;
use serde::Serialize;
use termcolor::{Color as TermColor, ColorSpec, WriteColor};

use crate::{
    diag::render::{Color, Entry},
    plan::{Action, Kind, Plan},
    policy::Status,
};

/// Commits a plan compares, when known.
#[derive(Clone, Copy, Debug, Default)]
pub struct Commits<'a> {
    pub base: Option<&'a str>,
    pub head: Option<&'a str>,
}

/// The hidden marker CI looks for to update its pull-request comment in place.
pub const MARKDOWN_MARKER: &str = "<!-- wakafleet-plan -->";

fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// "3 actions: 2 upgrade, 1 provision (1 deferred, 1 blocked)".
pub fn summary_line(plan: &Plan) -> String {
    if plan.is_empty() {
        return "no changes".to_string();
    }
    let kinds: Vec<String> = Kind::ALL
        .iter()
        .filter_map(|kind| {
            let count = plan.count_kind(*kind);
            (count > 0).then(|| format!("{count} {}", kind.as_str()))
        })
        .collect();
    let total = plan.actions.len();
    let mut line = format!(
        "{total} action{}: {}",
        if total == 1 { "" } else { "s" },
        kinds.join(", ")
    );
    let (deferred, blocked) = (
        plan.count_status(Status::Deferred),
        plan.count_status(Status::Blocked),
    );
    if deferred + blocked > 0 {
        line += &format!(" ({deferred} deferred, {blocked} blocked)");
    }
    line
}

fn headline(action: &Action) -> String {
    let mut line = action.kind.as_str().to_string();
    if let (Some(from), Some(to)) = (&action.from, &action.to) {
        line += &format!(" {from} -> {to}");
    } else if let Some(to) = &action.to {
        line += &format!(" at {to}");
    }
    line
}

fn status_text(action: &Action) -> String {
    match (action.status, action.not_before, action.blocked_reason) {
        (Status::Deferred, Some(not_before), _) => format!("deferred until {}", time(not_before)),
        (Status::Blocked, _, Some(reason)) => format!("blocked: {}", reason.as_str()),
        (status, _, _) => status.as_str().to_string(),
    }
}

fn value(value: Option<&String>) -> &str {
    value.map_or("(none)", String::as_str)
}

/// The plan for a terminal: one block per resource, colours by status when `color` says so.
pub fn text(plan: &Plan, commits: Commits<'_>, color: Color) -> String {
    let mut out = match color {
        Color::Always => termcolor::Buffer::ansi(),
        Color::Never => termcolor::Buffer::no_color(),
    };
    // Writing to memory cannot fail.
    let _ = write_text(&mut out, plan, commits);
    String::from_utf8_lossy(out.as_slice()).into_owned()
}

fn write_text(
    out: &mut termcolor::Buffer,
    plan: &Plan,
    commits: Commits<'_>,
) -> std::io::Result<()> {
    let mut heading = format!("plan at {}", time(plan.at));
    if let Some(base) = commits.base {
        heading += &format!(", base {}", short(base));
    }
    if let Some(head) = commits.head {
        heading += &format!(", head {}", short(head));
    }
    writeln!(out, "{heading}: {}", summary_line(plan))?;
    let mut previous: Option<(&str, &str)> = None;
    for action in &plan.actions {
        let resource = (action.resource_type.as_str(), action.id.as_str());
        if previous != Some(resource) {
            out.set_color(ColorSpec::new().set_bold(true))?;
            write!(out, "\n{} {}", resource.0, resource.1)?;
            out.reset()?;
            writeln!(out)?;
            previous = Some(resource);
        }
        let color = match action.status {
            Status::Ready => TermColor::Green,
            Status::Deferred => TermColor::Yellow,
            Status::Blocked => TermColor::Red,
        };
        write!(out, "  ")?;
        out.set_color(ColorSpec::new().set_fg(Some(color)))?;
        write!(out, "{}", headline(action))?;
        out.reset()?;
        writeln!(out, " [{}]", status_text(action))?;
        for change in &action.changes {
            writeln!(
                out,
                "      {}: {} -> {}",
                change.field,
                value(change.before.as_ref()),
                value(change.after.as_ref())
            )?;
        }
        writeln!(out, "      why: {}", action.reason)?;
    }
    if !plan.advisories.is_empty() {
        out.set_color(ColorSpec::new().set_bold(true))?;
        write!(out, "\nnot applied until approved")?;
        out.reset()?;
        writeln!(out)?;
        for advisory in &plan.advisories {
            writeln!(
                out,
                "  {} {}: {} [{}]\n      why: {}",
                advisory.resource_type.as_str(),
                advisory.id,
                headline(advisory),
                status_text(advisory),
                advisory.reason
            )?;
        }
    }
    Ok(())
}

/// Sections after this many are folded into one `<details>`.
const OPEN_SECTIONS: usize = 10;
/// Change tables longer than this are folded.
const OPEN_CHANGES: usize = 8;

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The plan as a pull-request comment: a summary table by kind and status, then one
/// section per resource with its changes, reason and timing. Starts with
/// [`MARKDOWN_MARKER`].
pub fn markdown(plan: &Plan, commits: Commits<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{MARKDOWN_MARKER}\n### wakafleet plan\n");
    let mut context = format!("At {}", time(plan.at));
    match (commits.base, commits.head) {
        (Some(base), Some(head)) => context += &format!(", `{}` → `{}`", short(base), short(head)),
        (Some(base), None) => context += &format!(", `{}` → work tree", short(base)),
        (None, Some(head)) => context += &format!(", state snapshot → `{}`", short(head)),
        (None, None) => {}
    }
    let _ = writeln!(out, "{context}: **{}**.\n", summary_line(plan));
    if !plan.is_empty() {
        markdown_actions(plan, &mut out);
    }
    if !plan.advisories.is_empty() {
        let _ = writeln!(
            out,
            "\n<details><summary>{} release{} not applied until approved</summary>\n",
            plan.advisories.len(),
            if plan.advisories.len() == 1 { "" } else { "s" }
        );
        for advisory in &plan.advisories {
            let _ = writeln!(
                out,
                "- {} `{}`: **{}** — {}",
                advisory.resource_type.as_str(),
                advisory.id,
                headline(advisory),
                cell(&advisory.reason)
            );
        }
        let _ = writeln!(out, "\n</details>");
    }
    out
}

fn markdown_actions(plan: &Plan, out: &mut String) {
    let _ = writeln!(
        out,
        "| kind | ready | deferred | blocked |\n|---|---:|---:|---:|"
    );
    for kind in Kind::ALL {
        let of_kind: Vec<&Action> = plan.actions.iter().filter(|a| a.kind == *kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let count = |status| of_kind.iter().filter(|a| a.status == status).count();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            kind.as_str(),
            count(Status::Ready),
            count(Status::Deferred),
            count(Status::Blocked)
        );
    }
    let mut sections: Vec<String> = Vec::new();
    for action in &plan.actions {
        let title = format!("#### {} `{}`\n", action.resource_type.as_str(), action.id);
        if sections
            .last()
            .is_none_or(|section| !section.starts_with(&title))
        {
            sections.push(title);
        }
        let section = sections.last_mut().expect("a section was just pushed");
        let _ = writeln!(
            section,
            "\n- **{}** — {}",
            headline(action),
            status_text(action)
        );
        let _ = writeln!(section, "  - why: {}", cell(&action.reason));
        if !action.changes.is_empty() {
            let mut table = String::from("\n  | field | before | after |\n  |---|---|---|\n");
            for change in &action.changes {
                let _ = writeln!(
                    table,
                    "  | `{}` | {} | {} |",
                    change.field,
                    cell(value(change.before.as_ref())),
                    cell(value(change.after.as_ref()))
                );
            }
            if action.changes.len() > OPEN_CHANGES {
                let _ = write!(
                    section,
                    "\n  <details><summary>{} fields</summary>\n{table}\n  </details>\n",
                    action.changes.len()
                );
            } else {
                section.push_str(&table);
            }
        }
    }
    let folded = sections.len().saturating_sub(OPEN_SECTIONS);
    for section in sections.iter().take(OPEN_SECTIONS) {
        let _ = writeln!(out, "\n{section}");
    }
    if folded > 0 {
        let _ = writeln!(
            out,
            "\n<details><summary>{folded} more resources</summary>\n"
        );
        for section in sections.iter().skip(OPEN_SECTIONS) {
            let _ = writeln!(out, "\n{section}");
        }
        let _ = writeln!(out, "</details>");
    }
}

/// The JSON document of `wakafleet plan --format json` (FLEET-FORMAT.md).
#[derive(Serialize)]
struct Document<'a> {
    format_version: u32,
    base: Option<&'a str>,
    head: Option<&'a str>,
    at: String,
    summary: serde_json::Map<String, serde_json::Value>,
    actions: Vec<JsonAction<'a>>,
    /// Releases available but not approved: an extension of FLEET-FORMAT.md's shape.
    advisories: Vec<JsonAction<'a>>,
    diagnostics: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct JsonAction<'a> {
    kind: &'static str,
    resource: JsonResource<'a>,
    status: &'static str,
    not_before: Option<String>,
    blocked_reason: Option<&'static str>,
    from: Option<String>,
    to: Option<String>,
    changes: Vec<JsonChange<'a>>,
    reason: &'a str,
}

#[derive(Serialize)]
struct JsonResource<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
}

#[derive(Serialize)]
struct JsonChange<'a> {
    field: &'a str,
    before: Option<&'a str>,
    after: Option<&'a str>,
}

/// The plan as JSON, with the head's diagnostics (warnings, when the plan could be made).
pub fn json(plan: &Plan, commits: Commits<'_>, diagnostics: Vec<Entry<'_>>) -> String {
    let mut summary = serde_json::Map::new();
    for kind in Kind::ALL {
        let count = plan.count_kind(*kind);
        if count > 0 {
            summary.insert(kind.as_str().to_string(), count.into());
        }
    }
    summary.insert("blocked".into(), plan.count_status(Status::Blocked).into());
    summary.insert(
        "deferred".into(),
        plan.count_status(Status::Deferred).into(),
    );
    summary.insert("total".into(), plan.actions.len().into());
    let document = Document {
        format_version: 1,
        base: commits.base,
        head: commits.head,
        at: time(plan.at),
        summary,
        actions: plan.actions.iter().map(json_action).collect(),
        advisories: plan.advisories.iter().map(json_action).collect(),
        diagnostics,
    };
    serde_json::to_string_pretty(&document).expect("plans serialize to JSON")
}

fn json_action(action: &Action) -> JsonAction<'_> {
    JsonAction {
        kind: action.kind.as_str(),
        resource: JsonResource {
            kind: action.resource_type.as_str(),
            id: &action.id,
        },
        status: action.status.as_str(),
        not_before: action.not_before.map(time),
        blocked_reason: action.blocked_reason.map(|reason| reason.as_str()),
        from: action.from.as_ref().map(ToString::to_string),
        to: action.to.as_ref().map(ToString::to_string),
        changes: action
            .changes
            .iter()
            .map(|change| JsonChange {
                field: &change.field,
                before: change.before.as_deref(),
                after: change.after.as_deref(),
            })
            .collect(),
        reason: &action.reason,
    }
}
