//! The queue against real servers: one contract run on the in-process queue and on Redis
//! Streams (one throwaway server shared by the tests of this file, a key prefix per test);
//! then what only Redis has: consumers on two hosts, losing everything to `FLUSHALL` or a
//! restart (each on a server of its own), and the errors of a bad or unreachable URL.

mod common;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::redis::Redis;
use wakafleet::queue::{Delivery, Error, Message, Options, Queue};

/// Runs each contract on both queues, as the tests `<contract>::local` and `<contract>::redis`.
macro_rules! contracts {
    ($($contract:ident),* $(,)?) => {$(
        mod $contract {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$contract(super::Kind::Local).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$contract(super::Kind::Redis).await;
            }
        }
    )*};
}

contracts!(
    a_published_message_is_received,
    messages_of_a_region_come_in_order,
    a_consumer_gets_only_its_regions,
    nothing_to_receive_is_none,
    an_unacked_delivery_is_taken_over,
    an_acked_delivery_is_never_delivered_again,
    too_many_deliveries_are_dead_lettered,
    depth_counts_what_is_not_acked,
    concurrent_consumers_get_each_message_once,
);

/// The server the contract runs on, started by the first test that needs it.
static REDIS: LazyLock<Redis> = LazyLock::new(Redis::start);

#[derive(Clone, Copy)]
enum Kind {
    Local,
    Redis,
}

/// Long enough for anything that is coming: a receive returns as soon as it has something.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long to wait for what must not come.
const SHORT: Duration = Duration::from_millis(300);

/// A new, empty queue of `kind`; on Redis, under a key prefix of its own.
async fn open(kind: Kind, options: Options) -> Queue {
    static PREFIXES: AtomicUsize = AtomicUsize::new(0);
    let url = match kind {
        Kind::Local => "local".to_string(),
        Kind::Redis => REDIS.url(),
    };
    let prefix = format!("test{}", PREFIXES.fetch_add(1, Ordering::Relaxed));
    open_url(&url, Options { prefix, ..options }).await
}

async fn open_url(url: &str, options: Options) -> Queue {
    Queue::open(url, options)
        .await
        .unwrap_or_else(|error| panic!("open {url}: {}", report(&error)))
}

/// Options under which an unacked delivery is taken over after 200 ms.
fn claiming() -> Options {
    Options {
        claim_idle: Duration::from_millis(200),
        ..Options::default()
    }
}

fn message(job: &str, region: &str) -> Message {
    Message {
        job: job.to_string(),
        region: region.to_string(),
    }
}

async fn publish(queue: &Queue, job: &str, region: &str) {
    queue
        .publish(&message(job, region))
        .await
        .unwrap_or_else(|error| panic!("publish {job}: {}", report(&error)));
}

async fn receive(
    queue: &Queue,
    consumer: &str,
    regions: Option<&[&str]>,
    wait: Duration,
) -> Option<Delivery> {
    let regions: Option<Vec<String>> =
        regions.map(|regions| regions.iter().map(|region| region.to_string()).collect());
    queue
        .receive(consumer, regions.as_deref(), wait)
        .await
        .unwrap_or_else(|error| panic!("receive for {consumer}: {}", report(&error)))
}

/// The next delivery, which must come.
async fn next(queue: &Queue, consumer: &str, regions: Option<&[&str]>) -> Delivery {
    receive(queue, consumer, regions, PATIENCE)
        .await
        .unwrap_or_else(|| panic!("nothing came for {consumer} within {PATIENCE:?}"))
}

async fn ack(queue: &Queue, delivery: &Delivery) {
    queue
        .ack(delivery)
        .await
        .unwrap_or_else(|error| panic!("ack {}: {}", delivery.id, report(&error)));
}

async fn depth(queue: &Queue) -> u64 {
    queue
        .depth()
        .await
        .unwrap_or_else(|error| panic!("depth: {}", report(&error)))
}

async fn dead(queue: &Queue) -> Vec<Message> {
    queue
        .dead()
        .await
        .unwrap_or_else(|error| panic!("dead: {}", report(&error)))
}

/// An error and its causes, as `main` reports them.
fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

