//! `compute` on pairs of small fleets: each case is a base and a head, and the actions
//! planned between them as `kind id status`.

use chrono::{DateTime, Utc};

use crate::{
    plan::{Kind, compute, converged_base},
    validate::{self, Validation},
};

const FLEET: &str = "name = \"t\"\n[regions.ng-lagos]\ncountry = \"NG\"\ndocker = \"unix:///d.sock\"\ndatabase = \"env:DB\"\nbackups = \"/b\"\ncapacity = { cpu = \"4096\", memory = \"4T\", storage = \"100T\" }\n[sizes.small]\ncpu = \"1\"\nmemory = \"1G\"\nstorage = \"10G\"\n";

const RELEASES: &[(&str, &str)] = &[
    (
        "releases/1.0.0.toml",
        "version = \"1.0.0\"\nstatus = \"stable\"\nreleased = 2026-01-01\nimage = \"i\"\n",
    ),
    (
        "releases/1.1.0.toml",
        "version = \"1.1.0\"\nstatus = \"stable\"\nreleased = 2026-01-02\nimage = \"i\"\n",
    ),
];

/// A fleet of partner `p` (with `partner` lines added), a manual channel, the releases and
/// the instances given as `(name, extra TOML lines)`.
fn fleet(partner: &str, instances: &[(&str, &str)]) -> Validation {
    let instances: Vec<(String, String)> = instances
        .iter()
        .map(|(name, extra)| (name.to_string(), extra.to_string()))
        .collect();
    fleet_of(partner, "", &[], &instances)
}

/// A fleet of partner `p` (with `partner` lines added), manual channel `m` (with `channel`
/// lines added), the releases and `releases`, and the instances given as `(name, extra
/// TOML lines)`, all of partner `p` in channel `m`.
fn fleet_of(
    partner: &str,
    channel: &str,
    releases: &[(&str, &str)],
    instances: &[(String, String)],
) -> Validation {
    let mut files: Vec<(String, String)> = vec![
        ("fleet.toml".into(), FLEET.into()),
        (
            "partners/p.toml".into(),
            format!("id = \"p\"\nname = \"P\"\nemail = \"o@p.example\"\n{partner}"),
        ),
        (
            "channels/m.toml".into(),
            format!("name = \"m\"\nmode = \"manual-approval\"\n{channel}"),
        ),
    ];
    files.extend(
        RELEASES
            .iter()
            .chain(releases)
            .map(|(path, text)| (path.to_string(), text.to_string())),
    );
    for (name, extra) in instances {
        let text = format!(
            "name = \"{name}\"\ntype = \"shared-saas\"\npartner = \"p\"\nregion = \"ng-lagos\"\ndata_residency = [\"NG\"]\nchannel = \"m\"\n{extra}"
        );
        files.push((format!("instances/{name}.toml"), text));
    }
    let validation = validate::check_texts(files);
    assert!(!validation.has_errors(), "{:#?}", validation.diagnostics);
    validation
}

const SMALL: &str = "size = \"small\"\nversion = \"1.0.0\"\n";

/// The actions planned from `base` (as converged) to `head`.
fn planned(base: Validation, mut head: Validation) -> Vec<crate::plan::Action> {
    let at: DateTime<Utc> = "2026-01-07T12:00:00Z".parse().expect("a time");
    let actual = converged_base(&base.fleet);
    let desired = head.take_valid().expect("a valid head");
    compute(&desired, &head.sources, &actual, at).actions
}

/// The actions planned from `base` to `head`, as `kind id status`.
fn check(base: Validation, head: Validation) -> Vec<String> {
    planned(base, head)
        .iter()
        .map(|action| {
            format!(
                "{} {} {}",
                action.kind.as_str(),
                action.id,
                action.status.as_str()
            )
        })
        .collect()
}

#[test]
fn downgrades_run_only_when_allowed() {
    let base = || fleet("", &[("web", "size = \"small\"\nversion = \"1.1.0\"\n")]);
    let lowered = fleet("", &[("web", SMALL)]);
    assert_eq!(check(base(), lowered), ["downgrade web blocked"]);
    let allowed = fleet(
        "",
        &[(
            "web",
            "size = \"small\"\nversion = \"1.0.0\"\nallow_downgrade = true\n",
        )],
    );
    assert_eq!(check(base(), allowed), ["downgrade web ready"]);
}

#[test]
fn resources_changes_are_scaling() {
    let base = fleet("", &[("web", SMALL)]);
    let head = fleet(
        "",
        &[(
            "web",
            "version = \"1.0.0\"\n[resources]\ncpu = \"2\"\nmemory = \"1G\"\nstorage = \"10G\"\n",
        )],
    );
    assert_eq!(check(base, head), ["scale web ready"]);
}

#[test]
fn a_partner_that_resumes_resumes_its_instances() {
    let base = fleet("state = \"suspended\"\n", &[("web", SMALL)]);
    let head = fleet("", &[("web", SMALL)]);
    assert_eq!(check(base, head), ["update p ready", "resume web ready"]);
}

