//! Renderings of a plan: text for terminals, Markdown for pull-request comments, and the
//! JSON of FLEET-FORMAT.md for machines.

use std::{fmt::Write as _, io::Write as _};

use chrono::SecondsFormat;
use serde::Serialize;
use termcolor::{Color as TermColor, ColorSpec, WriteColor};

use crate::{
    diag::render::{Color, Entry as Diagnostic},
    plan::{
        Action, Kind, Plan,
        group::{self, Group, Risk},
    },
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

fn value(value: Option<&String>) -> &str {
    value.map_or("(none)", String::as_str)
}

/// The changes a group's headline shows inline (an upgrade's versions are in its headline).
fn shown_changes(action: &Action) -> &[crate::plan::Change] {
    match action.kind {
        Kind::Upgrade | Kind::Downgrade => &[],
        _ => &action.changes,
    }
}

/// How many names a group lists on a terminal unless `--verbose`.
const TEXT_NAMES: usize = 10;

/// The plan for a terminal: the riskiest changes first, alike ones grouped (`verbose` lists
/// every name of a group), colours by status when `color` says so.
pub fn text(plan: &Plan, commits: Commits<'_>, color: Color, verbose: bool) -> String {
    let mut out = match color {
        Color::Always => termcolor::Buffer::ansi(),
        Color::Never => termcolor::Buffer::no_color(),
    };
    // Writing to memory cannot fail.
    let _ = write_text(&mut out, plan, commits, verbose);
    String::from_utf8_lossy(out.as_slice()).into_owned()
}

fn status_color(status: Status) -> TermColor {
    match status {
        Status::Ready => TermColor::Green,
        Status::Deferred => TermColor::Yellow,
        Status::Blocked => TermColor::Red,
    }
}

fn write_text(
    out: &mut termcolor::Buffer,
    plan: &Plan,
    commits: Commits<'_>,
    verbose: bool,
) -> std::io::Result<()> {
    let mut heading = format!("plan at {}", time(plan.at));
    if let Some(base) = commits.base {
        heading += &format!(", base {}", short(base));
    }
    if let Some(head) = commits.head {
        heading += &format!(", head {}", short(head));
    }
    writeln!(out, "{heading}: {}", summary_line(plan))?;
    let groups = group::groups(&plan.actions);
    let mut previous = None;
    for entry in &groups {
        if previous != Some(entry.risk) {
            let count: usize = groups
                .iter()
                .filter(|other| other.risk == entry.risk)
                .map(Group::len)
                .sum();
            out.set_color(ColorSpec::new().set_bold(true))?;
            write!(out, "\n{} ({count})", entry.risk.title())?;
            out.reset()?;
            writeln!(out)?;
            previous = Some(entry.risk);
        }
        write_text_group(out, entry, verbose)?;
    }
    if !plan.advisories.is_empty() {
        out.set_color(ColorSpec::new().set_bold(true))?;
        write!(out, "\nnot applied until approved")?;
        out.reset()?;
        writeln!(out)?;
        for advisory in group::groups(&plan.advisories) {
            let first = advisory.first();
            let names = names_line(&advisory.actions, verbose.then_some(usize::MAX));
            let names = counted(&advisory, &names);
            writeln!(
                out,
                "  {}: {} [{}]\n      why: {}",
                names,
                headline(first),
                group::status_text(first),
                advisory.common_reason().unwrap_or(&first.reason)
            )?;
        }
    }
    Ok(())
}

fn write_text_group(
    out: &mut termcolor::Buffer,
    entry: &Group<'_>,
    verbose: bool,
) -> std::io::Result<()> {
    let first = entry.first();
    let statuses = entry.by_status();
    if entry.len() == 1 {
        write!(out, "  {} {}: ", first.resource_type.as_str(), first.id)?;
    } else {
        write!(out, "  {} {}s: ", entry.len(), first.resource_type.as_str())?;
    }
    out.set_color(ColorSpec::new().set_fg(Some(status_color(first.status))))?;
    write!(out, "{}", headline(first))?;
    out.reset()?;
    let status = entry.status_summary();
    writeln!(out, " [{status}]")?;
    let changes = if entry.len() == 1 {
        &first.changes[..]
    } else {
        shown_changes(first)
    };
    for change in changes {
        writeln!(
            out,
            "      {}: {} -> {}",
            change.field,
            value(change.before.as_ref()),
            value(change.after.as_ref())
        )?;
    }
    match entry.common_reason() {
        Some(reason) => writeln!(out, "      why: {reason}")?,
        None => writeln!(out, "      why (for {}): {}", first.id, first.reason)?,
    }
    if entry.len() > 1 {
        let limit = if verbose { usize::MAX } else { TEXT_NAMES };
        if statuses.len() == 1 {
            writeln!(out, "      {}", names_line(&entry.actions, Some(limit)))?;
        } else {
            for (status, actions) in &statuses {
                writeln!(out, "      {status}: {}", names_line(actions, Some(limit)))?;
            }
        }
    }
    Ok(())
}

/// "instance a" for one action, "4 instances (a, b, c, d)" for more, around `names`.
fn counted(group: &Group<'_>, names: &str) -> String {
    let kind = group.first().resource_type.as_str();
    if group.len() == 1 {
        format!("{kind} {names}")
    } else {
        format!("{} {kind}s ({names})", group.len())
    }
}

/// "a, b, c and 7 more (--verbose lists all)" for a terminal; `limit` names at most.
fn names_line(actions: &[&Action], limit: Option<usize>) -> String {
    let limit = limit.unwrap_or(TEXT_NAMES);
    let mut line = actions
        .iter()
        .take(limit)
        .map(|action| action.id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if actions.len() > limit {
        line += &format!(" and {} more (--verbose lists all)", actions.len() - limit);
    }
    line
}

/// GitHub's limit on a comment is 65,536 characters; the default budget stays below it in
/// bytes, which are never fewer than characters.
pub const DEFAULT_MAX_BYTES: usize = 60_000;
/// The least budget a Markdown plan can keep: its heading, summary table and closing line.
pub const MIN_MAX_BYTES: usize = 4_000;
/// Change tables longer than this are folded.
const OPEN_CHANGES: usize = 8;
/// Room kept for the closing line, the URL of the whole plan aside.
const CLOSING_ROOM: usize = 700;

/// How a Markdown plan is bounded.
#[derive(Clone, Copy, Debug)]
pub struct Budget<'a> {
    /// The most bytes the comment takes ([`DEFAULT_MAX_BYTES`]; at least [`MIN_MAX_BYTES`]).
    pub max_bytes: usize,
    /// Where the whole plan is (the workflow's artifact), for the closing line.
    pub whole_plan: Option<&'a str>,
}

impl Default for Budget<'_> {
    fn default() -> Self {
        Budget {
            max_bytes: DEFAULT_MAX_BYTES,
            whole_plan: None,
        }
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// An entry of the Markdown plan: a group's text, with the names of its instances to fill
/// in as far as the budget goes.
struct Entry<'a> {
    risk: Risk,
    /// What the entry says: headline, status, reason, changes.
    head: String,
    /// The names to list, by status (one list when the statuses agree); none for one action.
    names: Vec<(Option<String>, Vec<&'a str>)>,
    actions: Vec<&'a Action>,
}

impl Entry<'_> {
    /// The entry with `extra` bytes more than [`Entry::least`] for its names: all of them
    /// when they fit, else as many as do, and how many more there are; and whether all of
    /// them are there. Never longer than its least and `extra`.
    fn render(&self, mut extra: usize, whole_plan: Option<&str>) -> (String, bool) {
        let mut text = self.head.clone();
        if self.names.is_empty() {
            return (text, true);
        }
        // The names of the riskiest changes are never folded away.
        let folded = !self.risk.names_open();
        if folded {
            let total: usize = self.names.iter().map(|(_, names)| names.len()).sum();
            let _ = write!(
                text,
                "\n  <details><summary>{total} {}s</summary>\n\n",
                self.actions[0].resource_type.as_str()
            );
        } else {
            text.push('\n');
        }
        let mut all_shown = true;
        for (status, names) in &self.names {
            match status {
                Some(status) => {
                    let _ = write!(text, "  {status}:");
                }
                None => text.push(' '),
            }
            let mut shown = 0;
            for name in names {
                let item = format!("{} `{name}`", if shown == 0 { "" } else { "," });
                if item.len() > extra {
                    break;
                }
                extra -= item.len();
                text.push_str(&item);
                shown += 1;
            }
            if shown < names.len() {
                all_shown = false;
                let _ = write!(text, " … and {} more", names.len() - shown);
            }
            text.push_str("\n\n");
        }
        if !all_shown {
            match whole_plan {
                Some(url) => {
                    let _ = writeln!(text, "  *[The whole plan]({url}) lists them all.*");
                }
                None => text.push_str("  *The whole plan (`--format json`) lists them all.*\n"),
            }
        }
        if folded {
            text.push_str("  </details>\n");
        }
        (text, all_shown)
    }

    /// The least the entry takes: everything but the names.
    fn least(&self, whole_plan: Option<&str>) -> usize {
        self.render(0, whole_plan).0.len()
    }
}

fn markdown_entry<'a>(entry: &Group<'a>) -> Entry<'a> {
    let first = entry.first();
    let statuses = entry.by_status();
    let mut head = String::new();
    let status = entry.status_summary();
    let changes = if entry.len() == 1 {
        let _ = writeln!(
            head,
            "\n- {} `{}`: **{}** — {status}",
            first.resource_type.as_str(),
            first.id,
            headline(first)
        );
        &first.changes[..]
    } else {
        let changes = shown_changes(first);
        let inline = if changes.len() <= 3 {
            changes
                .iter()
                .map(|change| {
                    format!(
                        ", `{}` {} → {}",
                        change.field,
                        cell(value(change.before.as_ref())),
                        cell(value(change.after.as_ref()))
                    )
                })
                .collect::<String>()
        } else {
            String::new()
        };
        let _ = writeln!(
            head,
            "\n- **{}**: {} {}s{inline} — {status}",
            headline(first),
            entry.len(),
            first.resource_type.as_str(),
        );
        if changes.len() <= 3 { &[] } else { changes }
    };
    match entry.common_reason() {
        Some(reason) => {
            let _ = writeln!(head, "  - why: {}", cell(reason));
        }
        None => {
            let _ = writeln!(head, "  - why (`{}`): {}", first.id, cell(&first.reason));
        }
    }
    if !changes.is_empty() {
        let mut table = String::from("\n  | field | before | after |\n  |---|---|---|\n");
        for change in changes {
            let _ = writeln!(
                table,
                "  | `{}` | {} | {} |",
                change.field,
                cell(value(change.before.as_ref())),
                cell(value(change.after.as_ref()))
            );
        }
        if changes.len() > OPEN_CHANGES {
            let _ = write!(
                head,
                "\n  <details><summary>{} fields</summary>\n{table}\n  </details>\n",
                changes.len()
            );
        } else {
            head.push_str(&table);
        }
    }
    let names = if entry.len() == 1 {
        Vec::new()
    } else if statuses.len() == 1 {
        vec![(None, entry.actions.iter().map(|a| a.id.as_str()).collect())]
    } else {
        statuses
            .into_iter()
            .map(|(status, actions)| {
                (
                    Some(status),
                    actions.iter().map(|a| a.id.as_str()).collect(),
                )
            })
            .collect()
    };
    Entry {
        risk: entry.risk,
        head,
        names,
        actions: entry.actions.clone(),
    }
}

