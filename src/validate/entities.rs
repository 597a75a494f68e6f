//! One decoder per kind of fleet file: a document in, a model value out.
//!
//! Each reads every field before giving up on any, so all problems of a file are reported.
//! Rules that need other files (references, duplicates, capacity) are in the parent module.

use crate::{
    diag::{Code, Diagnostic, Spanned},
    load::Node,
    model::{
        AutoApprove, Backup, Channel, ChannelMode, ClockTime, DEFAULT_RETAIN, Day, Instance,
        InstanceState, InstanceType, Minutes, Partner, Region, Release, ReleaseStatus, Security,
        Settings, Severity, Standing, Tenant, TimeZone, Track, Window,
    },
    validate::decode::{Ctx, Fields},
};

pub fn settings(ctx: &mut Ctx, root: &Node<'_>) -> Option<Settings> {
    let mut fields = ctx.table(root, "fleet settings")?;
    let name = ctx
        .required(&mut fields, "name")
        .and_then(|node| ctx.nonempty(node));
    let regions = fields
        .get("regions")
        .map(|node| ctx.map(node, "regions", region))
        .unwrap_or_default();
    let sizes = fields
        .get("sizes")
        .map(|node| ctx.map(node, "sizes", |ctx, node| ctx.resources(node)))
        .unwrap_or_default();
    ctx.finish(fields);
    Some(Settings {
        name: name?.value,
        regions: regions
            .into_iter()
            .map(|(name, region)| (name.value, region))
            .collect(),
        sizes: sizes
            .into_iter()
            .map(|(name, size)| (name.value, size.value))
            .collect(),
    })
}

fn region(ctx: &mut Ctx, node: &Node<'_>) -> Option<Region> {
    let mut fields = ctx.table(node, "a region")?;
    let country = ctx.required(&mut fields, "country").and_then(|node| {
        let country = ctx.string(node)?;
        let valid =
            country.value.len() == 2 && country.value.bytes().all(|b| b.is_ascii_uppercase());
        if !valid {
            ctx.invalid(
                Code::InvalidValue,
                node.span,
                format!(
                    "`{}` is not an ISO 3166-1 alpha-2 country code such as \"NG\"",
                    country.value
                ),
            );
            return None;
        }
        Some(country)
    });
    let docker = ctx
        .required(&mut fields, "docker")
        .and_then(|node| endpoint(ctx, node, &["unix", "tcp", "npipe", "ssh", "http", "https"]));
    let database = ctx
        .required(&mut fields, "database")
        .and_then(|node| endpoint(ctx, node, &["postgres", "postgresql"]));
    let backups = ctx
        .required(&mut fields, "backups")
        .and_then(|node| ctx.nonempty(node));
    let capacity = ctx
        .required(&mut fields, "capacity")
        .and_then(|node| ctx.resources(node));
    ctx.finish(fields);
    Some(Region {
        country: country?,
        docker: docker?,
        database: database?,
        backups: backups?.value,
        capacity: capacity?,
    })
}

/// A URL with one of `schemes`, or an `env:NAME` reference to one.
/// Literal passwords are reported by the secret scan, not here.
fn endpoint(ctx: &mut Ctx, node: &Node<'_>, schemes: &[&str]) -> Option<Spanned<String>> {
    let value = ctx.string(node)?;
    if let Some(name) = value.value.strip_prefix("env:") {
        return env_name(ctx, node, name).then_some(value);
    }
    let scheme = value.value.split_once("://").map(|(scheme, _)| scheme);
    if !scheme.is_some_and(|scheme| schemes.contains(&scheme)) {
        let schemes: Vec<String> = schemes
            .iter()
            .map(|scheme| format!("{scheme}://"))
            .collect();
        ctx.push(
            Diagnostic::error(
                Code::InvalidValue,
                node.span,
                format!("`{}` is not a URL or an `env:NAME` reference", value.value),
            )
            .with_help(format!(
                "expected one of {} or env:NAME",
                schemes.join(", ")
            )),
        );
        return None;
    }
    Some(value)
}

/// Whether `name` is a valid environment variable name; reports it otherwise.
fn env_name(ctx: &mut Ctx, node: &Node<'_>, name: &str) -> bool {
    let valid = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        ctx.invalid(
            Code::InvalidValue,
            node.span,
            format!("`env:{name}` does not name an environment variable (A-Z, 0-9 and _)"),
        );
    }
    valid
}

