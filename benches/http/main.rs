//! HTTP benchmark: `GET /api/v1/instances` and `GET /api/v1/status` on a 10,000-instance
//! store, eight clients over loopback, against a bare axum handler that returns the same bytes
//! from memory, alternating, in one run.
//!
//! The daemon's side is its whole HTTP face as `wakafleet run` serves it (`http::serve`: the
//! router, request ids, the token check, the rate limiter, the metrics of every request, the
//! status cache keyed by the store's fingerprint) over a SQLite store into which a generated
//! 10,000-instance fleet was imported as applied, with the reports the daemon writes (the
//! instances it wants, their owners). The floor is axum alone on the same runtime, one route
//! per path, answering the bytes the daemon answered. Each client keeps one HTTP/1.1
//! connection and sends its next request when the last answer is read whole.
//!
//! `cargo bench --bench http [-- --seconds S --rounds R --clients C --instances N]`; see
//! bench/README.md.

#[path = "../load/generate.rs"]
#[allow(dead_code, reason = "this benchmark writes fleets only")]
mod generate;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, routing::get};
use chrono::Utc;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use wakafleet::{
    daemon::{self, control::Control},
    http::{self, App, auth},
    load::Limits,
    metrics::Metrics,
    plan,
    queue::{self, Queue},
    source,
    store::{self, Store},
    validate,
};

