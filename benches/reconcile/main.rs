//! Reconcile benchmark: what a daemon's tick costs on a synthetic 10,000-instance fleet in a
//! git repository when it keeps a `validate::Cache`, against a cold read+validate+plan.
//!
//! Run with `cargo bench --bench reconcile` (see bench/README.md). Options after `--`:
//! `--instances N` (10000), `--rounds N` (15), `--warmups N` (2), `--keep` (keep the
//! generated repository and print where it is), `--strict` (exit 1 when a goal is not met).

// The load benchmark's generator makes the converged commit; not all of it is used here.
#[allow(dead_code)]
#[path = "../load/generate.rs"]
mod generate;
#[allow(dead_code)]
#[path = "../common/measure.rs"]
mod measure;

use std::{
    fs,
    hint::black_box,
    path::Path,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use wakafleet::{
    load::Limits,
    plan::{self, Actual, Plan},
    source,
    validate::{self, Cache, ValidFleet, Validation},
};

/// The goals of the daemon's issue: a tick after a one-file commit, and one with no change,
/// against the cold read+validate+plan.
const GOAL_ONE_FILE: f64 = 0.10;
const GOAL_NO_CHANGE: f64 = 0.05;

/// The fixed moment planned for.
const AT: &str = "2026-01-15T12:00:00Z";

struct Options {
    instances: usize,
    rounds: usize,
    warmups: usize,
    keep: bool,
    strict: bool,
}

fn main() -> ExitCode {
    let mut options = Options {
        instances: 10_000,
        rounds: 15,
        warmups: 2,
        keep: false,
        strict: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            args.next()
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--instances" => options.instances = number("--instances"),
            "--rounds" => options.rounds = number("--rounds").max(1),
            "--warmups" => options.warmups = number("--warmups"),
            "--keep" => options.keep = true,
            "--strict" => options.strict = true,
            // cargo bench passes --bench; anything else is a filter we do not use.
            _ => {}
        }
    }
    run(&options)
}

/// The wall time of a tick's three steps.
#[derive(Clone, Copy, Default)]
struct Tick {
    read: Duration,
    validate: Duration,
    plan: Duration,
}

impl Tick {
    fn total(&self) -> Duration {
        self.read + self.validate + self.plan
    }
}

/// Everything a tick makes, returned so that dropping it is not timed.
struct Made {
    plan: Plan,
    _kept: (Validation, ValidFleet),
}

