//! The Markdown plan of changes of every size, read as GitHub would: `wakafleet plan --format
//! markdown` of 1, 100, 1,000 and 10,000 changed instances of a generated fleet (terminated,
//! suspended, given a domain of their own or with `ssl` toggled: `generate::review_change`),
//! rendered by a real CommonMark/GFM renderer (Debian's `cmark-gfm`, with GitHub's table
//! extension and raw HTML let through, as GitHub lets `<details>` through).
//!
//! Each rendering must keep within the byte budget, leave no HTML element open, show the
//! summary table and name every risky action (each termination and suspension) in the HTML;
//! what it leaves out it must count, and the JSON of the same plan stays complete.

mod common;
#[path = "../benches/load/generate.rs"]
#[allow(dead_code, reason = "the test writes fleets only")]
mod generate;

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{stdout_of_success, wakafleet_with};

/// The sizes of change the issue names.
const SIZES: [usize; 4] = [1, 100, 1_000, 10_000];
/// The budget of the example workflow (the default).
const BUDGET: usize = 60_000;
const WHOLE_PLAN: &str = "https://github.example/acme/fleet/actions/runs/1/artifacts/2";

/// The HTML `cmark-gfm` makes of `markdown`.
fn cmark_gfm(markdown: &str) -> String {
    let child = Command::new("cmark-gfm")
        .args([
            "--unsafe",
            "--extension",
            "table",
            "--extension",
            "autolink",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|error| {
        panic!("cmark-gfm cannot run ({error}): install it with `apt-get install cmark-gfm`, or run scripts/test")
    });
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), markdown.as_bytes())
        .expect("the Markdown");
    let output = child.wait_with_output().expect("cmark-gfm");
    assert!(output.status.success(), "cmark-gfm failed");
    String::from_utf8(output.stdout).expect("HTML is UTF-8")
}

/// Every element of `html` that is opened is closed, in order; returns how many there were.
fn assert_balanced(html: &str) -> usize {
    const VOID: &[&str] = &["br", "hr", "img", "input", "meta", "link"];
    let mut open: Vec<String> = Vec::new();
    let mut elements = 0;
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let end = rest.find('>').expect("a tag ends");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let (closing, tag) = match tag.strip_prefix('/') {
            Some(tag) => (true, tag),
            None => (false, tag),
        };
        let name = tag
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if VOID.contains(&name.as_str()) {
            continue;
        }
        if closing {
            let last = open.pop();
            assert_eq!(
                last.as_deref(),
                Some(name.as_str()),
                "</{name}> closes {last:?}"
            );
        } else {
            open.push(name);
            elements += 1;
        }
    }
    assert!(open.is_empty(), "left open: {open:?}");
    elements
}

#[test]
fn markdown_plans_of_every_size_are_valid_github_markdown_within_the_budget() {
    let repo = tempfile::tempdir().expect("a folder");
    let root = repo.path();
    let summary = generate::write(root, &generate::Shape::for_instances(10_600));
    let base = summary.commit.clone();
    // The instances to change: those not terminated already, in name order.
    let mut files: Vec<(String, String)> = std::fs::read_dir(root.join("instances"))
        .expect("the instances")
        .map(|entry| {
            let path = entry.expect("an entry").path();
            let text = std::fs::read_to_string(&path).expect("an instance file");
            (path.display().to_string(), text)
        })
        .filter(|(_, text)| !text.contains("terminated"))
        .collect();
    files.sort();
    assert!(files.len() >= 10_000, "{} instances to change", files.len());

    let mut changed = 0;
    for (round, size) in SIZES.into_iter().enumerate() {
        for (index, (path, text)) in files.iter().enumerate().take(size).skip(changed) {
            let name = Path::new(path)
                .file_stem()
                .expect("a name")
                .to_string_lossy();
            std::fs::write(path, generate::review_change(text, &name, index))
                .expect("an instance file");
        }
        changed = size;
        let head = generate::commit_and_repack(
            root,
            1_767_225_600 + 60 * (round as i64 + 1),
            &format!("{size} instances changed"),
        );
        let plan = |format: &str, extra: &[&str]| {
            let mut args = vec![
                "plan",
                ".",
                "--base",
                &base,
                "--head",
                &head,
                "--at",
                "2026-01-07T12:00:00Z",
                "--format",
                format,
            ];
            args.extend_from_slice(extra);
            stdout_of_success(&wakafleet_with(
                root,
                &args,
                &[("NO_COLOR", "1")],
                Duration::from_secs(300),
            ))
        };
        let json: serde_json::Value = serde_json::from_str(&plan("json", &[])).expect("JSON");
        let actions = json["actions"].as_array().expect("actions");
        let total = json["summary"]["total"].as_u64().expect("a total") as usize;
        assert_eq!(actions.len(), total, "the JSON is complete");
        // A few changes make no action (a suspended instance's `ssl` waits for its resume).
        assert!(
            total * 100 >= size * 99,
            "{size} changed instances make {total} actions"
        );
        let risky: BTreeSet<&str> = actions
            .iter()
            .filter(|action| action["kind"] == "terminate" || action["kind"] == "suspend")
            .map(|action| action["resource"]["id"].as_str().expect("an id"))
            .collect();
        if size >= 100 {
            assert!(!risky.is_empty(), "{size}: some changes are risky");
        }

        let markdown = plan("markdown", &["--whole-plan", WHOLE_PLAN]);
        if let Some(folder) = std::env::var_os("WAKAFLEET_KEEP_PLANS") {
            std::fs::write(
                Path::new(&folder).join(format!("plan-{size}.md")),
                &markdown,
            )
            .expect("a kept plan");
        }
        assert!(
            markdown.len() <= BUDGET,
            "{size}: {} bytes over the budget of {BUDGET}",
            markdown.len()
        );
        let html = cmark_gfm(&markdown);
        let elements = assert_balanced(&html);
        assert!(
            html.contains("<table>") && html.contains("<th>kind</th>"),
            "{size}: the summary table renders as a table"
        );
        assert!(
            html.contains(&format!("{total} action")),
            "{size}: the summary line counts every action"
        );
        for name in &risky {
            assert!(
                html.contains(name),
                "{size}: the risky action on {name} is in the HTML"
            );
        }
        // What is left out is counted, and points at the whole plan.
        let left_out = markdown.contains("**Not shown, to keep this comment within");
        if left_out {
            assert!(
                markdown.contains(WHOLE_PLAN),
                "{size}: the closing line links the plan"
            );
        }
        if size == 1 {
            assert!(!left_out, "one action fits");
        }
        println!(
            "{size} instances changed: {total} actions, {} Markdown bytes, {elements} HTML elements, {} risky named{}",
            markdown.len(),
            risky.len(),
            if left_out {
                ", entries left out and counted"
            } else {
                ""
            }
        );
    }
}

/// `--max-bytes` below what a plan needs is refused with the least it takes.
#[test]
fn a_budget_too_small_for_the_summary_is_refused() {
    let repo = tempfile::tempdir().expect("a folder");
    let output = wakafleet_with(
        Path::new(repo.path()),
        &["plan", ".", "--format", "markdown", "--max-bytes", "100"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("give at least 4000"), "{stderr}");
}
