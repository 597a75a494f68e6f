//! Bearer tokens, their roles and scopes, and the refusals they cause.
//!
//! A token is `wf1.<name>.<secret>`: the name picks the one `[[api.tokens]]` entry to check,
//! so a request costs one argon2 verification, on a blocking thread, and a success is
//! remembered for a minute under the SHA-256 of the token (never the token itself). The
//! config holds only the argon2 hash of the secret; `wakafleet token create` prints the
//! token once. An unknown name is checked against a dummy hash, so the time taken does not
//! tell which names exist; failures count against the caller's address's allowance.
//!
//! A viewer reads; an operator also runs the verbs. A token scoped to a partner or a tenant
//! sees and acts on only that partner's or tenant's instances, their jobs and audit records.
//! Every refusal (401, 403, 429) is audited with the token's name, its role, the address,
//! the user agent and the request id; a flood past a limit is audited once a minute per
//! caller, not once per request, so that it cannot flood the audit log.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{
    http::{ApiError, App, RequestId, limit},
    store::audit::{Actor, ActorKind, Outcome, Record},
};

/// The cookie the dashboard's login form sets.
pub const COOKIE: &str = "wakafleet_token";
/// How long a verified token is remembered.
const REMEMBER: Duration = Duration::from_secs(60);
/// The longest user agent or path kept in an audit record.
const MAX_AUDITED: usize = 256;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and runs the operator verbs.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator]
            .into_iter()
            .find(|role| role.as_str() == text)
    }
}

/// Which instances a token sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Partner(String),
    Tenant(String),
}

/// One `[[api.tokens]]` entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    /// The argon2 hash of the secret, in the PHC string format.
    pub hash: String,
    /// Only this partner's instances.
    pub partner: Option<String>,
    /// Only this tenant's instances.
    pub tenant: Option<String>,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("partner", &self.partner)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl TokenEntry {
    pub fn scope(&self) -> Scope {
        match (&self.tenant, &self.partner) {
            (Some(tenant), _) => Scope::Tenant(tenant.clone()),
            (None, Some(partner)) => Scope::Partner(partner.clone()),
            (None, None) => Scope::All,
        }
    }
}

/// Who made a request, once its token is checked.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token: String,
    pub role: Role,
    pub scope: Scope,
    pub remote: SocketAddr,
    pub user_agent: Option<String>,
    pub request_id: String,
}

impl Caller {
    /// The caller in the audit log.
    pub fn actor(&self) -> Actor {
        Actor {
            kind: ActorKind::Token,
            id: self.token.clone(),
            email: None,
        }
    }

    /// The audit record of a call by this caller, with who, from where and which request.
    pub fn record(&self, action: &str, resource: &str) -> Record {
        let mut record = Record::new(self.actor(), action, resource);
        let metadata = &mut record.metadata;
        metadata.insert("role".into(), self.role.as_str().into());
        metadata.insert("remote".into(), self.remote.to_string().into());
        metadata.insert("request_id".into(), self.request_id.clone().into());
        if let Some(agent) = &self.user_agent {
            metadata.insert("user_agent".into(), agent.clone().into());
        }
        record
    }

    /// Refuses a verb to a viewer, audited.
    ///
    /// # Errors
    /// 403 when the caller is not an operator.
    pub async fn require_operator(
        &self,
        app: &App,
        action: &str,
        resource: &str,
    ) -> Result<(), ApiError> {
        if self.role == Role::Operator {
            return Ok(());
        }
        let message = format!(
            "the token `{}` is a viewer's; `{action}` needs an operator's",
            self.token
        );
        Err(self.forbid(app, action, resource, &message).await)
    }

    /// The 403 of a call the caller may not make, audited under `action` on `resource`.
    pub async fn forbid(&self, app: &App, action: &str, resource: &str, message: &str) -> ApiError {
        let mut record = self.record(action, resource);
        record.result = Outcome::Failure;
        record.error = Some(format!("refused: {message}"));
        record.metadata.insert("code".into(), 403.into());
        if let Err(error) = app.store.append_one(record).await {
            tracing::warn!(%error, "auditing a refused call");
        }
        ApiError::forbidden(message)
    }
}

