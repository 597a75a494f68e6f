//! The demo platform in real containers: `wakafleet image build` makes the images of a small
//! fleet, and they run against a throwaway PostgreSQL server on the local Docker engine.
//!
//! Everything a run creates carries the label `org.wakafleet.test=<run>` and is removed when
//! the test ends, passing or failing (`Sweep`); leftovers of runs whose process is gone are
//! removed at the start. Image tags name the run, so two runs do not share images.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use bollard::{
    Docker,
    models::{ContainerCreateBody, HealthStatusEnum, HostConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
        ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, LogsOptionsBuilder,
        RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
    },
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{
    postgres::{PASSWORD, Postgres},
    stdout_of_success,
};

const TEST_LABEL: &str = "org.wakafleet.test";
/// Run ids start with this; the process id follows.
const RUN_PREFIX: &str = "demo_platform-";
const IMAGE_PREFIX: &str = "wakafleet-test/demo-platform-";
const DOCKER_DOWN: &str = "the Docker engine is unreachable: start it (`sudo systemctl start docker`, or `sudo dockerd &`) or point DOCKER_HOST at a running one; this test needs it";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_platform_runs_migrates_and_reports_health_in_docker() {
    let started = Instant::now();
    let docker = connect().await;
    sweep_leftovers(&docker).await;
    let run = format!("{RUN_PREFIX}{}-{}", std::process::id(), unique());
    let images = Images(run[RUN_PREFIX.len()..].to_string());
    let _sweep = Sweep {
        docker: docker.clone(),
        run: run.clone(),
        images: vec![images.of("1.0.0"), images.of("1.1.0")],
    };
    build_images(&images);
    eprintln!("images built in {:?}", started.elapsed());

    let postgres = Postgres::start();
    let database = postgres.create_database("demo").await;
    let pool = sqlx::PgPool::connect(&postgres.admin_url(&database))
        .await
        .expect("connect to the test database");
    let containers = Containers {
        docker: &docker,
        run: &run,
        database_url: format!(
            "postgres://postgres:{PASSWORD}@host.docker.internal:{}/{database}",
            postgres.port
        ),
    };
    migrate(&containers, &images, &pool).await;
    eprintln!("migrated at {:?}", started.elapsed());
    let (app, worker) = serve(&containers, &images).await;
    smoke_test(&app.ip, &pool).await;
    containers
        .wait_for_health(&app.id, HealthStatusEnum::HEALTHY)
        .await;
    eprintln!("1.0.0 healthy at {:?}", started.elapsed());
    fail_health(&containers, &images, &app.ip, &pool).await;
    eprintln!("1.1.0 unhealthy at {:?}", started.elapsed());
    degrade(&docker, &worker.id, &app.ip, &pool).await;
    pool.close().await;
    eprintln!("done in {:?}", started.elapsed());
}

/// The test's image names: they name the run, so two runs never share an image.
struct Images(String);

impl Images {
    fn of(&self, version: &str) -> String {
        format!("{IMAGE_PREFIX}{}:{version}", self.0)
    }
}

/// A container of the run and its address on the default bridge network.
struct Started {
    id: String,
    ip: String,
}

