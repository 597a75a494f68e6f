//! The law of the cache: validating through it gives exactly what `check` gives, whatever it
//! remembers; and it decodes only the files it does not know.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::{
    diag::render::{self, Color},
    load::{Content, Input, Limits},
    plan::{self, Actual, render::Commits},
    validate::{self, Cache, CachedContent, CachedInput, ContentId, Stats, Validation},
};

/// A small fleet whose files set every field that holds a span, so moving a decoding to
/// another file id is checked for all of them.
const FLEET: &[(&str, &str)] = &[
    (
        "fleet.toml",
        "name = \"t\"\n[regions.ng-lagos]\ncountry = \"NG\"\ndocker = \"unix:///d.sock\"\ndatabase = \"env:DB\"\nbackups = \"/b\"\ncapacity = { cpu = \"64\", memory = \"64G\", storage = \"1T\" }\n[sizes.small]\ncpu = \"1\"\nmemory = \"1G\"\nstorage = \"10G\"\n",
    ),
    (
        "partners/p.toml",
        "id = \"p\"\nname = \"P\"\nemail = \"o@p.example\"\n",
    ),
    ("tenants/t.yaml", "id: t\npartner: p\nname: T\n"),
    (
        "channels/m.toml",
        "name = \"m\"\nmode = \"manual-approval\"\n[maintenance_window]\ndays = [\"sat\"]\nstart = \"02:00\"\nduration = \"2h\"\ntimezone = \"Africa/Lagos\"\n",
    ),
    (
        "releases/1.0.0.toml",
        "version = \"1.0.0\"\nstatus = \"stable\"\nreleased = 2026-01-01\nimage = \"i\"\n",
    ),
    (
        "releases/1.1.0.toml",
        "version = \"1.1.0\"\nstatus = \"stable\"\nreleased = 2026-01-02\nimage = \"i\"\nupgrade_from = \">=1.0.0\"\n",
    ),
    (
        "instances/api.toml",
        "name = \"api\"\ntype = \"shared-saas\"\npartner = \"p\"\ntenant = \"t\"\nregion = \"ng-lagos\"\ndata_residency = [\"NG\"]\ncustom_domain = \"api.p.example\"\nsize = \"small\"\nchannel = \"m\"\nversion = \"1.0.0\"\napproved_version = \"1.1.0\"\n[backup]\nschedule = \"0 2 * * *\"\n",
    ),
    (
        "instances/web.yaml",
        "name: web\ntype: shared-saas\npartner: p\nregion: ng-lagos\ndata_residency: [NG]\nresources: { cpu: \"2\", memory: 2G, storage: 20G }\nchannel: m\nversion: 1.1.0\n",
    ),
];

/// The fleet with some files replaced, added (`Some`) or removed (`None`).
fn fleet_with(changes: &[(&str, Option<&str>)]) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = FLEET
        .iter()
        .map(|(path, text)| (path.to_string(), text.to_string()))
        .collect();
    for (path, text) in changes {
        files.retain(|(existing, _)| existing != path);
        if let Some(text) = text {
            files.push((path.to_string(), text.to_string()));
        }
    }
    files
}

/// Any id that differs for different bytes will do: the core cannot compute git's.
fn id_of(bytes: &[u8]) -> ContentId {
    let digest = Sha256::digest(bytes);
    let mut id = [0; 20];
    id.copy_from_slice(&digest[..20]);
    ContentId::from_bytes(id)
}

/// Validates `files` through `cache`, handing over known bytes as a source would, asserts
/// that the result is what `check` gives, and returns what the cache decoded and reused.
fn check(cache: &mut Cache, files: &[(String, String)]) -> (u64, u64) {
    let files: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(path, text)| (path.clone(), text.clone().into_bytes()))
        .collect();
    check_with(cache, &files, &Limits::default())
}

fn check_with(cache: &mut Cache, files: &[(String, Vec<u8>)], limits: &Limits) -> (u64, u64) {
    let before = cache.stats();
    let inputs = files
        .iter()
        .map(|(path, bytes)| {
            let id = id_of(bytes);
            let content = match cache.known(&id) {
                Some(known) => CachedContent::Known(known),
                None => CachedContent::Read {
                    id,
                    bytes: bytes.clone(),
                },
            };
            CachedInput {
                path: path.clone(),
                content,
            }
        })
        .collect();
    let cached = validate::check_cached(inputs, limits, cache);
    let plain = validate::check(
        files
            .iter()
            .map(|(path, bytes)| Input {
                path: path.clone(),
                content: Content::Bytes(bytes.clone()),
            })
            .collect(),
        limits,
    );
    assert_same(cached, plain);
    let after = cache.stats();
    (after.decoded - before.decoded, after.reused - before.reused)
}

