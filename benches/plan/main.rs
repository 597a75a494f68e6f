//! Plan benchmark: the whole `wakafleet plan --base` of a synthetic 10,000-instance fleet in
//! which 1,000 instances changed, 100 of them with an upgrade pending, against load+validate
//! of the same two commits.
//!
//! Run with `cargo bench --bench plan` (see bench/README.md). Options after `--`:
//! `--rounds N` (15), `--warmups N` (2), `--keep` (keep the generated repository and print
//! where it is). `--once load|plan DIR [N]` is the child mode used to measure peak memory;
//! with N it repeats the run N times, which is handy under `perf record`.

// The load benchmark's generator makes commit 1; not all of what it returns is used here.
#[allow(dead_code)]
#[path = "../load/generate.rs"]
mod generate;
#[path = "../common/measure.rs"]
mod measure;

use std::{
    collections::BTreeSet,
    fs,
    hint::black_box,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use semver::Version;
use wakafleet::{
    diag::render as diag_render,
    load::Limits,
    model::{ChannelMode, Fleet, Instance, ReleaseStatus},
    plan::{self, Actual, Kind, Plan, RunState, render::Commits},
    policy::Status,
    source,
    validate::{self, ValidFleet, Validation},
};

/// The goals of the requirement.
const GOAL_RATIO: f64 = 1.25;
const GOAL_MS: f64 = 300.0;

/// The shape of the change between the two commits.
const INSTANCES: usize = 10_000;
const CHANGED: usize = 1_000;
const UPGRADES: usize = 100;

/// The commits planned, as the command names them.
const BASE: &str = "HEAD~1";
const HEAD: &str = "HEAD";

/// The fixed moment planned for: a Thursday noon, outside the weekend window of the
/// `prod-manual` channel, so the upgrades it approves are deferred to that window.
const AT: &str = "2026-01-15T12:00:00Z";

struct Options {
    rounds: usize,
    warmups: usize,
    keep: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|arg| arg == "--once") {
        let what = args.get(at + 1).expect("--once load|plan DIR");
        let dir = PathBuf::from(args.get(at + 2).expect("--once load|plan DIR"));
        // An optional count repeats the run, for profiling (`perf record`).
        let repeat = args.get(at + 3).and_then(|n| n.parse().ok()).unwrap_or(1);
        for _ in 0..repeat {
            once(what, &dir);
        }
        return ExitCode::SUCCESS;
    }
    let mut options = Options {
        rounds: 15,
        warmups: 2,
        keep: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            args.next()
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--rounds" => options.rounds = number("--rounds").max(1),
            "--warmups" => options.warmups = number("--warmups"),
            "--keep" => options.keep = true,
            // cargo bench passes --bench; anything else is a filter we do not use.
            _ => {}
        }
    }
    run(&options)
}

fn at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(AT)
        .expect("AT is RFC 3339")
        .with_timezone(&Utc)
}

