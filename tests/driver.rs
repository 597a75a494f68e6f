//! The driver against the real Docker engine and a real PostgreSQL server: the whole life of
//! an instance, isolation between instances, drift, and unreachable parts.
//!
//! The lifecycle operations are jobs: each runs through the jobs layer (`common::jobs`) on a
//! SQLite store, as a worker runs it, with every step recorded and a failed one rolled back;
//! a test that takes an instance apart or sets up what a crash leaves behind calls the
//! driver's primitives itself.
//!
//! Images of the demo platform are built for a small test catalogue with `wakafleet image
//! build`. Everything a test makes on the engine carries a label unique to the test and is
//! swept by it when the test ends, passed or failed; databases and roles go with the
//! throwaway server.

mod common;

use std::{path::Path, process::Command};

use sha2::{Digest, Sha256};
use sqlx::Connection;

use common::{
    docker::{IMAGE, Sweep, images, target},
    jobs::{self, Cut, Jobs},
    postgres::Postgres,
};
use wakafleet::{
    backups,
    driver::{self, Drift, Driver, Options, Region, Role, Target, database_name},
    load::{Content, Input, Limits},
    model::{ByteSize, Cpu},
    plan,
    store::{
        jobs::JobKind,
        state::{InstanceRecord, InstanceStatus},
    },
    validate,
};

fn region(postgres: &Postgres, backups: &Path) -> Region {
    Region {
        name: "ng-lagos".into(),
        docker: "unix:///var/run/docker.sock".into(),
        database: postgres.admin_url("postgres").into(),
        backups: backups.to_path_buf(),
    }
}

/// What the plan says of `instance` when its file changes from `base` to `head` (extra
/// lines of the instance file) in a fleet whose region keeps its backups in `backups`: the
/// reason of its one action.
fn planned_reason(backups: &Path, instance: &str, base: &str, head: &str) -> String {
    let fleet = |extra: &str| {
        let settings = common::FLEET_TOML.replace(
            "backups = \"/var/lib/wakafleet/backups/ng-lagos\"",
            &format!("backups = {:?}", backups.display().to_string()),
        );
        let mut files = vec![
            ("fleet.toml".to_string(), settings),
            (
                "partners/p.toml".into(),
                "id = \"p\"\nname = \"P\"\nemail = \"o@p.example\"\n".into(),
            ),
            (
                "channels/m.toml".into(),
                "name = \"m\"\nmode = \"manual-approval\"\n".into(),
            ),
            (
                format!("instances/{instance}.toml"),
                format!(
                    "name = \"{instance}\"\ntype = \"shared-saas\"\npartner = \"p\"\nregion = \"ng-lagos\"\ndata_residency = [\"NG\"]\nchannel = \"m\"\nsize = \"small\"\n{extra}"
                ),
            ),
        ];
        for (version, from) in [("1.0.0", None), ("1.1.0", Some(">=1.0.0, <1.1.0"))] {
            let upgrade_from = from
                .map(|from| format!("upgrade_from = \"{from}\"\n"))
                .unwrap_or_default();
            files.push((
                format!("releases/{version}.toml"),
                format!("version = \"{version}\"\nstatus = \"stable\"\nreleased = 2026-01-01\nimage = \"{IMAGE}:{version}\"\n{upgrade_from}"),
            ));
        }
        let inputs = files
            .into_iter()
            .map(|(path, text)| Input {
                path,
                content: Content::Bytes(text.into_bytes()),
            })
            .collect();
        validate::check(inputs, &Limits::default())
    };
    let actual = plan::converged_base(&fleet(base).fleet);
    let mut head = fleet(head);
    let desired = head
        .take_valid()
        .unwrap_or_else(|| panic!("{:#?}", head.diagnostics));
    let at = "2026-01-07T12:00:00Z".parse().expect("a time");
    let plan = plan::compute(&desired, &head.sources, &actual, at);
    let [action] = &plan.actions[..] else {
        panic!("one action for {instance}: {:#?}", plan.actions);
    };
    action.reason.clone()
}

/// Whether `file` is one of the paths `reason` promises: a path in it whose time is
/// written as the pattern `YYYYMMDDTHHMMSS.ffffffZ`, checked here on its own, character by
/// character, not through the code that wrote either.
fn kept_promise(reason: &str, file: &Path) -> bool {
    const TIME: &str = "YYYYMMDDTHHMMSS.ffffffZ";
    let file = file.display().to_string();
    reason
        .split([' ', '(', ')', ';', ','])
        .filter_map(|word| word.split_once(TIME))
        .any(|(prefix, suffix)| {
            let Some(time) = file
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
            else {
                return false;
            };
            time.len() == TIME.len()
                && time.chars().zip(TIME.chars()).all(|(c, p)| match p {
                    'T' | '.' | 'Z' => c == p,
                    _ => c.is_ascii_digit(),
                })
        })
}

fn options(sweep: &Sweep) -> Options {
    Options {
        labels: sweep.labels(),
        ..Options::default()
    }
}

