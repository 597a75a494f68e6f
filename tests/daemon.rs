//! `wakafleet run` end to end, on a real git repository, the real Docker engine and a real
//! PostgreSQL server: commits converge the fleet, what runs is what the plan showed, an
//! invalid commit is never applied, and drift made by hand is repaired.

mod common;

use common::{daemon::World, docker::docker_ok, workers::until};

/// Commits the work tree with `message`, checks what the plan against the store shows
/// ready, lets `run --once` converge, and checks that exactly those actions ran as jobs of
/// that commit, that nothing is left to do, and that the audit log verifies. Returns the
/// commit.
fn apply(world: &World, message: &str) -> String {
    let commit = world.commit(message);
    let ready = world.ready();
    assert!(!ready.is_empty(), "{message}: the plan shows work to do");
    let before = world.jobs().len();
    world.converges();
    let jobs = world.jobs();
    let mut ran: Vec<(String, String)> = jobs[before..]
        .iter()
        .map(|job| {
            assert_eq!(job["status"], "succeeded", "{message}: {job}");
            assert_eq!(job["commit"], commit.as_str(), "{message}: {job}");
            (
                job["kind"].as_str().expect("a kind").to_string(),
                job["instance"].as_str().expect("an instance").to_string(),
            )
        })
        .collect();
    ran.sort();
    assert_eq!(
        ran, ready,
        "{message}: every ready action ran as a job, nothing else"
    );
    assert_eq!(
        world.ready(),
        Vec::<(String, String)>::new(),
        "{message}: nothing left"
    );
    let status = world.status();
    assert_eq!(status["commit"]["applied"], commit.as_str(), "{status}");
    assert_eq!(status["commit"]["seen"], commit.as_str(), "{status}");
    world.audit_verifies();
    commit
}