#[test]
fn suspended_instances_are_upgraded_when_they_resume() {
    let base = fleet(
        "",
        &[(
            "web",
            "size = \"small\"\nversion = \"1.0.0\"\nstate = \"suspended\"\n",
        )],
    );
    let head = fleet(
        "",
        &[(
            "web",
            "size = \"small\"\nversion = \"1.1.0\"\nstate = \"suspended\"\n",
        )],
    );
    assert_eq!(check(base, head), Vec::<String>::new());
}

#[test]
fn terminated_instances_are_neither_orphaned_nor_provisioned() {
    let base = fleet(
        "",
        &[(
            "old",
            "size = \"small\"\nversion = \"1.0.0\"\nstate = \"terminated\"\n",
        )],
    );
    let head = fleet(
        "",
        &[(
            "new",
            "size = \"small\"\nversion = \"1.0.0\"\nstate = \"terminated\"\n",
        )],
    );
    assert_eq!(check(base, head), Vec::<String>::new());
}

#[test]
fn removed_instances_are_orphaned_and_new_ones_provisioned() {
    let base = fleet("", &[("old", SMALL)]);
    let head = fleet("", &[("new", SMALL)]);
    assert_eq!(
        check(base, head),
        ["provision new ready", "orphaned old ready"]
    );
    assert!(
        Kind::ALL.windows(2).all(|pair| pair[0] < pair[1]),
        "kinds are listed in plan order"
    );
}

#[test]
fn large_fleets_planned_on_several_threads_lose_and_repeat_nothing() {
    // Enough instances for `compute` and `converged_base` to split them over the cores.
    let names: Vec<String> = (0..2_500).map(|n| format!("i{n:04}")).collect();
    let base: Vec<(&str, &str)> = names[..2_400]
        .iter()
        .map(|name| (name.as_str(), SMALL))
        .collect();
    let head: Vec<(&str, &str)> = names[100..]
        .iter()
        .map(|name| (name.as_str(), "size = \"small\"\nversion = \"1.1.0\"\n"))
        .collect();
    let actions = check(fleet("", &base), fleet("", &head));
    let expected: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(n, name)| match n {
            ..100 => format!("orphaned {name} ready"),
            100..2_400 => format!("upgrade {name} ready"),
            _ => format!("provision {name} ready"),
        })
        .collect();
    assert_eq!(actions, expected);
}

/// The reasons of the actions planned from `base` to `head`.
fn reasons(base: Validation, head: Validation) -> Vec<String> {
    planned(base, head)
        .into_iter()
        .map(|action| action.reason)
        .collect()
}

#[test]
fn reasons_name_the_file_and_the_backups_the_driver_uses() {
    let base = || fleet("", &[("web", "size = \"small\"\nversion = \"1.1.0\"\n")]);
    let suspended = fleet(
        "",
        &[(
            "web",
            "size = \"small\"\nversion = \"1.1.0\"\nstate = \"suspended\"\n",
        )],
    );
    assert_eq!(
        reasons(base(), suspended),
        ["state = \"suspended\" in instances/web.toml: containers stop, data is kept"]
    );
    let terminated = fleet(
        "",
        &[(
            "web",
            "size = \"small\"\nversion = \"1.1.0\"\nstate = \"terminated\"\n",
        )],
    );
    let [terminate] = &reasons(base(), terminated)[..] else {
        panic!("one action");
    };
    assert!(
        terminate.contains("/b/web/YYYYMMDDTHHMMSS.ffffffZ-final.dump"),
        "{terminate}"
    );
    let downgraded = fleet(
        "",
        &[(
            "web",
            "size = \"small\"\nversion = \"1.0.0\"\nallow_downgrade = true\n",
        )],
    );
    let [downgrade] = &reasons(base(), downgraded)[..] else {
        panic!("one action");
    };
    for promise in [
        "/b/web/YYYYMMDDTHHMMSS.ffffffZ-before-1.1.0.dump",
        "/b/web/YYYYMMDDTHHMMSS.ffffffZ-before-downgrade-to-1.0.0.dump",
    ] {
        assert!(downgrade.contains(promise), "{downgrade}");
    }
}

mod budget {
    use crate::plan::{
        Action, Change, Kind, Plan, ResourceType,
        render::{Budget, Commits, MIN_MAX_BYTES, markdown},
    };

    /// 300 terminations, then 2,000 configurations each of its own field, so that none group.
    fn big_plan() -> Plan {
        let mut actions = Vec::new();
        for index in 0..300 {
            actions.push(Action::new(
                Kind::Terminate,
                ResourceType::Instance,
                &format!("t-{index:04}"),
                "state = \"terminated\"".to_string(),
            ));
        }
        for index in 0..2_000 {
            let mut action = Action::new(
                Kind::Configure,
                ResourceType::Instance,
                &format!("c-{index:04}"),
                "configuration changed".to_string(),
            );
            action.changes = vec![Change {
                field: format!("field_{index}"),
                before: Some("a".into()),
                after: Some("b".into()),
            }];
            actions.push(action);
        }
        Plan {
            at: chrono::DateTime::UNIX_EPOCH,
            actions,
            advisories: Vec::new(),
        }
    }