/// The tokens of a server, with the successes remembered.
pub struct Tokens {
    entries: BTreeMap<String, TokenEntry>,
    remembered: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    /// When each caller's last refusal past a limit was audited.
    refusals: Mutex<HashMap<String, Instant>>,
    dummy: String,
}

/// Why the configured tokens cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the token name `{0}` is used twice")]
    Duplicate(String),
    #[error("the token `{0}` has a name that is not 1 to 64 of a-z, 0-9, `-` and `_`")]
    Name(String),
    #[error("the token `{name}` has a hash that is not an argon2 PHC string: {reason}")]
    Hash { name: String, reason: String },
    #[error("the token `{0}` names both a partner and a tenant; give one")]
    Scope(String),
    #[error("no randomness for a token: {0}")]
    Random(String),
}

impl Tokens {
    /// The tokens of the config.
    ///
    /// # Errors
    /// A name used twice or malformed, a hash that does not parse, a scope given twice.
    pub fn new(entries: Vec<TokenEntry>) -> Result<Tokens, Error> {
        let mut by_name = BTreeMap::new();
        for entry in entries {
            if !valid_name(&entry.name) {
                return Err(Error::Name(entry.name));
            }
            if let Err(error) = PasswordHash::new(&entry.hash) {
                return Err(Error::Hash {
                    name: entry.name,
                    reason: error.to_string(),
                });
            }
            if entry.partner.is_some() && entry.tenant.is_some() {
                return Err(Error::Scope(entry.name));
            }
            if by_name.contains_key(&entry.name) {
                return Err(Error::Duplicate(entry.name));
            }
            by_name.insert(entry.name.clone(), entry);
        }
        let dummy = hash_secret("not a token").map_err(Error::Random)?;
        Ok(Tokens {
            entries: by_name,
            remembered: Mutex::default(),
            refusals: Mutex::default(),
            dummy,
        })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a presented token, when it is valid.
    pub async fn check(&self, presented: &str) -> Option<TokenEntry> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some(name) = self.remembered_name(&digest) {
            return self.entries.get(&name).cloned();
        }
        let (name, secret) = split(presented).unwrap_or(("", presented));
        let entry = self.entries.get(name).cloned();
        let hash = entry
            .as_ref()
            .map_or_else(|| self.dummy.clone(), |entry| entry.hash.clone());
        let secret = secret.to_string();
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &hash)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        let entry = entry.filter(|_| verified)?;
        let mut remembered = self
            .remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if remembered.len() > 10_000 {
            remembered.retain(|_, (_, at)| at.elapsed() < REMEMBER);
        }
        remembered.insert(digest, (entry.name.clone(), Instant::now()));
        Some(entry)
    }

    fn remembered_name(&self, digest: &[u8; 32]) -> Option<String> {
        let remembered = self
            .remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        remembered
            .get(digest)
            .filter(|(_, at)| at.elapsed() < REMEMBER)
            .map(|(name, _)| name.clone())
    }

    /// Whether a refusal past a limit by `caller` is to be audited: once a minute.
    fn audit_limit_refusal(&self, caller: &str) -> bool {
        let mut refusals = self
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if refusals.len() > 10_000 {
            refusals.retain(|_, at| at.elapsed() < Duration::from_secs(60));
        }
        match refusals.get(caller) {
            Some(at) if at.elapsed() < Duration::from_secs(60) => false,
            _ => {
                refusals.insert(caller.to_string(), Instant::now());
                true
            }
        }
    }
}

