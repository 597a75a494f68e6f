//! The in-process queue of the embedded default: the contract of Redis Streams, kept in memory.
//!
//! One tokio `Mutex` guards the state and is held for a few steps of a call, never across an
//! await. A consumer with nothing to take waits on a `Notify` that every publish wakes, and,
//! when a delivery of its regions is unacked, until the moment that delivery may be taken over;
//! nothing polls. Nothing survives the process, which the contract allows: the store is
//! scanned and due jobs are published again.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use tokio::{
    sync::{Mutex, Notify},
    time::Instant,
};

use crate::queue::{DEAD_LETTERS_KEPT, Delivery, Error, Message, Options};

/// The in-process queue.
#[derive(Debug)]
pub struct Local {
    options: Options,
    state: Mutex<State>,
    /// Woken by every publish.
    published: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The next entry's sequence number: entries are numbered in the order they are published.
    next: u64,
    /// Entries never delivered, by region, oldest first.
    waiting: BTreeMap<String, VecDeque<(u64, Message)>>,
    /// Entries delivered and not acked, by sequence number.
    pending: BTreeMap<u64, Pending>,
    dead: VecDeque<Message>,
}

#[derive(Debug)]
struct Pending {
    message: Message,
    delivered_at: Instant,
    deliveries: u64,
}

impl Local {
    pub fn new(options: Options) -> Local {
        Local {
            options,
            state: Mutex::new(State::default()),
            published: Notify::new(),
        }
    }

    pub async fn publish(&self, message: &Message) {
        self.state.lock().await.publish(message);
        self.published.notify_waiters();
    }

    /// As [`crate::queue::Queue::receive`]. The consumer's name is not needed here: a
    /// delivery is taken over because of its age, whoever holds it.
    pub async fn receive(
        &self,
        _consumer: &str,
        regions: Option<&[String]>,
        wait: Duration,
    ) -> Option<Delivery> {
        let deadline = later(Instant::now(), wait);
        loop {
            let published = self.published.notified();
            tokio::pin!(published);
            // Registered before the state is looked at, so a publish in between still wakes us.
            published.as_mut().enable();
            let now = Instant::now();
            let next_claimable = {
                let mut state = self.state.lock().await;
                if let Some(delivery) = state.take(regions, &self.options, now) {
                    return Some(delivery);
                }
                state.next_claimable(regions, self.options.claim_idle)
            };
            let deadline = match deadline {
                Some(deadline) if now >= deadline => return None,
                deadline => deadline,
            };
            let until = match (next_claimable, deadline) {
                (Some(claimable), Some(deadline)) => Some(claimable.min(deadline)),
                (claimable, deadline) => claimable.or(deadline),
            };
            match until {
                Some(until) => tokio::select! {
                    () = &mut published => {}
                    () = tokio::time::sleep_until(until) => {}
                },
                None => published.await,
            }
        }
    }

    /// As [`crate::queue::Queue::ack`]; an id this queue never gave out is an error.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        let sequence: u64 = delivery.id.parse().map_err(|_| Error::Delivery {
            id: delivery.id.clone(),
        })?;
        self.state.lock().await.pending.remove(&sequence);
        Ok(())
    }

    pub async fn depth(&self) -> u64 {
        let state = self.state.lock().await;
        let waiting: usize = state.waiting.values().map(VecDeque::len).sum();
        u64::try_from(waiting + state.pending.len()).unwrap_or(u64::MAX)
    }

    pub async fn dead(&self) -> Vec<Message> {
        self.state.lock().await.dead.iter().cloned().collect()
    }
}

impl State {
    fn publish(&mut self, message: &Message) {
        let sequence = self.next;
        self.next += 1;
        self.waiting
            .entry(message.region.clone())
            .or_default()
            .push_back((sequence, message.clone()));
    }

