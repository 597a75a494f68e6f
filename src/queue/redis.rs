//! The queue on Redis Streams, for workers on many hosts.
//!
//! Keys, all under the prefix of [`Options::prefix`]:
//! - `{prefix}:jobs:{region}`: one stream per region; an entry has the field `job`.
//! - `{prefix}:workers`: the one consumer group of every region's stream.
//! - `{prefix}:regions`: the set of regions published to, so a consumer of every region knows
//!   which streams to read.
//! - `{prefix}:dead`: the dead letters, a stream with the fields `job`, `region`, `entry` and
//!   `deliveries`, capped at about [`DEAD_LETTERS_KEPT`] entries.
//!
//! An ack is `XACK` and `XDEL` in one transaction, so a region's stream holds exactly the
//! entries not yet acked and its length is the queue's depth. Job streams are never trimmed by
//! length: Redis 7 trims without looking at the consumer group, so `MAXLEN` would drop
//! entries that were never acked. A stream of a region that nobody serves grows until someone
//! does; the entries are a few dozen bytes each.
//!
//! Redis may lose everything (`FLUSHALL`, a restart without persistence): the store is the
//! system of record and the daemon publishes due jobs again. Reads that find the group gone
//! (`NOGROUP`, or `UNBLOCKED` for a read that was waiting when the stream vanished) create it
//! again from id `0`, so entries published since are delivered; every entry left is unacked by
//! construction, so none is skipped. Commands go over one `ConnectionManager`, which reconnects
//! after Redis restarts; a command that finds the connection lost is sent once more.
//!
//! A blocking `XREADGROUP` holds its connection until it returns, and would stall every
//! command sharing a multiplexed connection, so each waits on a connection of its own with the
//! crate's response timeout off (a default connection gives up after 500 ms) and a deadline of
//! its own, its `BLOCK` time and a margin; connections are kept per consumer name between
//! calls. A read blocks for at most a quarter of `claim_idle`, then the
//! receive looks for entries to take over (and, for a consumer of every region, for new
//! regions) before it blocks again; while no region exists it looks every 250 ms.
//!
//! A consumer asks for one entry at a time: ready entries are read from one stream after
//! another, starting at a different stream each time, and only when all are empty does it
//! block on all of them. Should the blocking read still bring entries of several streams, the
//! extras are handed back: added again at the end of their stream and acked in one
//! transaction. Entries are taken over with `XAUTOCLAIM`, one per call and stream, resuming
//! where the last call stopped, so a long pending list is covered over several calls.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use ::redis::{
    AsyncCommands, AsyncConnectionConfig, Client, RedisError, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    streams::{
        StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamMaxlen,
        StreamPendingCountReply, StreamRangeReply, StreamReadOptions, StreamReadReply,
    },
};
use tokio::time::Instant;

use crate::{
    queue::{DEAD_LETTERS_KEPT, Delivery, Error, Message, Options},
    secret::redact_url,
};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command other than a blocking read may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the shared connection tries again to connect (within a second) before the
/// command waiting for it fails: while Redis is down, calls fail soon with an error that says
/// so, and the next call tries again.
const RECONNECT_ATTEMPTS: usize = 2;
/// How long past its `BLOCK` time a blocking read may take before its connection is deemed
/// dead.
const BLOCK_MARGIN: Duration = Duration::from_secs(5);
/// How often a consumer of every region looks again while no region has been published to:
/// there is no stream to block on yet.
const NO_REGION_RETRY: Duration = Duration::from_millis(250);
/// How many unacked entries one call may take over only to dead-letter them, per stream.
const DEAD_LETTERS_PER_CALL: usize = 16;
/// The shortest wait of one blocking read.
const MIN_BLOCK: Duration = Duration::from_millis(10);
/// How often one receive creates groups again before it gives up: more than once only if
/// something deletes them as fast.
const GROUP_ATTEMPTS: u32 = 3;

/// The queue on Redis Streams.
pub struct Redis {
    /// The URL without its password, for messages.
    url: String,
    client: Client,
    shared: ConnectionManager,
    keys: Keys,
    options: Options,
    /// Connections for blocking reads not in use, by consumer: a receive takes one out (or
    /// opens one) and puts it back when its read went well.
    blocking: Mutex<HashMap<String, Vec<MultiplexedConnection>>>,
    /// Where the next `XAUTOCLAIM` of each stream starts: the pending entries are scanned a
    /// few at a time, across calls.
    cursors: Mutex<HashMap<String, String>>,
    /// Which stream is read first, turning with every read, so that no region waits behind
    /// another's backlog.
    turn: AtomicUsize,
}