/// The instance's database as the server's superuser.
async fn instance_db(postgres: &Postgres, instance: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&postgres.admin_url(&database_name(instance)))
        .await
        .expect("connect to the instance's database")
}

async fn migrations(postgres: &Postgres, instance: &str) -> Vec<String> {
    let mut connection = instance_db(postgres, instance).await;
    sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all(&mut connection)
        .await
        .expect("schema_migrations")
}

async fn items(postgres: &Postgres, instance: &str) -> Vec<String> {
    let mut connection = instance_db(postgres, instance).await;
    sqlx::query_scalar("SELECT name FROM items ORDER BY id")
        .fetch_all(&mut connection)
        .await
        .expect("items")
}

async fn add_item(postgres: &Postgres, instance: &str, name: &str) {
    let mut connection = instance_db(postgres, instance).await;
    sqlx::query("INSERT INTO items (name) VALUES ($1)")
        .bind(name)
        .execute(&mut connection)
        .await
        .expect("insert an item");
}

/// How many of the instance's database and role the server's catalogue holds.
async fn database_and_role(postgres: &Postgres, instance: &str) -> i64 {
    let mut admin = sqlx::PgConnection::connect(&postgres.admin_url("postgres"))
        .await
        .expect("connect");
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_database WHERE datname = $1) + (SELECT count(*) FROM pg_roles WHERE rolname = $1)",
    )
    .bind(database_name(instance))
    .fetch_one(&mut admin)
    .await
    .expect("a count")
}