#[tokio::test(flavor = "multi_thread")]
async fn commits_converge_the_real_containers_and_databases() {
    docker_ok();
    let world = World::new().await;
    let (alpha, beta) = (world.name("alpha"), world.name("beta"));

    world.instance("alpha", "1.0.0", "");
    let added = apply(
        &world,
        "Add alpha\n\nApproved-by: Ada Lovelace <ada@example.com>\nReviewed-by: Grace Hopper <grace@example.com>\n",
    );
    assert_eq!(
        world.containers(),
        vec![
            world.running("alpha", "app", "1.0.0"),
            world.running("alpha", "worker", "1.0.0"),
        ]
    );
    assert!(world.database_exists("alpha").await);
    let alpha_status = world.status_of("alpha");
    assert_eq!(alpha_status["status"], "active", "{alpha_status}");
    assert_eq!(alpha_status["version"], "1.0.0", "{alpha_status}");
    assert_eq!(alpha_status["health"], "healthy", "{alpha_status}");
    // The merge is the approval: the job's records carry the commit and its approvers.
    let steps = world.audit("instance.provision.step.");
    assert!(!steps.is_empty());
    for record in &steps {
        assert_eq!(record["commit"]["sha"], added.as_str(), "{record}");
        assert_eq!(record["commit"]["author"]["email"], "test@example.com");
        assert_eq!(
            record["commit"]["approved_by"][0], "Ada Lovelace <ada@example.com>",
            "{record}"
        );
        assert_eq!(
            record["commit"]["reviewed_by"][0],
            "Grace Hopper <grace@example.com>"
        );
    }
    let partners = world.audit("partner.create");
    assert_eq!(partners.len(), 1, "{partners:?}");

    // A manual-approval bump is approved by its merge; a new instance comes in beside it.
    world.instance("alpha", "1.1.0", "");
    world.instance("beta", "1.0.0", "");
    apply(&world, "Upgrade alpha to 1.1.0, add beta");
    assert_eq!(
        world.containers(),
        vec![
            world.running("alpha", "app", "1.1.0"),
            world.running("alpha", "worker", "1.1.0"),
            world.running("beta", "app", "1.0.0"),
            world.running("beta", "worker", "1.0.0"),
        ]
    );

    // A configuration change recreates the containers with it.
    world.instance("alpha", "1.1.0", "ssl = false\n");
    apply(&world, "Turn ssl off on alpha");
    let hashes = |name: &str| {
        let output = std::process::Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{index .Config.Labels \"org.wakafleet.config-hash\"}}",
            ])
            .arg(format!("wakafleet-{name}-app"))
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_ne!(
        hashes(&alpha),
        hashes(&beta),
        "alpha runs another configuration"
    );

    // Suspending the partner stops its instances, keeping their data.
    world.write(
        "partners/p1.toml",
        "id = \"p1\"\nname = \"Partner One\"\nemail = \"ops@p1.example\"\nstate = \"suspended\"\n",
    );
    apply(&world, "Suspend partner p1");
    let states: Vec<String> = world
        .containers()
        .iter()
        .map(|line| line.rsplit(' ').next().expect("a state").to_string())
        .collect();
    assert!(states.iter().all(|state| state != "running"), "{states:?}");
    assert_eq!(world.status_of("beta")["status"], "suspended");
    assert!(world.database_exists("beta").await);

    // Terminating beta removes its parts after a final backup.
    world.instance("beta", "1.0.0", "state = \"terminated\"\n");
    apply(&world, "Terminate beta");
    assert!(
        world.containers().iter().all(|line| !line.contains(&beta)),
        "{:?}",
        world.containers()
    );
    assert!(!world.database_exists("beta").await);
    assert!(world.database_exists("alpha").await);
    assert_eq!(world.status_of("beta")["status"], "terminated");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_commit_is_not_applied_and_the_next_good_one_is() {
    docker_ok();
    let world = World::new().await;
    world.instance("alpha", "1.0.0", "");
    let good = apply(&world, "Add alpha");

    // An unknown field in alpha's file, and a new instance beside it: nothing of it applies.
    world.instance("alpha", "1.0.0", "colour = \"blue\"\n");
    world.instance("gamma", "1.0.0", "");
    let bad = world.commit("Add gamma, with a typo in alpha");
    let output = world.run_once(&[]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "an invalid head is not converged"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("colour"),
        "the diagnostics are logged: {stderr}"
    );
    let status = world.status();
    assert_eq!(status["commit"]["seen"], bad.as_str(), "{status}");
    assert_eq!(status["commit"]["valid"], false, "{status}");
    assert_eq!(status["commit"]["applied"], good.as_str(), "{status}");
    let diagnostics = status["commit"]["diagnostics"]
        .as_array()
        .expect("diagnostics");
    assert!(
        diagnostics.iter().any(|entry| entry["file"]
            .as_str()
            .is_some_and(|file| file.contains("alpha"))),
        "{status}"
    );
    let gamma = world.name("gamma");
    assert!(
        world
            .jobs()
            .iter()
            .all(|job| job["instance"] != gamma.as_str()),
        "nothing of the invalid commit ran"
    );
    let refused = world.audit("commit.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");

    // The fix applies, gamma with it.
    world.instance("alpha", "1.0.0", "");
    apply(&world, "Fix the typo");
    assert_eq!(world.status_of("gamma")["status"], "active");
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_made_by_hand_is_repaired_and_audited() {
    docker_ok();
    let world = World::new().await;
    world.instance("alpha", "1.0.0", "");
    apply(&world, "Add alpha");
    let alpha = world.name("alpha");
    let daemon = world.start(&["--interval", "2"]);

    // Stopped by hand: started again.
    let app = format!("wakafleet-{alpha}-app");
    let stopped = std::process::Command::new("docker")
        .args(["stop", "-t", "1", &app])
        .output()
        .expect("docker stop");
    assert!(stopped.status.success());
    until("the stopped container to be repaired", async || {
        let repaired = world.audit("instance.repair.step.activate");
        (!repaired.is_empty()).then_some(())
    })
    .await;
    let drift = world.audit("instance.drift");
    assert_eq!(drift.len(), 1, "{drift:?}");
    let found = drift[0]["before"]["drift"].to_string();
    assert!(
        found.contains("app container is stopped"),
        "{found}: {}",
        daemon.log()
    );
    assert!(
        world
            .containers()
            .contains(&world.running("alpha", "app", "1.0.0"))
    );

    // Removed by hand: made again.
    let removed = std::process::Command::new("docker")
        .args(["rm", "-f", &format!("wakafleet-{alpha}-worker")])
        .output()
        .expect("docker rm");
    assert!(removed.status.success());
    until("the removed container to be made again", async || {
        let drift = world.audit("instance.drift");
        let repairs = world.audit("instance.repair.step.activate");
        (drift.len() == 2 && repairs.len() == 2).then_some(())
    })
    .await;
    let drift = world.audit("instance.drift");
    let found = drift[1]["before"]["drift"].to_string();
    // `docker rm -f` kills the container before it removes it: an observation between the
    // two sees it stopped, one after sees it missing; both are the drift made by hand.
    assert!(
        found.contains("worker container is missing")
            || found.contains("worker container is stopped"),
        "{found}: {}",
        daemon.log()
    );
    assert_eq!(
        world.containers(),
        vec![
            world.running("alpha", "app", "1.0.0"),
            world.running("alpha", "worker", "1.0.0"),
        ]
    );
    daemon.kill();
    world.audit_verifies();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_outside_git_is_watched_and_its_changes_audited_with_the_operator() {
    docker_ok();
    let world = World::new().await;
    let folder = tempfile::tempdir().expect("a temporary folder");
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", world.fleet().display()))
        .arg(folder.path())
        .status()
        .expect("cp");
    assert!(copied.success());
    let daemon = world.start_on(folder.path(), &["--interval", "60"]);
    until("the fleet's entities to be recorded", async || {
        (!world.audit("partner.create").is_empty()).then_some(())
    })
    .await;

    // A file saved in the folder is reconciled without waiting for the tick.
    let alpha = world.name("alpha");
    common::write(
        folder.path(),
        &format!("instances/{alpha}.toml"),
        format!(
            "name = \"{alpha}\"\ntype = \"partner-deployed\"\npartner = \"p1\"\ntenant = \"t1\"\nregion = \"ng-lagos\"\ndata_residency = [\"NG\"]\nsuites = [\"commerce\"]\nsize = \"small\"\nchannel = \"manual\"\nversion = \"1.0.0\"\n"
        ),
    );
    until("the new instance to be provisioned", async || {
        let status = world.listed("alpha")?;
        (status["status"] == "active").then_some(())
    })
    .await;
    let changed = world.audit("folder.changed");
    assert!(changed.len() >= 2, "{changed:?}");
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    assert!(
        changed
            .iter()
            .all(|record| record["actor"]["kind"] == "operator"
                && record["actor"]["id"] == user.as_str()),
        "{changed:?}"
    );
    daemon.kill();
    world.audit_verifies();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_repository_is_mirrored_and_followed() {
    docker_ok();
    let world = World::new().await;
    world.instance("alpha", "1.0.0", "");
    let commit = world.commit("Add alpha");
    // The world's repository stands in for the remote; the daemon reads only its mirror.
    let remote = format!("file://{}", world.repo_path().display());
    let repository = git2::Repository::open(world.repo_path()).expect("the repository");
    let branch = repository.head().expect("a head");
    let branch = branch.shorthand().expect("a branch").to_string();
    let output = world.run_once(&["--repo", &remote, "--branch", &branch]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = world.status();
    assert_eq!(status["commit"]["applied"], commit.as_str(), "{status}");
    assert_eq!(world.status_of("alpha")["status"], "active");
}

/// The pid in a status's `reconcile.leader` (`host:pid`).
fn leader_pid(status: &serde_json::Value) -> Option<u32> {
    status["reconcile"]["leader"]
        .as_str()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_within_ten_seconds_when_the_leader_is_killed() {
    docker_ok();
    let world = World::on_postgres().await;
    let redis = common::redis::Redis::start();
    let queue = redis.url();
    let args = [
        "--queue",
        queue.as_str(),
        "--workers",
        "1",
        "--interval",
        "2",
    ];
    let first = world.start(&args);
    let second = world.start(&args);
    world.instance("alpha", "1.0.0", "");
    world.commit("Add alpha");
    until("alpha to be provisioned by whichever leads", async || {
        let status = world.listed("alpha")?;
        (status["status"] == "active").then_some(())
    })
    .await;
    let leader = until("a leader in the status", async || {
        leader_pid(&world.status())
    })
    .await;
    let (leading, standby) = if leader == first.pid() {
        (first, second)
    } else {
        assert_eq!(leader, second.pid(), "one of the two leads");
        (second, first)
    };
    let standby_pid = standby.pid();

    leading.kill();
    let killed = std::time::Instant::now();
    until("the standby to lead", async || {
        (leader_pid(&world.status()) == Some(standby_pid)).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover < std::time::Duration::from_secs(10),
        "the standby took over after {takeover:?}: {}",
        standby.log()
    );

    // The new leader reconciles: a commit made after the takeover is applied.
    world.instance("beta", "1.0.0", "");
    let commit = world.commit("Add beta");
    until("beta to be provisioned by the new leader", async || {
        let status = world.listed("beta")?;
        (status["status"] == "active").then_some(())
    })
    .await;
    until("the commit to be applied", async || {
        (world.status()["commit"]["applied"] == commit.as_str()).then_some(())
    })
    .await;
    let terms: Vec<i64> = world
        .audit("commit.seen")
        .iter()
        .filter_map(|record| record["metadata"]["epoch"].as_i64())
        .collect();
    assert!(
        terms.windows(2).all(|pair| pair[0] <= pair[1]) && terms.last() > terms.first(),
        "commits seen under a later term after the takeover: {terms:?}"
    );
    drop(standby);
    world.audit_verifies();
}

/// Runs `git` in `dir`, which must succeed.
fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git, from `apt-get install git`");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_signed_commits_required_only_a_signed_commit_is_applied() {
    docker_ok();
    let world = World::new().await;
    let keys = world.state_path().join("keys");
    std::fs::create_dir_all(&keys).expect("a key folder");
    let key = keys.join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen, from `apt-get install openssh-client`");
    assert!(made.success());
    let public = std::fs::read_to_string(keys.join("id_ed25519.pub")).expect("the public key");
    std::fs::write(
        keys.join("allowed_signers"),
        format!("test@example.com {public}"),
    )
    .expect("the allowed signers");
    let config = keys.join("wakafleet.toml");
    std::fs::write(
        &config,
        "[source]\nrequire_signed_commits = true\nallowed_signers = \"allowed_signers\"\n",
    )
    .expect("the config");
    let config = config.display().to_string();

    world.instance("alpha", "1.0.0", "");
    let unsigned = world.commit("Add alpha, unsigned");
    let output = world.run_once(&["--config", &config]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "an unsigned head is not applied"
    );
    let alpha = world.name("alpha");
    assert!(
        world
            .jobs()
            .iter()
            .all(|job| job["instance"] != alpha.as_str())
    );
    let refused = world.audit("commit.refused");
    assert!(
        refused
            .iter()
            .any(|record| record["resource"] == format!("commit/{unsigned}")),
        "{refused:?}"
    );

    let key_file = format!("{}.pub", key.display());
    git(
        world.repo_path(),
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &format!("user.signingkey={key_file}"),
            "commit",
            "-q",
            "-S",
            "--allow-empty",
            "-m",
            "Add alpha, signed",
        ],
    );
    let signed = git(world.repo_path(), &["rev-parse", "HEAD"]);
    let output = world.run_once(&["--config", &config]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(world.status_of("alpha")["status"], "active");
    let seen = world.audit("commit.seen");
    let record = seen
        .iter()
        .find(|record| record["resource"] == format!("commit/{signed}"))
        .expect("the signed commit is audited as seen");
    assert_eq!(
        record["metadata"]["signer"]["principal"], "test@example.com",
        "{record}"
    );
    let fingerprint = record["metadata"]["signer"]["fingerprint"]
        .as_str()
        .expect("a fingerprint");
    assert!(fingerprint.starts_with("SHA256:"), "{record}");
}