pub fn partner(ctx: &mut Ctx, root: &Node<'_>) -> Option<Partner> {
    let mut fields = ctx.table(root, "a partner")?;
    let id = ctx
        .required(&mut fields, "id")
        .and_then(|node| ctx.nonempty(node));
    let name = ctx
        .required(&mut fields, "name")
        .and_then(|node| ctx.nonempty(node));
    let email = ctx
        .required(&mut fields, "email")
        .and_then(|node| email(ctx, node));
    let state = optional(ctx, &mut fields, "state", Ctx::keyword::<Standing>);
    ctx.finish(fields);
    Some(Partner {
        id: id?,
        name: name?.value,
        email: email?,
        state: state?.unwrap_or_default(),
    })
}

fn email(ctx: &mut Ctx, node: &Node<'_>) -> Option<String> {
    let text = ctx.string(node)?.value;
    let valid = text.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
    }) && !text.contains(char::is_whitespace);
    if !valid {
        ctx.invalid(
            Code::InvalidValue,
            node.span,
            format!("`{text}` is not an email address"),
        );
        return None;
    }
    Some(text)
}

pub fn tenant(ctx: &mut Ctx, root: &Node<'_>) -> Option<Tenant> {
    let mut fields = ctx.table(root, "a tenant")?;
    let id = ctx
        .required(&mut fields, "id")
        .and_then(|node| ctx.nonempty(node));
    let partner = ctx
        .required(&mut fields, "partner")
        .and_then(|node| ctx.nonempty(node));
    let name = ctx
        .required(&mut fields, "name")
        .and_then(|node| ctx.nonempty(node));
    let state = optional(ctx, &mut fields, "state", Ctx::keyword::<Standing>);
    ctx.finish(fields);
    Some(Tenant {
        id: id?,
        partner: partner?,
        name: name?.value,
        state: state?.unwrap_or_default(),
    })
}

pub fn channel(ctx: &mut Ctx, root: &Node<'_>) -> Option<Channel> {
    let mut fields = ctx.table(root, "a channel")?;
    let name = ctx
        .required(&mut fields, "name")
        .and_then(|node| ctx.nonempty(node));
    let mode = ctx
        .required(&mut fields, "mode")
        .and_then(|node| ctx.keyword::<ChannelMode>(node));
    let track = optional(ctx, &mut fields, "track", Ctx::keyword::<Track>);
    let window = optional(ctx, &mut fields, "maintenance_window", window);
    let auto_approve = optional(ctx, &mut fields, "auto_approve", auto_approve);
    let security = optional(ctx, &mut fields, "security", security);
    let notify = optional(ctx, &mut fields, "notify", |ctx, node| {
        ctx.list(node, email)
    });
    // Settings that only one mode reads are harmless elsewhere, but likely a mistake.
    if let Some(mode) = mode {
        let only = |key: &str, modes: &[ChannelMode]| {
            (!modes.contains(&mode))
                .then(|| fields.key_span(key))
                .flatten()
        };
        for (key, modes) in [
            ("track", &[ChannelMode::AutoUpdate][..]),
            ("auto_approve", &[ChannelMode::AutoUpdate][..]),
            ("security", &[ChannelMode::Frozen][..]),
        ] {
            if let Some(span) = only(key, modes) {
                ctx.push(
                    Diagnostic::warning(
                        Code::InvalidValue,
                        span,
                        format!("`{key}` has no effect on a {mode} channel"),
                    )
                    .with_label("ignored"),
                );
            }
        }
    }
    ctx.finish(fields);
    Some(Channel {
        name: name?,
        mode: mode?,
        track: track?.unwrap_or_default(),
        maintenance_window: window?,
        auto_approve: auto_approve?.unwrap_or_default(),
        security: security?.unwrap_or_default(),
        notify: notify?.unwrap_or_default(),
    })
}

fn window(ctx: &mut Ctx, node: &Node<'_>) -> Option<Window> {
    let mut fields = ctx.table(node, "a maintenance window")?;
    let days = optional(ctx, &mut fields, "days", |ctx, node| {
        ctx.list(node, |ctx, node| {
            ctx.keyword_with::<Day>(node, Code::InvalidWindow)
        })
    });
    let start = ctx
        .required(&mut fields, "start")
        .and_then(|node| ctx.parsed(node, Code::InvalidWindow, ClockTime::parse));
    let duration = ctx
        .required(&mut fields, "duration")
        .and_then(|node| ctx.parsed(node, Code::InvalidWindow, Minutes::parse));
    let timezone = ctx
        .required(&mut fields, "timezone")
        .and_then(|node| ctx.parsed(node, Code::InvalidWindow, TimeZone::parse));
    if let Some(Some(days)) = &days
        && days.is_empty()
        && let Some(span) = fields.key_span("days")
    {
        ctx.invalid(
            Code::InvalidWindow,
            span,
            "a window needs at least one day; leave `days` out for every day".into(),
        );
    }
    ctx.finish(fields);
    let mut days = days?.unwrap_or_else(|| Day::ALL.to_vec());
    days.sort();
    days.dedup();
    if days.is_empty() {
        return None;
    }
    Some(Window {
        days,
        start: start?,
        duration: duration?,
        timezone: timezone?,
    })
}