fn run(options: &Options) -> ExitCode {
    let limits = Limits::default();
    let temp = tempfile::Builder::new()
        .prefix("wakafleet-plan-bench-")
        .tempdir()
        .expect("a temporary folder");
    let dir = temp.path().to_path_buf();

    // Commit 1: the load benchmark's fleet.
    let started = Instant::now();
    let shape = generate::Shape::for_instances(INSTANCES);
    let summary = generate::write(&dir, &shape);
    println!(
        "generated commit 1 {}: {} files ({} TOML, {} YAML, {:.1} MiB), {} instances, {} partners, \
         {} tenants, 4 channels, {} releases",
        &summary.commit[..12],
        summary.files,
        summary.toml_files,
        summary.yaml_files,
        summary.bytes as f64 / (1 << 20) as f64,
        shape.instances,
        shape.partners,
        shape.tenants,
        summary.releases,
    );

    // Commit 2: 1,000 instances changed, 100 of them with a raised `version`.
    let change = change_instances(&dir, &limits);
    let head_commit = generate::commit_and_repack(
        &dir,
        1_767_312_000,
        "Change 1,000 instances and approve 100 upgrades",
    );
    let (pack_bytes, loose) = pack_size(&dir);
    println!(
        "generated commit 2 {}: {} instance files changed ({} `ssl` toggled, {} `capabilities` \
         changed, {} `custom_domain` changed or added), {} of them with `version` raised in a \
         manual-approval channel; {:.1} s",
        &head_commit[..12],
        change.files,
        change.ssl,
        change.capabilities,
        change.domains,
        change.upgrades,
        started.elapsed().as_secs_f64(),
    );
    println!(
        "git repository {} at {}: one packfile of {:.1} MiB, {} loose objects",
        if options.keep { "kept" } else { "(temporary)" },
        dir.display(),
        pack_bytes as f64 / (1 << 20) as f64,
        loose,
    );

    // Both commits must be valid with no diagnostics, or the benchmark measures the error
    // path; and the plan must have the actions the requirement describes.
    let (_, planned) = whole_plan(&dir, &limits, at());
    for (what, validation) in [("base", &planned.base), ("head", &planned.head)] {
        report_diagnostics(what, validation);
        assert!(
            validation.diagnostics.is_empty(),
            "the {what} commit must validate without diagnostics"
        );
    }
    assert_eq!(planned.desired.fleet().instances.len(), INSTANCES);
    let plan = &planned.plan;
    let upgrades = |status: Status| {
        plan.actions
            .iter()
            .filter(|action| action.kind == Kind::Upgrade && action.status == status)
            .count()
    };
    println!(
        "plan at {AT}: {}; upgrades {} ready, {} deferred, {} blocked; {} advisories; \
         {:.1} MiB of JSON",
        plan::render::summary_line(plan),
        upgrades(Status::Ready),
        upgrades(Status::Deferred),
        upgrades(Status::Blocked),
        plan.advisories.len(),
        planned.json.len() as f64 / (1 << 20) as f64,
    );
    let (configures, upgrade_count) = (
        plan.count_kind(Kind::Configure),
        plan.count_kind(Kind::Upgrade),
    );
    assert!(
        configures >= CHANGED,
        "the plan must have at least {CHANGED} configure actions, not {configures}"
    );
    assert!(
        upgrade_count >= UPGRADES,
        "the plan must have at least {UPGRADES} upgrade actions, not {upgrade_count}"
    );
    let expected_json = planned.json.clone();
    drop(planned);

    // (a) and (b), alternating which goes first, warmups first.
    let mut load_times = Vec::new();
    let mut plan_times = Vec::new();
    let mut stage_times: [Vec<Duration>; 6] = Default::default();
    let total = options.warmups + options.rounds;
    let started = Instant::now();
    for round in 0..total {
        let measured = round >= options.warmups;
        for step in 0..2 {
            if (round + step) % 2 == 0 {
                let (time, loaded) = measure::timed(|| load_both(&dir, &limits));
                assert!(!loaded.0.has_errors() && !loaded.2.has_errors());
                drop(loaded);
                if measured {
                    load_times.push(time);
                }
            } else {
                let start = Instant::now();
                let (stages, planned) = whole_plan(&dir, &limits, at());
                let time = start.elapsed();
                assert_eq!(planned.json.len(), expected_json.len());
                drop(planned);
                if measured {
                    plan_times.push(time);
                    for (times, stage) in stage_times.iter_mut().zip(stages.0) {
                        times.push(stage);
                    }
                }
            }
        }
    }
    println!(
        "\n{} rounds after {} warmups, {:.1} s; wall time per run in ms:",
        options.rounds,
        options.warmups,
        started.elapsed().as_secs_f64()
    );
    println!("  {:<58} {:>8} {:>8} {:>8}", "", "min", "median", "max");
    // Rounds in order, before `row` sorts them: the ratio within each round cancels drifts of
    // the machine's speed between rounds.
    let mut paired: Vec<f64> = plan_times
        .iter()
        .zip(&load_times)
        .map(|(plan, load)| plan.as_secs_f64() / load.as_secs_f64())
        .collect();
    paired.sort_by(f64::total_cmp);
    let load_median = measure::row(
        "(a) load+validate: read_commit + check, head and base",
        &mut load_times,
    );
    let plan_median = measure::row(
        "(b) whole plan: (a) + converge + compute + JSON",
        &mut plan_times,
    );
    let labels = [
        "      of which head: read_commit + check + take_valid",
        "      of which base: read_commit + check + take_valid",
        "      of which plan::converged_base",
        "      of which plan::compute",
        "      of which diag entries + plan::render::json",
        "      of which planning: converge + compute + JSON",
    ];
    for (label, times) in labels.into_iter().zip(stage_times.iter_mut()) {
        measure::row(label, times);
    }

    println!("\npeak memory (VmHWM) of one run in a fresh process:");
    let exe = std::env::current_exe().expect("the benchmark's own path");
    for what in ["load", "plan"] {
        let output = Command::new(&exe)
            .args(["--once", what])
            .arg(&dir)
            .output()
            .expect("running the benchmark as a child");
        assert!(
            output.status.success(),
            "child `--once {what}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report = String::from_utf8_lossy(&output.stdout);
        let field = |name: &str| -> u64 {
            report
                .split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.parse().ok())
                .unwrap_or_else(|| panic!("child `--once {what}` printed no {name}: {report}"))
        };
        let (hwm, start) = (field("hwm_kb="), field("start_rss_kb="));
        let label = match what {
            "load" => "(a) load+validate",
            _ => "(b) whole plan",
        };
        println!(
            "  {label:<22} VmHWM {:>7.1} MiB  (process start VmRSS {:.1} MiB)",
            hwm as f64 / 1024.0,
            start as f64 / 1024.0
        );
    }

    command(&dir, options.rounds, &expected_json);

    let ratio = plan_median / load_median;
    println!(
        "\nratio (b)/(a) within each round: min {:.2}, median {:.2}, max {:.2}; of the minimums: {:.2}",
        paired[0],
        paired[paired.len() / 2],
        paired[paired.len() - 1],
        plan_times[0].as_secs_f64() / load_times[0].as_secs_f64(),
    );
    let verdict = |met: bool| if met { "met" } else { "NOT MET" };
    println!(
        "ratio (b)/(a) of the medians: {ratio:.2} (goal <= {GOAL_RATIO}): {}",
        verdict(ratio <= GOAL_RATIO)
    );
    println!(
        "whole plan median for {INSTANCES} instances: {plan_median:.1} ms (goal < {GOAL_MS} ms): {}",
        verdict(plan_median < GOAL_MS)
    );
    if options.keep {
        let kept = temp.keep();
        println!("kept the repository at {}", kept.display());
    }
    ExitCode::SUCCESS
}