/// Asserts two validations are equal, spans included, and render the same.
fn assert_same(mut cached: Validation, mut plain: Validation) {
    let files = |validation: &Validation| -> Vec<(String, String)> {
        let sources = &validation.sources;
        sources
            .ids()
            .map(|file| {
                (
                    sources.path(file).to_string(),
                    sources.text(file).to_string(),
                )
            })
            .collect()
    };
    assert_eq!(files(&cached), files(&plain));
    // `Spanned` compares values only; the debug form shows the spans too.
    assert_eq!(format!("{:?}", cached.fleet), format!("{:?}", plain.fleet));
    assert_eq!(cached.diagnostics, plain.diagnostics);
    assert_eq!(
        render::text(&cached.diagnostics, &cached.sources, Color::Never),
        render::text(&plain.diagnostics, &plain.sources, Color::Never),
    );
    let at: DateTime<Utc> = "2026-01-07T12:00:00Z".parse().expect("a time");
    let rendered = |validation: &mut Validation| {
        let valid = validation.take_valid()?;
        let plan = plan::compute(&valid, &validation.sources, &Actual::default(), at);
        Some(plan::render::text(
            &plan,
            Commits::default(),
            Color::Never,
            true,
        ))
    };
    assert_eq!(rendered(&mut cached), rendered(&mut plain));
}

#[test]
fn the_fixture_is_valid_and_plans_something() {
    let mut validation = validate::check_texts(fleet_with(&[]));
    assert_eq!(validation.diagnostics, Vec::new());
    assert!(validation.take_valid().is_some());
}

#[test]
fn a_cold_cache_decodes_every_file_and_a_warm_one_none() {
    let mut cache = Cache::default();
    let files = fleet_with(&[]);
    assert_eq!(check(&mut cache, &files), (8, 0));
    assert_eq!(check(&mut cache, &files), (0, 8));
    assert_eq!(check(&mut cache, &files), (0, 8));
}

#[test]
fn a_changed_file_is_the_only_one_decoded() {
    let mut cache = Cache::default();
    check(&mut cache, &fleet_with(&[]));
    let web = FLEET[7].1.replace("version: 1.1.0", "version: 1.0.0");
    let changed = fleet_with(&[("instances/web.yaml", Some(&web))]);
    assert_eq!(check(&mut cache, &changed), (1, 7));
    // Going back finds the old decoding, which the validation before used.
    assert_eq!(check(&mut cache, &fleet_with(&[])), (0, 8));
}

#[test]
fn files_whose_ids_shift_get_their_spans_moved() {
    let mut cache = Cache::default();
    check(&mut cache, &fleet_with(&[]));
    // A channel sorted before the others moves every later file one id on, and an instance
    // file removed moves none back; spans of reused decodings follow.
    let added = fleet_with(&[(
        "channels/a.toml",
        Some("name = \"a\"\nmode = \"auto-update\"\n"),
    )]);
    assert_eq!(check(&mut cache, &added), (1, 8));
    let removed = fleet_with(&[("instances/api.toml", None), ("channels/a.toml", None)]);
    assert_eq!(check(&mut cache, &removed), (0, 7));
}

#[test]
fn a_renamed_file_is_not_decoded_again() {
    let mut cache = Cache::default();
    check(&mut cache, &fleet_with(&[]));
    // Same bytes, kind and syntax: the decoding is reused, and the name no longer matching
    // the file is a rule across files, found as without the cache.
    let renamed = fleet_with(&[
        ("instances/api.toml", None),
        ("instances/zz/api2.toml", Some(FLEET[6].1)),
    ]);
    assert_eq!(check(&mut cache, &renamed), (0, 8));
}

#[test]
fn a_file_of_another_kind_or_syntax_is_decoded_again() {
    let mut cache = Cache::default();
    check(&mut cache, &fleet_with(&[]));
    let moved = fleet_with(&[
        ("partners/p.toml", None),
        ("tenants/p.toml", Some(FLEET[1].1)),
    ]);
    assert_eq!(check(&mut cache, &moved), (1, 7));
    let as_yaml = fleet_with(&[
        ("partners/p.toml", None),
        ("partners/p.yml", Some(FLEET[1].1)),
    ]);
    assert_eq!(check(&mut cache, &as_yaml), (1, 7));
}