/// `image build` of two releases, the second built to fail its health check: built, then up
/// to date; a missing binary says how to build it.
fn build_images(images: &Images) {
    let fleet = common::minimal_fleet();
    let release = |version: &str, date: &str, migrations: &str| {
        format!(
            "version = \"{version}\"\nstatus = \"stable\"\nreleased = {date}\n\
             image = \"{}\"\nmigrations = [{migrations}]\n",
            images.of(version)
        )
    };
    common::write(
        fleet.path(),
        "releases/1.0.0.toml",
        release("1.0.0", "2026-01-01", r#""0001_orders", "0002_customers""#),
    );
    common::write(
        fleet.path(),
        "releases/1.1.0.toml",
        release("1.1.0", "2026-02-01", r#""0003_payments""#),
    );
    let build = |binary: &str| {
        let fleet = fleet.path().to_str().expect("a UTF-8 temporary folder");
        let args = ["image", "build", fleet, "--binary", binary];
        common::wakafleet(
            fleet.as_ref(),
            &[&args[..], &["--fail-health", "1.1.0"]].concat(),
        )
    };
    let binary = env!("CARGO_BIN_EXE_demo-platform");
    let output = build(binary);
    assert_eq!(
        stdout_of_success(&output),
        format!(
            "1.0.0 {}: built\n1.1.0 {}: built (fails its health check)\n",
            images.of("1.0.0"),
            images.of("1.1.0")
        )
    );
    let output = build(binary);
    assert!(
        stdout_of_success(&output)
            .lines()
            .all(|line| line.contains("up to date")),
        "{}",
        stdout_of_success(&output)
    );
    let missing = build("/nonexistent/demo-platform");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cargo build --bin demo-platform"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// Migrations are applied once and recorded, and a rerun changes nothing.
async fn migrate(containers: &Containers<'_>, images: &Images, pool: &sqlx::PgPool) {
    let migrate = || async {
        let (code, logs) = containers.run_to_end(&images.of("1.0.0"), "migrate").await;
        assert_eq!(code, 0, "{logs}");
    };
    migrate().await;
    let recorded = || async {
        sqlx::query_as::<_, (String, String)>(
            "SELECT version, applied_at::text FROM schema_migrations ORDER BY applied_at, version",
        )
        .fetch_all(pool)
        .await
        .expect("read schema_migrations")
    };
    let first = recorded().await;
    let versions: Vec<&str> = first.iter().map(|(version, _)| version.as_str()).collect();
    assert_eq!(versions, ["0000_base", "0001_orders", "0002_customers"]);
    migrate().await;
    assert_eq!(recorded().await, first);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .fetch_all(pool)
    .await
    .expect("list tables");
    assert_eq!(
        tables,
        [
            "items",
            "m_0001_orders",
            "m_0002_customers",
            "platform_settings",
            "schema_migrations",
            "worker_heartbeat"
        ]
    );
}

/// Starts the app and its worker of 1.0.0 and checks the health endpoints once the worker
/// beats.
async fn serve(containers: &Containers<'_>, images: &Images) -> (Started, Started) {
    let app = containers.start(&images.of("1.0.0"), "serve").await;
    let worker = containers.start(&images.of("1.0.0"), "worker").await;
    let (code, health) = eventually("the app reports healthy", || async {
        let (code, body) = http(&app.ip, "GET", "/health", None).await?;
        (body["status"] == "healthy").then_some((code, body))
    })
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        health["checks"],
        json!({"database": "pass", "redis": "skip", "workers": "pass", "storage": "pass"})
    );
    let timestamp = health["timestamp"].as_str().expect("a timestamp");
    chrono::DateTime::parse_from_rfc3339(timestamp).expect("an RFC 3339 timestamp");
    assert_eq!(
        get(&worker.ip, "/health").await.0,
        200,
        "the worker serves /health"
    );
    assert_eq!(
        get(&worker.ip, "/items").await.0,
        404,
        "the worker serves no items"
    );

    assert_eq!(
        get(&app.ip, "/health/database").await,
        (200, json!({"status": "pass"}))
    );
    assert_eq!(
        get(&app.ip, "/health/redis").await,
        (200, json!({"status": "skip"}))
    );
    assert_eq!(
        get(&app.ip, "/version").await,
        (200, json!({"version": "1.0.0"}))
    );
    let (code, status) = get(&app.ip, "/health/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["status"], "healthy");
    assert_eq!(status["version"], "1.0.0");
    assert_eq!(status["instance"], "demo-instance");
    assert_eq!(
        status["migrations"],
        json!(["0000_base", "0001_orders", "0002_customers"])
    );
    assert_eq!(status["checks"]["workers"], "pass");
    (app, worker)
}

/// CRUD on items, then maintenance mode.
async fn smoke_test(ip: &str, pool: &sqlx::PgPool) {
    let (code, created) = http_ok(ip, "POST", "/items", Some(json!({"name": "jollof"}))).await;
    assert_eq!(code, 201);
    assert_eq!(created["name"], "jollof");
    let id = created["id"].as_i64().expect("an id");
    let path = format!("/items/{id}");
    assert_eq!(
        get(ip, "/items").await,
        (200, json!([{"id": id, "name": "jollof"}]))
    );
    assert_eq!(
        get(ip, "/items?name=jollof").await,
        (200, json!([{"id": id, "name": "jollof"}]))
    );
    assert_eq!(get(ip, "/items?name=suya").await, (200, json!([])));
    assert_eq!(
        get(ip, &path).await,
        (200, json!({"id": id, "name": "jollof"}))
    );
    assert_eq!(
        http_ok(ip, "PUT", &path, Some(json!({"name": "suya"}))).await,
        (200, json!({"id": id, "name": "suya"}))
    );
    assert_eq!(http_ok(ip, "DELETE", &path, None).await.0, 204);
    assert_eq!(get(ip, &path).await.0, 404);
    assert_eq!(http_ok(ip, "DELETE", &path, None).await.0, 404);

    let maintenance = |value: &'static str| async move {
        sqlx::query(
            "INSERT INTO platform_settings (key, value) VALUES ('maintenance', $1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(value)
        .execute(pool)
        .await
        .expect("set maintenance mode");
    };
    maintenance("on").await;
    assert_eq!(
        get(ip, "/items").await,
        (503, json!({"error": "maintenance"}))
    );
    let new = Some(json!({"name": "x"}));
    assert_eq!(http_ok(ip, "POST", "/items", new).await.0, 503);
    assert_eq!(
        get(ip, "/health").await.0,
        200,
        "health ignores maintenance"
    );
    maintenance("off").await;
    assert_eq!(get(ip, "/items").await, (200, json!([])));
}

/// 1.1.0 brings the schema to its release before it serves, and does not start when its
/// migration fails. It fails its health check: first because its migration is missing (as in
/// a database restored from before it), then because it was built to. Its redis is a port
/// nothing listens on. 1.0.0 (at `app_ip`) stays healthy on the database migrated further.
async fn fail_health(
    containers: &Containers<'_>,
    images: &Images,
    app_ip: &str,
    pool: &sqlx::PgPool,
) {
    let execute = |sql: &'static str| async move {
        sqlx::raw_sql(sql)
            .execute(pool)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    };
    // A table in the way of 0003_payments: the app exits before it ever answers.
    execute("CREATE TABLE \"m_0003_payments\" (id INT)").await;
    let (code, logs) = containers.run_to_end(&images.of("1.1.0"), "serve").await;
    assert_eq!(code, 1, "{logs}");
    assert!(
        logs.contains("m_0003_payments") && logs.contains("already exists"),
        "{logs}"
    );
    execute("DROP TABLE \"m_0003_payments\"").await;

    let redis = "REDIS_URL=redis://:secret@host.docker.internal:1/0";
    let failing = containers
        .start_with(&images.of("1.1.0"), "serve", &[redis])
        .await;
    let ip = &failing.ip;
    let (code, body) = eventually("1.1.0 answers", || async {
        http(ip, "GET", "/health/database", None).await
    })
    .await;
    assert_eq!((code, body), (200, json!({"status": "pass"})));
    let (_, status) = get(ip, "/health/status").await;
    let migrations = [
        "0000_base",
        "0001_orders",
        "0002_customers",
        "0003_payments",
    ];
    assert_eq!(status["migrations"], json!(migrations));

    execute(
        "DELETE FROM schema_migrations WHERE version = '0003_payments'; \
         DROP TABLE \"m_0003_payments\"",
    )
    .await;
    let (code, body) = get(ip, "/health/database").await;
    assert_eq!(code, 503);
    assert_eq!(body["status"], "fail");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("0003_payments"), "{body}");
    let (code, logs) = containers.run_to_end(&images.of("1.1.0"), "migrate").await;
    assert_eq!(code, 0, "{logs}");
    assert_eq!(
        get(ip, "/health/database").await,
        (200, json!({"status": "pass"}))
    );
    let (code, health) = get(ip, "/health").await;
    assert_eq!(code, 503);
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["checks"]["database"], "pass");
    assert_eq!(health["checks"]["redis"], "fail");
    let (code, redis) = get(ip, "/health/redis").await;
    assert_eq!(code, 503);
    assert_eq!(redis["status"], "fail");
    let error = redis["error"].as_str().expect("an error");
    assert!(
        error.contains("host.docker.internal:1") && !error.contains("secret"),
        "{error}"
    );
    let (_, status) = get(ip, "/health/status").await;
    assert_eq!(status["version"], "1.1.0");
    assert_eq!(status["migrations"], json!(migrations));
    assert_eq!(get(app_ip, "/health").await.0, 200);
    containers
        .wait_for_health(&failing.id, HealthStatusEnum::UNHEALTHY)
        .await;
}