async fn a_published_message_is_received(kind: Kind) {
    let queue = open(kind, Options::default()).await;
    publish(&queue, "job-1", "ng-lagos").await;
    let delivery = next(&queue, "worker-1", None).await;
    assert_eq!(delivery.message, message("job-1", "ng-lagos"));
    assert_eq!(delivery.deliveries, 1);
    ack(&queue, &delivery).await;
    assert_eq!(receive(&queue, "worker-1", None, SHORT).await, None);
}

async fn messages_of_a_region_come_in_order(kind: Kind) {
    let queue = open(kind, Options::default()).await;
    for index in 0..5 {
        publish(&queue, &format!("a{index}"), "a").await;
        publish(&queue, &format!("b{index}"), "b").await;
    }
    for region in ["a", "b"] {
        let mut jobs = Vec::new();
        for _ in 0..5 {
            let delivery = next(&queue, "worker", Some(&[region])).await;
            ack(&queue, &delivery).await;
            jobs.push(delivery.message.job);
        }
        let expected: Vec<String> = (0..5).map(|index| format!("{region}{index}")).collect();
        assert_eq!(jobs, expected);
    }
}

async fn a_consumer_gets_only_its_regions(kind: Kind) {
    let queue = open(kind, Options::default()).await;
    publish(&queue, "job-a", "a").await;
    publish(&queue, "job-b", "b").await;
    let delivery = next(&queue, "worker-a", Some(&["a"])).await;
    assert_eq!(delivery.message, message("job-a", "a"));
    ack(&queue, &delivery).await;
    assert_eq!(receive(&queue, "worker-a", Some(&["a"]), SHORT).await, None);

    let delivery = next(&queue, "worker-all", None).await;
    assert_eq!(delivery.message, message("job-b", "b"));
    ack(&queue, &delivery).await;

    publish(&queue, "job-a2", "a").await;
    publish(&queue, "job-b2", "b").await;
    let mut jobs = BTreeSet::new();
    for _ in 0..2 {
        let delivery = next(&queue, "worker-all", None).await;
        ack(&queue, &delivery).await;
        jobs.insert(delivery.message.job);
    }
    assert_eq!(
        jobs,
        BTreeSet::from(["job-a2".to_string(), "job-b2".to_string()])
    );
}

async fn nothing_to_receive_is_none(kind: Kind) {
    let queue = open(kind, Options::default()).await;
    assert_eq!(receive(&queue, "worker", None, SHORT).await, None);
    assert_eq!(receive(&queue, "worker", Some(&["a"]), SHORT).await, None);
    publish(&queue, "job-a", "a").await;
    assert_eq!(receive(&queue, "worker", Some(&["b"]), SHORT).await, None);
    assert_eq!(depth(&queue).await, 1);
}

async fn an_unacked_delivery_is_taken_over(kind: Kind) {
    let queue = open(kind, claiming()).await;
    publish(&queue, "job-1", "a").await;
    let first = next(&queue, "worker-1", None).await;
    assert_eq!(first.deliveries, 1);
    // Past claim_idle, but a consumer of another region does not take it.
    assert_eq!(
        receive(&queue, "worker-b", Some(&["b"]), SHORT * 2).await,
        None
    );
    let second = next(&queue, "worker-2", Some(&["a"])).await;
    assert_eq!(second.message, first.message);
    assert_eq!(second.id, first.id);
    assert_eq!(second.deliveries, 2);
    ack(&queue, &second).await;
    assert_eq!(receive(&queue, "worker-1", None, SHORT * 2).await, None);
    // The first consumer's late ack is harmless.
    ack(&queue, &first).await;
    assert_eq!(depth(&queue).await, 0);
}

async fn an_acked_delivery_is_never_delivered_again(kind: Kind) {
    let queue = open(kind, claiming()).await;
    publish(&queue, "job-1", "a").await;
    let delivery = next(&queue, "worker-1", None).await;
    ack(&queue, &delivery).await;
    ack(&queue, &delivery).await;
    // Five times claim_idle.
    assert_eq!(
        receive(&queue, "worker-2", None, Duration::from_secs(1)).await,
        None
    );
    assert_eq!(depth(&queue).await, 0);
    assert_eq!(dead(&queue).await, []);
}