fn inspect(name: &str, format: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "--format", format, name])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Docker's own health status of a container once it settles: the image's check runs every
/// 10 s (the driver asks a local engine's containers directly and is done sooner).
fn docker_health(name: &str) -> String {
    for _ in 0..300 {
        let status = inspect(name, "{{.State.Health.Status}}");
        if status != "starting" {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    inspect(name, "{{.State.Health.Status}}")
}

fn exists(kind: &str, name: &str) -> bool {
    Command::new("docker")
        .args([kind, "inspect", name])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// A driver behind the jobs layer on a new throwaway server, and what the test needs to keep
/// alive beside it.
struct Setup {
    jobs: Jobs,
    postgres: Postgres,
    backups: tempfile::TempDir,
    _sweep: Sweep,
}

async fn setup() -> Setup {
    images();
    let sweep = Sweep::new();
    let postgres = Postgres::start();
    let backups = tempfile::tempdir().expect("a temporary folder");
    let driver =
        Driver::new(&region(&postgres, backups.path()), options(&sweep)).expect("a driver");
    Setup {
        jobs: Jobs::new(driver, "ng-lagos").await,
        postgres,
        backups,
        _sweep: sweep,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_life_of_one_instance() {
    let setup = setup().await;
    let (jobs, postgres) = (&setup.jobs, &setup.postgres);
    let driver = jobs.driver();
    let v1 = target("life", "1.0.0");

    // Provision, and provision again (idempotent).
    jobs.provision(&v1).await.expect("provisioned");
    jobs.provision(&v1).await.expect("provisioned again");
    for role in ["app", "worker"] {
        let name = format!("wakafleet-life-{role}");
        assert_eq!(docker_health(&name), "healthy", "{name}");
        assert_eq!(
            inspect(&name, "{{.Config.Image}}"),
            format!("{IMAGE}:1.0.0")
        );
        assert_eq!(
            inspect(&name, "{{index .Config.Labels \"org.wakafleet.release\"}}"),
            "1.0.0"
        );
        assert_eq!(inspect(&name, "{{.HostConfig.NanoCpus}}"), "500000000");
        assert_eq!(
            inspect(&name, "{{.HostConfig.Memory}}"),
            (256_u64 << 20).to_string()
        );
    }
    assert!(exists("network", "wakafleet-life") && exists("volume", "wakafleet-life-data"));
    assert_eq!(
        migrations(postgres, "life").await,
        vec!["0000_base", "0001_items_index"]
    );
    assert!(driver.observe(&v1).await.expect("observed").is_empty());
    let recorded = setup.recorded("life").await;
    assert_eq!(
        (recorded.status, recorded.version.as_deref()),
        (InstanceStatus::Active, Some("1.0.0"))
    );
    add_item(postgres, "life", "keep me").await;

    // Configure: a new environment replaces the containers.
    let mut configured = v1.clone();
    configured
        .environment
        .insert("WEBWAKA_SSL".into(), "off".into());
    jobs.configure(&configured).await.expect("configured");
    assert_eq!(
        inspect(
            "wakafleet-life-app",
            "{{index .Config.Labels \"org.wakafleet.config-hash\"}}"
        ),
        configured.config_hash()
    );
    assert!(inspect("wakafleet-life-app", "{{.Config.Env}}").contains("WEBWAKA_SSL=off"));

    // Upgrade with a migration, after a backup for it; the data stays.
    let mut v1_1 = target("life", "1.1.0");
    v1_1.environment = configured.environment.clone();
    let upgraded = jobs.upgrade(&configured, &v1_1).await.expect("upgraded");
    let backup = jobs.backup_of(&upgraded).await.expect("a backup");
    assert!(
        backups::is_for(&backup, backups::Purpose::Before(&v1_1.version)),
        "{backup}"
    );
    let backup = setup.backup_path("life", &backup);
    assert!(backup.is_file() && backup.metadata().expect("a file").len() > 0);
    assert_eq!(
        migrations(postgres, "life").await,
        vec!["0000_base", "0001_items_index", "0002_orders"]
    );
    assert_eq!(
        inspect("wakafleet-life-app", "{{.Config.Image}}"),
        format!("{IMAGE}:1.1.0")
    );
    assert_eq!(items(postgres, "life").await, vec!["keep me"]);
    assert_eq!(
        setup.recorded("life").await.version.as_deref(),
        Some("1.1.0")
    );

    // A failed upgrade rolls back, schema and data as they were, and says why.
    let mut broken = target("life", "1.2.0");
    broken.environment = configured.environment.clone();
    let error = jobs
        .upgrade(&v1_1, &broken)
        .await
        .expect_err("1.2.0 is unhealthy");
    assert!(error.starts_with("dead: "), "{error}");
    assert!(
        error.contains("step `health` failed") && error.contains("is unhealthy"),
        "{error}"
    );
    assert!(
        error.ends_with("rolled back: containers, maintenance"),
        "{error}"
    );
    assert_eq!(
        inspect("wakafleet-life-app", "{{.Config.Image}}"),
        format!("{IMAGE}:1.1.0")
    );
    assert_eq!(docker_health("wakafleet-life-app"), "healthy");
    assert_eq!(
        migrations(postgres, "life").await,
        vec!["0000_base", "0001_items_index", "0002_orders"],
        "the broken release's migration is undone by the restore"
    );
    assert_eq!(items(postgres, "life").await, vec!["keep me"]);
    driver
        .smoke("life")
        .await
        .expect("maintenance is off again");
    let recorded = setup.recorded("life").await;
    assert_eq!(
        (recorded.status, recorded.version.as_deref()),
        (InstanceStatus::Failed, Some("1.1.0")),
        "the store keeps the version that runs and says the upgrade failed"
    );

    // Suspend keeps the data; resume brings it back.
    jobs.suspend("life").await.expect("suspended");
    assert_eq!(inspect("wakafleet-life-app", "{{.State.Running}}"), "false");
    assert_eq!(
        driver.observe(&v1_1).await.expect("observed"),
        vec![
            Drift::Stopped { role: Role::App },
            Drift::Stopped { role: Role::Worker }
        ]
    );
    assert_eq!(
        setup.recorded("life").await.status,
        InstanceStatus::Suspended
    );
    jobs.resume(&v1_1).await.expect("resumed");
    assert!(driver.observe(&v1_1).await.expect("observed").is_empty());
    assert_eq!(items(postgres, "life").await, vec!["keep me"]);
    assert_eq!(setup.recorded("life").await.status, InstanceStatus::Active);

    // Backup, lose data, restore it.
    let saved = jobs.backup("life", "manual").await.expect("a backup");
    let saved = jobs.backup_of(&saved).await.expect("the backup's name");
    assert_eq!(saved, "manual.dump");
    let saved = setup.backup_path("life", &saved);
    let recorded =
        std::fs::read_to_string(saved.with_extension("dump.sha256")).expect("a checksum");
    let sha256 = hex::encode(Sha256::digest(std::fs::read(&saved).expect("the backup")));
    assert!(recorded.starts_with(&sha256), "{recorded}");
    add_item(postgres, "life", "added after the backup").await;
    jobs.restore(&v1_1, "manual").await.expect("restored");
    assert_eq!(items(postgres, "life").await, vec!["keep me"]);
    assert!(driver.observe(&v1_1).await.expect("observed").is_empty());

    // Scale in place: the same containers, new limits.
    let id_before = inspect("wakafleet-life-app", "{{.Id}}");
    let mut bigger = v1_1.clone();
    bigger.resources.cpu = Cpu::from_millicores(1_000);
    bigger.resources.memory = ByteSize::from_bytes(512 << 20);
    jobs.scale(&bigger).await.expect("scaled");
    assert_eq!(inspect("wakafleet-life-app", "{{.Id}}"), id_before);
    assert_eq!(
        inspect("wakafleet-life-app", "{{.HostConfig.NanoCpus}}"),
        "1000000000"
    );
    assert_eq!(
        inspect("wakafleet-life-worker", "{{.HostConfig.Memory}}"),
        (512_u64 << 20).to_string()
    );

    // Terminate: a final backup, then nothing left.
    let terminated = jobs.terminate("life").await.expect("terminated");
    let last = jobs.backup_of(&terminated).await.expect("a final backup");
    let last = setup.backup_path("life", &last);
    assert!(last.is_file());
    let promise = planned_reason(
        setup.backups.path(),
        "life",
        "version = \"1.0.0\"\n",
        "version = \"1.0.0\"\nstate = \"terminated\"\n",
    );
    assert!(
        kept_promise(&promise, &last),
        "the plan said: {promise}\nthe driver wrote {}",
        last.display()
    );
    for role in ["app", "worker"] {
        assert!(!exists("container", &format!("wakafleet-life-{role}")));
    }
    assert!(!exists("network", "wakafleet-life") && !exists("volume", "wakafleet-life-data"));
    assert_eq!(
        database_and_role(postgres, "life").await,
        0,
        "the database and the role are gone"
    );
    assert_eq!(
        setup.recorded("life").await.status,
        InstanceStatus::Terminated
    );
    let again = jobs.terminate("life").await.expect("terminated again");
    assert_eq!(
        jobs.backup_of(&again).await,
        None,
        "nothing left to back up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primitives_check_before_they_act_and_take_an_instance_apart() {
    let setup = setup().await;
    let (driver, postgres) = (setup.jobs.driver(), &setup.postgres);
    let v1 = setup.instance("parts", "1.0.0").await;
    let v1_1 = target("parts", "1.1.0");
    assert!(driver.runs("parts", &v1).await.expect("read"));
    assert!(!driver.runs("parts", &v1_1).await.expect("read"));

    // Maintenance turns the app's item requests away until it is off again.
    driver
        .set_maintenance("parts", true)
        .await
        .expect("maintenance on");
    driver
        .set_maintenance("parts", true)
        .await
        .expect("maintenance on again");
    let error = driver.smoke("parts").await.expect_err("in maintenance");
    assert!(error.to_string().contains("503"), "{error}");
    driver
        .set_maintenance("parts", false)
        .await
        .expect("maintenance off");
    driver.smoke("parts").await.expect("out of maintenance");

    // A backup for a purpose is the one found for it, and the one restored.
    let purpose = backups::Purpose::Before(&v1_1.version);
    let none = driver.latest_backup("parts", purpose).await.expect("read");
    assert_eq!(none, None);
    let backup = driver.backup_for("parts", purpose).await.expect("a backup");
    let latest = driver.latest_backup("parts", purpose).await.expect("read");
    assert_eq!(latest.as_ref(), Some(&backup));
    let listed = driver.backups("parts").await.expect("listed");
    assert_eq!(listed, [backup.name.as_str()]);
    add_item(postgres, "parts", "written after the backup").await;
    driver.suspend("parts").await.expect("suspended");
    assert!(
        driver.runs("parts", &v1).await.expect("read"),
        "stopped, still 1.0.0"
    );
    driver
        .restore_database("parts", &backup.name)
        .await
        .expect("restored");
    assert_eq!(items(postgres, "parts").await, vec!["keep me"]);
    driver
        .remove_backup("parts", &backup.name)
        .await
        .expect("removed");
    assert!(driver.backups("parts").await.expect("listed").is_empty());
    assert!(!backup.path.exists() && !backup.path.with_extension("dump.sha256").exists());

    // Two makers of the same containers at once, as a cut-off attempt's create landing
    // beside the next attempt's: whichever finds the name taken looks again, and both end
    // with the containers as the target says.
    driver
        .remove_containers("parts")
        .await
        .expect("containers removed");
    let password = driver::generate_password().expect("a password");
    let (first, second) = tokio::join!(
        driver.containers(&v1, &password),
        driver.containers(&v1, &password)
    );
    first.expect("the first maker");
    second.expect("the second maker, beside the first");
    for role in ["app", "worker"] {
        assert!(exists("container", &format!("wakafleet-parts-{role}")));
    }

    // Taken apart twice: the second time every part is already gone.
    assert!(driver.database_exists("parts").await.expect("read"));
    for _ in 0..2 {
        driver
            .remove_containers("parts")
            .await
            .expect("containers removed");
        driver.release("parts").await.expect("released");
        driver.drop_database("parts").await.expect("dropped");
    }
    assert!(!driver.runs("parts", &v1).await.expect("read"));
    for role in ["app", "worker"] {
        assert!(!exists("container", &format!("wakafleet-parts-{role}")));
    }
    assert!(!exists("network", "wakafleet-parts") && !exists("volume", "wakafleet-parts-data"));
    assert!(!driver.database_exists("parts").await.expect("read"));
    assert_eq!(database_and_role(postgres, "parts").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_cannot_reach_another_instances_database() {
    let setup = setup().await;
    let (driver, postgres) = (setup.jobs.driver(), &setup.postgres);
    let (password_a, password_b) = (
        driver::generate_password().expect("a password"),
        driver::generate_password().expect("a password"),
    );
    driver.allocate("alpha").await.expect("allocated");
    driver
        .database("alpha", &password_a)
        .await
        .expect("a database");
    driver
        .database("beta", &password_b)
        .await
        .expect("a database");
    let url = |user: &str, password: &wakafleet::secret::Secret, database: &str| {
        postgres.url(
            &database_name(user),
            password.expose(),
            &database_name(database),
        )
    };
    let mut own = sqlx::PgConnection::connect(&url("alpha", &password_a, "alpha"))
        .await
        .expect("alpha reaches its own database");
    sqlx::query("CREATE TABLE secret (x int)")
        .execute(&mut own)
        .await
        .expect("alpha owns its database");
    let error = sqlx::PgConnection::connect(&url("alpha", &password_a, "beta"))
        .await
        .expect_err("alpha must not reach beta's database")
        .to_string();
    assert!(error.contains("permission denied"), "{error}");
    let error = sqlx::PgConnection::connect(&url("beta", &password_a, "beta"))
        .await
        .expect_err("alpha's password is not beta's")
        .to_string();
    assert!(error.contains("password authentication failed"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_made_by_hand_is_observed_and_repaired() {
    let setup = setup().await;
    let (jobs, driver) = (&setup.jobs, setup.jobs.driver());
    let target = target("drift", "1.0.0");
    jobs.provision(&target).await.expect("provisioned");

    let docker = |args: &[&str]| {
        assert!(
            Command::new("docker")
                .args(args)
                .output()
                .expect("docker")
                .status
                .success(),
            "{args:?}"
        );
    };
    docker(&["stop", "wakafleet-drift-app"]);
    docker(&["rm", "-f", "wakafleet-drift-worker"]);
    let mut other = target.clone();
    other.image = format!("{IMAGE}:1.1.0");
    let drift = driver.observe(&target).await.expect("observed");
    assert_eq!(
        drift,
        vec![
            Drift::Stopped { role: Role::App },
            Drift::MissingContainer { role: Role::Worker }
        ]
    );
    // The health check job finds the same and records it on the instance.
    let checked = jobs
        .run(
            wakafleet::store::jobs::JobKind::Health,
            "drift",
            common::jobs::payload(&target),
            1,
        )
        .await
        .expect("checked");
    assert_eq!(
        jobs.output(&checked, "observe").await,
        Some(
            serde_json::json!({"drift": ["its app container is stopped", "its worker container is missing"]})
        )
    );
    let recorded = jobs
        .store
        .instance("drift")
        .await
        .expect("a read")
        .and_then(|instance| instance.health)
        .expect("a health report");
    assert_eq!(recorded["health"], "unhealthy");
    assert_eq!(recorded["drift"].as_array().map(Vec::len), Some(2));
    let mut no_database = target.clone();
    no_database.instance = "never-made".into();
    assert!(
        driver
            .observe(&no_database)
            .await
            .expect("observed")
            .contains(&Drift::MissingDatabase)
    );

    // Provisioning again repairs what was changed by hand.
    jobs.provision(&target).await.expect("repaired");
    assert!(driver.observe(&target).await.expect("observed").is_empty());
    assert!(
        driver
            .observe(&other)
            .await
            .expect("observed")
            .contains(&Drift::OtherImage {
                role: Role::App,
                found: target.image.clone()
            })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_parts_are_named_and_nothing_is_left_half_made() {
    images();
    let sweep = Sweep::new();
    let postgres = Postgres::start();
    let backups = tempfile::tempdir().expect("a temporary folder");

    // No Docker engine at the endpoint: nothing is made on the server.
    let mut no_engine = region(&postgres, backups.path());
    no_engine.docker = "tcp://127.0.0.1:9".into();
    let driver = Driver::new(&no_engine, options(&sweep)).expect("a driver");
    let jobs = Jobs::new(driver, "ng-lagos").await;
    let error = jobs
        .provision(&target("faulty", "1.0.0"))
        .await
        .expect_err("no engine");
    assert!(
        error.starts_with("dead: ") && error.contains("ng-lagos") && error.contains("127.0.0.1:9"),
        "{error}"
    );
    assert!(
        !error.contains("rolled back"),
        "nothing was made to undo: {error}"
    );
    let mut admin = sqlx::PgConnection::connect(&postgres.admin_url("postgres"))
        .await
        .expect("connect");
    let databases: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(database_name("faulty"))
        .fetch_one(&mut admin)
        .await
        .expect("a count");
    assert_eq!(databases, 0);

    // No PostgreSQL server at the endpoint: nothing is made on the engine.
    let mut no_server = region(&postgres, backups.path());
    no_server.database = format!(
        "postgres://postgres:{}@127.0.0.1:9/postgres",
        common::postgres::PASSWORD
    )
    .into();
    let driver = Driver::new(&no_server, options(&sweep)).expect("a driver");
    let jobs = Jobs::new(driver, "ng-lagos").await;
    let error = jobs
        .provision(&target("faulty", "1.0.0"))
        .await
        .expect_err("no server");
    assert!(
        error.starts_with("dead: ") && error.contains("ng-lagos") && error.contains("127.0.0.1:9"),
        "{error}"
    );
    assert!(
        !error.contains("rolled back"),
        "nothing was made to undo: {error}"
    );
    assert!(!error.contains(common::postgres::PASSWORD), "{error}");
    assert!(!exists("network", "wakafleet-faulty") && !exists("volume", "wakafleet-faulty-data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provision_cut_off_at_any_step_is_finished_by_the_next() {
    let setup = setup().await;
    let (jobs, driver, postgres) = (&setup.jobs, setup.jobs.driver(), &setup.postgres);
    let target = target("resumed", "1.0.0");
    let password = &jobs.password("resumed").await;

    // Cut off after the database: nothing runs yet.
    driver.allocate("resumed").await.expect("allocated");
    driver
        .database("resumed", password)
        .await
        .expect("a database");
    // Cut off with the app stopped, the worker gone, and the smoke test's item made but not
    // deleted.
    driver
        .containers(&target, password)
        .await
        .expect("containers");
    driver.migrations(&target).await.expect("migrated");
    add_item(postgres, "resumed", "wakafleet smoke test").await;
    let docker = |args: &[&str]| Command::new("docker").args(args).output().expect("docker");
    docker(&["rm", "-f", "wakafleet-resumed-worker"]);
    docker(&["stop", "wakafleet-resumed-app"]);

    jobs.provision(&target)
        .await
        .expect("the next provision finishes");
    assert!(driver.observe(&target).await.expect("observed").is_empty());
    assert!(
        items(postgres, "resumed").await.is_empty(),
        "the smoke test's leftover is gone"
    );
    assert_eq!(
        migrations(postgres, "resumed").await,
        vec!["0000_base", "0001_items_index"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_passwords_are_kept_encrypted_in_the_store() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let url = format!("sqlite://{}", folder.path().join("state.db").display());
    let store =
        wakafleet::store::Store::open(&url.as_str().into(), wakafleet::store::Options::default())
            .await
            .expect("a store");
    let key = wakafleet::store::secrets::SecretKey::from_bytes(&[7; 32]);
    let first = driver::database_password(&store, &key, "web")
        .await
        .expect("a password");
    let again = driver::database_password(&store, &key, "web")
        .await
        .expect("a password");
    assert_eq!(first, again, "the password is made once and kept");
    let other = driver::database_password(&store, &key, "api")
        .await
        .expect("a password");
    assert_ne!(first, other);
    store.close().await;
    let file = std::fs::read(folder.path().join("state.db")).expect("read the store");
    let wal = std::fs::read(folder.path().join("state.db-wal")).unwrap_or_default();
    for bytes in [&file, &wal] {
        assert!(
            !bytes
                .windows(first.expose().len())
                .any(|window| window == first.expose().as_bytes()),
            "the password is not in the store's files in clear"
        );
    }
    let wrong = wakafleet::store::secrets::SecretKey::from_bytes(&[8; 32]);
    let store =
        wakafleet::store::Store::open(&url.as_str().into(), wakafleet::store::Options::default())
            .await
            .expect("a store");
    assert!(
        driver::database_password(&store, &wrong, "web")
            .await
            .is_err(),
        "another key opens nothing"
    );
}

impl Setup {
    /// Provisions `instance` at `version` with one item.
    async fn instance(&self, instance: &str, version: &str) -> Target {
        let target = target(instance, version);
        self.jobs
            .provision(&target)
            .await
            .unwrap_or_else(|error| panic!("provision {instance}: {error}"));
        add_item(&self.postgres, instance, "keep me").await;
        target
    }

    /// The instance as the store records it.
    async fn recorded(&self, instance: &str) -> InstanceRecord {
        self.jobs
            .store
            .instance(instance)
            .await
            .expect("a read")
            .unwrap_or_else(|| panic!("`{instance}` is recorded"))
    }

    /// Where the instance's backup `name` is.
    fn backup_path(&self, instance: &str, name: &str) -> std::path::PathBuf {
        backups::folder(self.backups.path(), instance).join(name)
    }

    /// The instance's backups whose names say they were taken before `version`.
    fn backups_before(&self, instance: &str, version: &str) -> Vec<std::path::PathBuf> {
        walk(&backups::folder(self.backups.path(), instance))
            .into_iter()
            .filter(|path| {
                path.to_string_lossy()
                    .ends_with(&format!("-before-{version}.dump"))
            })
            .collect()
    }

    /// Leaves the instance as an upgrade to `to` cut off after its containers changed: a
    /// backup labelled as taken before it at `time`, maintenance on, `to` running and
    /// migrated. Returns the backup.
    async fn cut_off_upgrade(&self, to: &Target, time: &str) -> driver::database::Backup {
        let (driver, instance) = (self.jobs.driver(), &to.instance);
        let backup = driver
            .backup(instance, &format!("{time}-before-{}", to.version))
            .await
            .expect("a backup");
        driver
            .server
            .set_maintenance(&database_name(instance), true)
            .await
            .expect("maintenance");
        driver
            .containers(to, &self.jobs.password(instance).await)
            .await
            .expect("containers");
        driver.migrations(to).await.expect("migrated");
        backup
    }

    /// Upgrades `from` to `to` as a job whose worker is cut off at `cut`, and which the next
    /// worker takes over and runs to its end.
    async fn cut_and_upgrade(&self, from: &Target, to: &Target, cut: Cut) -> Result<(), String> {
        self.jobs
            .cut_off(JobKind::Upgrade, &to.instance, jobs::change(from, to), cut)
            .await
            .map(drop)
    }

    /// The instance runs `target`'s image, healthy, with its migrations and the item, and
    /// maintenance is off; `when` says where the test is.
    async fn assert_at(&self, target: &Target, when: &str) {
        let (driver, instance) = (self.jobs.driver(), &target.instance);
        let drift = driver.observe(target).await.expect("observed");
        assert!(drift.is_empty(), "{when}: {drift:?}");
        if let Err(error) = driver.health(instance).await {
            panic!("{when}: not healthy: {error}");
        }
        if let Err(error) = driver.smoke(instance).await {
            panic!("{when}: the smoke test failed (maintenance on?): {error}");
        }
        let mut expected = vec!["0000_base".to_string()];
        expected.extend(target.migrations.iter().cloned());
        assert_eq!(
            migrations(&self.postgres, instance).await,
            expected,
            "{when}"
        );
        assert_eq!(
            items(&self.postgres, instance).await,
            vec!["keep me"],
            "{when}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_whose_migration_fails_rolls_back() {
    let setup = setup().await;
    let v1 = setup.instance("blocked", "1.0.0").await;
    // A table in the way of 1.1.0's migration: its containers exit before they answer.
    let mut connection = instance_db(&setup.postgres, "blocked").await;
    sqlx::raw_sql("CREATE TABLE \"m_0002_orders\" (id INT)")
        .execute(&mut connection)
        .await
        .expect("create a table");
    let error = setup
        .jobs
        .upgrade(&v1, &target("blocked", "1.1.0"))
        .await
        .expect_err("the migration fails");
    assert!(error.starts_with("dead: "), "{error}");
    assert!(
        error.contains("step `migrations` failed") && error.contains("already exists"),
        "{error}"
    );
    assert!(
        error.ends_with("rolled back: containers, maintenance"),
        "{error}"
    );
    setup.assert_at(&v1, "rolled back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_cut_off_after_its_containers_changed_resumes_from_its_backup() {
    let setup = setup().await;
    let (jobs, driver) = (&setup.jobs, setup.jobs.driver());
    let v1 = setup.instance("cut", "1.0.0").await;
    let v1_1 = target("cut", "1.1.0");

    // Cut off with the worker already at 1.1.0 (which migrated the database) and the app
    // still at 1.0.0, in maintenance: the next run keeps the backup taken before.
    let before = driver
        .backup("cut", "20260101T000000.000000Z-before-1.1.0")
        .await
        .expect("a backup");
    driver
        .server
        .set_maintenance(&database_name("cut"), true)
        .await
        .expect("maintenance");
    driver
        .container(&v1_1, Role::Worker, &jobs.password("cut").await)
        .await
        .expect("the worker");
    driver.migrations(&v1_1).await.expect("migrated");
    let resumed = jobs
        .upgrade(&v1, &v1_1)
        .await
        .expect("the upgrade finishes");
    assert_eq!(jobs.backup_of(&resumed).await, Some(before.name.clone()));
    assert_eq!(setup.backups_before("cut", "1.1.0"), [before.path]);
    setup.assert_at(&v1_1, "upgrade resumed").await;

    // Cut off in the middle of a rollback from the broken 1.2.0: its migration applied, its
    // containers suspended. The next run fails again and restores the backup from before
    // 1.2.0, not one of the half-upgraded database.
    let broken = target("cut", "1.2.0");
    let before = setup
        .cut_off_upgrade(&broken, "20260102T000000.000000Z")
        .await;
    driver.suspend("cut").await.expect("suspended");
    let error = jobs
        .upgrade(&v1_1, &broken)
        .await
        .expect_err("1.2.0 is unhealthy");
    assert!(
        error.starts_with("dead: ") && error.ends_with("rolled back: containers, maintenance"),
        "{error}"
    );
    let failed = jobs.latest("cut").await;
    assert_eq!(jobs.backup_of(&failed).await, Some(before.name.clone()));
    assert_eq!(setup.backups_before("cut", "1.2.0"), [before.path]);
    setup.assert_at(&v1_1, "rollback resumed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_cut_off_at_any_moment_ends_upgraded_or_rolled_back_by_the_next_run() {
    let setup = setup().await;
    let cut = |step, ms| Cut {
        step,
        after: std::time::Duration::from_millis(ms),
    };
    // Cuts spread over the upgrade: the backup, the containers as they are replaced, the
    // wait for migrations, health.
    for (n, at) in [
        cut("backup", 10),
        cut("containers", 0),
        cut("containers", 300),
        cut("migrations", 0),
        cut("health", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let instance = format!("up-{n}");
        let from = setup.instance(&instance, "1.0.0").await;
        let to = target(&instance, "1.1.0");
        if let Err(error) = setup.cut_and_upgrade(&from, &to, at).await {
            panic!("cut at {at:?}: {error}");
        }
        setup
            .assert_at(&to, &format!("upgrade cut at {at:?}"))
            .await;
    }
    // And for the broken release, over its failing health check and its rollback: the old
    // containers on the restored backup, and maintenance turned off.
    for (n, at) in [
        cut("health", 1_000),
        cut("rollback.containers", 0),
        cut("rollback.containers", 400),
        cut("rollback.maintenance", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let instance = format!("down-{n}");
        let from = setup.instance(&instance, "1.1.0").await;
        let to = target(&instance, "1.2.0");
        let error = setup
            .cut_and_upgrade(&from, &to, at)
            .await
            .expect_err("1.2.0 is unhealthy");
        assert!(
            error.starts_with("dead: ")
                && error.contains("is unhealthy")
                && error.ends_with("rolled back: containers, maintenance"),
            "cut at {at:?}: {error}"
        );
        setup
            .assert_at(&from, &format!("rollback cut at {at:?}"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_restores_the_backup_the_plan_names() {
    let setup = setup().await;
    let (jobs, postgres) = (&setup.jobs, &setup.postgres);
    let v1 = setup.instance("down", "1.0.0").await;
    let v1_1 = target("down", "1.1.0");
    jobs.upgrade(&v1, &v1_1).await.expect("upgraded");
    add_item(postgres, "down", "written at 1.1.0").await;

    let promise = planned_reason(
        setup.backups.path(),
        "down",
        "version = \"1.1.0\"\n",
        "version = \"1.0.0\"\nallow_downgrade = true\n",
    );
    let downgraded = jobs.downgrade(&v1_1, &v1).await.expect("downgraded");
    let located = jobs
        .output(&downgraded, "locate-backup")
        .await
        .expect("the backup it restores");
    let restored = setup.backup_path("down", located["restore"].as_str().expect("a name"));
    assert!(
        kept_promise(&promise, &restored),
        "the plan said: {promise}\nthe driver restored {}",
        restored.display()
    );
    // The data as it was before the downgrade is kept where the plan said.
    let kept: Vec<_> = std::fs::read_dir(restored.parent().expect("a folder"))
        .expect("the backups folder")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "dump")
        })
        .filter(|path| path.to_string_lossy().contains("downgrade"))
        .collect();
    assert!(
        matches!(&kept[..], [one] if kept_promise(&promise, one)),
        "the plan said: {promise}\nthe driver kept {kept:?}"
    );
    // "keep me" was written before the upgrade; the item written at 1.1.0 is gone.
    setup.assert_at(&v1, "downgraded").await;

    // Without a backup from before an upgrade there is nothing to restore: nothing changes.
    let fresh = setup.instance("fresh", "1.1.0").await;
    let error = jobs
        .downgrade(&fresh, &target("fresh", "1.0.0"))
        .await
        .expect_err("no backup to restore");
    assert!(
        error.starts_with("failed: ")
            && error.contains("there is none")
            && error.contains("nothing was changed"),
        "{error}"
    );
    assert!(!error.contains("rolled back"), "{error}");
    setup.assert_at(&fresh, "a downgrade refused").await;
    assert!(
        walk(&backups::folder(setup.backups.path(), "fresh")).is_empty(),
        "a refused downgrade takes no backup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_upgrade_with_an_unreadable_backups_folder_fails_without_a_new_backup() {
    let setup = setup().await;
    let (jobs, driver) = (&setup.jobs, setup.jobs.driver());
    let v1 = setup.instance("blind", "1.0.0").await;
    let v1_1 = target("blind", "1.1.0");
    // Cut off after the worker was replaced: the database may be half-migrated, so only the
    // backup taken before may be used, and the folder that holds it cannot be read.
    driver
        .container(&v1_1, Role::Worker, &jobs.password("blind").await)
        .await
        .expect("the worker");
    let folder = setup.backups.path().join("blind");
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::write(&folder, "not a folder").expect("a file in the folder's place");
    let error = jobs
        .upgrade(&v1, &v1_1)
        .await
        .expect_err("the backups folder cannot be read");
    assert!(
        error.starts_with("dead: ") && error.contains("cannot read the backups folder"),
        "{error}"
    );
    let dumps: Vec<_> = walk(setup.backups.path())
        .into_iter()
        .filter(|path| path.to_string_lossy().contains(".dump"))
        .collect();
    assert!(dumps.is_empty(), "no backup was taken: {dumps:?}");
}

/// Every file under `folder`; none when there is no such folder.
fn walk(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return files,
        Err(error) => panic!("{}: {error}", folder.display()),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