fn auto_approve(ctx: &mut Ctx, node: &Node<'_>) -> Option<AutoApprove> {
    let mut fields = ctx.table(node, "auto_approve")?;
    let defaults = AutoApprove::default();
    let security_patches = optional(ctx, &mut fields, "security_patches", Ctx::boolean);
    let minor = optional(ctx, &mut fields, "minor", Ctx::boolean);
    let patch = optional(ctx, &mut fields, "patch", Ctx::boolean);
    ctx.finish(fields);
    Some(AutoApprove {
        security_patches: security_patches?.unwrap_or(defaults.security_patches),
        minor: minor?.unwrap_or(defaults.minor),
        patch: patch?.unwrap_or(defaults.patch),
    })
}

fn security(ctx: &mut Ctx, node: &Node<'_>) -> Option<Security> {
    let mut fields = ctx.table(node, "security")?;
    let override_frozen = optional(ctx, &mut fields, "override_frozen", Ctx::boolean);
    ctx.finish(fields);
    Some(Security {
        override_frozen: override_frozen?.unwrap_or(false),
    })
}

pub fn release(ctx: &mut Ctx, root: &Node<'_>) -> Option<Release> {
    let mut fields = ctx.table(root, "a release")?;
    let version = ctx
        .required(&mut fields, "version")
        .and_then(|node| ctx.version(node));
    let status = ctx
        .required(&mut fields, "status")
        .and_then(|node| ctx.keyword::<ReleaseStatus>(node));
    let released = ctx
        .required(&mut fields, "released")
        .and_then(|node| ctx.date(node));
    let breaking = optional(ctx, &mut fields, "breaking", Ctx::boolean);
    let security_patch = optional(ctx, &mut fields, "security_patch", Ctx::boolean);
    let severity = optional(ctx, &mut fields, "severity", Ctx::keyword::<Severity>);
    let image = ctx
        .required(&mut fields, "image")
        .and_then(|node| ctx.nonempty(node));
    let upgrade_from = optional(ctx, &mut fields, "upgrade_from", Ctx::version_req);
    let migrations = optional(ctx, &mut fields, "migrations", Ctx::strings);
    let changelog = optional(ctx, &mut fields, "changelog", |ctx, node| {
        ctx.string(node).map(|text| text.value)
    });
    if let (Some(Some(false)), Some(Some(severity))) = (security_patch, severity)
        && severity != Severity::None
        && let Some(span) = fields.key_span("severity")
    {
        ctx.push(
            Diagnostic::warning(
                Code::InvalidValue,
                span,
                format!("severity `{severity}` on a release that is not a security patch"),
            )
            .with_help("set `security_patch = true`, or leave `severity` out"),
        );
    }
    ctx.finish(fields);
    Some(Release {
        version: version?,
        status: status?,
        released: released?,
        breaking: breaking?.unwrap_or(false),
        security_patch: security_patch?.unwrap_or(false),
        severity: severity?.unwrap_or_default(),
        image: image?.value,
        upgrade_from: upgrade_from?,
        migrations: migrations?.unwrap_or_default(),
        changelog: changelog?.unwrap_or_default(),
    })
}

