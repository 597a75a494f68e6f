//! The queue: delivers job ids to workers quickly, on one machine or on many.
//!
//! The store's jobs table is the system of record; a message on the queue only says "job X, of
//! an instance in region R, may be ready". Losing the queue's contents therefore loses nothing:
//! the daemon scans the store for due jobs and publishes them again. What the queue promises:
//!
//! - Each message is delivered to one consumer at a time, first in first out within its region.
//! - A delivery that is not acked within [`Options::claim_idle`] is taken over by the next
//!   consumer that asks (its consumer is presumed dead), and counts one more delivery; after
//!   [`Options::max_deliveries`] deliveries it is dead-lettered instead: kept in [`Queue::dead`]
//!   and delivered no more. Delivery is therefore at least once, and a job id can arrive twice;
//!   the store's claim of a job is what makes running it exclusive.
//! - [`Queue::depth`] counts what was published and not yet acked (dead letters are acked).
//!
//! Two implementations keep that contract, one shared test suite checks it (`tests/queue.rs`):
//! [`redis`], Redis Streams with one consumer group, for workers on many hosts, and [`local`],
//! in the process, for the embedded default. This module does not know what a job is, when one
//! is due, or how it is retried: that is the store's and the jobs module's.

pub mod local;
pub mod redis;

use std::time::Duration;

use crate::secret::redact_url;

/// The queue when neither `--queue` nor the configuration says: in the process.
pub const DEFAULT_URL: &str = "local";

/// How many dead letters are kept; older ones are dropped first. The store keeps the jobs
/// themselves, so a dead letter lost is only a record of a poisoned delivery lost.
pub const DEAD_LETTERS_KEPT: usize = 10_000;

/// What is delivered: a job id and the region its instance lives in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    /// The job's id in the store.
    pub job: String,
    /// The region of the job's instance; consumers may ask for some regions only.
    pub region: String,
}

/// One delivery of a message to a consumer; ack it when the job is handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub message: Message,
    /// The entry's id: the Redis stream id, or a sequence number of the in-process queue.
    pub id: String,
    /// How many times this entry has been delivered, this one included.
    pub deliveries: u64,
}

/// How a queue is opened.
#[derive(Clone, Debug)]
pub struct Options {
    /// What every Redis key of the queue starts with, so that several fleets (or tests) can
    /// share one Redis.
    pub prefix: String,
    /// A delivery this long ago and not acked is taken over from its consumer, presumed dead.
    /// A consumer acks before then: once the store's claim holds the job, or once it is handled.
    pub claim_idle: Duration,
    /// Past this many deliveries an entry is dead-lettered instead of delivered again.
    pub max_deliveries: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: "wakafleet".to_string(),
            claim_idle: Duration::from_secs(60),
            max_deliveries: 5,
        }
    }
}

/// Why the queue could not do what was asked.
///
/// URLs in messages are shown through [`redact_url`]: no password is ever printed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL as shown: [`Error::url`] redacts it.
    #[error("`{0}` is not a queue URL: use `local` (in the process) or redis://HOST:PORT[/DB]")]
    Url(String),
    #[error("`{url}` is not a Redis URL that can be used: write it as redis://HOST:PORT[/DB]")]
    InvalidUrl {
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error(
        "the queue's Redis at {url} could not be reached: is redis-server running there, and is the address right?"
    )]
    Unreachable {
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error(
        "the queue's Redis at {url} refused the connection: check the user, password and database in the URL"
    )]
    Rejected {
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    /// Redis went away (or never answered) while `doing` was under way; the same call succeeds
    /// again once it is back.
    #[error("{doing} failed: the queue's Redis at {url} cannot be reached; is it running?")]
    Unavailable {
        doing: String,
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    /// A key where the queue keeps a stream or a set holds something else.
    #[error(
        "{doing} failed: a key of the queue's Redis at {url} holds something else; is another program using the prefix `{prefix}`? Give the queue a prefix of its own, or delete those keys"
    )]
    Foreign {
        doing: String,
        url: String,
        prefix: String,
        #[source]
        source: ::redis::RedisError,
    },
    /// Redis answered `doing` with an error.
    #[error("{doing} failed: the queue's Redis at {url} answered with an error")]
    Refused {
        doing: String,
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    /// A delivery that this queue did not make was acked.
    #[error("`{id}` is not the id of a delivery of the in-process queue")]
    Delivery { id: String },
}