/// The names of the queue's keys.
#[derive(Debug)]
struct Keys {
    prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Redis")
            .field("url", &self.url)
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects to the Redis at `url`: see [`crate::queue::Queue::open`].
    pub async fn open(url: &str, options: Options) -> Result<Redis, Error> {
        let shown = redact_url(url);
        let client = Client::open(url).map_err(|source| Error::InvalidUrl {
            url: shown.clone(),
            source,
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_ATTEMPTS)
            .set_max_delay(Duration::from_millis(500));
        let shared = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|source| {
                let url = shown.clone();
                if is_connection_lost(&source) {
                    Error::Unreachable { url, source }
                } else {
                    Error::Rejected { url, source }
                }
            })?;
        Ok(Redis {
            url: shown,
            client,
            shared,
            keys: Keys {
                prefix: options.prefix.clone(),
            },
            options,
            blocking: Mutex::default(),
            cursors: Mutex::default(),
            turn: AtomicUsize::new(0),
        })
    }

    pub async fn publish(&self, message: &Message) -> Result<(), Error> {
        let stream = self.keys.stream(&message.region);
        let regions = self.keys.regions();
        self.shared_command(
            || format!("publishing job `{}`", message.job),
            || {
                let mut connection = self.shared.clone();
                let mut pipe = ::redis::pipe();
                pipe.atomic()
                    .xadd(&stream, "*", &[("job", &message.job)])
                    .ignore()
                    .sadd(&regions, &message.region)
                    .ignore();
                async move { pipe.query_async::<()>(&mut connection).await }
            },
        )
        .await
    }

