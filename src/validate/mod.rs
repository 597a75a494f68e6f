//! From fleet files to a [`Fleet`] and every problem in it.
//!
//! `check` parses each file (through `load`), decodes each document into the model
//! (`entities`, on the field decoders of `decode`), then applies the rules that need more
//! than one file: file names, duplicates, references, tenancy, residency, versions, sizes and
//! capacity, and the scan for secrets written into the repository. It never stops at the
//! first problem and never fails: it returns what it could build and all it found.

mod decode;
mod entities;
mod secrets;

use std::collections::{BTreeMap, HashMap};

use crate::{
    diag::{self, Code, Diagnostic, SourceMap, Span, Spanned, did_you_mean},
    load::{self, Document, Input, Kind, Limits},
    model::{ChannelMode, Fleet, Instance, InstanceState, Resources},
};

use decode::Ctx;

pub use entities::is_dns_label;

/// The outcome of validating a fleet: the files, what could be built, and every problem.
#[derive(Debug)]
pub struct Validation {
    pub sources: SourceMap,
    pub fleet: Fleet,
    /// Sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
}

/// A fleet with no errors: the only kind `policy` and `plan` accept.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidFleet(Fleet);

impl ValidFleet {
    pub fn fleet(&self) -> &Fleet {
        &self.0
    }

    pub fn into_inner(self) -> Fleet {
        self.0
    }
}

impl Validation {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Takes the fleet out as a [`ValidFleet`] if no diagnostic is an error.
    pub fn take_valid(&mut self) -> Option<ValidFleet> {
        if self.has_errors() {
            return None;
        }
        Some(ValidFleet(std::mem::take(&mut self.fleet)))
    }
}

/// Validates the files of one fleet.
pub fn check(inputs: Vec<Input>, limits: &Limits) -> Validation {
    let mut loaded = load::read(inputs, limits);
    let mut ctx = Ctx {
        diagnostics: std::mem::take(&mut loaded.diagnostics),
    };
    let fleet = {
        let (documents, parse_errors) = load::parse(&loaded, limits);
        ctx.diagnostics.extend(parse_errors);
        let fleet = build(&documents, &loaded.sources, &mut ctx);
        cross_check(&fleet, &mut ctx);
        fleet
    };
    let mut diagnostics = ctx.diagnostics;
    diag::sort(&mut diagnostics, &loaded.sources);
    Validation {
        sources: loaded.sources,
        fleet,
        diagnostics,
    }
}

/// Decodes every document and files each entity under its id, reporting names that differ
/// from their file and ids used twice.
fn build(documents: &[Document<'_>], sources: &SourceMap, ctx: &mut Ctx) -> Fleet {
    let mut fleet = Fleet::default();
    let mut settings_span: Option<Span> = None;
    let mut seen: HashMap<(Kind, String), Span> = HashMap::with_capacity(documents.len());
    for document in documents {
        secrets::scan(&document.root, ctx);
        let path = sources.path(document.file);
        let (stem, extension) = file_name(path);
        let root = &document.root;
        match document.kind {
            Kind::Fleet => {
                if let Some(first) = settings_span {
                    ctx.push(
                        Diagnostic::error(
                            Code::DuplicateId,
                            Span::file_start(document.file),
                            "a fleet has exactly one fleet settings file",
                        )
                        .with_secondary(first, "the first is here"),
                    );
                } else if let Some(settings) = entities::settings(ctx, root) {
                    settings_span = Some(Span::file_start(document.file));
                    fleet.settings = settings;
                }
            }
            Kind::Partner => {
                if let Some(partner) = entities::partner(ctx, root)
                    && file(
                        ctx,
                        &mut seen,
                        Kind::Partner,
                        (stem, extension),
                        &partner.id,
                    )
                {
                    fleet.partners.insert(partner.id.value.clone(), partner);
                }
            }
            Kind::Tenant => {
                if let Some(tenant) = entities::tenant(ctx, root)
                    && file(ctx, &mut seen, Kind::Tenant, (stem, extension), &tenant.id)
                {
                    fleet.tenants.insert(tenant.id.value.clone(), tenant);
                }
            }
            Kind::Channel => {
                if let Some(channel) = entities::channel(ctx, root)
                    && file(
                        ctx,
                        &mut seen,
                        Kind::Channel,
                        (stem, extension),
                        &channel.name,
                    )
                {
                    fleet.channels.insert(channel.name.value.clone(), channel);
                }
            }
            Kind::Release => {
                if let Some(release) = entities::release(ctx, root) {
                    let version = release.version.clone().map(|version| version.to_string());
                    if file(ctx, &mut seen, Kind::Release, (stem, extension), &version) {
                        fleet
                            .releases
                            .insert(release.version.value.clone(), release);
                    }
                }
            }
            Kind::Instance => {
                if let Some(instance) = entities::instance(ctx, root)
                    && file(
                        ctx,
                        &mut seen,
                        Kind::Instance,
                        (stem, extension),
                        &instance.name,
                    )
                {
                    fleet
                        .instances
                        .insert(instance.name.value.clone(), instance);
                }
            }
        }
    }
    fleet
}

/// Checks an entity's id against its file name and the ids seen so far; true when it may be
/// added to the fleet.
fn file(
    ctx: &mut Ctx,
    seen: &mut HashMap<(Kind, String), Span>,
    kind: Kind,
    (stem, extension): (&str, &str),
    id: &Spanned<String>,
) -> bool {
    if id.value != stem {
        ctx.push(
            Diagnostic::error(
                Code::FileNameMismatch,
                id.span,
                format!(
                    "the {} is `{}` but its file is named `{stem}`",
                    id_word(kind),
                    id.value
                ),
            )
            .with_label("does not match the file name")
            .with_help(format!(
                "rename the file to `{}.{extension}` or change this value",
                id.value
            )),
        );
    }
    match seen.entry((kind, id.value.to_lowercase())) {
        std::collections::hash_map::Entry::Occupied(first) => {
            ctx.push(
                Diagnostic::error(
                    Code::DuplicateId,
                    id.span,
                    format!(
                        "two {}s have the {} `{}`",
                        kind.as_str(),
                        id_word(kind),
                        id.value
                    ),
                )
                .with_label("second use")
                .with_secondary(*first.get(), "first used here")
                .with_help(format!(
                    "{}s are compared without regard to case",
                    id_word(kind)
                )),
            );
            false
        }
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(id.span);
            true
        }
    }
}

