//! The dashboard in a real browser: a `wakafleet run` daemon on a real git repository, the
//! real Docker engine and a real PostgreSQL server, read by Debian's headless Chromium.
//!
//! Chromium signs in as a person would, through the login form (a page of the test's own
//! posts a viewer's token to `/login`), and keeps the cookie in a profile the later runs
//! share. The pages must show the fleet's instances, an upgrade deferred to its maintenance
//! window with the time the window opens, and a failed job with its error; without a token
//! the dashboard sends the visitor to the login form.

mod common;

use std::{
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use chrono::Timelike;
use common::{
    daemon::{Running, World},
    docker::docker_ok,
    http::{Answer, Request, free_address},
};

/// How long one Chromium run may take.
const BROWSER_LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_instances_deferred_work_and_failed_jobs_in_a_browser() {
    let browser = Browser::new();
    docker_ok();
    let world = World::new().await;
    let (alpha, gamma) = (world.name("alpha"), world.name("gamma"));

    // A window that opens twelve hours from now and lasts one, so an approved upgrade waits.
    let opens = (chrono::Utc::now().hour() + 12) % 24;
    world.write(
        "channels/windowed.toml",
        &format!(
            "name = \"windowed\"\nmode = \"manual-approval\"\n\n[maintenance_window]\nstart = \"{opens:02}:00\"\nduration = \"1h\"\ntimezone = \"UTC\"\n"
        ),
    );
    on_channel(&world, "alpha", "1.0.0", "windowed");
    world.commit("Add alpha on a channel with a maintenance window");
    world.converges();

    // The upgrade waits for the window; gamma's release has no image on the engine, so its
    // provisioning fails.
    on_channel(&world, "alpha", "1.1.0", "windowed");
    world.write(
        "releases/9.0.0.toml",
        "version = \"9.0.0\"\nstatus = \"stable\"\nreleased = 2026-01-01\nimage = \"wakafleet-test-driver/demo-platform:absent\"\nmigrations = []\n",
    );
    world.instance("gamma", "9.0.0", "");
    let commit = world.commit("Upgrade alpha to 1.1.0; add gamma, whose image was never built");

    let address = free_address();
    let token = viewer_token(&world);
    let config = world.state_path().join("daemon.toml");
    std::fs::write(&config, &token.entry).expect("write the daemon's configuration");
    let listen = address.to_string();
    let config_path = config.display().to_string();
    let daemon = world.start(&[
        "--listen",
        &listen,
        "--config",
        &config_path,
        "--interval",
        "2",
    ]);
    let (job, error) = within(
        &daemon,
        "gamma's provisioning to fail an attempt",
        async || {
            world.jobs().into_iter().find_map(|job| {
                if job["instance"] != gamma.as_str() {
                    return None;
                }
                Some((
                    job["id"].as_str()?.to_string(),
                    job["last_error"].as_str()?.to_string(),
                ))
            })
        },
    )
    .await;
    within(&daemon, "the commit to be in force", async || {
        (world.status()["commit"]["in_force"] == commit.as_str()).then_some(())
    })
    .await;
    let not_before = deferred_upgrade(&world, &alpha);

    // Without a token, a page sends the visitor to the form; a wrong token is refused there.
    let anonymous = send(&daemon, address, &Request::get("/"));
    assert_eq!(anonymous.status, 303, "{}", anonymous.text());
    assert_eq!(anonymous.header("location"), Some("/login"));
    let wrong = send(
        &daemon,
        address,
        &Request::post("/login")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(b"token=wf1.view.not-the-secret"),
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert!(
        wrong.text().contains("id=\"login-error\""),
        "{}",
        wrong.text()
    );
    assert!(
        world.audit("api.refused").iter().any(|record| {
            record["resource"] == "http/login"
                && record["error"] == "refused: the token is not valid"
        }),
        "the wrong token is audited"
    );

    // Chromium signs in through the form and lands on the overview.
    let overview = browser.sign_in(address, &token.token);
    let text = unescape(&overview);
    assert!(
        overview.contains("Signed in with the token <strong>view</strong> (viewer)"),
        "{overview}"
    );
    assert!(
        overview.contains(&format!(
            "id=\"instance-{alpha}\" data-status=\"active\" data-version=\"1.0.0\" data-channel=\"windowed\""
        )),
        "alpha's row: {overview}"
    );
    assert!(
        overview.contains(&format!("id=\"instance-{gamma}\"")),
        "gamma's row: {overview}"
    );
    let deferred = format!(
        "data-resource=\"instance/{alpha}\" data-kind=\"upgrade\" data-status=\"deferred\" data-not-before=\"{not_before}\""
    );
    assert!(overview.contains(&deferred), "{deferred} in {overview}");
    assert!(
        overview.contains(&format!(
            "until <time datetime=\"{not_before}\">{not_before}</time>"
        )),
        "the window's time is shown: {overview}"
    );
    assert!(
        overview.contains(&format!("data-job=\"{job}\"")),
        "gamma's job: {overview}"
    );
    assert!(
        text.contains(&error),
        "the job's error `{error}`: {overview}"
    );

    // The cookie outlives the browser: a new run of the same profile reads the job's page,
    // whose failed step carries the error, and takes a screenshot of the overview.
    let page = unescape(&browser.dom(&format!("http://{address}/jobs/{job}")));
    assert!(
        page.contains("data-status=\"failed\""),
        "a failed step: {page}"
    );
    assert!(page.contains(&error), "the job's error `{error}`: {page}");
    let screenshot = world.state_path().join("dashboard.png");
    browser.screenshot(&format!("http://{address}/"), &screenshot);
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a screenshot of the overview: {} bytes",
        png.len()
    );
    drop(daemon);
}

/// Polls `probe` every half second until it gives a value; fails after two minutes with
/// what the daemon logged.
async fn within<T>(daemon: &Running, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "waited two minutes for {what}; the daemon logged:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes instance `name` at `version` on `channel` (the world's helper puts it on `manual`).
fn on_channel(world: &World, name: &str, version: &str, channel: &str) {
    world.instance(name, version, "");
    let path = world
        .fleet()
        .join(format!("instances/{}.toml", world.name(name)));
    let text = std::fs::read_to_string(&path).expect("the instance's file");
    let text = text.replace("channel = \"manual\"", &format!("channel = \"{channel}\""));
    std::fs::write(&path, text).expect("write the instance's file");
}

/// The time the deferred upgrade of `instance` waits for, as the plan against the store
/// gives it.
fn deferred_upgrade(world: &World, instance: &str) -> String {
    let plan = world.plan();
    let action = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["resource"]["id"] == instance && action["kind"] == "upgrade")
        .unwrap_or_else(|| panic!("an upgrade of {instance} in {plan}"));
    assert_eq!(action["status"], "deferred", "{action}");
    action["not_before"]
        .as_str()
        .expect("a deferred action has a time")
        .to_string()
}

/// A token of `wakafleet token create` and the `[[api.tokens]]` entry that goes with it.
struct Token {
    token: String,
    entry: String,
}

fn viewer_token(world: &World) -> Token {
    let output = world.wakafleet(&["token", "create", "view", "--role", "viewer"]);
    let stdout = common::stdout_of_success(&output);
    let (token, entry) = stdout.split_once('\n').expect("the token, then its entry");
    Token {
        token: token.trim().to_string(),
        entry: entry.to_string(),
    }
}

/// Sends `request` to the daemon at `address`, retrying while it starts to listen.
fn send(daemon: &Running, address: SocketAddr, request: &Request<'_>) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match request.send(address) {
            Ok(answer) => return answer,
            Err(error) => assert!(
                Instant::now() < deadline,
                "the daemon answers on {address}: {error}\n{}",
                daemon.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Undoes the escapes Chromium writes in a dumped DOM, so texts compare as the store has them.
fn unescape(html: &str) -> String {
    html.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Headless Chromium with a profile of its own, removed when dropped.
struct Browser {
    program: PathBuf,
    profile: tempfile::TempDir,
    /// The test's own pages (the login form that submits itself).
    pages: tempfile::TempDir,
}

impl Browser {
    /// Fails with how to install Chromium when it is not there.
    fn new() -> Browser {
        let program = PathBuf::from("chromium");
        let found = Command::new(&program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            found,
            "Chromium is needed for this test: install it with `apt-get install chromium fonts-dejavu-core` (scripts/test does), then check `chromium --version`"
        );
        Browser {
            program,
            profile: tempfile::tempdir().expect("a profile folder"),
            pages: tempfile::tempdir().expect("a folder for the test's pages"),
        }
    }

    /// Signs in on the daemon at `address` with `token` as the form would, and returns the
    /// DOM of the page the login leads to. A page of the test's own posts the form, since the
    /// dashboard has no script and Chromium's command line fills in no form.
    fn sign_in(&self, address: SocketAddr, token: &str) -> String {
        let page = self.pages.path().join("sign-in.html");
        std::fs::write(
            &page,
            format!(
                "<!doctype html><form id=\"login\" method=\"post\" action=\"http://{address}/login\"><input name=\"token\" value=\"{token}\"></form><script>document.getElementById(\"login\").submit();</script>\n"
            ),
        )
        .expect("write the sign-in page");
        self.dom(&format!("file://{}", page.display()))
    }

    /// The DOM of `url` once it has loaded.
    fn dom(&self, url: &str) -> String {
        let output = self.run(&["--dump-dom"], url);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Saves a screenshot of `url` as the PNG `file`.
    fn screenshot(&self, url: &str, file: &Path) {
        let screenshot = format!("--screenshot={}", file.display());
        self.run(
            &[&screenshot, "--window-size=1280,2000", "--hide-scrollbars"],
            url,
        );
    }

    /// Runs Chromium on `url` with `extra` arguments; it must exit 0 within the limit.
    fn run(&self, extra: &[&str], url: &str) -> Output {
        let profile = format!("--user-data-dir={}", self.profile.path().display());
        let mut child = Command::new(&self.program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=10000",
                &profile,
            ])
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let pipe = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                pipe.read_to_end(&mut bytes).map(|_| bytes)
            })
        };
        let stdout = pipe(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = pipe(Box::new(child.stderr.take().expect("piped stderr")));
        let deadline = Instant::now() + BROWSER_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll chromium") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium {extra:?} {url} did not finish within {BROWSER_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = Output {
            status,
            stdout: stdout.join().expect("stdout reader").unwrap_or_default(),
            stderr: stderr.join().expect("stderr reader").unwrap_or_default(),
        };
        assert!(
            output.status.success(),
            "chromium {extra:?} {url} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}