/// The plan as a pull-request comment within `budget`: the summary table (always whole),
/// then the actions by risk, most first, alike ones grouped with their names folded; past
/// the budget whole entries are left out from the least risky end and a closing line counts
/// them and says where the whole plan is. Starts with [`MARKDOWN_MARKER`].
pub fn markdown(plan: &Plan, commits: Commits<'_>, budget: Budget<'_>) -> String {
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
        summary_table(plan, &mut out);
    }
    let groups = group::groups(&plan.actions);
    let limit = budget
        .max_bytes
        .max(MIN_MAX_BYTES)
        .saturating_sub(CLOSING_ROOM + budget.whole_plan.map_or(0, str::len));

    // Entries most risky first, each with all its names while they fit; the first that does
    // not fit whole gets as many of its names as do, and everything after it is left out (and
    // not even rendered), so what is left out is always the least risky end.
    let mut shown = 0;
    let mut previous = None;
    for group in &groups {
        let entry = markdown_entry(group);
        let heading = if previous == Some(entry.risk) {
            String::new()
        } else {
            section_heading(&groups, entry.risk)
        };
        let least = entry.least(budget.whole_plan);
        let room = limit.saturating_sub(out.len() + heading.len());
        if least > room {
            break;
        }
        let (text, whole) = entry.render(room - least, budget.whole_plan);
        out.push_str(&heading);
        out.push_str(&text);
        previous = Some(entry.risk);
        shown += 1;
        if !whole {
            break;
        }
    }
    let left_out = &groups[shown..];
    // The advisories come last, and are left out before any action is.
    let advisories = advisories_entry(plan)
        .filter(|text| left_out.is_empty() && out.len() + text.len() <= limit);
    if let Some(advisories) = &advisories {
        out.push_str(advisories);
    }
    let advisories_left_out = advisories.is_none() && !plan.advisories.is_empty();
    if !left_out.is_empty() || advisories_left_out {
        closing_line(plan, left_out, advisories_left_out, budget, &mut out);
    }
    out
}