fn id_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Channel | Kind::Instance => "name",
        Kind::Release => "version",
        _ => "id",
    }
}

/// The file name without folders, split into stem and extension.
fn file_name(path: &str) -> (&str, &str) {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.rsplit_once('.').unwrap_or((name, ""))
}

/// The rules that need more than one file.
fn cross_check(fleet: &Fleet, ctx: &mut Ctx) {
    for tenant in fleet.tenants.values() {
        reference(ctx, "partner", &tenant.partner, &fleet.partners);
    }
    let mut domains: HashMap<String, Span> = HashMap::new();
    for instance in fleet.instances.values() {
        check_instance(fleet, instance, ctx);
        if let Some(domain) = &instance.custom_domain {
            let key = domain.value.to_ascii_lowercase();
            if let Some(first) = domains.get(&key) {
                ctx.push(
                    Diagnostic::error(
                        Code::DuplicateDomain,
                        domain.span,
                        format!("the custom domain `{}` is used twice", domain.value),
                    )
                    .with_label("second use")
                    .with_secondary(*first, "first used here"),
                );
            } else {
                domains.insert(key, domain.span);
            }
        }
    }
    check_capacity(fleet, ctx);
}

/// Reports each region whose active and suspended instances need more than its capacity.
fn check_capacity(fleet: &Fleet, ctx: &mut Ctx) {
    let mut usage: BTreeMap<&str, (Resources, usize)> = BTreeMap::new();
    for instance in fleet.instances.values() {
        if instance.state != InstanceState::Terminated
            && let Some(resources) = resources_of(fleet, instance)
        {
            let entry = usage.entry(&instance.region.value).or_default();
            entry.0 = entry.0.saturating_add(resources);
            entry.1 += 1;
        }
    }
    for (region_name, (used, count)) in usage {
        let Some(region) = fleet.settings.regions.get(region_name) else {
            continue;
        };
        let capacity = region.capacity.value;
        let exceeded = [
            (
                "CPU",
                used.cpu > capacity.cpu,
                used.cpu.to_string(),
                capacity.cpu.to_string(),
            ),
            (
                "memory",
                used.memory > capacity.memory,
                used.memory.to_string(),
                capacity.memory.to_string(),
            ),
            (
                "storage",
                used.storage > capacity.storage,
                used.storage.to_string(),
                capacity.storage.to_string(),
            ),
        ];
        for (what, _, need, have) in exceeded.into_iter().filter(|(_, over, _, _)| *over) {
            ctx.push(
                Diagnostic::error(
                    Code::CapacityExceeded,
                    region.capacity.span,
                    format!(
                        "the {count} active and suspended instances of region `{region_name}` need {need} {what}, more than its capacity of {have}"
                    ),
                )
                .with_label(format!("{what} capacity {have}"))
                .with_help("raise the capacity, move instances to another region, or make them smaller"),
            );
        }
    }
}