/// Without a recent heartbeat the app is degraded. The worker stops at once on SIGTERM.
async fn degrade(docker: &Docker, worker: &str, app_ip: &str, pool: &sqlx::PgPool) {
    let stopping = Instant::now();
    let options = StopContainerOptionsBuilder::new().t(20).build();
    docker
        .stop_container(worker, Some(options))
        .await
        .expect("stop the worker");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "the worker ignored SIGTERM"
    );
    sqlx::query("UPDATE worker_heartbeat SET at = now() - interval '1 minute'")
        .execute(pool)
        .await
        .expect("age the heartbeat");
    let (code, health) = get(app_ip, "/health").await;
    assert_eq!(code, 503);
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["checks"]["workers"], "fail");
}

/// Removes this run's containers, networks, volumes and images when dropped, also when the
/// test fails.
struct Sweep {
    docker: Docker,
    run: String,
    images: Vec<String>,
}

impl Drop for Sweep {
    fn drop(&mut self) {
        // Drop cannot await, and may run on the test's runtime: sweep from a thread of its own.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime to sweep with");
                runtime.block_on(async {
                    sweep(&self.docker, |run| run == self.run).await;
                    for image in &self.images {
                        remove_image(&self.docker, image).await;
                    }
                });
            });
        });
    }
}