fn section_heading(groups: &[Group<'_>], risk: Risk) -> String {
    let count: usize = groups
        .iter()
        .filter(|group| group.risk == risk)
        .map(Group::len)
        .sum();
    format!("\n#### {} ({count})\n", risk.title())
}

fn summary_table(plan: &Plan, out: &mut String) {
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
}

/// How many instances a line of advisories names before it counts the rest.
const ADVISORY_NAMES: usize = 3;

fn advisories_entry(plan: &Plan) -> Option<String> {
    if plan.advisories.is_empty() {
        return None;
    }
    let mut out = format!(
        "\n<details><summary>{} available upgrade{} not applied until approved</summary>\n\n",
        plan.advisories.len(),
        if plan.advisories.len() == 1 { "" } else { "s" }
    );
    for advisory in group::groups(&plan.advisories) {
        let first = advisory.first();
        let mut names = advisory
            .actions
            .iter()
            .take(ADVISORY_NAMES)
            .map(|action| format!("`{}`", action.id))
            .collect::<Vec<_>>()
            .join(", ");
        if advisory.len() > ADVISORY_NAMES {
            names += &format!(" and {} more", advisory.len() - ADVISORY_NAMES);
        }
        let names = counted(&advisory, &names);
        let _ = writeln!(
            out,
            "- {names}: **{}** — {}",
            headline(first),
            cell(advisory.common_reason().unwrap_or(&first.reason))
        );
    }
    out.push_str("\n</details>\n");
    Some(out)
}

fn closing_line(
    plan: &Plan,
    left_out: &[Group<'_>],
    advisories_left_out: bool,
    budget: Budget<'_>,
    out: &mut String,
) {
    let mut counts: Vec<String> = Kind::ALL
        .iter()
        .filter_map(|kind| {
            let count: usize = left_out
                .iter()
                .flat_map(|entry| &entry.actions)
                .filter(|action| action.kind == *kind)
                .count();
            (count > 0).then(|| format!("{count} {}", kind.as_str()))
        })
        .collect();
    if advisories_left_out {
        counts.push(format!(
            "{} available upgrade{} not applied until approved",
            plan.advisories.len(),
            if plan.advisories.len() == 1 { "" } else { "s" }
        ));
    }
    let actions: usize = left_out.iter().map(Group::len).sum();
    let whole = match budget.whole_plan {
        Some(url) => format!("[the whole plan as JSON]({url}) (`wakafleet plan --format json`)"),
        None => "`wakafleet plan --format json`".to_string(),
    };
    let _ = writeln!(
        out,
        "\n---\n**Not shown, to keep this comment within {} bytes:** {} ({actions} action{}). Every action is in {whole}.",
        budget.max_bytes.max(MIN_MAX_BYTES),
        counts.join(", "),
        if actions == 1 { "" } else { "s" }
    );
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
    diagnostics: Vec<Diagnostic<'a>>,
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
pub fn json(plan: &Plan, commits: Commits<'_>, diagnostics: Vec<Diagnostic<'_>>) -> String {
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
