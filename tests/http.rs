//! The daemon's HTTP face through its real socket: `wakafleet run --listen` on a git
//! repository, with a configuration of tokens, talked to over loopback.
//!
//! Every answer of the route test is checked against the checked-in OpenAPI document by
//! Python's `jsonschema` (strictly: a field the document does not name is an error), on
//! SQLite and on PostgreSQL; the others refuse, limit, audit and take GitHub's webhook.

mod common;

use std::{net::SocketAddr, path::Path, process::Command};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use common::{
    daemon::{Running, World},
    docker::docker_ok,
    http::{Answer, Request, free_address},
    workers::until,
};

/// GitHub's documented test vector.
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITHUB_BODY: &[u8] = b"Hello, World!";
const GITHUB_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// A running daemon with its HTTP face, and its tokens.
struct Face {
    world: World,
    daemon: Running,
    address: SocketAddr,
    operator: String,
    viewer: String,
    /// A viewer of partner `p2` only.
    scoped: String,
}

impl Face {
    /// Starts `wakafleet run fleet` on `world` with `args`, listening on a free port, with
    /// an operator, a viewer and a scoped viewer token, the webhook's secret, and `config`.
    async fn start(world: World, args: &[&str], config: &str) -> Face {
        let (operator, operator_entry) = token(&world, &["ops", "--role", "operator"]);
        let (viewer, viewer_entry) = token(&world, &["view", "--role", "viewer"]);
        let (scoped, scoped_entry) =
            token(&world, &["p2-view", "--role", "viewer", "--partner", "p2"]);
        let file = world.state_path().join("daemon.toml");
        std::fs::write(
            &file,
            format!(
                "[source]\nwebhook_secret = \"env:WAKAFLEET_TEST_WEBHOOK_SECRET\"\n{config}\n{operator_entry}\n{viewer_entry}\n{scoped_entry}"
            ),
        )
        .expect("the daemon's configuration");
        let address = free_address();
        let listen = address.to_string();
        let file = file.display().to_string();
        let mut all = vec!["--listen", listen.as_str(), "--config", file.as_str()];
        all.extend_from_slice(args);
        let daemon = world.start_with(
            Path::new("fleet"),
            &all,
            &[("WAKAFLEET_TEST_WEBHOOK_SECRET", GITHUB_SECRET)],
        );
        let face = Face {
            world,
            daemon,
            address,
            operator,
            viewer,
            scoped,
        };
        until("the daemon to listen", async || {
            Request::get("/health").send(face.address).ok()
        })
        .await;
        face
    }

    fn send(&self, request: &Request<'_>) -> Answer {
        request
            .send(self.address)
            .unwrap_or_else(|error| panic!("{error}: {}", self.daemon.log()))
    }

    fn get(&self, path: &str, token: &str) -> Answer {
        self.send(&Request::get(path).bearer(token))
    }

    fn post(&self, path: &str, token: &str) -> Answer {
        self.send(&Request::post(path).bearer(token))
    }
}

/// `wakafleet token create ARGS`: the token and its config entry.
fn token(world: &World, args: &[&str]) -> (String, String) {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let output = common::stdout_of_success(&world.wakafleet(&all));
    let (token, entry) = output.split_once('\n').expect("the token, then its entry");
    (token.to_string(), entry.to_string())
}

/// The answers collected for the OpenAPI check: route pattern, method, status, body.
#[derive(Default)]
struct Answers(Vec<Value>);

impl Answers {
    /// Keeps `answer` for the check, asserting its status first.
    fn keep(&mut self, pattern: &str, method: &str, answer: &Answer, status: u16) -> Value {
        assert_eq!(
            answer.status,
            status,
            "{method} {pattern}: {}",
            answer.text()
        );
        let body = answer.json();
        self.0.push(json!({
            "path": pattern, "method": method, "status": status, "body": body,
        }));
        body
    }