/// Counts the bytes allocated, for the memory a request costs.
struct Counting;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(size.saturating_sub(layout.size()) as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.realloc(pointer, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The goals of the issue.
const GOAL_RATIO: f64 = 0.5;
const GOAL_RATE: f64 = 1_000.0;

struct Settings {
    seconds: f64,
    rounds: usize,
    clients: usize,
    instances: usize,
}

fn settings() -> Settings {
    let mut settings = Settings {
        seconds: 3.0,
        rounds: 3,
        clients: 8,
        instances: 10_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => settings.seconds = value().parse().expect("--seconds S"),
            "--rounds" => settings.rounds = value().parse().expect("--rounds N"),
            "--clients" => settings.clients = value().parse().expect("--clients N"),
            "--instances" => settings.instances = value().parse().expect("--instances N"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    settings
}

fn main() {
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(&settings));
}

async fn run(settings: &Settings) {
    let temp = tempfile::Builder::new()
        .prefix("wakafleet-http-bench-")
        .tempdir()
        .expect("a temporary folder");
    let (store, names) = ten_thousand(temp.path(), settings.instances).await;
    let (token, entry) = auth::create("bench", auth::Role::Viewer, None, None).expect("a token");
    let config: http::Config = toml::from_str(&format!(
        "rate_limit = {{ per_token = {}, per_address = {} }}\n{}",
        u32::MAX,
        u32::MAX,
        entry.replace("[[api.tokens]]", "[[tokens]]")
    ))
    .expect("the API's configuration");
    let app = Arc::new(App {
        store: Arc::clone(&store),
        queue: Arc::new(
            Queue::open("local", queue::Options::default())
                .await
                .expect("a queue"),
        ),
        control: Arc::new(Control::default()),
        metrics: Arc::new(Metrics::new()),
        holder: "bench".to_string(),
        interval: Duration::from_secs(60),
        branch: None,
        webhook_secret: None,
        tokens: auth::Tokens::new(config.tokens).expect("the tokens"),
        limits: http::limit::Limiters::new(config.rate_limit),
        templates: http::dashboard::Templates::new(),
        cache: http::api::Cache::default(),
    });
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let daemon = listener.local_addr().expect("its address");
    tokio::spawn(http::serve(listener, app, stop.clone()));

    // The floor answers what the daemon answers.
    let mut client = Client::connect(daemon, &token).await;
    let status = Bytes::from(client.get("/api/v1/status", true).await);
    let instances = Bytes::from(client.get("/api/v1/instances", true).await);
    let listed: serde_json::Value = serde_json::from_slice(&instances).expect("JSON");
    assert_eq!(
        listed["instances"].as_array().map(Vec::len),
        Some(names),
        "the daemon lists every instance"
    );
    let bare = {
        let (status, instances) = (status.clone(), instances.clone());
        Router::new()
            .route("/api/v1/status", get(move || async move { status.clone() }))
            .route(
                "/api/v1/instances",
                get(move || async move { instances.clone() }),
            )
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let floor = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, bare).await });

    println!(
        "http: {names} instances in a SQLite store; {} clients over loopback, {} rounds of {} s per route and server, alternating",
        settings.clients, settings.rounds, settings.seconds
    );
    println!(
        "  bodies: /api/v1/status {} bytes, /api/v1/instances {} bytes",
        status.len(),
        instances.len()
    );
    let duration = Duration::from_secs_f64(settings.seconds);
    let mut met = true;
    for path in ["/api/v1/instances", "/api/v1/status"] {
        let mut daemon_runs = Vec::new();
        let mut floor_runs = Vec::new();
        for round in 0..settings.rounds {
            // The order alternates so neither side always runs on a warmer machine.
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for is_daemon in order {
                let address = if is_daemon { daemon } else { floor };
                let run = load(address, &token, path, settings.clients, duration).await;
                if is_daemon {
                    daemon_runs.push(run);
                } else {
                    floor_runs.push(run);
                }
            }
        }
        let daemon = Summary::of(&daemon_runs);
        let floor = Summary::of(&floor_runs);
        println!("  GET {path}");
        println!(
            "    {:<8} {:>10} {:>10} {:>10} {:>16}",
            "", "req/s", "p50 ms", "p99 ms", "alloc B/req"
        );
        daemon.print("daemon");
        floor.print("bare");
        let ratio = daemon.rate / floor.rate;
        println!(
            "    daemon / bare {ratio:.2} (goal at least {GOAL_RATIO}); daemon {:.0} req/s (goal at least {GOAL_RATE:.0})",
            daemon.rate
        );
        met &= ratio >= GOAL_RATIO && daemon.rate >= GOAL_RATE;
    }
    println!("  goals {}", if met { "met" } else { "NOT met" });
    stop.cancel();
}

/// A 10,000-instance fleet imported into a new SQLite store as applied, with the reports the
/// daemon writes; the store and the number of instances.
async fn ten_thousand(dir: &std::path::Path, count: usize) -> (Arc<Store>, usize) {
    let limits = Limits::default();
    let fleet_dir = dir.join("fleet");
    std::fs::create_dir_all(&fleet_dir).expect("a folder");
    let summary = generate::write(&fleet_dir, &generate::Shape::for_instances(count));
    let desired = validate::check(
        source::read_commit(&fleet_dir, &summary.commit, &limits)
            .expect("the commit")
            .inputs,
        &limits,
    )
    .take_valid()
    .expect("a valid fleet");
    let url = format!("sqlite://{}", dir.join("state.db").display());
    let store = Arc::new(
        Store::open(&url.as_str().into(), store::Options::default())
            .await
            .expect("a store"),
    );
    let snapshot = plan::snapshot::from_actual(&plan::converged_base(desired.fleet()));
    store
        .import(&snapshot, Utc::now())
        .await
        .expect("the import");
    let instances = &desired.fleet().instances;
    let owners: serde_json::Map<String, serde_json::Value> = instances
        .iter()
        .map(|(name, instance)| {
            (
                name.clone(),
                serde_json::json!({
                    "partner": instance.partner.value,
                    "tenant": instance.tenant.as_ref().map(|tenant| &tenant.value),
                    "channel": instance.channel.value,
                }),
            )
        })
        .collect();
    let now = Utc::now();
    store
        .put_daemon_state(
            daemon::OWNERS,
            &serde_json::json!({ "epoch": 1, "instances": owners }),
            now,
        )
        .await
        .expect("the owners");
    let names: Vec<&String> = instances.keys().collect();
    store
        .put_daemon_state(
            "reconcile",
            &serde_json::json!({
                "instances": names,
                "seen": summary.commit,
                "in_force": summary.commit,
                "applied": summary.commit,
                "valid": true,
                "leader": "bench",
                "last": now.to_rfc3339(),
                "source": "bench",
            }),
            now,
        )
        .await
        .expect("the report");
    (store, instances.len())
}

/// What one run of the clients measured.
struct Run {
    requests: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    allocated: u64,
}

/// `clients` connections to `address`, each getting `path` for `duration`.
async fn load(
    address: SocketAddr,
    token: &str,
    path: &'static str,
    clients: usize,
    duration: Duration,
) -> Run {
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        connected.push(Client::connect(address, token).await);
    }
    let allocated = ALLOCATED.load(Ordering::Relaxed);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in connected {
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                std::hint::black_box(client.get(path, false).await);
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.expect("a client"));
    }
    let elapsed = started.elapsed();
    Run {
        requests: latencies.len() as u64,
        elapsed,
        latencies,
        allocated: ALLOCATED.load(Ordering::Relaxed) - allocated,
    }
}