#[test]
fn problems_in_files_come_back_from_the_cache() {
    let mut cache = Cache::default();
    let broken = fleet_with(&[
        // A parse error, an unknown field and a secret, a YAML error.
        ("instances/api.toml", Some("name = \"api\"\ntype = \n")),
        (
            "partners/p.toml",
            Some("id = \"p\"\nname = \"P\"\nemial = \"o@p.example\"\npassword = \"hunter2\"\n"),
        ),
        ("tenants/t.yaml", Some("id: t\npartner: p\nname: \"T\n")),
    ]);
    assert_eq!(check(&mut cache, &broken), (8, 0));
    assert_eq!(check(&mut cache, &broken), (0, 8));
    // The broken files shifted by one more file before them.
    let mut shifted = broken.clone();
    shifted.push((
        "channels/a.toml".to_string(),
        "name = \"a\"\nmode = \"auto-update\"\n".to_string(),
    ));
    assert_eq!(check(&mut cache, &shifted), (1, 8));
}

#[test]
fn files_that_are_not_text_are_reported_as_without_the_cache() {
    let mut cache = Cache::default();
    let mut files: Vec<(String, Vec<u8>)> = fleet_with(&[])
        .into_iter()
        .map(|(path, text)| (path, text.into_bytes()))
        .collect();
    files.push((
        "channels/bad.toml".to_string(),
        b"name = \"\xff\"\n".to_vec(),
    ));
    files.push(("channels/big.toml".to_string(), vec![b' '; 2000]));
    let small = Limits {
        max_file_bytes: 1999,
        ..Limits::default()
    };
    // Neither is decoded: the loader reports them before.
    assert_eq!(check_with(&mut cache, &files, &small), (8, 0));
    assert_eq!(check_with(&mut cache, &files, &small), (0, 8));
}

#[test]
fn ids_across_files_are_checked_in_file_order() {
    let mut cache = Cache::default();
    // Two instance files named alike, and a second fleet settings file: which one is "first"
    // depends on the order of paths, not on what the cache had first.
    let twice = fleet_with(&[
        ("instances/b/api.toml", Some(FLEET[6].1)),
        ("fleet.yaml", Some("name: other\n")),
    ]);
    check(&mut cache, &twice);
    let thrice = fleet_with(&[
        ("instances/a/api.toml", Some(FLEET[6].1)),
        ("instances/b/api.toml", Some(FLEET[6].1)),
        ("fleet.yaml", Some("name: other\n")),
    ]);
    assert_eq!(check(&mut cache, &thrice), (0, 11));
}

#[test]
fn what_the_last_two_validations_did_not_use_is_dropped() {
    let mut cache = Cache::default();
    let version = |n: usize| {
        let web = FLEET[7]
            .1
            .replace("name: web", &format!("name: web\nsuites: [s{n}]"));
        fleet_with(&[("instances/web.yaml", Some(&web))])
    };
    for n in 0..10 {
        assert_eq!(check(&mut cache, &version(n)).0, if n == 0 { 8 } else { 1 });
        let Stats {
            contents,
            decodings,
            ..
        } = cache.stats();
        let held = if n == 0 { 8 } else { 9 };
        assert_eq!((contents, decodings), (held, held), "after version {n}");
    }
    // Versions 8 and 9 are held, 7 is gone; once 7 is back, 8 goes.
    assert_eq!(check(&mut cache, &version(8)).0, 0);
    assert_eq!(check(&mut cache, &version(7)).0, 1);
    assert_eq!(check(&mut cache, &version(8)).0, 0);
    assert_eq!(check(&mut cache, &version(9)).0, 1);
}

#[test]
fn other_limits_start_afresh() {
    let mut cache = Cache::default();
    let files = fleet_with(&[]);
    check(&mut cache, &files);
    let shallow = Limits {
        max_depth: 1,
        ..Limits::default()
    };
    let bytes: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(path, text)| (path.clone(), text.clone().into_bytes()))
        .collect();
    assert_eq!(check_with(&mut cache, &bytes, &shallow), (8, 0));
    assert_eq!(check(&mut cache, &files), (8, 0));
}