/// Load+validate of one commit, as `plan` does it.
fn load(dir: &Path, rev: &str, limits: &Limits) -> (Validation, String) {
    let snapshot = source::read_commit(dir, rev, limits).expect("read_commit");
    (validate::check(snapshot.inputs, limits), snapshot.commit)
}

/// (a): load+validate of the head, then of the base, in the order `plan` reads them; both
/// are kept, as `plan` keeps the head while it reads the base.
fn load_both(dir: &Path, limits: &Limits) -> (Validation, String, Validation, String) {
    let (head, head_commit) = load(dir, HEAD, limits);
    let (base, base_commit) = load(dir, BASE, limits);
    (head, head_commit, base, base_commit)
}

/// Everything (b) makes, returned so that dropping it is not timed.
struct Planned {
    head: Validation,
    desired: ValidFleet,
    base: Validation,
    base_fleet: ValidFleet,
    actual: Actual,
    plan: Plan,
    json: String,
}

/// The wall time of each step of (b): head, base, converge, compute, JSON, and the last
/// three together.
struct Stages([Duration; 6]);

/// (b): what `wakafleet plan DIR --base HEAD~1 --head HEAD --at AT --format json` does,
/// but printing.
fn whole_plan(dir: &Path, limits: &Limits, at: DateTime<Utc>) -> (Stages, Planned) {
    let start = Instant::now();
    let (mut head, head_commit) = load(dir, HEAD, limits);
    let desired = head.take_valid().expect("the head is valid");
    let loaded_head = Instant::now();
    let (mut base, base_commit) = load(dir, BASE, limits);
    let base_fleet = base.take_valid().expect("the base is valid");
    let loaded_base = Instant::now();
    let actual = black_box(plan::converged_base(base_fleet.fleet()));
    let converged = Instant::now();
    let plan = black_box(plan::compute(&desired, &head.sources, &actual, at));
    let computed = Instant::now();
    let commits = Commits {
        base: Some(&base_commit),
        head: Some(&head_commit),
    };
    let entries = diag_render::entries(&head.diagnostics, &head.sources);
    let json = black_box(plan::render::json(&plan, commits, entries) + "\n");
    let rendered = Instant::now();
    let stages = Stages([
        loaded_head - start,
        loaded_base - loaded_head,
        converged - loaded_base,
        computed - converged,
        rendered - computed,
        rendered - loaded_base,
    ]);
    let planned = Planned {
        head,
        desired,
        base,
        base_fleet,
        actual,
        plan,
        json,
    };
    (stages, planned)
}