    pub async fn receive(
        &self,
        consumer: &str,
        regions: Option<&[String]>,
        wait: Duration,
    ) -> Result<Option<Delivery>, Error> {
        let deadline = Instant::now().checked_add(wait);
        let (mut groups_created, mut reconnected) = (0, false);
        loop {
            match self.receive_once(consumer, regions, deadline).await {
                Ok(Some(delivery)) => return Ok(Some(delivery)),
                Ok(None) if deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
                    return Ok(None);
                }
                Ok(None) => {}
                // The group was created again: start again.
                Err(error) if is_missing_group(&error) && groups_created < GROUP_ATTEMPTS => {
                    groups_created += 1;
                }
                // The shared connection reconnects by itself: start again once.
                Err(error) if is_connection_lost(&error) && !reconnected => reconnected = true,
                Err(error) => {
                    return Err(
                        self.error(format!("receiving a job for consumer `{consumer}`"), error)
                    );
                }
            }
        }
    }

    pub async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        let stream = self.keys.stream(&delivery.message.region);
        let group = self.keys.group();
        self.shared_command(
            || {
                format!(
                    "acknowledging delivery {} of job `{}`",
                    delivery.id, delivery.message.job
                )
            },
            || {
                let mut connection = self.shared.clone();
                let mut pipe = ::redis::pipe();
                pipe.atomic()
                    .xack(&stream, &group, &[&delivery.id])
                    .ignore()
                    .xdel(&stream, &[&delivery.id])
                    .ignore();
                async move { pipe.query_async::<()>(&mut connection).await }
            },
        )
        .await
    }

    pub async fn depth(&self) -> Result<u64, Error> {
        let streams = self
            .streams(None)
            .await
            .map_err(|source| self.error("counting the queue's entries".to_string(), source))?;
        if streams.is_empty() {
            return Ok(0);
        }
        let lengths: Vec<u64> = self
            .shared_command(
                || "counting the queue's entries".to_string(),
                || {
                    let mut connection = self.shared.clone();
                    let mut pipe = ::redis::pipe();
                    for stream in &streams {
                        pipe.xlen(stream);
                    }
                    async move { pipe.query_async(&mut connection).await }
                },
            )
            .await?;
        Ok(lengths.iter().sum())
    }

    pub async fn dead(&self) -> Result<Vec<Message>, Error> {
        let dead = self.keys.dead();
        let reply: StreamRangeReply = self
            .shared_command(
                || "reading the dead letters".to_string(),
                || {
                    let mut connection = self.shared.clone();
                    let dead = &dead;
                    async move { connection.xrange_all(dead).await }
                },
            )
            .await?;
        Ok(reply
            .ids
            .iter()
            .filter_map(|entry| {
                Some(Message {
                    job: entry.get("job")?,
                    region: entry.get("region")?,
                })
            })
            .collect())
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.shared_command(
            || "pinging Redis".to_string(),
            || {
                let mut connection = self.shared.clone();
                async move { connection.ping::<String>().await.map(drop) }
            },
        )
        .await
    }

    /// One attempt at a delivery: take over an abandoned entry, else read a ready one, else
    /// block for a new one. `Ok(None)` when nothing came; a group found missing is created
    /// before its error is returned.
    async fn receive_once(
        &self,
        consumer: &str,
        regions: Option<&[String]>,
        deadline: Option<Instant>,
    ) -> RedisResult<Option<Delivery>> {
        let streams = self.streams(regions).await?;
        if streams.is_empty() {
            // No region has been published to: there is no stream to block on yet.
            let rest = deadline.map_or(NO_REGION_RETRY, |deadline| {
                deadline.saturating_duration_since(Instant::now())
            });
            tokio::time::sleep(rest.min(NO_REGION_RETRY)).await;
            return Ok(None);
        }
        let result = self.receive_from(consumer, &streams, deadline).await;
        if let Err(error) = &result
            && is_missing_group(error)
        {
            self.create_groups(&streams).await?;
        }
        result
    }

    async fn receive_from(
        &self,
        consumer: &str,
        streams: &[String],
        deadline: Option<Instant>,
    ) -> RedisResult<Option<Delivery>> {
        if let Some(delivery) = self.take_over(consumer, streams).await? {
            return Ok(Some(delivery));
        }
        if streams.len() > 1 {
            let first = self.turn.fetch_add(1, Ordering::Relaxed) % streams.len();
            for stream in streams.iter().cycle().skip(first).take(streams.len()) {
                let options = StreamReadOptions::default()
                    .group(self.keys.group(), consumer)
                    .count(1);
                let mut connection = self.shared.clone();
                let reply: Option<StreamReadReply> = connection
                    .xread_options(&[stream], &[">"], &options)
                    .await?;
                if let Some(delivery) = self.first_delivery(reply).await? {
                    return Ok(Some(delivery));
                }
            }
        }
        self.read_blocking(consumer, streams, deadline).await
    }

    /// Takes over, for `consumer`, the first entry of `streams` left unacked for longer than
    /// `claim_idle`, dead-lettering on the way those delivered `max_deliveries` times already.
    async fn take_over(&self, consumer: &str, streams: &[String]) -> RedisResult<Option<Delivery>> {
        let group = self.keys.group();
        let idle = millis(self.options.claim_idle);
        for stream in streams {
            for _ in 0..DEAD_LETTERS_PER_CALL {
                let start = lock(&self.cursors)
                    .get(stream)
                    .cloned()
                    .unwrap_or_else(|| "0-0".to_string());
                let mut connection = self.shared.clone();
                let reply: StreamAutoClaimReply = connection
                    .xautoclaim_options(
                        stream,
                        &group,
                        consumer,
                        idle,
                        &start,
                        StreamAutoClaimOptions::default().count(1),
                    )
                    .await?;
                lock(&self.cursors).insert(stream.clone(), reply.next_stream_id);
                let Some(entry) = reply.claimed.into_iter().next() else {
                    break;
                };
                // XAUTOCLAIM counted this delivery; XPENDING tells the count.
                let pending: StreamPendingCountReply = connection
                    .xpending_count(stream, &group, &entry.id, &entry.id, 1)
                    .await?;
                let Some(deliveries) = pending
                    .ids
                    .first()
                    .map(|id| u64::try_from(id.times_delivered).unwrap_or(u64::MAX))
                else {
                    // Acked in between by its previous consumer.
                    continue;
                };
                let Some(message) = self.message(stream, &entry) else {
                    self.discard(stream, &entry.id).await?;
                    continue;
                };
                if deliveries > self.options.max_deliveries {
                    self.dead_letter(stream, &entry.id, &message, deliveries)
                        .await?;
                    continue;
                }
                return Ok(Some(Delivery {
                    message,
                    id: entry.id,
                    deliveries,
                }));
            }
        }
        Ok(None)
    }

    /// Blocks until `deadline` for a new entry of `streams`, on a connection of the consumer's,
    /// but for at most a quarter of `claim_idle`: meanwhile an entry may become due for
    /// takeover, or a new region appear. `Ok(None)` when nothing came.
    async fn read_blocking(
        &self,
        consumer: &str,
        streams: &[String],
        deadline: Option<Instant>,
    ) -> RedisResult<Option<Delivery>> {
        let mut block = (self.options.claim_idle / 4).max(MIN_BLOCK);
        if let Some(deadline) = deadline {
            let rest = deadline.saturating_duration_since(Instant::now());
            // BLOCK 0 would wait for ever.
            if rest < Duration::from_millis(1) {
                return Ok(None);
            }
            block = block.min(rest);
        }
        let options = StreamReadOptions::default()
            .group(self.keys.group(), consumer)
            .count(1)
            .block(usize::try_from(block.as_millis()).unwrap_or(usize::MAX));
        let ids = vec![">"; streams.len()];
        loop {
            let kept = lock(&self.blocking).get_mut(consumer).and_then(Vec::pop);
            let was_kept = kept.is_some();
            let mut connection = match kept {
                Some(connection) => connection,
                None => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(None);
                    self.client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?
                }
            };
            let read = connection.xread_options(streams, &ids, &options);
            let result: RedisResult<Option<StreamReadReply>> =
                match tokio::time::timeout(block + BLOCK_MARGIN, read).await {
                    Ok(result) => result,
                    Err(_elapsed) => Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "a blocking read did not return in time",
                    ))),
                };
            match result {
                // A connection kept from an earlier read may have died with a Redis restart:
                // try a new one. A broken connection is dropped here.
                Err(error) if is_connection_lost(&error) && was_kept => continue,
                Err(error) if is_connection_lost(&error) => return Err(error),
                result => {
                    lock(&self.blocking)
                        .entry(consumer.to_string())
                        .or_default()
                        .push(connection);
                    return self.first_delivery(result?).await;
                }
            }
        }
    }

    /// The first readable entry of a read as a delivery; the others are handed back, and
    /// unreadable ones discarded.
    async fn first_delivery(
        &self,
        reply: Option<StreamReadReply>,
    ) -> RedisResult<Option<Delivery>> {
        let mut first = None;
        for key in reply.map(|reply| reply.keys).unwrap_or_default() {
            for entry in key.ids {
                match self.message(&key.key, &entry) {
                    None => self.discard(&key.key, &entry.id).await?,
                    Some(message) if first.is_none() => {
                        first = Some(Delivery {
                            message,
                            id: entry.id,
                            deliveries: 1,
                        });
                    }
                    Some(message) => self.hand_back(&key.key, &entry.id, &message).await?,
                }
            }
        }
        Ok(first)
    }

    /// The message of `entry` of `stream`; `None` when it has no job id (not written by
    /// wakafleet).
    fn message(&self, stream: &str, entry: &StreamId) -> Option<Message> {
        Some(Message {
            job: entry.get("job")?,
            region: self.keys.region_of(stream)?.to_string(),
        })
    }

    /// Removes an entry wakafleet cannot read: it holds no job to deliver, and left in place
    /// it would come back for ever.
    async fn discard(&self, stream: &str, id: &str) -> RedisResult<()> {
        tracing::warn!(stream, entry = id, "an unreadable queue entry was removed");
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .xack(stream, self.keys.group(), &[id])
            .ignore()
            .xdel(stream, &[id])
            .ignore();
        pipe.query_async(&mut self.shared.clone()).await
    }

    /// Adds a delivered message again at the end of its stream and acks the delivery, in one
    /// transaction: it was read but will not be handed to anyone.
    async fn hand_back(&self, stream: &str, id: &str, message: &Message) -> RedisResult<()> {
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .xadd(stream, "*", &[("job", &message.job)])
            .ignore()
            .xack(stream, self.keys.group(), &[id])
            .ignore()
            .xdel(stream, &[id])
            .ignore();
        pipe.query_async(&mut self.shared.clone()).await
    }

    /// Moves an entry to the dead letters, in one transaction.
    async fn dead_letter(
        &self,
        stream: &str,
        id: &str,
        message: &Message,
        deliveries: u64,
    ) -> RedisResult<()> {
        tracing::warn!(
            job = %message.job,
            region = %message.region,
            deliveries,
            "a job id was delivered too often without an ack; dead-lettered"
        );
        let deliveries = deliveries.to_string();
        let fields = [
            ("job", message.job.as_str()),
            ("region", message.region.as_str()),
            ("entry", id),
            ("deliveries", deliveries.as_str()),
        ];
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .xadd_maxlen(
                self.keys.dead(),
                StreamMaxlen::Approx(DEAD_LETTERS_KEPT),
                "*",
                &fields,
            )
            .ignore()
            .xack(stream, self.keys.group(), &[id])
            .ignore()
            .xdel(stream, &[id])
            .ignore();
        pipe.query_async(&mut self.shared.clone()).await
    }

    /// The streams of `regions`; of every region published to when `None`, sorted.
    async fn streams(&self, regions: Option<&[String]>) -> RedisResult<Vec<String>> {
        let mut names: Vec<String> = match regions {
            Some(regions) => regions.to_vec(),
            None => {
                let mut connection = self.shared.clone();
                connection.smembers(self.keys.regions()).await?
            }
        };
        names.sort();
        names.dedup();
        Ok(names
            .iter()
            .map(|region| self.keys.stream(region))
            .collect())
    }

    /// Creates the consumer group of each of `streams` (and the stream, when missing), reading
    /// from the first entry; a group that exists is left as it is.
    async fn create_groups(&self, streams: &[String]) -> RedisResult<()> {
        let mut connection = self.shared.clone();
        for stream in streams {
            let created: RedisResult<()> = connection
                .xgroup_create_mkstream(stream, self.keys.group(), "0")
                .await;
            match created {
                Err(error) if has_code(&error, "BUSYGROUP") => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Runs `command` on the shared connection, once more if the connection was lost (the
    /// manager reconnects in between); a failure says what was being done. A publish whose
    /// first try landed before the connection broke is published twice, which at-least-once
    /// delivery allows.
    async fn shared_command<T, F, Fut>(
        &self,
        doing: impl Fn() -> String,
        mut command: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = match command().await {
            Err(error) if is_connection_lost(&error) => command().await,
            result => result,
        };
        result.map_err(|source| self.error(doing(), source))
    }

    fn error(&self, doing: String, source: RedisError) -> Error {
        let url = self.url.clone();
        if is_connection_lost(&source) {
            Error::Unavailable { doing, url, source }
        } else if has_code(&source, "WRONGTYPE") {
            Error::Foreign {
                doing,
                url,
                prefix: self.keys.prefix.clone(),
                source,
            }
        } else {
            Error::Refused { doing, url, source }
        }
    }
}

impl Keys {
    fn stream(&self, region: &str) -> String {
        format!("{}:jobs:{region}", self.prefix)
    }

    /// The region whose stream is `stream`.
    fn region_of<'a>(&self, stream: &'a str) -> Option<&'a str> {
        stream
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":jobs:")
    }

    fn group(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    fn regions(&self) -> String {
        format!("{}:regions", self.prefix)
    }

    fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }
}