/// What an instance needs, if its size or resources are known.
pub fn resources_of(fleet: &Fleet, instance: &Instance) -> Option<Resources> {
    match (&instance.size, &instance.resources) {
        (_, Some(resources)) => Some(resources.value),
        (Some(size), None) => fleet.settings.sizes.get(&size.value).copied(),
        (None, None) => None,
    }
}

fn check_instance(fleet: &Fleet, instance: &Instance, ctx: &mut Ctx) {
    if !is_dns_label(&instance.name.value) {
        ctx.push(
            Diagnostic::error(
                Code::InvalidName,
                instance.name.span,
                format!("`{}` is not a DNS label", instance.name.value),
            )
            .with_label("not a DNS label")
            .with_help("use lowercase letters, digits and `-`, 1 to 63 characters, not starting or ending with `-`"),
        );
    }
    let partner_known = reference(ctx, "partner", &instance.partner, &fleet.partners);
    if let Some(tenant_id) = &instance.tenant
        && reference(ctx, "tenant", tenant_id, &fleet.tenants)
        && partner_known
    {
        let tenant = &fleet.tenants[&tenant_id.value];
        if tenant.partner.value != instance.partner.value {
            ctx.push(
                Diagnostic::error(
                    Code::PartnerMismatch,
                    tenant_id.span,
                    format!(
                        "tenant `{}` belongs to partner `{}`, not `{}`",
                        tenant_id.value, tenant.partner.value, instance.partner.value
                    ),
                )
                .with_label("tenant of another partner")
                .with_secondary(instance.partner.span, "the instance's partner")
                .with_secondary(tenant.partner.span, "the tenant's partner"),
            );
        }
    }
    if reference(ctx, "region", &instance.region, &fleet.settings.regions) {
        let region = &fleet.settings.regions[&instance.region.value];
        let country = &region.country.value;
        if !instance
            .data_residency
            .value
            .iter()
            .any(|allowed| allowed == country)
        {
            ctx.push(
                Diagnostic::error(
                    Code::ResidencyViolation,
                    instance.data_residency.span,
                    format!(
                        "region `{}` is in {country}, which `data_residency` does not allow",
                        instance.region.value
                    ),
                )
                .with_label(format!("does not include {country}"))
                .with_secondary(instance.region.span, "the instance's region")
                .with_secondary(region.country.span, "the region's country"),
            );
        }
    }
    if let Some(size) = &instance.size {
        reference(ctx, "size", size, &fleet.settings.sizes);
    }
    if reference(ctx, "channel", &instance.channel, &fleet.channels) {
        let channel = &fleet.channels[&instance.channel.value];
        if channel.mode != ChannelMode::AutoUpdate && instance.version.is_none() {
            ctx.push(
                Diagnostic::error(
                    Code::FrozenWithoutVersion,
                    instance.channel.span,
                    format!(
                        "instance `{}` is on the {} channel `{}` but has no `version`",
                        instance.name.value, channel.mode, channel.name.value
                    ),
                )
                .with_label(format!("a {} channel needs a version", channel.mode))
                .with_help("add `version = \"...\"` naming the release to run"),
            );
        }
    }
    for (field, version) in [
        ("version", &instance.version),
        ("approved_version", &instance.approved_version),
    ] {
        if let Some(version) = version
            && !fleet.releases.contains_key(&version.value)
        {
            ctx.push(
                Diagnostic::error(
                    Code::UnknownVersion,
                    version.span,
                    format!(
                        "`{field}` {} is not in the release catalogue",
                        version.value
                    ),
                )
                .with_label("no such release")
                .with_help(format!(
                    "add releases/{}.toml or pick a released version",
                    version.value
                )),
            );
        }
    }
}

/// Reports `dangling-reference` unless `id` is a key of `known`; true when it is.
fn reference<T>(
    ctx: &mut Ctx,
    what: &str,
    id: &Spanned<String>,
    known: &BTreeMap<String, T>,
) -> bool {
    if known.contains_key(&id.value) {
        return true;
    }
    let names: Vec<&str> = known.keys().map(String::as_str).collect();
    let mut diagnostic = Diagnostic::error(
        Code::DanglingReference,
        id.span,
        format!("no {what} named `{}`", id.value),
    )
    .with_label(format!("unknown {what}"));
    if let Some(close) = did_you_mean(&id.value, &names) {
        diagnostic = diagnostic.with_help(format!("did you mean `{close}`?"));
    }
    ctx.push(diagnostic);
    false
}