/// A new token: the token itself (shown once) and its `[[api.tokens]]` entry.
///
/// # Errors
/// A malformed name, a scope given twice, or no randomness.
pub fn create(
    name: &str,
    role: Role,
    partner: Option<&str>,
    tenant: Option<&str>,
) -> Result<(String, String), Error> {
    if !valid_name(name) {
        return Err(Error::Name(name.to_string()));
    }
    if partner.is_some() && tenant.is_some() {
        return Err(Error::Scope(name.to_string()));
    }
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| Error::Random(error.to_string()))?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_secret(&secret).map_err(Error::Random)?;
    let token = format!("wf1.{name}.{secret}");
    let mut entry = format!(
        "[[api.tokens]]\nname = \"{name}\"\nrole = \"{}\"\nhash = \"{hash}\"\n",
        role.as_str()
    );
    if let Some(partner) = partner {
        entry += &format!("partner = {}\n", toml_string(partner));
    }
    if let Some(tenant) = tenant {
        entry += &format!("tenant = {}\n", toml_string(tenant));
    }
    Ok((token, entry))
}

/// The argon2id hash (the crate's default parameters) of a secret, with a random salt.
fn hash_secret(secret: &str) -> Result<String, String> {
    let mut salt = [0_u8; 16];
    getrandom::fill(&mut salt).map_err(|error| error.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|error| error.to_string())?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| error.to_string())
}

fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'_'
        })
}

/// `wf1.<name>.<secret>` split into name and secret.
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("wf1.")?;
    rest.split_once('.')
}

/// The token a request presents: `Authorization: Bearer`, or the dashboard's cookie.
pub fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Whether a path is the dashboard's (an unauthenticated visitor is sent to the login form
/// there, not given a JSON error).
fn is_page(path: &str) -> bool {
    !(path.starts_with("/api/") || path == "/metrics")
}

/// Middleware for the routes that need a token.
pub async fn require(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let remote = limit::remote(&request);
    let presented = presented(request.headers());
    let entry = match &presented {
        Some(token) => {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            match app.tokens.remembered_name(&digest) {
                Some(_) => app.tokens.check(token).await,
                None => {
                    // Checking a token costs an argon2 hash: an unknown one counts against
                    // the address first.
                    let standing = app.limits.address(remote.ip());
                    if standing.retry_after.is_some() {
                        audit_refusal(&app, Refused::of(&request), None, "rate limited", 429).await;
                        return standing.refusal();
                    }
                    app.tokens.check(token).await
                }
            }
        }
        None => None,
    };
    let Some(entry) = entry else {
        if presented.is_none() {
            let standing = app.limits.address(remote.ip());
            if standing.retry_after.is_some() {
                audit_refusal(&app, Refused::of(&request), None, "rate limited", 429).await;
                return standing.refusal();
            }
        }
        let reason = if presented.is_some() {
            "the token is not valid"
        } else {
            "no token"
        };
        audit_refusal(&app, Refused::of(&request), None, reason, 401).await;
        if is_page(request.uri().path()) {
            return Redirect::to("/login").into_response();
        }
        return ApiError::unauthorized(format!(
            "{reason}: send `Authorization: Bearer <token>` with a token of the daemon's configuration"
        ))
        .into_response();
    };
    let standing = app.limits.token(&entry.name);
    if standing.retry_after.is_some() {
        if app
            .tokens
            .audit_limit_refusal(&format!("token:{}", entry.name))
        {
            audit_refusal(
                &app,
                Refused::of(&request),
                Some(&entry),
                "rate limited",
                429,
            )
            .await;
        }
        return standing.refusal();
    }
    let caller = Caller {
        token: entry.name.clone(),
        role: entry.role,
        scope: entry.scope(),
        remote,
        user_agent: user_agent(request.headers()),
        request_id: request_id(&request),
    };
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    standing.write(response.headers_mut());
    response
}

/// What the audit log keeps of a refused request (read before any await: a request is
/// not `Sync`, so no reference to it may be held across one).
pub struct Refused {
    remote: SocketAddr,
    user_agent: Option<String>,
    request_id: String,
    path: String,
    method: String,
}