/// Child mode: one run of (a) or (b), then the peak resident set size.
fn once(what: &str, dir: &Path) {
    let limits = Limits::default();
    let start = measure::status_kb("VmRSS:");
    let count = match what {
        "load" => {
            let loaded = black_box(load_both(dir, &limits));
            assert!(!loaded.0.has_errors() && !loaded.2.has_errors());
            loaded.0.fleet.instances.len()
        }
        "plan" => {
            let (_, planned) = whole_plan(dir, &limits, at());
            let planned = black_box(planned);
            // Every part is alive until here, as in `plan` until it prints.
            black_box((&planned.base_fleet, &planned.actual));
            planned.plan.actions.len()
        }
        other => panic!("--once takes load or plan, not {other}"),
    };
    println!(
        "what={what} count={count} hwm_kb={} start_rss_kb={start}",
        measure::status_kb("VmHWM:")
    );
}

fn report_diagnostics(what: &str, validation: &Validation) {
    if validation.diagnostics.is_empty() {
        return;
    }
    eprintln!(
        "the {what} commit has {} diagnostics; the first:",
        validation.diagnostics.len()
    );
    for diagnostic in validation.diagnostics.iter().take(10) {
        eprintln!(
            "  {} {} in {}: {}",
            diagnostic.severity.as_str(),
            diagnostic.code,
            validation.sources.path(diagnostic.primary.file),
            diagnostic.message
        );
    }
}

