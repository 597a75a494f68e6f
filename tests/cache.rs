//! Incremental reading on real git repositories: `source::read_commit_cached` reads only the
//! blobs a `validate::Cache` does not hold, a work tree and a commit share the cache, and the
//! validations through it equal the plain ones.

mod common;

use std::path::Path;

use common::{FLEET_TOML, commit_all, write};
use wakafleet::{
    diag::render::{self, Color},
    load::Limits,
    source,
    validate::{self, Cache, CachedContent, CachedInput},
};

fn partner(id: &str) -> String {
    format!("id = \"{id}\"\nname = \"P\"\nemail = \"ops@{id}.example\"\n")
}

/// What the source did with each file of a snapshot: `read`, `known` or `other`, by path.
fn how_read(inputs: &[CachedInput]) -> Vec<(String, &'static str)> {
    inputs
        .iter()
        .map(|input| {
            let how = match input.content {
                CachedContent::Read { .. } => "read",
                CachedContent::Known(_) => "known",
                CachedContent::Other(_) => "other",
            };
            (input.path.clone(), how)
        })
        .collect()
}

/// Reads `rev` through `cache` and validates it, asserting the result renders as the plain
/// `read_commit` + `check` does; returns how each file was read and how many were decoded.
fn check(dir: &Path, rev: &str, cache: &mut Cache) -> (Vec<(String, &'static str)>, u64) {
    let limits = Limits::default();
    let before = cache.stats().decoded;
    let snapshot = source::read_commit_cached(dir, rev, &limits, cache).expect("read");
    let read = how_read(&snapshot.inputs);
    let cached = validate::check_cached(snapshot.inputs, &limits, cache);
    let plain = validate::check(
        source::read_commit(dir, rev, &limits).expect("read").inputs,
        &limits,
    );
    assert_eq!(cached.fleet, plain.fleet);
    assert_eq!(cached.diagnostics, plain.diagnostics);
    assert_eq!(
        render::text(&cached.diagnostics, &cached.sources, Color::Never),
        render::text(&plain.diagnostics, &plain.sources, Color::Never),
    );
    (read, cache.stats().decoded - before)
}

#[test]
fn only_blobs_the_cache_does_not_hold_are_read() {
    let repo = tempfile::tempdir().expect("temporary folder");
    let dir = repo.path();
    write(dir, "fleet/fleet.toml", FLEET_TOML);
    write(dir, "fleet/partners/a.toml", partner("a"));
    write(dir, "fleet/partners/b.toml", partner("b"));
    commit_all(dir, "two partners");
    write(
        dir,
        "fleet/partners/b.toml",
        partner("b").replace("ops@", "team@"),
    );
    write(dir, "fleet/partners/c.toml", "id = \"c\"\nname = \n");
    commit_all(dir, "one partner changed, one broken added");

    let fleet = dir.join("fleet");
    let mut cache = Cache::default();
    let (read, decoded) = check(&fleet, "HEAD~1", &mut cache);
    assert!(read.iter().all(|(_, how)| *how == "read"), "{read:?}");
    assert_eq!(decoded, 3);

    let (read, decoded) = check(&fleet, "HEAD", &mut cache);
    let expected = [
        ("fleet.toml", "known"),
        ("partners/a.toml", "known"),
        ("partners/b.toml", "read"),
        ("partners/c.toml", "read"),
    ];
    let expected: Vec<(String, &str)> = expected
        .iter()
        .map(|(path, how)| (path.to_string(), *how))
        .collect();
    assert_eq!(read, expected);
    assert_eq!(decoded, 2);

    // Nothing new: nothing read, nothing decoded.
    let (read, decoded) = check(&fleet, "HEAD", &mut cache);
    assert!(read.iter().all(|(_, how)| *how == "known"), "{read:?}");
    assert_eq!(decoded, 0);
}

#[test]
fn a_work_tree_and_its_commit_share_the_cache() {
    let repo = tempfile::tempdir().expect("temporary folder");
    let dir = repo.path();
    write(dir, "fleet/fleet.toml", FLEET_TOML);
    write(
        dir,
        "fleet/partners/a.yaml",
        "id: a\nname: P\nemail: ops@a.example\n",
    );
    commit_all(dir, "one partner");

    let limits = Limits::default();
    let mut cache = Cache::default();
    let work_tree =
        source::identify(source::read_folder(&dir.join("fleet"), &limits).expect("read"));
    let validation = validate::check_cached(work_tree, &limits, &mut cache);
    assert_eq!(validation.diagnostics, Vec::new());
    assert_eq!(cache.stats().decoded, 2);
    let (read, decoded) = check(&dir.join("fleet"), "HEAD", &mut cache);
    assert!(read.iter().all(|(_, how)| *how == "known"), "{read:?}");
    assert_eq!(decoded, 0);
}
