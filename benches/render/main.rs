//! Render benchmark: the Markdown of a 10,000-action plan under the default budget, against
//! its JSON, alternating, in one process.
//!
//! The load benchmark's fleet (10,600 instances) is commit 1; commit 2 changes 10,000 of the
//! instances not terminated: every 25th is terminated, every 40th suspended, every 5th gets a
//! domain of its own (an entry that groups with nothing), the others toggle `ssl` (a few large
//! groups). The plan between them is made once; then `plan::render::markdown` (60,000 bytes)
//! and `plan::render::json` are timed in turn.
//!
//! `cargo bench --bench render [-- --rounds N]`; see bench/README.md.

#[path = "../load/generate.rs"]
#[allow(dead_code, reason = "this benchmark writes fleets only")]
mod generate;
#[path = "../common/measure.rs"]
#[allow(dead_code, reason = "this benchmark uses only part of the helpers")]
mod measure;

use std::{hint::black_box, path::Path, time::Instant};

use chrono::{DateTime, Utc};
use wakafleet::{
    diag::render as diag_render,
    load::Limits,
    plan::{
        self,
        render::{Budget, Commits},
    },
    source, validate,
};

use measure::row;

const GOAL_RATIO: f64 = 2.0;
const CHANGED: usize = 10_000;

fn rounds() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|pair| pair[0] == "--rounds")
        .map_or(15, |pair| pair[1].parse().expect("--rounds N"))
}

fn main() {
    let rounds = rounds();
    let limits = Limits::default();
    let temp = tempfile::Builder::new()
        .prefix("wakafleet-render-bench-")
        .tempdir()
        .expect("a temporary folder");
    let dir = temp.path();
    let summary = generate::write(dir, &generate::Shape::for_instances(10_600));
    let mut files: Vec<_> = std::fs::read_dir(dir.join("instances"))
        .expect("the instances")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    files.sort();
    let mut changed = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("an instance file");
        if text.contains("terminated") || changed == CHANGED {
            continue;
        }
        let name = path.file_stem().expect("a name").to_string_lossy();
        std::fs::write(path, generate::review_change(&text, &name, changed))
            .expect("an instance file");
        changed += 1;
    }
    let head = generate::commit_and_repack(dir, 1_767_312_000, "10,000 instances changed");
    let at: DateTime<Utc> = "2026-01-07T12:00:00Z".parse().expect("a time");
    let (plan, head_validation) = make_plan(dir, &summary.commit, &head, &limits, at);
    let commits = Commits {
        base: Some(&summary.commit),
        head: Some(&head),
    };
    println!(
        "render: {}; {} advisories; {rounds} rounds after 2 warmups, alternating",
        plan::render::summary_line(&plan),
        plan.advisories.len()
    );
    assert!(plan.actions.len() >= CHANGED * 99 / 100);

    let markdown = || plan::render::markdown(&plan, commits, Budget::default());
    let json = || {
        let entries = diag_render::entries(&head_validation.diagnostics, &head_validation.sources);
        plan::render::json(&plan, commits, entries)
    };
    let (markdown_bytes, json_bytes) = (markdown().len(), json().len());
    let (mut markdown_times, mut json_times) = (Vec::new(), Vec::new());
    for round in 0..rounds + 2 {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_markdown in order {
            let started = Instant::now();
            let bytes = if is_markdown {
                black_box(markdown()).len()
            } else {
                black_box(json()).len()
            };
            let took = started.elapsed();
            assert!(bytes > 0);
            if round >= 2 {
                if is_markdown {
                    markdown_times.push(took);
                } else {
                    json_times.push(took);
                }
            }
        }
    }
    println!(
        "  ms                                                              min   median      max"
    );
    let markdown_ms = row(
        &format!("markdown, budget 60,000 ({markdown_bytes} bytes)"),
        &mut markdown_times,
    );
    let json_ms = row(&format!("json ({json_bytes} bytes)"), &mut json_times);
    let ratio = markdown_ms / json_ms;
    println!(
        "markdown / json: {ratio:.2} (goal <= {GOAL_RATIO}); {}",
        if ratio <= GOAL_RATIO {
            "goal met"
        } else {
            "goal NOT met"
        }
    );
}

fn make_plan(
    dir: &Path,
    base: &str,
    head: &str,
    limits: &Limits,
    at: DateTime<Utc>,
) -> (plan::Plan, validate::Validation) {
    let read = |rev: &str| {
        validate::check(
            source::read_commit(dir, rev, limits)
                .expect("the commit")
                .inputs,
            limits,
        )
    };
    let mut head_validation = read(head);
    let desired = head_validation.take_valid().expect("a valid head");
    let base_fleet = read(base).take_valid().expect("a valid base");
    let actual = plan::converged_base(base_fleet.fleet());
    let plan = plan::compute(&desired, &head_validation.sources, &actual, at);
    (plan, head_validation)
}