    #[test]
    fn every_budget_holds_and_what_is_left_out_is_the_least_risky_and_counted() {
        let plan = big_plan();
        for max_bytes in [MIN_MAX_BYTES, 10_000, 60_000, 200_000, 2_000_000] {
            let text = markdown(
                &plan,
                Commits::default(),
                Budget {
                    max_bytes,
                    whole_plan: Some("https://example.invalid/plan.json"),
                },
            );
            assert!(text.len() <= max_bytes, "{} > {max_bytes}", text.len());
            // The terminations group is whole-entry first, before any configuration.
            assert!(
                text.contains("- **terminate**: 300 instances"),
                "{max_bytes}"
            );
            let shown = text.matches("- instance `c-").count();
            let closing = text
                .lines()
                .find(|line| line.starts_with("**Not shown"))
                .unwrap_or_default();
            if shown < 2_000 {
                let left = 2_000 - shown;
                assert!(
                    closing.contains(&format!("{left} configure ({left} actions)")),
                    "{max_bytes}: {closing}"
                );
                assert!(closing.contains("https://example.invalid/plan.json"));
            } else {
                assert!(closing.is_empty(), "{max_bytes}: {closing}");
            }
            // Whole entries only: every shown configuration has its table row.
            assert_eq!(text.matches("| `field_").count(), shown, "{max_bytes}");
        }
    }
}

/// A fleet of `count` instances on a manual channel with a Saturday window, those in
/// `newer` at 1.1.0 and the rest at 1.0.0; `partner` and `releases` add lines and files.
fn windowed(count: usize, newer: &[usize], partner: &str, releases: &[(&str, &str)]) -> Validation {
    let window = "[maintenance_window]\ndays = [\"sat\"]\nstart = \"02:00\"\nduration = \"2h\"\ntimezone = \"Africa/Lagos\"\n";
    let instances: Vec<(String, String)> = (0..count)
        .map(|index| {
            let version = if newer.contains(&index) {
                "1.1.0"
            } else {
                "1.0.0"
            };
            (
                format!("i{index:02}"),
                format!("size = \"small\"\nversion = \"{version}\"\n"),
            )
        })
        .collect();
    fleet_of(partner, window, releases, &instances)
}

#[test]
fn a_plan_through_a_memo_is_the_plan_compute_makes() {
    use crate::plan::{Drift, Memo, compute_with};

    let closed: DateTime<Utc> = "2026-01-07T12:00:00Z".parse().expect("a time");
    let open: DateTime<Utc> = "2026-01-03T01:30:00Z"
        .parse()
        .expect("a Saturday in the window");
    let deployed = converged_base(&windowed(40, &[], "", &[]).fleet);
    let mut drifted = deployed.clone();
    drifted.drift.insert(
        "i07".into(),
        vec![Drift {
            what: "its app container is stopped".into(),
            repairable: true,
        }],
    );
    let newer_release = [(
        "releases/1.2.0.toml",
        "version = \"1.2.0\"\nstatus = \"stable\"\nreleased = 2026-01-03\nimage = \"i\"\n",
    )];
    let mut fewer = windowed(40, &[3], "", &[]);
    fewer.fleet.instances.remove("i05");
    let steps = [
        (windowed(40, &[3, 9], "", &[]), &deployed, closed),
        // The same at another time: the upgrades' window opened.
        (windowed(40, &[3, 9], "", &[]), &deployed, open),
        (windowed(40, &[3, 9], "", &[]), &deployed, closed),
        // One instance changed, one drifted, the partner suspended, a release added.
        (windowed(40, &[3], "", &[]), &deployed, closed),
        (windowed(40, &[3], "", &[]), &drifted, closed),
        (
            windowed(40, &[3], "state = \"suspended\"\n", &[]),
            &deployed,
            closed,
        ),
        (windowed(40, &[3], "", &newer_release), &deployed, open),
        // An instance's file gone: it is orphaned.
        (fewer, &deployed, closed),
        (windowed(40, &[3], "", &[]), &deployed, closed),
    ];
    let mut memo = Memo::default();
    for (step, (mut head, actual, at)) in steps.into_iter().enumerate() {
        let desired = head.take_valid().expect("a valid head");
        let plain = compute(&desired, &head.sources, actual, at);
        let remembered = compute_with(&desired, &head.sources, actual, at, &mut memo);
        assert_eq!(remembered, plain, "step {step}");
        assert!(
            !plain.is_empty() || step == 8,
            "step {step} plans something"
        );
    }
    let stats = memo.stats();
    // Only the instances with a window's decision (two, then one) and those whose inputs
    // changed were planned again; the suspension and the release changed every instance.
    assert!(stats.reused > 150, "{stats:?}");
    assert!(stats.planned < 200, "{stats:?}");
}
