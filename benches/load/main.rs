//! Load benchmark: `read_commit` + `validate::check` of a synthetic 10,000-instance fleet,
//! against the floor of reading the same blobs with git2 and parsing them into untyped values.
//!
//! Run with `cargo bench --bench load` (see bench/README.md). Options after `--`:
//! `--instances N` (10000), `--rounds N` (15), `--warmups N` (2), `--keep` (keep the
//! generated fleet and print where it is), `--strict` (exit 1 when a goal is not met).
//! `--once floor|load|folder DIR [N]` is the child mode used to measure peak memory; with N it
//! repeats the run N times, which is handy under `perf record`.

mod generate;
#[path = "../common/measure.rs"]
mod measure;

use std::{
    borrow::Cow,
    hint::black_box,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use git2::{ObjectType, Odb, Repository, Tree};
use saphyr_parser::{Event, Parser};
use wakafleet::{
    load::{self, Input, Limits},
    source, validate,
};

/// The goals of the requirement.
const GOAL_RATIO: f64 = 1.5;
const GOAL_MS: f64 = 150.0;

struct Options {
    instances: usize,
    rounds: usize,
    warmups: usize,
    keep: bool,
    strict: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|arg| arg == "--once") {
        let what = args.get(at + 1).expect("--once floor|load|folder DIR");
        let dir = PathBuf::from(args.get(at + 2).expect("--once floor|load|folder DIR"));
        // An optional count repeats the run, for profiling (`perf record`).
        let repeat = args.get(at + 3).and_then(|n| n.parse().ok()).unwrap_or(1);
        for _ in 0..repeat {
            once(what, &dir);
        }
        return ExitCode::SUCCESS;
    }
    let mut options = Options {
        instances: 10_000,
        rounds: 15,
        warmups: 2,
        keep: false,
        strict: false,
    };
    let mut args = args.into_iter();
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

fn run(options: &Options) -> ExitCode {
    let limits = Limits::default();
    let temp = tempfile::Builder::new()
        .prefix("wakafleet-bench-")
        .tempdir()
        .expect("a temporary folder");
    let dir = temp.path().to_path_buf();

    let started = Instant::now();
    let shape = generate::Shape::for_instances(options.instances);
    let summary = generate::write(&dir, &shape);
    println!(
        "generated {} files ({} TOML, {} YAML, {:.1} MiB) in {:.1} s: {} instances, {} partners, \
         {} tenants, 4 channels, {} releases",
        summary.files,
        summary.toml_files,
        summary.yaml_files,
        summary.bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64(),
        shape.instances,
        shape.partners,
        shape.tenants,
        summary.releases,
    );
    println!(
        "git repository {} at {}: commit {}, one packfile of {:.1} MiB, {} loose objects",
        if options.keep { "kept" } else { "(temporary)" },
        dir.display(),
        &summary.commit[..12],
        summary.pack_bytes as f64 / (1 << 20) as f64,
        summary.loose_objects,
    );

    // The fleet must be valid, or the benchmark measures the error path.
    let validation = validate::check(
        source::read_commit(&dir, "HEAD", &limits)
            .expect("read_commit")
            .inputs,
        &limits,
    );
    let errors = validation
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .count();
    if errors > 0 || !validation.diagnostics.is_empty() {
        eprintln!(
            "the synthetic fleet has {} diagnostics ({errors} errors); the first:",
            validation.diagnostics.len()
        );
        for diagnostic in validation.diagnostics.iter().take(10) {
            eprintln!(
                "  {} {} {}..{} in {}: {}",
                diagnostic.severity.as_str(),
                diagnostic.code,
                diagnostic.primary.start,
                diagnostic.primary.end,
                validation.sources.path(diagnostic.primary.file),
                diagnostic.message
            );
        }
    }
    assert!(
        !validation.has_errors(),
        "the synthetic fleet must validate without errors"
    );
    assert_eq!(
        validation.fleet.instances.len(),
        shape.instances,
        "every instance must be in the fleet"
    );
    drop(validation);
    let floor_documents = floor(&dir).len();
    assert_eq!(
        floor_documents, summary.files,
        "the floor must parse every file"
    );

    // The measured things, run in a rotating order each round so none always goes first.
    let mut floor_times = Vec::new();
    let mut load_times = Vec::new();
    let mut read_commit_times = Vec::new();
    let mut check_times = Vec::new();
    let mut folder_times = Vec::new();
    let mut git_read_times = Vec::new();
    let mut spanned_parse_times = Vec::new();
    let total = options.warmups + options.rounds;
    let started = Instant::now();
    for round in 0..total {
        let measured = round >= options.warmups;
        for step in 0..5 {
            match (round + step) % 5 {
                0 => {
                    let (time, documents) = measure::timed(|| floor(&dir));
                    assert_eq!(documents.len(), summary.files);
                    drop(documents);
                    if measured {
                        floor_times.push(time);
                    }
                }
                1 => {
                    let start = Instant::now();
                    let snapshot =
                        black_box(source::read_commit(&dir, "HEAD", &limits).expect("read_commit"));
                    let read = start.elapsed();
                    let validation = black_box(validate::check(snapshot.inputs, &limits));
                    let all = start.elapsed();
                    assert!(!validation.has_errors());
                    drop(validation);
                    if measured {
                        load_times.push(all);
                        read_commit_times.push(read);
                        check_times.push(all - read);
                    }
                }
                2 => {
                    let (time, validation) = measure::timed(|| {
                        let inputs = source::read_folder(&dir, &limits).expect("read_folder");
                        validate::check(inputs, &limits)
                    });
                    // Dropped after the timer stopped, as for (a) and (b).
                    assert!(!validation.has_errors());
                    drop(validation);
                    if measured {
                        folder_times.push(time);
                    }
                }
                3 => {
                    let (time, blobs) = measure::timed(|| git_read(&dir));
                    assert_eq!(blobs.len(), summary.files);
                    drop(blobs);
                    if measured {
                        git_read_times.push(time);
                    }
                }
                _ => {
                    let inputs = source::read_commit(&dir, "HEAD", &limits)
                        .expect("read_commit")
                        .inputs;
                    let (time, documents) = spanned_parse(inputs, &limits);
                    assert_eq!(documents, summary.files);
                    if measured {
                        spanned_parse_times.push(time);
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
    let mut paired: Vec<f64> = load_times
        .iter()
        .zip(&floor_times)
        .map(|(load, floor)| load.as_secs_f64() / floor.as_secs_f64())
        .collect();
    paired.sort_by(f64::total_cmp);
    let floor_median = measure::row(
        "(a) floor: git2 blobs + untyped toml::Table / YAML parse",
        &mut floor_times,
    );
    let load_median = measure::row("(b) load+validate: read_commit + check", &mut load_times);
    measure::row("      of which read_commit", &mut read_commit_times);
    measure::row("      of which check", &mut check_times);
    measure::row("(c) folder: read_folder + check (info)", &mut folder_times);
    measure::row(
        "info: git2 blobs only, no parse (floor's git part)",
        &mut git_read_times,
    );
    measure::row(
        "info: load::read + load::parse (check's spanned parse)",
        &mut spanned_parse_times,
    );

    println!("\npeak memory (VmHWM) of one run in a fresh process:");
    let exe = std::env::current_exe().expect("the benchmark's own path");
    for what in ["floor", "load", "folder"] {
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
            "floor" => "(a) floor",
            "load" => "(b) load+validate",
            _ => "(c) folder (info)",
        };
        println!(
            "  {label:<22} VmHWM {:>7.1} MiB  (process start VmRSS {:.1} MiB)",
            hwm as f64 / 1024.0,
            start as f64 / 1024.0
        );
    }

    let ratio = load_median / floor_median;
    let ratio_met = ratio <= GOAL_RATIO;
    println!(
        "\nratio (b)/(a) within each round: min {:.2}, median {:.2}, max {:.2}; of the minimums: {:.2}",
        paired[0],
        paired[paired.len() / 2],
        paired[paired.len() - 1],
        load_times[0].as_secs_f64() / floor_times[0].as_secs_f64(),
    );
    let time_met = load_median < GOAL_MS;
    let verdict = |met: bool| if met { "met" } else { "NOT MET" };
    println!(
        "ratio (b)/(a) of the medians: {ratio:.2} (goal <= {GOAL_RATIO}): {}",
        verdict(ratio_met)
    );
    println!(
        "load+validate median for {} instances: {load_median:.1} ms (goal < {GOAL_MS} ms): {}",
        shape.instances,
        verdict(time_met)
    );
    if options.keep {
        let kept = temp.keep();
        println!("kept the fleet at {}", kept.display());
    }
    if options.strict && !(ratio_met && time_met) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Child mode: one run of one measured thing, then the peak resident set size.
fn once(what: &str, dir: &Path) {
    let limits = Limits::default();
    let start = measure::status_kb("VmRSS:");
    let count = match what {
        "floor" => black_box(floor(dir)).len(),
        "git" => black_box(git_read(dir)).len(),
        "load" => {
            let snapshot = source::read_commit(dir, "HEAD", &limits).expect("read_commit");
            let validation = validate::check(snapshot.inputs, &limits);
            assert!(!validation.has_errors());
            black_box(validation).fleet.instances.len()
        }
        "folder" => {
            let inputs = source::read_folder(dir, &limits).expect("read_folder");
            let validation = validate::check(inputs, &limits);
            assert!(!validation.has_errors());
            black_box(validation).fleet.instances.len()
        }
        other => panic!("--once takes floor, load, folder or git, not {other}"),
    };
    println!(
        "what={what} count={count} hwm_kb={} start_rss_kb={start}",
        measure::status_kb("VmHWM:")
    );
}

/// An untyped YAML value, built from saphyr-parser events (the parser wakafleet uses) with
/// owned strings, as a YAML loader would; scalars are left untyped.
#[allow(dead_code)]
enum Yaml {
    Scalar(String),
    Sequence(Vec<Yaml>),
    Mapping(Vec<(Yaml, Yaml)>),
    Alias(usize),
}

/// An untyped parse of one file.
#[allow(dead_code)]
enum Document {
    Toml(toml::Table),
    Yaml(Option<Yaml>),
}

fn parse_yaml(text: &str) -> Option<Yaml> {
    enum Frame {
        Sequence(Vec<Yaml>),
        Mapping(Vec<(Yaml, Yaml)>, Option<Yaml>),
    }
    fn place(stack: &mut [Frame], root: &mut Option<Yaml>, value: Yaml) {
        match stack.last_mut() {
            None => *root = Some(value),
            Some(Frame::Sequence(items)) => items.push(value),
            Some(Frame::Mapping(entries, key)) => match key.take() {
                None => *key = Some(value),
                Some(key) => entries.push((key, value)),
            },
        }
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut root = None;
    for event in Parser::new_from_str(text) {
        let (event, _span) = event.expect("the floor's YAML parses");
        match event {
            Event::Scalar(text, ..) => {
                place(&mut stack, &mut root, Yaml::Scalar(Cow::into_owned(text)))
            }
            Event::Alias(anchor) => place(&mut stack, &mut root, Yaml::Alias(anchor)),
            Event::SequenceStart(..) => stack.push(Frame::Sequence(Vec::new())),
            Event::MappingStart(..) => stack.push(Frame::Mapping(Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let value = match stack.pop().expect("balanced collections") {
                    Frame::Sequence(items) => Yaml::Sequence(items),
                    Frame::Mapping(entries, _) => Yaml::Mapping(entries),
                };
                place(&mut stack, &mut root, value);
            }
            _ => {}
        }
    }
    root
}

/// The floor: open the repository, walk HEAD's tree, read every blob with git2 and parse
/// each into an untyped value. Returns the parsed files, so dropping them is not timed.
fn floor(dir: &Path) -> Vec<Document> {
    let mut documents = Vec::new();
    each_blob_at_head(dir, &mut |name, bytes| {
        let text = std::str::from_utf8(bytes).expect("UTF-8");
        let document = if name.ends_with(b".toml") {
            Document::Toml(
                text.parse::<toml::Table>()
                    .expect("the floor's TOML parses"),
            )
        } else if name.ends_with(b".yaml") || name.ends_with(b".yml") {
            Document::Yaml(parse_yaml(text))
        } else {
            return;
        };
        documents.push(document);
    });
    documents
}

/// The git part of the floor alone: every blob read, none parsed.
fn git_read(dir: &Path) -> Vec<Vec<u8>> {
    let mut blobs = Vec::new();
    each_blob_at_head(dir, &mut |_, bytes| blobs.push(bytes.to_vec()));
    blobs
}

/// Opens the repository at `dir` and calls `f` with the name and bytes of every blob of
/// HEAD's tree.
fn each_blob_at_head(dir: &Path, f: &mut impl FnMut(&[u8], &[u8])) {
    let repository = Repository::open(dir).expect("opening the repository");
    let tree = repository
        .revparse_single("HEAD")
        .and_then(|object| object.peel_to_tree())
        .expect("HEAD's tree");
    let odb = repository.odb().expect("the object database");
    walk(&repository, &odb, &tree, f);
}

fn walk(repository: &Repository, odb: &Odb<'_>, tree: &Tree<'_>, f: &mut impl FnMut(&[u8], &[u8])) {
    for entry in tree.iter() {
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let subtree = repository.find_tree(entry.id()).expect("a subtree");
                walk(repository, odb, &subtree, f);
            }
            Some(ObjectType::Blob) => {
                let object = odb.read(entry.id()).expect("a blob");
                f(entry.name_bytes(), object.data());
            }
            _ => {}
        }
    }
}

/// What `check` spends on its own spanned parse: `load::read` (UTF-8, sorting) and
/// `load::parse` into `Node` trees, without decoding into the model. Returns the time taken
/// before anything is dropped, and the number of documents.
fn spanned_parse(inputs: Vec<Input>, limits: &Limits) -> (Duration, usize) {
    let start = Instant::now();
    let loaded = load::read(inputs, limits);
    let (documents, errors) = load::parse(&loaded, limits);
    let time = start.elapsed();
    assert!(errors.is_empty());
    (time, black_box(&documents).len())
}