    /// The next delivery for a consumer of `regions` at `now`: a delivery left unacked past
    /// `claim_idle` (oldest entry first; dead-lettering those past `max_deliveries`), otherwise
    /// the oldest new entry of those regions.
    fn take(
        &mut self,
        regions: Option<&[String]>,
        options: &Options,
        now: Instant,
    ) -> Option<Delivery> {
        while let Some((&sequence, pending)) = self.pending.iter_mut().find(|(_, pending)| {
            wanted(regions, &pending.message.region)
                && later(pending.delivered_at, options.claim_idle).is_some_and(|at| now >= at)
        }) {
            if pending.deliveries < options.max_deliveries {
                pending.deliveries += 1;
                pending.delivered_at = now;
                return Some(Delivery {
                    message: pending.message.clone(),
                    id: sequence.to_string(),
                    deliveries: pending.deliveries,
                });
            }
            if let Some(pending) = self.pending.remove(&sequence) {
                tracing::warn!(
                    job = %pending.message.job,
                    region = %pending.message.region,
                    deliveries = pending.deliveries,
                    "a job id was delivered too often without an ack; dead-lettered"
                );
                self.dead.push_back(pending.message);
                if self.dead.len() > DEAD_LETTERS_KEPT {
                    self.dead.pop_front();
                }
            }
        }
        let queue = self
            .waiting
            .iter_mut()
            .filter(|(region, _)| wanted(regions, region))
            .filter_map(|(_, queue)| Some((queue.front()?.0, queue)))
            .min_by_key(|(sequence, _)| *sequence)?
            .1;
        let (sequence, message) = queue.pop_front()?;
        let delivery = Delivery {
            message: message.clone(),
            id: sequence.to_string(),
            deliveries: 1,
        };
        self.pending.insert(
            sequence,
            Pending {
                message,
                delivered_at: now,
                deliveries: 1,
            },
        );
        Some(delivery)
    }

    /// When the first unacked delivery of `regions` may be taken over.
    fn next_claimable(&self, regions: Option<&[String]>, claim_idle: Duration) -> Option<Instant> {
        self.pending
            .values()
            .filter(|pending| wanted(regions, &pending.message.region))
            .filter_map(|pending| later(pending.delivered_at, claim_idle))
            .min()
    }
}

/// Whether a consumer of `regions` (`None`: all) takes messages of `region`.
fn wanted(regions: Option<&[String]>, region: &str) -> bool {
    regions.is_none_or(|regions| regions.iter().any(|wanted| wanted == region))
}

/// `duration` after `instant`, or `None` when that is too far to represent (never, in effect).
fn later(instant: Instant, duration: Duration) -> Option<Instant> {
    instant.checked_add(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(job: &str, region: &str) -> Message {
        Message {
            job: job.to_string(),
            region: region.to_string(),
        }
    }

    #[test]
    fn an_unacked_delivery_is_taken_over_at_claim_idle_until_it_is_dead() {
        let options = Options {
            claim_idle: Duration::from_secs(60),
            max_deliveries: 2,
            ..Options::default()
        };
        let minutes = |count: u64| Duration::from_secs(60 * count);
        let mut state = State::default();
        state.publish(&message("poison", "a"));
        let start = Instant::now();
        let first = state.take(None, &options, start).expect("the new entry");
        assert_eq!((first.id.as_str(), first.deliveries), ("0", 1));
        let just_before = start + minutes(1) - Duration::from_millis(1);
        assert_eq!(state.take(None, &options, just_before), None);
        assert_eq!(
            state.next_claimable(None, options.claim_idle),
            Some(start + minutes(1))
        );
        assert_eq!(
            state.next_claimable(Some(&["b".to_string()]), options.claim_idle),
            None
        );
        let second = state
            .take(None, &options, start + minutes(1))
            .expect("taken over");
        assert_eq!((second.id.as_str(), second.deliveries), ("0", 2));
        assert_eq!(state.take(None, &options, start + minutes(2)), None);
        assert_eq!(state.dead, [message("poison", "a")]);
        assert!(state.pending.is_empty());
        assert_eq!(state.next_claimable(None, options.claim_idle), None);
    }

    #[test]
    fn the_oldest_new_entry_of_the_regions_asked_for_comes_first() {
        let options = Options::default();
        let mut state = State::default();
        for (job, region) in [("b1", "b"), ("a1", "a"), ("b2", "b"), ("a2", "a")] {
            state.publish(&message(job, region));
        }
        let now = Instant::now();
        let mut take = |regions: Option<&[String]>| {
            state
                .take(regions, &options, now)
                .map(|delivery| delivery.message.job)
        };
        let only_a = ["a".to_string()];
        assert_eq!(take(Some(&only_a)).as_deref(), Some("a1"));
        assert_eq!(take(None).as_deref(), Some("b1"));
        assert_eq!(take(None).as_deref(), Some("b2"));
        assert_eq!(take(Some(&only_a)).as_deref(), Some("a2"));
        assert_eq!(take(None), None);
    }

    #[tokio::test]
    async fn an_id_the_queue_never_gave_out_cannot_be_acked() {
        let local = Local::new(Options::default());
        let delivery = Delivery {
            message: message("job", "a"),
            id: "1700000000000-0".to_string(),
            deliveries: 1,
        };
        let error = local.ack(&delivery).await.expect_err("a Redis id");
        assert_eq!(
            error.to_string(),
            "`1700000000000-0` is not the id of a delivery of the in-process queue"
        );
    }
}