impl Refused {
    pub fn of(request: &Request) -> Refused {
        Refused {
            remote: limit::remote(request),
            user_agent: user_agent(request.headers()),
            request_id: request_id(request),
            path: request.uri().path().chars().take(MAX_AUDITED).collect(),
            method: request.method().as_str().to_string(),
        }
    }
}

/// Audits a refused request. Past a limit, an address's refusals are audited once a minute.
pub async fn audit_refusal(
    app: &App,
    refused: Refused,
    entry: Option<&TokenEntry>,
    reason: &str,
    code: u16,
) {
    if code == StatusCode::TOO_MANY_REQUESTS.as_u16()
        && entry.is_none()
        && !app
            .tokens
            .audit_limit_refusal(&format!("address:{}", refused.remote.ip()))
    {
        return;
    }
    let caller = Caller {
        token: entry.map_or_else(|| "anonymous".to_string(), |entry| entry.name.clone()),
        role: entry.map_or(Role::Viewer, |entry| entry.role),
        scope: Scope::All,
        remote: refused.remote,
        user_agent: refused.user_agent,
        request_id: refused.request_id,
    };
    let mut record = caller.record("api.refused", &format!("http{}", refused.path));
    if entry.is_none() {
        record.metadata.remove("role");
    }
    record.result = Outcome::Failure;
    record.error = Some(format!("refused: {reason}"));
    record.metadata.insert("code".into(), code.into());
    record
        .metadata
        .insert("method".into(), refused.method.into());
    if let Err(error) = app.store.append_one(record).await {
        tracing::warn!(%error, "auditing a refused call");
    }
}

fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .map(|agent| agent.chars().take(MAX_AUDITED).collect())
}

fn request_id(request: &Request) -> String {
    request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_created_token_checks_and_a_changed_one_does_not() {
        let (token, entry) = create("ci", Role::Viewer, None, None).expect("a token");
        #[derive(Deserialize)]
        struct File {
            api: crate::http::Config,
        }
        let file: File = toml::from_str(&entry).expect("the printed entry is the config's");
        let tokens = Tokens::new(file.api.tokens).expect("tokens");
        assert_eq!(
            tokens.check(&token).await.map(|entry| entry.name),
            Some("ci".to_string())
        );
        // Remembered: the same answer without a hash.
        assert!(tokens.check(&token).await.is_some());
        let mut changed = token.clone().into_bytes();
        let last = changed.len() - 1;
        changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(changed).expect("ascii");
        assert!(tokens.check(&changed).await.is_none());
        assert!(tokens.check("wf1.nobody.secret").await.is_none());
        assert!(tokens.check("").await.is_none());
        assert!(
            !entry.contains(token.rsplit('.').next().expect("a secret")),
            "the entry holds only the hash"
        );
    }

    #[test]
    fn names_and_scopes_are_checked() {
        assert!(matches!(
            create("Bad Name", Role::Viewer, None, None),
            Err(Error::Name(_))
        ));
        assert!(matches!(
            create("a.b", Role::Viewer, None, None),
            Err(Error::Name(_))
        ));
        assert!(matches!(
            create("x", Role::Viewer, Some("p"), Some("t")),
            Err(Error::Scope(_))
        ));
        let entry = TokenEntry {
            name: "x".into(),
            role: Role::Viewer,
            hash: "not a hash".into(),
            partner: None,
            tenant: None,
        };
        assert!(matches!(
            Tokens::new(vec![entry.clone()]),
            Err(Error::Hash { .. })
        ));
        assert!(
            !format!("{entry:?}").contains("not a hash"),
            "Debug leaves the hash out"
        );
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=b; wakafleet_token=wf1.x.y".parse().expect("a header"),
        );
        assert_eq!(presented(&headers).as_deref(), Some("wf1.x.y"));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer wf1.z.w".parse().expect("a header"),
        );
        assert_eq!(presented(&headers).as_deref(), Some("wf1.z.w"));
        headers.insert(
            header::AUTHORIZATION,
            "Basic abc".parse().expect("a header"),
        );
        assert_eq!(presented(&headers), None);
    }
}