/// The runs of one side, together.
struct Summary {
    rate: f64,
    p50: Duration,
    p99: Duration,
    allocated_per_request: f64,
}

impl Summary {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^53")]
    fn of(runs: &[Run]) -> Summary {
        let mut rates: Vec<f64> = runs
            .iter()
            .map(|run| run.requests as f64 / run.elapsed.as_secs_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        let mut latencies: Vec<Duration> = runs
            .iter()
            .flat_map(|run| run.latencies.iter().copied())
            .collect();
        latencies.sort();
        let at = |quantile: f64| {
            let index = ((latencies.len() as f64 * quantile) as usize).min(latencies.len() - 1);
            latencies[index]
        };
        let requests: u64 = runs.iter().map(|run| run.requests).sum();
        let allocated: u64 = runs.iter().map(|run| run.allocated).sum();
        Summary {
            rate: rates[rates.len() / 2],
            p50: at(0.50),
            p99: at(0.99),
            allocated_per_request: allocated as f64 / requests.max(1) as f64,
        }
    }

    fn print(&self, label: &str) {
        let ms = |time: Duration| time.as_secs_f64() * 1000.0;
        println!(
            "    {label:<8} {:>10.0} {:>10.2} {:>10.2} {:>16.0}",
            self.rate,
            ms(self.p50),
            ms(self.p99),
            self.allocated_per_request
        );
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    stream: TcpStream,
    request_head: String,
    buffer: Vec<u8>,
    scratch: Box<[u8]>,
}

impl Client {
    async fn connect(address: SocketAddr, token: &str) -> Client {
        let stream = TcpStream::connect(address).await.expect("a connection");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Client {
            stream,
            request_head: format!("Host: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"),
            buffer: Vec::with_capacity(1 << 16),
            scratch: vec![0; 1 << 18].into_boxed_slice(),
        }
    }

    /// The body of `GET path`, which must answer 200; read and dropped unless `keep`, so
    /// the clients cost the server they load as little as they can.
    async fn get(&mut self, path: &str, keep: bool) -> Vec<u8> {
        let request = format!("GET {path} HTTP/1.1\r\n{}", self.request_head);
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("the request");
        let head_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "GET {path} answered {head}"
        );
        let mut lines = head.lines().skip(1).filter_map(|line| line.split_once(':'));
        let length: Option<usize> = lines
            .clone()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse().ok());
        let chunked = lines.any(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value.trim() == "chunked"
        });
        self.buffer.drain(..head_end + 4);
        if let Some(length) = length {
            return self.body(length, keep).await;
        }
        assert!(chunked, "GET {path}: neither a length nor chunks");
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(end) = find(&self.buffer, b"\r\n") {
                    break end;
                }
                self.fill().await;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&self.buffer[..line_end])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .expect("a chunk size");
            while self.buffer.len() < line_end + 2 + size + 2 {
                self.fill().await;
            }
            body.extend_from_slice(&self.buffer[line_end + 2..line_end + 2 + size]);
            self.buffer.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return body;
            }
        }
    }

    /// A body of `length` bytes: what the buffer holds of it, then straight from the socket.
    async fn body(&mut self, length: usize, keep: bool) -> Vec<u8> {
        let mut body = Vec::new();
        let held = length.min(self.buffer.len());
        if keep {
            body.extend_from_slice(&self.buffer[..held]);
        }
        self.buffer.drain(..held);
        let mut left = length - held;
        while left > 0 {
            let read = self.read().await;
            let taken = read.min(left);
            if keep {
                body.extend_from_slice(&self.scratch[..taken]);
            }
            // Anything past the body is the next answer's.
            self.buffer.extend_from_slice(&self.scratch[taken..read]);
            left -= taken;
        }
        body
    }

    async fn fill(&mut self) {
        let read = self.read().await;
        self.buffer.extend_from_slice(&self.scratch[..read]);
    }

    /// Reads what the socket has into `scratch`; the server must not close the connection.
    async fn read(&mut self) -> usize {
        let read = self
            .stream
            .read(&mut self.scratch)
            .await
            .expect("the answer");
        assert!(read > 0, "the server closed the connection");
        read
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