/// Removes what earlier runs of this test left behind, when their process is gone.
async fn sweep_leftovers(docker: &Docker) {
    let gone = |run: &str| {
        let pid = run
            .strip_prefix(RUN_PREFIX)
            .and_then(|rest| rest.split('-').next());
        pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists())
    };
    sweep(docker, gone).await;
    let filters = HashMap::from([("reference", vec![format!("{IMAGE_PREFIX}*")])]);
    let images = docker
        .list_images(Some(
            ListImagesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .expect("list images");
    for tag in images.iter().flat_map(|image| &image.repo_tags) {
        let run = tag
            .strip_prefix(IMAGE_PREFIX)
            .and_then(|rest| rest.split(':').next());
        if run.is_some_and(|run| gone(&format!("{RUN_PREFIX}{run}"))) {
            remove_image(docker, tag).await;
        }
    }
}

/// Removes the containers, networks and volumes labelled with a run `doomed` accepts.
async fn sweep(docker: &Docker, doomed: impl Fn(&str) -> bool) {
    let filters = HashMap::from([("label", vec![TEST_LABEL.to_string()])]);
    let is_doomed = |labels: Option<&HashMap<String, String>>| {
        labels
            .and_then(|labels| labels.get(TEST_LABEL))
            .filter(|run| run.starts_with(RUN_PREFIX) && doomed(run))
            .is_some()
    };
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    for container in docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
    {
        if let (Some(id), true) = (&container.id, is_doomed(container.labels.as_ref())) {
            let options = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            let _ = docker.remove_container(id, Some(options)).await;
        }
    }
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    for network in docker
        .list_networks(Some(options))
        .await
        .unwrap_or_default()
    {
        if let (Some(id), true) = (&network.id, is_doomed(network.labels.as_ref())) {
            let _ = docker.remove_network(id).await;
        }
    }
    let options = ListVolumesOptionsBuilder::new().filters(&filters).build();
    let volumes = docker.list_volumes(Some(options)).await.ok();
    for volume in volumes
        .iter()
        .flat_map(|list| list.volumes.iter().flatten())
    {
        if is_doomed(Some(&volume.labels)) {
            let _ = docker
                .remove_volume(
                    &volume.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
    }
}

async fn remove_image(docker: &Docker, image: &str) {
    let options = RemoveImageOptionsBuilder::new().force(true).build();
    let _ = docker.remove_image(image, Some(options), None).await;
}

async fn connect() -> Docker {
    let docker =
        Docker::connect_with_defaults().unwrap_or_else(|error| panic!("{DOCKER_DOWN}: {error}"));
    docker
        .negotiate_version()
        .await
        .unwrap_or_else(|error| panic!("{DOCKER_DOWN}: {error}"))
}

/// A number no other run of this test has at the same time.
fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() % 1_000_000_000)
        .unwrap_or_default()
}

/// Starts containers of this run against one database.
struct Containers<'a> {
    docker: &'a Docker,
    run: &'a str,
    database_url: String,
}