    /// Checks every answer kept against the checked-in document.
    fn check(&self) {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
        assert!(
            python.exists(),
            "the tests' Python venv is missing: run scripts/test, or `python3 -m venv target/test-venv && target/test-venv/bin/pip install jsonschema prometheus_client`"
        );
        let document: Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.json"),
            )
            .expect("schemas/openapi.json"),
        )
        .expect("the document is JSON");
        let input = json!({ "document": document, "answers": self.0 }).to_string();
        let mut child = Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/openapi_check.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input.as_bytes())
            .expect("the answers");
        let output = child.wait_with_output().expect("the check");
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{report}");
        assert!(
            report.contains(&format!("checked {} answers, 0 problems", self.0.len())),
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_as_the_openapi_document_says_on_sqlite() {
    every_route_answers_as_documented(World::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_as_the_openapi_document_says_on_postgres() {
    every_route_answers_as_documented(World::on_postgres().await).await;
}

async fn every_route_answers_as_documented(world: World) {
    docker_ok();
    world.instance("alpha", "1.0.0", "");
    world.commit("Add alpha");
    let alpha = world.name("alpha");
    let face = Face::start(world, &["--interval", "5"], "").await;
    let (ops, view) = (face.operator.clone(), face.viewer.clone());
    until("alpha to be provisioned", async || {
        let status = face.get("/api/v1/status", &view).json();
        (status["instances"][0]["status"] == "active" && status["commit"]["applied"].is_string())
            .then_some(())
    })
    .await;
    let mut answers = Answers::default();

    for path in ["/health", "/health/database", "/health/status"] {
        let body = answers.keep(path, "get", &face.send(&Request::get(path)), 200);
        assert_eq!(body["status"], "healthy", "{path}: {body}");
    }
    let redis = face.send(&Request::get("/health/redis"));
    answers.keep("/health/redis", "get", &redis, 404);

    let status = answers.keep(
        "/api/v1/status",
        "get",
        &face.get("/api/v1/status", &view),
        200,
    );
    assert_eq!(status["format_version"], 1);
    assert_eq!(status["instances"][0]["name"], alpha.as_str());
    assert_eq!(status["instances"][0]["channel"], "manual");
    let instances = answers.keep(
        "/api/v1/instances",
        "get",
        &face.get("/api/v1/instances", &view),
        200,
    );
    assert_eq!(instances["instances"], status["instances"]);
    let detail = answers.keep(
        "/api/v1/instances/{name}",
        "get",
        &face.get(&format!("/api/v1/instances/{alpha}"), &view),
        200,
    );
    assert_eq!(detail["jobs"][0]["kind"], "provision");
    assert_eq!(detail["jobs"][0]["status"], "succeeded");
    assert!(
        detail["audit"]
            .as_array()
            .expect("records")
            .iter()
            .any(|record| record["action"] == "instance.provision.step.activate"),
        "{detail}"
    );
    answers.keep(
        "/api/v1/instances/{name}",
        "get",
        &face.get("/api/v1/instances/nobody", &view),
        404,
    );

    let jobs = answers.keep("/api/v1/jobs", "get", &face.get("/api/v1/jobs", &view), 200);
    let job = jobs["jobs"][0]["id"].as_str().expect("a job").to_string();
    answers.keep(
        "/api/v1/jobs",
        "get",
        &face.get("/api/v1/jobs?status=bogus", &view),
        400,
    );
    let detail = answers.keep(
        "/api/v1/jobs/{id}",
        "get",
        &face.get(&format!("/api/v1/jobs/{job}"), &view),
        200,
    );
    assert!(
        detail["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .all(|step| step["status"] == "succeeded" || step["status"] == "skipped"),
        "{detail}"
    );
    answers.keep(
        "/api/v1/jobs/{id}",
        "get",
        &face.get("/api/v1/jobs/no-such-job", &view),
        404,
    );
    // A succeeded job can be neither retried nor cancelled.
    for verb in ["retry", "cancel"] {
        let answer = face.post(&format!("/api/v1/jobs/{job}/{verb}"), &ops);
        let body = answers.keep(&format!("/api/v1/jobs/{{id}}/{verb}"), "post", &answer, 409);
        assert_eq!(body["error"]["code"], "CONFLICT");
    }

    // The plan the daemon would make now: nothing, it converged.
    let plan = face.get("/api/v1/plan", &view);
    assert_eq!(plan.status, 200, "{}", plan.text());
    let plan = plan.json();
    assert_eq!(plan["format_version"], 1);
    assert_eq!(plan["summary"]["total"], 0, "{plan}");
    let state = face.get("/api/v1/state", &view);
    assert_eq!(state.status, 200);
    let state = state.json();
    assert_eq!(
        state["instances"][alpha.as_str()]["version"],
        "1.0.0",
        "{state}"
    );

    // `plan --state` reads the same snapshot from the daemon, with the token from the
    // environment: nothing to do.
    let url = format!("http://{}", face.address);
    let planned = common::wakafleet_with(
        face.world.repo_path(),
        &["plan", "fleet", "--state", &url, "--format", "json"],
        &[("WAKAFLEET_TOKEN", &view)],
        std::time::Duration::from_secs(60),
    );
    let planned: Value =
        serde_json::from_str(&common::stdout_of_success(&planned)).expect("a plan");
    assert_eq!(planned["summary"]["total"], 0, "{planned}");
    let refused = common::wakafleet_with(
        face.world.repo_path(),
        &["plan", "fleet", "--state", &url],
        &[("WAKAFLEET_TOKEN", "wf1.view.wrong")],
        std::time::Duration::from_secs(60),
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("answered 401"),
        "{refused:?}"
    );

    // Pause, reconcile now, resume: the status shows the pause.
    answers.keep(
        "/api/v1/reconcile/pause",
        "post",
        &face.post("/api/v1/reconcile/pause", &ops),
        200,
    );
    let paused = face.get("/api/v1/status", &view).json();
    assert_eq!(paused["reconcile"]["paused"], true, "{paused}");
    let health = face.send(&Request::get("/health/status")).json();
    assert_eq!(health["status"], "degraded", "{health}");
    let now = answers.keep(
        "/api/v1/reconcile",
        "post",
        &face.post("/api/v1/reconcile", &ops),
        202,
    );
    assert_eq!(now["paused"], true);
    answers.keep(
        "/api/v1/reconcile/resume",
        "post",
        &face.post("/api/v1/reconcile/resume", &ops),
        200,
    );
    assert_eq!(
        face.get("/api/v1/status", &view).json()["reconcile"]["paused"],
        false
    );

    // The audit log, paged and exported.
    let page = answers.keep(
        "/api/v1/audit",
        "get",
        &face.get("/api/v1/audit?limit=5", &view),
        200,
    );
    assert_eq!(page["records"].as_array().map(Vec::len), Some(5));
    let after = page["next_after"].as_i64().expect("a cursor");
    let next = face
        .get(&format!("/api/v1/audit?limit=5&after={after}"), &view)
        .json();
    assert!(next["records"][0]["seq"].as_i64() > Some(after), "{next}");
    answers.keep(
        "/api/v1/audit",
        "get",
        &face.get("/api/v1/audit?since=yesterday", &view),
        400,
    );
    let export = face.get("/api/v1/audit/export?action=reconcile.*", &view);
    assert_eq!(export.status, 200);
    assert_eq!(export.header("content-type"), Some("application/x-ndjson"));
    let exported: Vec<Value> = export
        .text()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let actions: Vec<&str> = exported
        .iter()
        .map(|record| record["action"].as_str().expect("an action"))
        .collect();
    assert_eq!(
        actions,
        ["reconcile.pause", "reconcile.request", "reconcile.resume"]
    );
    let pause = &exported[0];
    assert_eq!(pause["actor"]["kind"], "token");
    assert_eq!(pause["actor"]["id"], "ops");
    assert_eq!(pause["metadata"]["role"], "operator");
    assert_eq!(pause["metadata"]["user_agent"], "wakafleet-tests");
    assert!(
        pause["metadata"]["remote"]
            .as_str()
            .is_some_and(|remote| remote.starts_with("127.0.0.1:"))
    );
    assert_eq!(pause["after"]["paused"], true);
    let everything = face.get("/api/v1/audit/export", &view).text();
    let seqs: Vec<i64> = everything
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("JSON")["seq"]
                .as_i64()
                .expect("seq")
        })
        .collect();
    assert!(
        seqs.len() > 10 && seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "{seqs:?}"
    );

    // The document the daemon serves is the one checked in.
    let served = face.get("/api/v1/openapi.json", &view).text();
    assert_eq!(served, wakafleet::http::openapi::text());
    answers.check();
    face.daemon.kill();
    face.world.audit_verifies();
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_roles_scopes_and_limits_refuse_and_every_refusal_is_audited() {
    let world = World::new().await;
    world.write(
        "partners/p2.toml",
        "id = \"p2\"\nname = \"Partner Two\"\nemail = \"ops@p2.example\"\n",
    );
    world.write(
        "tenants/t2.toml",
        "id = \"t2\"\npartner = \"p2\"\nname = \"Tenant Two\"\n",
    );
    world.instance("alpha", "1.0.0", "");
    let beta = world.name("beta");
    world.write(
        &format!("instances/{beta}.toml"),
        &format!(
            "name = \"{beta}\"\ntype = \"partner-deployed\"\npartner = \"p2\"\ntenant = \"t2\"\nregion = \"ng-lagos\"\ndata_residency = [\"NG\"]\nsuites = [\"commerce\"]\nsize = \"small\"\nchannel = \"manual\"\nversion = \"1.0.0\"\n"
        ),
    );
    world.commit("Two partners' instances");
    // No worker: the jobs wait, nothing needs the engine.
    let face = Face::start(
        world,
        &["--workers", "0"],
        "[api.rate_limit]\nper_token = 30\nper_address = 12\n",
    )
    .await;
    // Waited for in the store, not through the API, whose calls the limits count (and
    // whose status is rendered for the first time after this).
    until("both instances to be planned", async || {
        let status = face.world.status();
        (status["instances"].as_array().map(Vec::len) == Some(2) && face.world.jobs().len() == 2)
            .then_some(())
    })
    .await;

    // No token, a wrong one: 401 in the seeds' shape, with the request's id.
    let none = face.send(&Request::get("/api/v1/status"));
    assert_eq!(none.status, 401);
    let error = none.json();
    assert_eq!(error["error"]["code"], "UNAUTHORIZED");
    assert_eq!(
        error["error"]["requestId"].as_str(),
        none.header("x-request-id")
    );
    assert!(error["error"]["timestamp"].is_string());
    let wrong = face.get("/api/v1/status", &format!("{}x", face.viewer));
    assert_eq!(wrong.status, 401);
    // A viewer's verb: 403.
    let verb = face.post("/api/v1/reconcile/pause", &face.viewer);
    assert_eq!(verb.status, 403, "{}", verb.text());
    assert_eq!(verb.json()["error"]["code"], "FORBIDDEN");

    // A partner's token sees its partner's instance only, everywhere.
    let (alpha, beta) = (face.world.name("alpha"), face.world.name("beta"));
    let seen: Vec<Value> = face.get("/api/v1/instances", &face.scoped).json()["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|instance| instance["name"].clone())
        .collect();
    assert_eq!(seen, [json!(beta)]);
    let status = face.get("/api/v1/status", &face.scoped).json();
    assert_eq!(status["instances"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        face.get(&format!("/api/v1/instances/{alpha}"), &face.scoped)
            .status,
        404
    );
    assert_eq!(
        face.get(&format!("/api/v1/instances/{beta}"), &face.scoped)
            .status,
        200
    );
    let jobs = face.get("/api/v1/jobs", &face.scoped).json();
    assert!(
        jobs["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .all(|job| job["instance"] == beta.as_str()),
        "{jobs}"
    );
    let all_jobs = face.get("/api/v1/jobs", &face.operator).json();
    let alpha_job = all_jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|job| job["instance"] == alpha.as_str())
        .expect("alpha's provision waits")["id"]
        .as_str()
        .expect("an id")
        .to_string();
    assert_eq!(
        face.get(&format!("/api/v1/jobs/{alpha_job}"), &face.scoped)
            .status,
        404
    );
    let plan = face.get("/api/v1/plan", &face.scoped).json();
    assert!(
        plan["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .all(|action| action["resource"]["id"] == beta.as_str()),
        "{plan}"
    );
    for path in ["/api/v1/state", "/metrics"] {
        assert_eq!(face.get(path, &face.scoped).status, 403, "{path}");
    }
    // The operator cancels both waiting provisions; the partner's token sees only the
    // audit record about its own instance.
    let beta_job = all_jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|job| job["instance"] == beta.as_str())
        .expect("beta's provision waits")["id"]
        .as_str()
        .expect("an id")
        .to_string();
    for job in [&alpha_job, &beta_job] {
        let cancelled = face.post(&format!("/api/v1/jobs/{job}/cancel"), &face.operator);
        assert_eq!(cancelled.status, 200, "{}", cancelled.text());
        assert_eq!(cancelled.json()["status"], "cancelled");
    }
    let audit = face
        .get("/api/v1/audit?action=job.cancel", &face.scoped)
        .json();
    let records = audit["records"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{audit}");
    assert_eq!(records[0]["job"], beta_job.as_str());

    // Past the token's limit: 429 with the seeds' headers.
    let mut limited = None;
    for _ in 0..40 {
        let answer = face.get("/api/v1/status", &face.viewer);
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("x-ratelimit-limit"), Some("30"));
        assert!(answer.header("x-ratelimit-remaining").is_some());
    }
    let limited = limited.expect("the viewer is limited within 40 requests");
    assert_eq!(limited.json()["error"]["code"], "RATE_LIMITED");
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    let reset: i64 = limited
        .header("x-ratelimit-reset")
        .and_then(|reset| reset.parse().ok())
        .expect("a reset time");
    assert!(reset > chrono::Utc::now().timestamp() - 1, "{reset}");
    assert!(limited.header("retry-after").is_some());
    // The operator has an allowance of its own.
    assert_eq!(face.get("/api/v1/status", &face.operator).status, 200);
    // Without a valid token, the address is limited.
    let mut address_limited = false;
    for _ in 0..20 {
        let answer = face.send(&Request::get("/api/v1/jobs"));
        if answer.status == 429 {
            address_limited = true;
            break;
        }
        assert_eq!(answer.status, 401);
    }
    assert!(address_limited, "the address is limited within 20 requests");

    // Each kind of refusal is in the audit log, with who, from where and which request.
    let refused = face.world.audit("api.refused");
    let codes: std::collections::BTreeSet<i64> = refused
        .iter()
        .filter_map(|record| record["metadata"]["code"].as_i64())
        .collect();
    assert_eq!(codes, [401, 403, 429].into_iter().collect(), "{refused:?}");
    assert!(refused.iter().all(|record| {
        record["result"] == "failure"
            && record["metadata"]["user_agent"] == "wakafleet-tests"
            && record["metadata"]["request_id"].is_string()
            && record["metadata"]["remote"].is_string()
    }));
    assert!(
        refused
            .iter()
            .any(|record| record["actor"]["id"] == "view" && record["metadata"]["code"] == 429),
        "the token's refusal names the token"
    );
    let forbidden = face.world.audit("reconcile.pause");
    assert_eq!(forbidden.len(), 1, "{forbidden:?}");
    assert_eq!(forbidden[0]["actor"]["id"], "view");
    assert_eq!(forbidden[0]["metadata"]["code"], 403);
    face.world.audit_verifies();
}

/// GitHub's signature of `body` under `secret`.
fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn delivery<'a>(event: &str, body: &'a [u8], signature: &str) -> Request<'a> {
    Request::post("/api/v1/webhook/github")
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", &uuid::Uuid::new_v4().to_string())
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
        .body(body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_checks_githubs_signature_refuses_replays_and_a_push_reconciles_at_once() {
    let world = World::new().await;
    let remote = format!("file://{}", world.repo_path().display());
    let repository = git2::Repository::open(world.repo_path()).expect("the repository");
    let branch = repository
        .head()
        .expect("a head")
        .shorthand()
        .expect("a branch")
        .to_string();
    let first = repository
        .head()
        .expect("a head")
        .target()
        .expect("a commit")
        .to_string();
    // An hour between fetches: only the webhook can make the daemon see a push soon.
    let face = Face::start(
        world,
        &[
            "--repo",
            &remote,
            "--branch",
            &branch,
            "--interval",
            "3600",
            "--workers",
            "0",
        ],
        "",
    )
    .await;
    until("the first commit to be applied", async || {
        let status = face.get("/api/v1/status", &face.viewer).json();
        (status["commit"]["applied"] == first.as_str()).then_some(())
    })
    .await;

    let ping = face.send(&delivery("ping", GITHUB_BODY, GITHUB_SIGNATURE));
    assert_eq!(ping.status, 200, "{}", ping.text());
    assert_eq!(ping.json()["event"], "ping");
    let changed = face.send(&delivery("ping", b"Hello, World?", GITHUB_SIGNATURE));
    assert_eq!(changed.status, 401);
    assert_eq!(changed.json()["error"]["code"], "UNAUTHORIZED");
    let unsigned = face.send(
        &Request::post("/api/v1/webhook/github")
            .header("X-GitHub-Event", "ping")
            .body(GITHUB_BODY),
    );
    assert_eq!(unsigned.status, 401);
    // The same delivery again, even under another delivery id: a replay.
    let replay = face.send(&delivery("ping", GITHUB_BODY, GITHUB_SIGNATURE));
    assert_eq!(replay.status, 409, "{}", replay.text());

    face.world.write(
        "partners/p3.toml",
        "id = \"p3\"\nname = \"Partner Three\"\nemail = \"ops@p3.example\"\n",
    );
    let pushed = face.world.commit("Add partner three");
    let elsewhere = json!({ "ref": "refs/heads/elsewhere", "after": pushed }).to_string();
    let ignored = face.send(&delivery(
        "push",
        elsewhere.as_bytes(),
        &sign(GITHUB_SECRET, elsewhere.as_bytes()),
    ));
    assert_eq!(ignored.status, 202);
    assert_eq!(ignored.json()["reconcile"], false);
    let push = json!({ "ref": format!("refs/heads/{branch}"), "after": pushed }).to_string();
    let accepted = face.send(&delivery(
        "push",
        push.as_bytes(),
        &sign(GITHUB_SECRET, push.as_bytes()),
    ));
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    assert_eq!(accepted.json()["reconcile"], true);
    until("the pushed commit to be applied", async || {
        let status = face.get("/api/v1/status", &face.viewer).json();
        (status["commit"]["applied"] == pushed.as_str()).then_some(())
    })
    .await;

    let refused = face.world.audit("webhook.refused");
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused.iter().all(|record| record["result"] == "failure"));
    let codes: Vec<i64> = refused
        .iter()
        .filter_map(|record| record["metadata"]["code"].as_i64())
        .collect();
    assert_eq!(codes, [401, 401, 409]);
    assert_eq!(face.world.audit("webhook.received").len(), 3);
    face.world.audit_verifies();
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_clear_errors_and_the_daemon_goes_on() {
    let world = World::new().await;
    let face = Face::start(world, &["--workers", "0"], "").await;
    let view = face.viewer.clone();
    let error_code = |answer: &Answer| answer.json()["error"]["code"].clone();

    let malformed = face.get("/api/v1/jobs?limit=many", &view);
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    assert_eq!(error_code(&malformed), "VALIDATION_ERROR");
    let traversal = face.get("/api/v1/instances/..%2F..%2Fetc%2Fpasswd", &view);
    assert_eq!(traversal.status, 404);
    assert_eq!(error_code(&traversal), "NOT_FOUND");
    let unknown = face.get("/api/v1/nothing-here", &view);
    assert_eq!(unknown.status, 404);
    assert_eq!(error_code(&unknown), "NOT_FOUND");
    let method = face.send(&Request {
        method: "BREW",
        ..Request::get("/api/v1/status").bearer(&view)
    });
    assert!(method.status == 404 || method.status == 405, "{method:?}");
    assert!(error_code(&method).is_string());
    let huge_limit = face.get("/api/v1/audit?limit=99999999999999999999", &view);
    assert_eq!(huge_limit.status, 400);
    let not_utf8 =
        face.send(&Request::get("/api/v1/status").header("Authorization", "Bearer \u{fffd}"));
    assert_eq!(not_utf8.status, 401);

    // A body far past GitHub's largest is refused before anything else reads it.
    let body = vec![b'x'; 6 << 20];
    let big = face.send(&delivery("push", &body, "sha256=00"));
    assert_eq!(big.status, 400, "{}", big.text());
    assert_eq!(error_code(&big), "VALIDATION_ERROR");

    // Bytes that are not HTTP: the connection is dropped, the daemon goes on.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(face.address).expect("a connection");
        stream
            .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
            .expect("garbage sent");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
    let health = face.send(&Request::get("/health"));
    assert_eq!(health.status, 200);
    assert_eq!(face.get("/api/v1/status", &view).status, 200);
    face.world.audit_verifies();
}

/// A `/metrics` answer as Prometheus's Python client parsed it.
struct Scrape(Vec<Value>);

impl Scrape {
    /// Scrapes `face` with `token` and parses the answer; it must be valid OpenMetrics.
    fn of(face: &Face, token: &str) -> Scrape {
        let answer = face.get("/metrics", token);
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(
            answer.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
        assert!(
            python.exists(),
            "the tests' Python venv is missing: run scripts/test, or `python3 -m venv target/test-venv && target/test-venv/bin/pip install jsonschema prometheus_client`"
        );
        let mut child = Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/openmetrics_parse.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &answer.body)
            .expect("the metrics");
        let output = child.wait_with_output().expect("the parser");
        assert!(
            output.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            answer.text()
        );
        Scrape(serde_json::from_slice(&output.stdout).expect("the samples as JSON"))
    }

    /// The samples named `name` whose labels include `labels`.
    fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|sample| {
                sample["name"] == name
                    && labels
                        .iter()
                        .all(|(key, value)| sample["labels"][*key] == *value)
            })
            .collect()
    }

    /// The value of the one sample named `name` with `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.matching(name, labels);
        assert_eq!(found.len(), 1, "one {name} {labels:?} in {:?}", self.0);
        found[0]["value"].as_f64().expect("a number")
    }

    /// The sum of the samples named `name` with `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .iter()
            .map(|sample| sample["value"].as_f64().expect("a number"))
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread")]
#[expect(clippy::cast_precision_loss, reason = "the counts compared are small")]
async fn metrics_parse_as_openmetrics_and_agree_with_the_store() {
    docker_ok();
    let world = World::new().await;
    world.instance("alpha", "1.0.0", "");
    world.instance("beta", "1.0.0", "");
    world.commit("Add alpha and beta");
    let (alpha, beta) = (world.name("alpha"), world.name("beta"));
    let face = Face::start(world, &["--interval", "5"], "").await;
    let view = face.viewer.clone();
    until("alpha and beta to be provisioned", async || {
        let status = face.get("/api/v1/status", &view).json();
        let instances = status["instances"].as_array()?;
        (instances.len() == 2
            && instances
                .iter()
                .all(|instance| instance["status"] == "active"))
        .then_some(())
    })
    .await;

    let records_before = face.world.audit("").len() as f64;
    let scrape = Scrape::of(&face, &view);
    let records_after = face.world.audit("").len() as f64;
    assert_eq!(scrape.value("wakafleet_store_up", &[]), 1.0);
    assert_eq!(scrape.value("wakafleet_leader", &[]), 1.0);

    // Instances, as the status shows them.
    let status = face.world.status();
    let active = status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|instance| instance["status"] == "active")
        .count();
    assert_eq!(active, 2);
    assert_eq!(
        scrape.value("wakafleet_instances", &[("status", "active")]),
        active as f64
    );
    assert_eq!(
        scrape.value("wakafleet_instances", &[("status", "failed")]),
        0.0
    );
    for name in [&alpha, &beta] {
        let labels = [
            ("instance", name.as_str()),
            ("version", "1.0.0"),
            ("channel", "manual"),
            ("status", "active"),
        ];
        assert_eq!(scrape.value("wakafleet_instance_info", &labels), 1.0);
    }

    // Jobs, as the store lists them: two provisions that succeeded.
    let jobs = face.world.jobs();
    let provisions = jobs
        .iter()
        .filter(|job| job["kind"] == "provision" && job["status"] == "succeeded")
        .count();
    assert_eq!(provisions, 2);
    assert_eq!(
        scrape.value(
            "wakafleet_jobs",
            &[("kind", "provision"), ("status", "succeeded")]
        ),
        provisions as f64
    );
    assert_eq!(
        scrape.sum("wakafleet_jobs", &[("status", "pending")]),
        scrape.value("wakafleet_queue_depth", &[]) + scrape.value("wakafleet_queue_deferred", &[]),
        "every pending job is ready or deferred"
    );
    assert_eq!(scrape.value("wakafleet_dead_jobs", &[]), 0.0);

    // What the jobs did, as the audit log records it.
    let ends = face.world.audit("instance.provision.end");
    let succeeded = ends
        .iter()
        .filter(|record| record["result"] == "success")
        .count();
    assert_eq!(succeeded, 2, "{ends:?}");
    assert_eq!(
        scrape.value("wakafleet_provisions_total", &[("result", "success")]),
        succeeded as f64
    );
    assert_eq!(
        scrape.value("wakafleet_provisions_total", &[("result", "failure")]),
        (ends.len() - succeeded) as f64
    );
    assert_eq!(
        scrape.value(
            "wakafleet_job_attempts_total",
            &[("kind", "provision"), ("result", "success")]
        ),
        succeeded as f64
    );
    let seconds: f64 = ends
        .iter()
        .map(|record| {
            record["metadata"]["duration_ms"]
                .as_f64()
                .expect("an end record carries its duration")
                / 1000.0
        })
        .sum();
    assert_eq!(
        scrape.value(
            "wakafleet_job_duration_seconds_count",
            &[("kind", "provision")]
        ),
        ends.len() as f64
    );
    let summed = scrape.value(
        "wakafleet_job_duration_seconds_sum",
        &[("kind", "provision")],
    );
    assert!(
        (summed - seconds).abs() < 1e-6,
        "{summed} against {seconds}"
    );
    let activations = face.world.audit("instance.provision.step.activate").len();
    assert_eq!(
        scrape.value(
            "wakafleet_step_duration_seconds_count",
            &[("kind", "provision"), ("step", "activate")]
        ),
        activations as f64
    );
    let records = scrape.value("wakafleet_audit_records_total", &[]);
    assert!(
        (records_before..=records_after).contains(&records),
        "{records} records, the log held {records_before} before and {records_after} after"
    );
    assert!(
        scrape.value(
            "wakafleet_http_requests_total",
            &[
                ("route", "/api/v1/status"),
                ("method", "GET"),
                ("code", "200")
            ]
        ) >= 1.0
    );

    // A terminated instance's series go with it. The commit changes no instance's owners,
    // so the daemon leaves their document (a megabyte at 10,000 instances) as it was.
    let store = wakafleet::store::Store::open(
        &face.world.store_url.as_str().into(),
        wakafleet::store::Options::default(),
    )
    .await
    .expect("the daemon's store");
    let owners_at = || async {
        store
            .daemon_state(wakafleet::daemon::OWNERS)
            .await
            .expect("a read")
            .expect("the owners")
            .1
    };
    let owners_before = owners_at().await;
    face.world
        .instance("beta", "1.0.0", "state = \"terminated\"\n");
    let terminating = face.world.commit("Terminate beta");
    let reconcile = face.post("/api/v1/reconcile", &face.operator);
    assert_eq!(reconcile.status, 202, "{}", reconcile.text());
    until("beta to be terminated", async || {
        (face.world.status_of("beta")["status"] == "terminated").then_some(())
    })
    .await;
    let scrape = Scrape::of(&face, &view);
    assert!(
        scrape
            .matching("wakafleet_instance_info", &[("instance", beta.as_str())])
            .is_empty(),
        "{:?}",
        scrape.0
    );
    assert_eq!(
        scrape
            .matching("wakafleet_instance_info", &[("instance", alpha.as_str())])
            .len(),
        1
    );
    assert_eq!(
        scrape.value("wakafleet_instances", &[("status", "terminated")]),
        1.0
    );
    assert_eq!(
        scrape.value(
            "wakafleet_jobs",
            &[("kind", "terminate"), ("status", "succeeded")]
        ),
        1.0
    );
    let in_force = face.world.status()["commit"]["in_force"].clone();
    assert_eq!(
        in_force.as_str(),
        Some(terminating.as_str()),
        "the terminating commit is in force"
    );
    assert_eq!(
        owners_at().await,
        owners_before,
        "the owners were not rewritten"
    );
    face.daemon.kill();
}