#[test]
fn paths_given_twice_are_decoded_each_time() {
    let mut cache = Cache::default();
    let mut files = fleet_with(&[]);
    files.push(("partners/p.toml".to_string(), FLEET[1].1.to_string()));
    assert_eq!(check(&mut cache, &files), (9, 0));
    assert_eq!(check(&mut cache, &files), (2, 7));
}

#[test]
fn inputs_without_ids_are_validated_but_not_kept() {
    let mut cache = Cache::default();
    let inputs = fleet_with(&[])
        .into_iter()
        .map(|(path, text)| {
            CachedInput::uncached(Input {
                path,
                content: Content::Bytes(text.into_bytes()),
            })
        })
        .collect();
    let validation = validate::check_cached(inputs, &Limits::default(), &mut cache);
    assert_eq!(validation.fleet.instances.len(), 2);
    let stats = cache.stats();
    assert_eq!((stats.decoded, stats.contents, stats.decodings), (8, 0, 0));
}

/// Files replaced (or added) by path.
type Edits = Vec<(&'static str, Option<String>)>;

#[test]
fn edits_of_instance_files_revise_the_last_validation_as_check_would_validate_them() {
    let mut cache = Cache::default();
    let api = FLEET[6].1;
    let web = FLEET[7].1;
    let revised = |cache: &Cache| cache.stats().revised;
    // Each step: the changed files, and whether the step revises the one before.
    let steps: Vec<(Edits, bool)> = vec![
        (vec![], false),
        (
            vec![("instances/web.yaml", Some(web.replace("1.1.0", "1.0.0")))],
            true,
        ),
        // Both instances at once; then nothing changed.
        (
            vec![
                ("instances/web.yaml", Some(web.to_string())),
                (
                    "instances/api.toml",
                    Some(api.replace("\"1.0.0\"", "\"1.1.0\"")),
                ),
            ],
            true,
        ),
        (vec![], true),
        // A dangling reference and a region over capacity are found in a revision; the
        // next validation, after one with errors, starts from scratch.
        (
            vec![(
                "instances/web.yaml",
                Some(web.replace("partner: p", "partner: q")),
            )],
            true,
        ),
        (vec![("instances/web.yaml", Some(web.to_string()))], false),
        (
            vec![(
                "instances/web.yaml",
                Some(web.replace("cpu: \"2\"", "cpu: \"99\"")),
            )],
            true,
        ),
        (vec![("instances/web.yaml", Some(web.to_string()))], false),
        // A new domain, a new name, a file that does not parse, a partner changed, a
        // file added: from scratch, each as `check` finds it.
        (
            vec![(
                "instances/api.toml",
                Some(api.replace("api.p.example", "x.p.example")),
            )],
            false,
        ),
        (
            vec![(
                "instances/api.toml",
                Some(api.replace("name = \"api\"", "name = \"apx\"")),
            )],
            false,
        ),
        (vec![("instances/api.toml", Some(api.to_string()))], false),
        (
            vec![("instances/web.yaml", Some("name: [web\n".to_string()))],
            false,
        ),
        (vec![("instances/web.yaml", Some(web.to_string()))], false),
        (
            vec![(
                "partners/p.toml",
                Some(FLEET[1].1.replace("\"P\"", "\"Q\"")),
            )],
            false,
        ),
        (vec![("README.md", Some("notes\n".to_string()))], false),
        (vec![("README.md", Some("more notes\n".to_string()))], true),
    ];
    let mut files = fleet_with(&[]);
    for (step, (changes, revises)) in steps.into_iter().enumerate() {
        // Changed in place, as a source lists a commit's files in the same order.
        for (path, text) in changes {
            match files.iter_mut().find(|(existing, _)| existing == path) {
                Some(file) => file.1 = text.expect("a change"),
                None => files.extend(text.map(|text| (path.to_string(), text))),
            }
        }
        let before = revised(&cache);
        let (decoded, _) = check(&mut cache, &files);
        assert_eq!(revised(&cache) - before, u64::from(revises), "step {step}");
        if revises {
            assert!(decoded <= 2, "step {step} decoded {decoded}");
        }
    }
    // What the cache holds stays bounded by the latest two validations.
    assert!(
        cache.stats().decodings <= 2 * files.len(),
        "{:?}",
        cache.stats()
    );
}