impl Containers<'_> {
    /// Creates and starts a container of `image` running `command`.
    async fn start(&self, image: &str, command: &str) -> Started {
        self.start_with(image, command, &[]).await
    }

    /// Like `start`, with more environment (`NAME=value`).
    async fn start_with(&self, image: &str, command: &str, env: &[&str]) -> Started {
        let id = self.launch(image, command, env).await;
        let ip = self.ip(&id).await;
        Started { id, ip }
    }

    /// Creates and starts a container; returns its id.
    async fn launch(&self, image: &str, command: &str, env: &[&str]) -> String {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec![command.to_string()]),
            env: Some(
                [
                    format!("DATABASE_URL={}", self.database_url),
                    "WAKAFLEET_INSTANCE=demo-instance".to_string(),
                ]
                .into_iter()
                .chain(env.iter().map(|entry| entry.to_string()))
                .collect(),
            ),
            labels: Some(HashMap::from([(
                TEST_LABEL.to_string(),
                self.run.to_string(),
            )])),
            host_config: Some(HostConfig {
                extra_hosts: Some(vec!["host.docker.internal:host-gateway".to_string()]),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let name = format!("{}-{command}-{}", self.run, unique());
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .unwrap_or_else(|error| panic!("create a container of {image}: {error}"));
        self.docker
            .start_container(&created.id, None)
            .await
            .unwrap_or_else(|error| panic!("start a container of {image}: {error}"));
        created.id
    }

    /// Runs `command` in a new container of `image` until it exits; returns its exit code
    /// and what it wrote.
    async fn run_to_end(&self, image: &str, command: &str) -> (i64, String) {
        let id = self.launch(image, command, &[]).await;
        let code = eventually(&format!("`{command}` exits"), || async {
            let inspect = self.docker.inspect_container(&id, None).await.ok()?;
            let state = inspect.state?;
            (state.running == Some(false)).then_some(state.exit_code?)
        })
        .await;
        (code, self.logs(&id).await)
    }

    async fn logs(&self, id: &str) -> String {
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
        let chunks: Vec<_> = self.docker.logs(id, Some(options)).collect().await;
        chunks
            .into_iter()
            .filter_map(Result::ok)
            .map(|chunk| chunk.to_string())
            .collect()
    }

    /// The container's address on the default bridge network.
    async fn ip(&self, id: &str) -> String {
        let inspect = self
            .docker
            .inspect_container(id, None)
            .await
            .expect("inspect a container");
        inspect
            .network_settings
            .and_then(|settings| settings.networks)
            .and_then(|networks| networks.get("bridge")?.ip_address.clone())
            .filter(|ip| !ip.is_empty())
            .expect("the container has an address on the bridge network")
    }

    /// Waits until Docker's health check of the container says `expected`.
    async fn wait_for_health(&self, id: &str, expected: HealthStatusEnum) {
        let what = format!("Docker reports the container {expected}");
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let inspect = self.docker.inspect_container(id, None).await;
                let health = inspect
                    .ok()
                    .and_then(|inspect| inspect.state?.health?.status);
                if health == Some(expected) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
        if waited.is_err() {
            panic!("{what}: not within 60 s; logs:\n{}", self.logs(id).await);
        }
    }
}

/// Polls `probe` until it returns something, for at most 60 s.
async fn eventually<T, F>(what: &str, mut probe: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn get(ip: &str, path: &str) -> (u16, Value) {
    http_ok(ip, "GET", path, None).await
}

async fn http_ok(ip: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    http(ip, method, path, body)
        .await
        .unwrap_or_else(|| panic!("{method} {path} on {ip}:8080 got no HTTP answer"))
}

/// One HTTP/1.0 request to port 8080; the status and the JSON body (null when empty), or
/// `None` when the server cannot be reached or answers garbage.
async fn http(ip: &str, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((ip, 8080)).await.ok()?;
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {ip}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8(response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let code = head.split(' ').nth(1)?.parse().ok()?;
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|error| {
                panic!("{method} {path}: the body is not JSON ({error}): {body}")
            })
        };
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}