pub fn instance(ctx: &mut Ctx, root: &Node<'_>) -> Option<Instance> {
    let mut fields = ctx.table(root, "an instance")?;
    let name = ctx
        .required(&mut fields, "name")
        .and_then(|node| ctx.nonempty(node));
    let kind = ctx
        .required(&mut fields, "type")
        .and_then(|node| ctx.keyword::<InstanceType>(node));
    let partner = ctx
        .required(&mut fields, "partner")
        .and_then(|node| ctx.nonempty(node));
    let tenant = optional(ctx, &mut fields, "tenant", Ctx::nonempty);
    let region = ctx
        .required(&mut fields, "region")
        .and_then(|node| ctx.nonempty(node));
    let data_residency = ctx
        .required(&mut fields, "data_residency")
        .and_then(|node| {
            let countries = ctx.strings(node)?;
            if countries.is_empty() {
                ctx.invalid(
                    Code::InvalidValue,
                    node.span,
                    "`data_residency` lists no country; name where the data may live".into(),
                );
                return None;
            }
            Some(Spanned::new(countries, node.span))
        });
    let suites = optional(ctx, &mut fields, "suites", Ctx::strings);
    let capabilities = optional(ctx, &mut fields, "capabilities", Ctx::strings);
    let custom_domain = optional(ctx, &mut fields, "custom_domain", domain);
    let ssl = optional(ctx, &mut fields, "ssl", Ctx::boolean);
    let size = optional(ctx, &mut fields, "size", Ctx::nonempty);
    let resources = optional(ctx, &mut fields, "resources", Ctx::resources);
    let channel = ctx
        .required(&mut fields, "channel")
        .and_then(|node| ctx.nonempty(node));
    let version = optional(ctx, &mut fields, "version", Ctx::version);
    let approved_version = optional(ctx, &mut fields, "approved_version", Ctx::version);
    let allow_downgrade = optional(ctx, &mut fields, "allow_downgrade", Ctx::boolean);
    let state = optional(ctx, &mut fields, "state", Ctx::keyword::<InstanceState>);
    let backup = optional(ctx, &mut fields, "backup", backup);

    if let Some(kind) = kind
        && kind != InstanceType::SharedSaas
        && matches!(tenant, Some(None))
    {
        // A key given as YAML's null counts as missing, and is reported where it is.
        let span = fields
            .key_span("tenant")
            .unwrap_or(fields.span().with_end_at_start());
        ctx.push(
            Diagnostic::error(Code::MissingField, span, "missing field `tenant`")
                .with_label(format!("a {kind} instance belongs to a tenant")),
        );
    }
    // Present means given and not null; a value that failed to decode is present.
    let given = |name: &str, decoded: bool| fields.key_span(name).filter(|_| decoded);
    let size_span = given("size", !matches!(size, Some(None)));
    let resources_span = given("resources", !matches!(resources, Some(None)));
    match (size_span, resources_span) {
        (Some(_), Some(resources)) => ctx.push(
            Diagnostic::error(
                Code::SizeAndResources,
                resources,
                "an instance has a `size` or `resources`, not both",
            )
            .with_label("remove this table or the `size`"),
        ),
        (None, None) => ctx.push(
            Diagnostic::error(
                Code::SizeAndResources,
                fields.span().with_end_at_start(),
                "an instance needs a `size` or a `[resources]` table",
            )
            .with_help("e.g. size = \"medium\""),
        ),
        _ => {}
    }
    ctx.finish(fields);
    Some(Instance {
        name: name?,
        kind: kind?,
        partner: partner?,
        tenant: tenant?,
        region: region?,
        data_residency: data_residency?,
        suites: suites?.unwrap_or_default(),
        capabilities: capabilities?.unwrap_or_default(),
        custom_domain: custom_domain?,
        ssl: ssl?.unwrap_or(true),
        size: size?,
        resources: resources?,
        channel: channel?,
        version: version?,
        approved_version: approved_version?,
        allow_downgrade: allow_downgrade?.unwrap_or(false),
        state: state?.unwrap_or_default(),
        backup: backup?,
    })
}

/// A host name: dot-separated DNS labels, at most 253 characters.
fn domain(ctx: &mut Ctx, node: &Node<'_>) -> Option<Spanned<String>> {
    let text = ctx.string(node)?;
    let valid = text.value.len() <= 253
        && text.value.contains('.')
        && text
            .value
            .split('.')
            .all(|label| is_dns_label(&label.to_ascii_lowercase()));
    if !valid {
        ctx.invalid(
            Code::InvalidValue,
            node.span,
            format!(
                "`{}` is not a host name such as \"shop.example.com\"",
                text.value
            ),
        );
        return None;
    }
    Some(text)
}

/// Whether `text` is a DNS label: `[a-z0-9-]`, 1 to 63 characters, no leading or trailing `-`.
pub fn is_dns_label(text: &str) -> bool {
    (1..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn backup(ctx: &mut Ctx, node: &Node<'_>) -> Option<Backup> {
    let mut fields = ctx.table(node, "a backup policy")?;
    let schedule = ctx
        .required(&mut fields, "schedule")
        .and_then(|node| ctx.schedule(node));
    let retain = optional(ctx, &mut fields, "retain", |ctx, node| {
        let retain = ctx.count(node)?;
        if retain == 0 {
            ctx.invalid(
                Code::InvalidValue,
                node.span,
                "`retain` must keep at least one backup".into(),
            );
            return None;
        }
        Some(retain)
    });
    ctx.finish(fields);
    Some(Backup {
        schedule: schedule?,
        retain: retain?.unwrap_or(DEFAULT_RETAIN),
    })
}

/// An optional field: `Some(None)` when absent, `Some(Some(value))` when valid, and `None`
/// when present but invalid (already reported).
fn optional<'n, 'a, T>(
    ctx: &mut Ctx,
    fields: &mut Fields<'n, 'a>,
    name: &'static str,
    decode: impl FnOnce(&mut Ctx, &'n Node<'a>) -> Option<T>,
) -> Option<Option<T>> {
    match fields.get(name) {
        None => Some(None),
        Some(node) => decode(ctx, node).map(Some),
    }
}