/// Whether Redis says a stream or its group is gone: `NOGROUP`, or `UNBLOCKED` for a read that
/// was waiting when its stream was deleted.
fn is_missing_group(error: &RedisError) -> bool {
    has_code(error, "NOGROUP") || has_code(error, "UNBLOCKED")
}

/// Whether Redis answered with the error `code`, to a command or to one of a pipeline's.
fn has_code(error: &RedisError, code: &str) -> bool {
    error.code() == Some(code)
        || error.clone().into_server_errors().is_some_and(|errors| {
            errors
                .iter()
                .any(|(_, server_error)| server_error.code() == code)
        })
}

/// Whether the connection broke, or never came (Redis went away, restarted, or did not answer
/// in time), so the command may succeed on a new one.
fn is_connection_lost(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped()
}

/// A duration in whole milliseconds, as Redis takes them.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The value behind a mutex that only guards plain maps: a panic elsewhere cannot leave them
/// half-changed, so a poisoned lock is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let keys = Keys {
            prefix: "wf".to_string(),
        };
        assert_eq!(keys.stream("ng-lagos"), "wf:jobs:ng-lagos");
        assert_eq!(keys.region_of("wf:jobs:ng-lagos"), Some("ng-lagos"));
        assert_eq!(keys.region_of("other:jobs:ng-lagos"), None);
        assert_eq!(keys.region_of("wf:dead"), None);
        assert_eq!(keys.group(), "wf:workers");
        assert_eq!(keys.regions(), "wf:regions");
        assert_eq!(keys.dead(), "wf:dead");
    }
}