fn run(options: &Options) -> ExitCode {
    let limits = Limits::default();
    let at: DateTime<Utc> = DateTime::parse_from_rfc3339(AT)
        .expect("AT is RFC 3339")
        .with_timezone(&Utc);
    let temp = tempfile::Builder::new()
        .prefix("wakafleet-reconcile-bench-")
        .tempdir()
        .expect("a temporary folder");
    let dir = temp.path().to_path_buf();

    // Commit 0: the load benchmark's fleet, which the actual state has converged to.
    let started = Instant::now();
    let shape = generate::Shape::for_instances(options.instances);
    let summary = generate::write(&dir, &shape);
    let base = validate::check(
        source::read_commit(&dir, &summary.commit, &limits)
            .expect("read_commit")
            .inputs,
        &limits,
    );
    report_diagnostics("generated", &base);
    assert!(base.diagnostics.is_empty());
    let actual = plan::converged_base(&base.fleet);
    drop(base);

    // Commits 1..=ticks: each toggles `ssl` in one more instance file.
    let ticks = options.warmups + options.rounds;
    let commits = one_file_commits(&dir, ticks);
    println!(
        "generated {} files ({:.1} MiB), {} instances, as commit {} and {ticks} commits of one \
         instance file each, packed; {:.1} s",
        summary.files,
        summary.bytes as f64 / (1 << 20) as f64,
        shape.instances,
        &summary.commit[..12],
        started.elapsed().as_secs_f64(),
    );

    // The daemon's cache starts warm on the converged commit, as after its first tick.
    let mut daemon = Cache::default();
    let (_, made) = tick(&dir, &summary.commit, &limits, &mut daemon, &actual, at);
    assert!(made.plan.is_empty(), "the converged commit plans nothing");
    drop(made);
    let warm_rss = measure::status_kb("VmRSS:");

    let mut cold_plain = Vec::new();
    let mut cold = Vec::new();
    let mut one_file = Vec::new();
    let mut no_change = Vec::new();
    let started = Instant::now();
    for (round, commit) in commits.iter().enumerate() {
        let measured = round >= options.warmups;
        // The cold cases go first or last in turn; the warm ones keep their order, a commit
        // and then the same commit again, as a daemon meets them.
        let cold_first = round % 2 == 0;
        let run_cold = |cold_plain: &mut Vec<Tick>, cold: &mut Vec<Tick>| {
            let (time, plain) = plain_tick(&dir, commit, &limits, &actual, at);
            let mut fresh = Cache::default();
            let (cached_time, made) = tick(&dir, commit, &limits, &mut fresh, &actual, at);
            assert_eq!(made.plan.actions, plain.plan.actions);
            drop((made, plain, fresh));
            if measured {
                cold_plain.push(time);
                cold.push(cached_time);
            }
        };
        if cold_first {
            run_cold(&mut cold_plain, &mut cold);
        }
        let before = daemon.stats();
        let (time, made) = tick(&dir, commit, &limits, &mut daemon, &actual, at);
        assert!(!made.plan.is_empty(), "a toggled `ssl` plans a configure");
        drop(made);
        let middle = daemon.stats();
        let (same_time, made) = tick(&dir, commit, &limits, &mut daemon, &actual, at);
        drop(made);
        let after = daemon.stats();
        assert_eq!(
            middle.decoded - before.decoded,
            1,
            "a one-file commit decodes one file"
        );
        assert_eq!(
            after.decoded - middle.decoded,
            0,
            "no change decodes nothing"
        );
        if !cold_first {
            run_cold(&mut cold_plain, &mut cold);
        }
        if measured {
            one_file.push(time);
            no_change.push(same_time);
        }
    }
    let stats = daemon.stats();
    println!(
        "\n{} rounds after {} warmups, {:.1} s; the daemon's cache holds {} contents and {} \
         decodings ({} files decoded, {} reused in all); wall time per tick in ms:",
        options.rounds,
        options.warmups,
        started.elapsed().as_secs_f64(),
        stats.contents,
        stats.decodings,
        stats.decoded,
        stats.reused,
    );
    println!(
        "VmRSS with the daemon's cache warm: {:.1} MiB at the first tick, {:.1} MiB at the last",
        warm_rss as f64 / 1024.0,
        measure::status_kb("VmRSS:") as f64 / 1024.0,
    );
    println!("  {:<58} {:>8} {:>8} {:>8}", "", "min", "median", "max");
    let cases: [(&str, &[Tick]); 4] = [
        (
            "(a) floor: cold, read_commit + check + compute",
            &cold_plain,
        ),
        (
            "(b) cold cache: read_commit_cached + check_cached + compute",
            &cold,
        ),
        ("(c) warm cache, one instance file changed", &one_file),
        ("(d) warm cache, no change", &no_change),
    ];
    let mut medians = Vec::new();
    for (label, ticks) in cases {
        let mut total: Vec<Duration> = ticks.iter().map(Tick::total).collect();
        let mut read: Vec<Duration> = ticks.iter().map(|tick| tick.read).collect();
        let mut validate: Vec<Duration> = ticks.iter().map(|tick| tick.validate).collect();
        let mut plan: Vec<Duration> = ticks.iter().map(|tick| tick.plan).collect();
        let mut loaded: Vec<Duration> =
            ticks.iter().map(|tick| tick.read + tick.validate).collect();
        let total_median = measure::row(label, &mut total);
        let loaded_median = measure::row("      of which read + validate", &mut loaded);
        measure::row("        read", &mut read);
        measure::row("        validate", &mut validate);
        let plan_median = measure::row("      of which plan::compute", &mut plan);
        medians.push((total_median, loaded_median, plan_median));
    }

    let (floor, floor_loaded, floor_plan) = medians[0];
    println!(
        "\ncold cache over the floor: {:.2} (what identifying and keeping every file adds)",
        medians[1].0 / floor
    );
    println!(
        "plan::compute is {:.0}% of the floor's tick, read + validate {:.0}%",
        100.0 * floor_plan / floor,
        100.0 * floor_loaded / floor
    );
    let verdict = |met: bool| if met { "met" } else { "NOT MET" };
    let mut all_met = true;
    for ((_, loaded, plan), what, goal) in [
        (medians[2], "(c) one-file tick", GOAL_ONE_FILE),
        (medians[3], "(d) no-change tick", GOAL_NO_CHANGE),
    ] {
        let ratio = (loaded + plan) / floor;
        all_met &= ratio <= goal;
        println!(
            "{what} / (a) of the medians: {ratio:.3} (goal <= {goal}): {}; read + validate \
             alone {:.3} of (a)'s read + validate; plan {:.0}% of the tick",
            verdict(ratio <= goal),
            loaded / floor_loaded,
            100.0 * plan / (loaded + plan),
        );
    }
    if options.keep {
        let kept = temp.keep();
        println!("kept the repository at {}", kept.display());
    }
    if options.strict && !all_met {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// A daemon's tick through `cache`: read the commit, validate it, plan it against `actual`.
fn tick(
    dir: &Path,
    commit: &str,
    limits: &Limits,
    cache: &mut Cache,
    actual: &Actual,
    at: DateTime<Utc>,
) -> (Tick, Made) {
    let start = Instant::now();
    let snapshot = source::read_commit_cached(dir, commit, limits, cache).expect("read");
    let read = Instant::now();
    let mut validation = black_box(validate::check_cached(snapshot.inputs, limits, cache));
    let desired = validation.take_valid().expect("every commit is valid");
    let validated = Instant::now();
    let plan = black_box(plan::compute(&desired, &validation.sources, actual, at));
    let planned = Instant::now();
    let tick = Tick {
        read: read - start,
        validate: validated - read,
        plan: planned - validated,
    };
    let made = Made {
        plan,
        _kept: (validation, desired),
    };
    (tick, made)
}

/// The same tick without a cache, as `plan` did before there was one.
fn plain_tick(
    dir: &Path,
    commit: &str,
    limits: &Limits,
    actual: &Actual,
    at: DateTime<Utc>,
) -> (Tick, Made) {
    let start = Instant::now();
    let snapshot = source::read_commit(dir, commit, limits).expect("read");
    let read = Instant::now();
    let mut validation = black_box(validate::check(snapshot.inputs, limits));
    let desired = validation.take_valid().expect("every commit is valid");
    let validated = Instant::now();
    let plan = black_box(plan::compute(&desired, &validation.sources, actual, at));
    let planned = Instant::now();
    let tick = Tick {
        read: read - start,
        validate: validated - read,
        plan: planned - validated,
    };
    let made = Made {
        plan,
        _kept: (validation, desired),
    };
    (tick, made)
}

/// Makes `count` commits on HEAD, each toggling `ssl` in one more instance file, then packs
/// the repository; returns the commits in order.
fn one_file_commits(dir: &Path, count: usize) -> Vec<String> {
    let mut instances: Vec<String> = fs::read_dir(dir.join("instances"))
        .expect("listing instances")
        .map(|entry| {
            let name = entry.expect("an instance file").file_name();
            format!("instances/{}", name.to_string_lossy())
        })
        .collect();
    instances.sort();
    let repository = git2::Repository::open(dir).expect("opening the repository");
    let mut commits = Vec::with_capacity(count);
    // Spread over the fleet, so the changed files are not all at its start.
    let step = (instances.len() / count.max(1)).max(1);
    for (index, path) in instances.iter().step_by(step).take(count).enumerate() {
        let text = fs::read_to_string(dir.join(path)).expect("reading an instance file");
        let toggled = [
            ("ssl = true", "ssl = false"),
            ("ssl = false", "ssl = true"),
            ("ssl: true", "ssl: false"),
            ("ssl: false", "ssl: true"),
        ]
        .into_iter()
        .find(|(from, _)| text.contains(from))
        .map(|(from, to)| text.replacen(from, to, 1))
        .unwrap_or_else(|| panic!("{path} sets no `ssl`"));
        fs::write(dir.join(path), toggled).expect("writing an instance file");
        let mut index_file = repository.index().expect("the index");
        index_file
            .add_path(Path::new(path))
            .expect("git add of one file");
        index_file.write().expect("writing the index");
        let tree = repository
            .find_tree(index_file.write_tree().expect("writing the tree"))
            .expect("the tree");
        let parent = repository
            .head()
            .and_then(|head| head.peel_to_commit())
            .expect("HEAD");
        let time = git2::Time::new(1_767_312_000 + index as i64 * 60, 0);
        let signature = git2::Signature::new("wakafleet bench", "bench@wakafleet.example", &time)
            .expect("signature");
        let commit = repository
            .commit(
                Some("HEAD"),
                &signature,
                &signature,
                &format!("Toggle ssl in {path}"),
                &tree,
                &[&parent],
            )
            .expect("git commit");
        commits.push(commit.to_string());
    }
    assert_eq!(commits.len(), count, "the fleet has too few instances");
    let status = Command::new("git")
        .args(["repack", "-a", "-d", "-q"])
        .current_dir(dir)
        .status()
        .expect("running git repack (is git installed?)");
    assert!(status.success(), "git repack failed: {status}");
    commits
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