async fn too_many_deliveries_are_dead_lettered(kind: Kind) {
    let options = Options {
        max_deliveries: 2,
        ..claiming()
    };
    let queue = open(kind, options).await;
    publish(&queue, "poison", "a").await;
    assert_eq!(next(&queue, "worker-1", None).await.deliveries, 1);
    assert_eq!(next(&queue, "worker-2", None).await.deliveries, 2);
    assert_eq!(
        receive(&queue, "worker-3", None, Duration::from_secs(1)).await,
        None
    );
    assert_eq!(dead(&queue).await, [message("poison", "a")]);
    assert_eq!(depth(&queue).await, 0);
    // The queue goes on.
    publish(&queue, "job-2", "a").await;
    let delivery = next(&queue, "worker-3", None).await;
    assert_eq!(delivery.message, message("job-2", "a"));
    assert_eq!(delivery.deliveries, 1);
}

async fn depth_counts_what_is_not_acked(kind: Kind) {
    let queue = open(kind, Options::default()).await;
    assert_eq!(depth(&queue).await, 0);
    publish(&queue, "job-1", "a").await;
    publish(&queue, "job-2", "a").await;
    publish(&queue, "job-3", "b").await;
    assert_eq!(depth(&queue).await, 3);
    let delivery = next(&queue, "worker", None).await;
    assert_eq!(depth(&queue).await, 3, "delivered but not acked");
    ack(&queue, &delivery).await;
    assert_eq!(depth(&queue).await, 2);
    for _ in 0..2 {
        let delivery = next(&queue, "worker", None).await;
        ack(&queue, &delivery).await;
    }
    assert_eq!(depth(&queue).await, 0);
}