impl Error {
    /// A URL that names no queue, its password redacted.
    fn url(url: &str) -> Error {
        Error::Url(redact_url(url))
    }
}

/// The queue: Redis Streams or in the process, one contract.
#[derive(Debug)]
pub enum Queue {
    Local(local::Local),
    Redis(redis::Redis),
}

impl Queue {
    /// Opens the queue `url` names: `local` is in the process, `redis://HOST:PORT[/DB]` is Redis
    /// Streams (connected at once).
    ///
    /// Errors: [`Error::Url`] for anything else, [`Error::InvalidUrl`] for a Redis URL that does
    /// not parse, [`Error::Unreachable`] (naming the address) when Redis does not answer, and
    /// [`Error::Rejected`] when it refuses the credentials or the database.
    pub async fn open(url: &str, options: Options) -> Result<Queue, Error> {
        if url == "local" {
            return Ok(Queue::Local(local::Local::new(options)));
        }
        if url.starts_with("redis://") {
            return Ok(Queue::Redis(redis::Redis::open(url, options).await?));
        }
        Err(Error::url(url))
    }

    /// Adds `message` at the end of its region's queue.
    pub async fn publish(&self, message: &Message) -> Result<(), Error> {
        match self {
            Queue::Local(local) => {
                local.publish(message).await;
                Ok(())
            }
            Queue::Redis(redis) => redis.publish(message).await,
        }
    }

    /// Waits up to `wait` for one delivery to `consumer` (a name unique to the worker task,
    /// stable across its calls) of a message of `regions` (`None`: every region).
    ///
    /// Entries other consumers left unacked for longer than `claim_idle` come first (those past
    /// `max_deliveries` are dead-lettered on the way), then new entries in order. `Ok(None)`
    /// when nothing came within `wait`. A call cut off while it waits may leave the entry it was
    /// about to get pending; it is taken over after `claim_idle`, like any unacked delivery.
    pub async fn receive(
        &self,
        consumer: &str,
        regions: Option<&[String]>,
        wait: Duration,
    ) -> Result<Option<Delivery>, Error> {
        match self {
            Queue::Local(local) => Ok(local.receive(consumer, regions, wait).await),
            Queue::Redis(redis) => redis.receive(consumer, regions, wait).await,
        }
    }

    /// Marks `delivery` handled: its entry is never delivered again. Acking twice, or after the
    /// entry was taken over, is harmless.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        match self {
            Queue::Local(local) => local.ack(delivery).await,
            Queue::Redis(redis) => redis.ack(delivery).await,
        }
    }

    /// Entries published and not yet acked, delivered or not (for metrics and tests).
    pub async fn depth(&self) -> Result<u64, Error> {
        match self {
            Queue::Local(local) => Ok(local.depth().await),
            Queue::Redis(redis) => redis.depth().await,
        }
    }

    /// The dead-lettered messages, oldest first, at most [`DEAD_LETTERS_KEPT`] (for tests and
    /// `wakafleet jobs`).
    pub async fn dead(&self) -> Result<Vec<Message>, Error> {
        match self {
            Queue::Local(local) => Ok(local.dead().await),
            Queue::Redis(redis) => redis.dead().await,
        }
    }

    /// Checks that the queue answers (for health checks).
    pub async fn ping(&self) -> Result<(), Error> {
        match self {
            Queue::Local(_) => Ok(()),
            Queue::Redis(redis) => redis.ping().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_is_not_a_queue_url_is_named_without_its_password() {
        let error = Error::url("rediss://app:hunter2@cache:6379");
        assert_eq!(
            error.to_string(),
            "`rediss://app:***@cache:6379` is not a queue URL: use `local` (in the process) or redis://HOST:PORT[/DB]"
        );
    }
}