/// The real command, end to end, for information: the binary cargo built for this
/// benchmark (target/release/wakafleet), spawned `rounds` times.
fn command(dir: &Path, rounds: usize, expected_json: &str) {
    let exe = Path::new(env!("CARGO_BIN_EXE_wakafleet"));
    println!("\nthe command, end to end (info):");
    if !exe.exists() {
        println!("  skipped: {} does not exist", exe.display());
        return;
    }
    let args = |command: &mut Command| {
        command.arg("plan").arg(dir).args([
            "--base", BASE, "--head", HEAD, "--at", AT, "--format", "json",
        ]);
    };
    let mut times = Vec::new();
    let mut identical = true;
    for _ in 0..rounds + 1 {
        let mut command = Command::new(exe);
        args(&mut command);
        let (time, output) = measure::timed(|| command.output().expect("running wakafleet plan"));
        assert!(
            output.status.success(),
            "wakafleet plan failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        identical &= output.stdout == expected_json.as_bytes();
        times.push(time);
    }
    // The first run is a warmup.
    times.remove(0);
    println!("  {:<58} {:>8} {:>8} {:>8}", "", "min", "median", "max");
    measure::row(
        &format!("wakafleet plan --base {BASE} --head {HEAD} --format json"),
        &mut times,
    );
    println!(
        "  its JSON is {} the JSON of (b)",
        if identical {
            "identical to"
        } else {
            "NOT identical to"
        }
    );
    // GNU time reports the peak resident set size of the command in kB.
    let time = Path::new("/usr/bin/time");
    if time.exists() {
        let mut command = Command::new(time);
        command.args(["-f", "maxrss_kb=%M"]).arg(exe);
        args(&mut command);
        let output = command
            .output()
            .expect("running /usr/bin/time wakafleet plan");
        let stderr = String::from_utf8_lossy(&output.stderr);
        match stderr
            .lines()
            .find_map(|line| line.strip_prefix("maxrss_kb="))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
        {
            Some(kb) => println!(
                "  peak resident set (GNU time %M): {:.1} MiB",
                kb as f64 / 1024.0
            ),
            None => println!("  peak resident set: /usr/bin/time printed none: {stderr}"),
        }
    } else {
        println!("  peak resident set: skipped, no /usr/bin/time");
    }
}

/// What `change_instances` changed.
struct Change {
    files: usize,
    ssl: usize,
    capabilities: usize,
    domains: usize,
    upgrades: usize,
}

/// `count` items spread evenly over `items`.
fn spread<T: Copy>(items: &[T], count: usize) -> Vec<T> {
    assert!(
        items.len() >= count,
        "{count} wanted but only {} candidates",
        items.len()
    );
    (0..count).map(|k| items[k * items.len() / count]).collect()
}

/// Edits commit 1's instance files in the work tree: `CHANGED` instances get a
/// configuration change, and `UPGRADES` of them, all active in a manual-approval channel and
/// below the newest stable release, also get their `version` raised to it, which approves
/// the upgrade.
fn change_instances(dir: &Path, limits: &Limits) -> Change {
    let (validation, _) = load(dir, HEAD, limits);
    report_diagnostics("generated", &validation);
    assert!(validation.diagnostics.is_empty());
    let fleet: &Fleet = &validation.fleet;
    let newest: Version = fleet
        .releases
        .values()
        .rev()
        .find(|release| release.status == ReleaseStatus::Stable)
        .expect("a stable release")
        .version
        .value
        .clone();
    let running = |instance: &Instance| plan::effective_state(fleet, instance);
    let upgradable: Vec<&Instance> = fleet
        .instances
        .values()
        .map(|instance| &**instance)
        .filter(|instance| {
            fleet.channels[&instance.channel.value].mode == ChannelMode::ManualApproval
                && running(instance) == RunState::Active
                && instance.approved_version.is_none()
                && instance
                    .version
                    .as_ref()
                    .is_some_and(|version| version.value < newest)
        })
        .collect();
    let upgraded = spread(&upgradable, UPGRADES);
    let upgraded_names: BTreeSet<&str> = upgraded.iter().map(|i| i.name.value.as_str()).collect();
    let others: Vec<&Instance> = fleet
        .instances
        .values()
        .map(|instance| &**instance)
        .filter(|instance| {
            running(instance) != RunState::Terminated
                && !upgraded_names.contains(instance.name.value.as_str())
        })
        .collect();
    let mut changed = spread(&others, CHANGED - UPGRADES);
    changed.extend(upgraded);
    changed.sort_by(|a, b| a.name.value.cmp(&b.name.value));

    let mut change = Change {
        files: 0,
        ssl: 0,
        capabilities: 0,
        domains: 0,
        upgrades: 0,
    };
    for (k, instance) in changed.into_iter().enumerate() {
        let name = &instance.name.value;
        let path = validation.sources.path(instance.name.span.file);
        let yaml = !path.ends_with(".toml");
        let mut lines: Vec<String> = validation
            .sources
            .text(instance.name.span.file)
            .lines()
            .map(str::to_string)
            .collect();
        let string = |value: &str| {
            if yaml {
                value.to_string()
            } else {
                format!("\"{value}\"")
            }
        };
        match k % 3 {
            0 => {
                set(&mut lines, yaml, "ssl", &(!instance.ssl).to_string());
                change.ssl += 1;
            }
            1 => {
                let new: &[&str] = if instance.capabilities == ["pos", "inventory"] {
                    &["payments", "delivery"]
                } else {
                    &["pos", "inventory"]
                };
                let items: Vec<String> = new.iter().map(|item| string(item)).collect();
                let value = format!("[{}]", items.join(", "));
                set(&mut lines, yaml, "capabilities", &value);
                change.capabilities += 1;
            }
            _ => {
                match &instance.custom_domain {
                    Some(domain) => {
                        let value = string(&format!("v2-{}", domain.value));
                        set(&mut lines, yaml, "custom_domain", &value);
                    }
                    None => {
                        let value = string(&format!("{name}.bench.example"));
                        let at = find(&lines, yaml, "ssl") + 1;
                        lines.insert(at, line(yaml, "custom_domain", &value));
                    }
                }
                change.domains += 1;
            }
        }
        if upgraded_names.contains(name.as_str()) {
            set(&mut lines, yaml, "version", &format!("\"{newest}\""));
            change.upgrades += 1;
        }
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(dir.join(path), text).expect("writing an instance file");
        change.files += 1;
    }
    change
}

/// `key = value` or `key: value`.
fn line(yaml: bool, key: &str, value: &str) -> String {
    if yaml {
        format!("{key}: {value}")
    } else {
        format!("{key} = {value}")
    }
}

/// The index of the top-level line that sets `key`.
fn find(lines: &[String], yaml: bool, key: &str) -> usize {
    let prefix = if yaml {
        format!("{key}:")
    } else {
        format!("{key} =")
    };
    lines
        .iter()
        .position(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{key}` line in {lines:?}"))
}

fn set(lines: &mut [String], yaml: bool, key: &str, value: &str) {
    let at = find(lines, yaml, key);
    lines[at] = line(yaml, key, value);
}

/// The bytes of the packfiles and the number of loose objects.
fn pack_size(dir: &Path) -> (u64, usize) {
    let objects = dir.join(".git/objects");
    let mut loose = 0;
    for entry in fs::read_dir(&objects).expect("listing .git/objects") {
        let entry = entry.expect("an entry of .git/objects");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            loose += fs::read_dir(entry.path()).map_or(0, Iterator::count);
        }
    }
    let mut bytes = 0;
    for entry in fs::read_dir(objects.join("pack")).expect("listing the packs") {
        let entry = entry.expect("an entry of .git/objects/pack");
        if entry.path().extension().is_some_and(|ext| ext == "pack") {
            bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    (bytes, loose)
}