async fn concurrent_consumers_get_each_message_once(kind: Kind) {
    const MESSAGES: usize = 200;
    let queue = Arc::new(open(kind, Options::default()).await);
    let received = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for consumer in 0..4 {
        let (queue, received) = (queue.clone(), received.clone());
        tasks.spawn(async move {
            let name = format!("worker-{consumer}");
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut deliveries = Vec::new();
            while received.load(Ordering::SeqCst) < MESSAGES {
                assert!(Instant::now() < deadline, "{name} waited over a minute");
                let wait = Duration::from_millis(200);
                if let Some(delivery) = receive(&queue, &name, None, wait).await {
                    ack(&queue, &delivery).await;
                    received.fetch_add(1, Ordering::SeqCst);
                    deliveries.push(delivery);
                }
            }
            deliveries
        });
    }
    for index in 0..MESSAGES {
        let region = if index % 2 == 0 { "a" } else { "b" };
        publish(&queue, &format!("job-{index}"), region).await;
    }
    let mut jobs = Vec::new();
    while let Some(deliveries) = tasks.join_next().await {
        for delivery in deliveries.expect("a consumer ran to its end") {
            assert_eq!(delivery.deliveries, 1, "{delivery:?}");
            jobs.push(delivery.message.job);
        }
    }
    let distinct: BTreeSet<&String> = jobs.iter().collect();
    assert_eq!(jobs.len(), MESSAGES, "every message delivered once");
    assert_eq!(distinct.len(), MESSAGES, "no message delivered twice");
    assert_eq!(depth(&queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_on_two_hosts_take_over_from_each_other() {
    let options = Options {
        prefix: "two-hosts".to_string(),
        ..claiming()
    };
    let first_host = open_url(&REDIS.url(), options.clone()).await;
    let second_host = open_url(&REDIS.url(), options).await;
    publish(&first_host, "job-1", "a").await;
    let first = next(&first_host, "host-1", None).await;
    let second = next(&second_host, "host-2", None).await;
    assert_eq!(
        (second.id.as_str(), second.deliveries),
        (first.id.as_str(), 2)
    );
    ack(&second_host, &second).await;
    assert_eq!(depth(&first_host).await, 0);
    assert_eq!(receive(&first_host, "host-1", None, SHORT * 2).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_flushall_the_queue_works_on() {
    let redis = Redis::start();
    let queue = Arc::new(open_url(&redis.url(), Options::default()).await);
    publish(&queue, "job-1", "a").await;
    let delivery = next(&queue, "worker", None).await;
    assert_eq!(delivery.message, message("job-1", "a"));

    // Everything is lost: the stream, its group, the unacked delivery, the set of regions.
    redis.flushall();
    ack(&queue, &delivery).await;
    assert_eq!(depth(&queue).await, 0);
    publish(&queue, "job-2", "a").await;
    let delivery = next(&queue, "worker", None).await;
    assert_eq!(delivery.message, message("job-2", "a"));
    ack(&queue, &delivery).await;

    // A consumer waiting in XREADGROUP when its stream vanishes.
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move { receive(&queue, "worker", Some(&["a"]), PATIENCE).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.blocked_clients() == 0 {
        assert!(Instant::now() < deadline, "the consumer never blocked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.flushall();
    publish(&queue, "job-3", "a").await;
    let delivery = waiting
        .await
        .expect("the waiting consumer ran")
        .expect("the message published after the flush came");
    assert_eq!(delivery.message, message("job-3", "a"));
    assert_eq!(delivery.deliveries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_queue_works_again() {
    let mut redis = Redis::start();
    let queue = open_url(&redis.url(), Options::default()).await;
    publish(&queue, "job-1", "a").await;
    let delivery = next(&queue, "worker", None).await;
    ack(&queue, &delivery).await;

    redis.stop();
    let address = format!("127.0.0.1:{}", redis.port);
    let error = queue
        .publish(&message("job-2", "a"))
        .await
        .expect_err("publishing while Redis is down");
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains(&address), "{error}");
    let error = queue
        .receive("worker", None, SHORT)
        .await
        .expect_err("receiving while Redis is down");
    assert!(error.to_string().contains(&address), "{error}");
    assert!(queue.ping().await.is_err());

    redis.start_again();
    queue.ping().await.expect("Redis answers again");
    publish(&queue, "job-2", "a").await;
    let delivery = next(&queue, "worker", None).await;
    assert_eq!(delivery.message, message("job-2", "a"));
    ack(&queue, &delivery).await;
    assert_eq!(depth(&queue).await, 0);
}

#[tokio::test]
async fn a_url_that_names_no_queue_is_refused() {
    let error = Queue::open("bogus://", Options::default())
        .await
        .expect_err("bogus:// names no queue");
    assert!(matches!(error, Error::Url(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        "`bogus://` is not a queue URL: use `local` (in the process) or redis://HOST:PORT[/DB]"
    );
    let error = Queue::open("redis://:hunter2@127.0.0.1:port", Options::default())
        .await
        .expect_err("a port must be a number");
    assert!(matches!(error, Error::InvalidUrl { .. }), "{error:?}");
    assert!(!report(&error).contains("hunter2"), "{}", report(&error));
}

#[tokio::test]
async fn an_unreachable_redis_is_named_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port();
    let error = Queue::open(
        &format!("redis://:hunter2@127.0.0.1:{port}/0"),
        Options::default(),
    )
    .await
    .expect_err("nothing listens there");
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    let text = report(&error);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
}

#[tokio::test]
async fn a_redis_that_refuses_the_password_is_named_without_it() {
    // The server has no password, so Redis refuses to check one.
    let url = REDIS.url().replace("redis://", "redis://:hunter2@");
    let error = Queue::open(&url, Options::default())
        .await
        .expect_err("the server has no password");
    assert!(matches!(error, Error::Rejected { .. }), "{error:?}");
    let text = report(&error);
    assert!(text.contains(&REDIS.url()[8..]), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_key_of_the_queue_that_holds_something_else_is_named() {
    let options = Options {
        prefix: "foreign".to_string(),
        ..Options::default()
    };
    let queue = open_url(&REDIS.url(), options).await;
    let reply = REDIS.command("SET foreign:jobs:a text");
    assert!(reply.starts_with("+OK"), "{reply}");
    let error = queue
        .publish(&message("job-1", "a"))
        .await
        .expect_err("the stream's key holds a string");
    assert!(matches!(error, Error::Foreign { .. }), "{error:?}");
    assert!(error.to_string().contains("`foreign`"), "{error}");
}
