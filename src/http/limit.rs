//! Rate limits, with `governor`'s GCRA: per token, and per address for calls without a
//! valid token (health, the webhook, the login form, and every failed authentication).
//! The defaults are the seeds': 1,000 requests a minute per token, 200 per address.
//!
//! Each answer carries the seeds' headers: `X-RateLimit-Limit` (the requests a minute),
//! `X-RateLimit-Remaining` (the burst left now) and `X-RateLimit-Reset` (the Unix time at
//! which the whole minute's allowance is back); past the limit, 429 with `Retry-After`.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};
use serde::Deserialize;

use crate::http::{ApiError, App};

/// The `[api.rate_limit]` table: requests a minute.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_per_token")]
    pub per_token: u32,
    #[serde(default = "default_per_address")]
    pub per_address: u32,
}

fn default_per_token() -> u32 {
    1000
}

fn default_per_address() -> u32 {
    200
}

impl Default for Config {
    fn default() -> Config {
        Config {
            per_token: default_per_token(),
            per_address: default_per_address(),
        }
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// The limiters of a server.
pub struct Limiters {
    tokens: Keyed<String>,
    addresses: Keyed<IpAddr>,
    config: Config,
    clock: DefaultClock,
}

/// How a request stands against its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the whole allowance is back.
    pub reset_after: Duration,
    /// Past the limit: how long until the next request may pass.
    pub retry_after: Option<Duration>,
}

impl Limiters {
    /// Limiters with `config`'s allowances; an allowance of 0 is taken as 1.
    pub fn new(config: Config) -> Limiters {
        let quota = |per_minute: u32| {
            Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
        };
        Limiters {
            tokens: RateLimiter::keyed(quota(config.per_token))
                .with_middleware::<StateInformationMiddleware>(),
            addresses: RateLimiter::keyed(quota(config.per_address))
                .with_middleware::<StateInformationMiddleware>(),
            config,
            clock: DefaultClock::default(),
        }
    }

    /// Counts a request of the token `name`.
    pub fn token(&self, name: &str) -> Standing {
        let outcome = self.tokens.check_key(&name.to_string());
        self.standing(outcome, self.config.per_token)
    }

    /// Counts a request from `address` without a valid token.
    pub fn address(&self, address: IpAddr) -> Standing {
        let outcome = self.addresses.check_key(&address);
        self.standing(outcome, self.config.per_address)
    }

    /// Forgets the keys whose allowance is whole again, so the maps stay small.
    pub fn forget_idle(&self) {
        self.tokens.retain_recent();
        self.addresses.retain_recent();
        self.tokens.shrink_to_fit();
        self.addresses.shrink_to_fit();
    }

    fn standing(
        &self,
        outcome: Result<
            governor::middleware::StateSnapshot,
            governor::NotUntil<<DefaultClock as Clock>::Instant>,
        >,
        limit: u32,
    ) -> Standing {
        let per_request = Duration::from_secs(60) / limit.max(1);
        match outcome {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Standing {
                    limit,
                    remaining,
                    reset_after: per_request * (limit.saturating_sub(remaining)),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Standing {
                    limit,
                    remaining: 0,
                    reset_after: per_request * limit,
                    retry_after: Some(wait),
                }
            }
        }
    }
}

impl Standing {
    /// Writes the seeds' headers (and `Retry-After` past the limit).
    pub fn write(&self, headers: &mut HeaderMap) {
        let reset = chrono::Utc::now().timestamp()
            + i64::try_from(self.reset_after.as_secs()).unwrap_or(i64::MAX / 2)
            + i64::from(self.reset_after.subsec_nanos() > 0);
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert("retry-after", HeaderValue::from(seconds.max(1)));
        }
    }

    /// The 429 answer, with its headers.
    pub fn refusal(&self) -> Response {
        let mut response = ApiError::new(
            crate::http::error::Code::RateLimited,
            format!(
                "more than {} requests a minute; try again in {} s",
                self.limit,
                self.retry_after.map_or(1, |wait| wait.as_secs().max(1))
            ),
        )
        .into_response();
        self.write(response.headers_mut());
        response
    }
}

/// The address a request came from; unspecified when the server was not started with
/// connection information (a router driven in a test).
pub fn remote(request: &Request) -> SocketAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0)
}

/// Middleware for the routes that need no token: limited per address.
pub async fn per_address(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let standing = app.limits.address(remote(&request).ip());
    if standing.retry_after.is_some() {
        let refused = crate::http::auth::Refused::of(&request);
        crate::http::auth::audit_refusal(&app, refused, None, "rate limited", 429).await;
        return standing.refusal();
    }
    let mut response = next.run(request).await;
    standing.write(response.headers_mut());
    response
}
