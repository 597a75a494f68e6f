//! From fleet files to a [`Fleet`] and every problem in it.
//!
//! `check` parses each file (through `load`), decodes each document into the model
//! (`entities`, on the field decoders of `decode`), then applies the rules that need more
//! than one file: file names, duplicates, references, tenancy, residency, versions, sizes and
//! capacity, and the scan for secrets written into the repository. It never stops at the
//! first problem and never fails: it returns what it could build and all it found.

mod cache;
mod decode;
mod entities;
mod revise;
mod secrets;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use crate::{
    diag::{self, Code, Diagnostic, FileId, SourceMap, Span, Spanned, did_you_mean},
    load::{self, Format, Input, Kind, Limits, Loaded},
    model::{
        Channel, ChannelMode, Fleet, Instance, InstanceState, Partner, Release, Resources,
        Settings, Tenant,
    },
    parallel,
};

use cache::{Decoding, Key};
use decode::Ctx;

pub use cache::{Cache, CachedContent, CachedInput, ContentId, Known, Stats};
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
///
/// Files are parsed and decoded on several threads when there are many; the result does
/// not depend on how many.
pub fn check(inputs: Vec<Input>, limits: &Limits) -> Validation {
    let inputs = inputs.into_iter().map(CachedInput::uncached).collect();
    from_scratch(inputs, limits, &mut Cache::default()).0
}

/// Validates the files of one fleet as [`check`] does, reusing what `cache` remembers of
/// files decoded before and remembering what it decodes now.
///
/// The result equals what [`check`] returns for the same files, spans included: only the
/// parsing and decoding of files whose content, kind and syntax the cache knows is skipped;
/// the rules across files run as always, unless only instance files changed since the last
/// validation through the cache, which is then revised (see `revise`). Afterwards the cache
/// holds what this validation and the one before it used, and nothing else (see [`Cache`]).
pub fn check_cached(inputs: Vec<CachedInput>, limits: &Limits, cache: &mut Cache) -> Validation {
    if let Some(validation) = revise::revise(&inputs, limits, cache) {
        return validation;
    }
    let given: Vec<(String, Option<ContentId>)> = inputs
        .iter()
        .map(|input| (input.path.clone(), input.id()))
        .collect();
    let (validation, files) = from_scratch(inputs, limits, cache);
    cache.last = revise::Last::of(given, &files, &validation);
    validation
}

/// Validates every file, decoding those the cache does not know; also returns the fleet
/// files with their kind and syntax.
fn from_scratch(
    inputs: Vec<CachedInput>,
    limits: &Limits,
    cache: &mut Cache,
) -> (Validation, Vec<(FileId, Kind, Format)>) {
    let (inputs, ids) = cache.begin(inputs, limits);
    let mut loaded = load::read(inputs, limits);
    let mut ctx = Ctx::new(std::mem::take(&mut loaded.diagnostics));
    let decoded = decode_all(&loaded, &ids, limits, cache, &mut ctx);
    cache.finish();
    let fleet = file_entities(decoded, &loaded.sources, &mut ctx);
    cross_check(&fleet, &mut ctx);
    let mut diagnostics = ctx.diagnostics;
    diag::sort(&mut diagnostics, &loaded.sources);
    let validation = Validation {
        sources: loaded.sources,
        fleet,
        diagnostics,
    };
    (validation, loaded.files)
}

/// Validates files given as `(path, text)`: the short way in for unit tests.
#[cfg(test)]
pub(crate) fn check_texts(files: Vec<(String, String)>) -> Validation {
    let inputs = files
        .into_iter()
        .map(|(path, text)| Input {
            path,
            content: load::Content::Bytes(text.into_bytes()),
        })
        .collect();
    check(inputs, &Limits::default())
}

/// What one file holds, once decoded.
#[derive(Clone, Debug)]
enum Entity {
    Settings(Settings),
    Partner(Partner),
    Tenant(Tenant),
    Channel(Channel),
    Release(Release),
    /// Shared: an instance is several times larger than the other entities, and the fleet
    /// holds the very value the cache keeps.
    Instance(Arc<Instance>),
}

/// Files per thread below which a second thread costs more than it saves.
const FILES_PER_THREAD: usize = 512;

/// Decodings per thread below which a second thread copying them out of the cache costs
/// more than it saves.
const REUSES_PER_THREAD: usize = 2048;

/// Parses, scans and decodes every file the cache does not know, on several threads for
/// large fleets, and takes the others' decodings from the cache; the entities and the
/// files' diagnostics come in file order, whichever way each was obtained.
fn decode_all(
    loaded: &Loaded,
    ids: &HashMap<String, ContentId>,
    limits: &Limits,
    cache: &mut Cache,
    ctx: &mut Ctx,
) -> Vec<(FileId, Entity)> {
    let keys: Vec<Option<Key>> = loaded
        .files
        .iter()
        .map(|&(file, kind, format)| {
            let id = ids.get(loaded.sources.path(file))?;
            Some(Key::new(*id, kind, format))
        })
        .collect();
    let wanted: Vec<((FileId, Kind, Format), Option<Key>)> =
        loaded.files.iter().copied().zip(keys).collect();

    // Decodings the cache has, moved to the files' ids in this validation.
    let cached: &Cache = cache;
    let reused: Vec<Option<Decoding>> = parallel::map_chunks(&wanted, REUSES_PER_THREAD, |files| {
        files
            .iter()
            .map(|&((file, _, _), key)| cached.get(&key?, file))
            .collect::<Vec<_>>()
    })
    .concat();

    // The other files, decoded now.
    let missing: Vec<(FileId, Kind, Format)> = wanted
        .iter()
        .zip(&reused)
        .filter(|(_, reused)| reused.is_none())
        .map(|((file, _), _)| *file)
        .collect();
    let made: Vec<Decoding> = parallel::map_chunks(&missing, FILES_PER_THREAD, |files| {
        decode_files(&loaded.sources, files, limits)
    })
    .concat();

    // Both, in file order.
    let decoded = made.len();
    let mut made = made.into_iter();
    let mut reused_keys = Vec::new();
    let mut new_decodings = Vec::new();
    let mut entities = Vec::with_capacity(wanted.len());
    for ((_, key), reused) in wanted.into_iter().zip(reused) {
        let decoding = match reused {
            Some(decoding) => {
                reused_keys.extend(key);
                decoding
            }
            None => {
                let decoding = made
                    .next()
                    .expect("one decoding was made for each file the cache did not have");
                if let Some(key) = key {
                    new_decodings.push((key, decoding.clone()));
                }
                decoding
            }
        };
        ctx.diagnostics.extend(decoding.diagnostics);
        entities.extend(decoding.entity.map(|entity| (decoding.file, entity)));
    }
    cache.record(&reused_keys, decoded, new_decodings);
    entities
}

/// Parses, scans and decodes files one after the other.
fn decode_files(
    sources: &SourceMap,
    files: &[(FileId, Kind, Format)],
    limits: &Limits,
) -> Vec<Decoding> {
    // One context for all, so the cron schedules parsed are shared.
    let mut ctx = Ctx::new(Vec::new());
    files
        .iter()
        .map(|&(file, kind, format)| {
            let entity = decode_file(sources, file, kind, format, limits, &mut ctx);
            Decoding {
                file,
                entity,
                diagnostics: std::mem::take(&mut ctx.diagnostics),
            }
        })
        .collect()
}

/// Parses, scans and decodes one file; its problems go to `ctx`.
fn decode_file(
    sources: &SourceMap,
    file: FileId,
    kind: Kind,
    format: Format,
    limits: &Limits,
    ctx: &mut Ctx,
) -> Option<Entity> {
    let root = match load::parse_file(sources, file, format, limits) {
        Ok(root) => root,
        Err(diagnostic) => {
            ctx.push(diagnostic);
            return None;
        }
    };
    secrets::scan(&root, ctx);
    match kind {
        Kind::Fleet => entities::settings(ctx, &root).map(Entity::Settings),
        Kind::Partner => entities::partner(ctx, &root).map(Entity::Partner),
        Kind::Tenant => entities::tenant(ctx, &root).map(Entity::Tenant),
        Kind::Channel => entities::channel(ctx, &root).map(Entity::Channel),
        Kind::Release => entities::release(ctx, &root).map(Entity::Release),
        Kind::Instance => entities::instance(ctx, &root).map(|i| Entity::Instance(Arc::new(i))),
    }
}

/// Files each entity under its id, reporting names that differ from their file and ids
/// used twice.
fn file_entities(decoded: Vec<(FileId, Entity)>, sources: &SourceMap, ctx: &mut Ctx) -> Fleet {
    let mut fleet = Fleet::default();
    let mut settings_span: Option<Span> = None;
    let mut seen: HashMap<(Kind, String), Span> = HashMap::with_capacity(decoded.len());
    for (file, entity) in decoded {
        let name = file_name(sources.path(file));
        match entity {
            Entity::Settings(settings) => {
                let span = Span::file_start(file);
                if let Some(first) = settings_span {
                    ctx.push(
                        Diagnostic::error(
                            Code::DuplicateId,
                            span,
                            "a fleet has exactly one fleet settings file",
                        )
                        .with_secondary(first, "the first is here"),
                    );
                } else {
                    settings_span = Some(span);
                    fleet.settings = settings;
                }
            }
            Entity::Partner(partner) => {
                if register(ctx, &mut seen, Kind::Partner, name, &partner.id) {
                    fleet.partners.insert(partner.id.value.clone(), partner);
                }
            }
            Entity::Tenant(tenant) => {
                if register(ctx, &mut seen, Kind::Tenant, name, &tenant.id) {
                    fleet.tenants.insert(tenant.id.value.clone(), tenant);
                }
            }
            Entity::Channel(channel) => {
                if register(ctx, &mut seen, Kind::Channel, name, &channel.name) {
                    fleet.channels.insert(channel.name.value.clone(), channel);
                }
            }
            Entity::Release(release) => {
                let version = release.version.clone().map(|version| version.to_string());
                if register(ctx, &mut seen, Kind::Release, name, &version) {
                    fleet
                        .releases
                        .insert(release.version.value.clone(), release);
                }
            }
            Entity::Instance(instance) => {
                if register(ctx, &mut seen, Kind::Instance, name, &instance.name) {
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
fn register(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Content;

    /// A fleet of `count` partners, every seventh one with a problem.
    fn partners(count: usize) -> Vec<Input> {
        let mut inputs = vec![Input {
            path: "fleet.toml".to_string(),
            content: Content::Bytes(b"name = \"f\"\n".to_vec()),
        }];
        for index in 0..count {
            let email = if index % 7 == 0 {
                "nobody"
            } else {
                "ops@p.example"
            };
            let text = format!("id = \"p{index}\"\nname = \"P\"\nemail = \"{email}\"\n");
            inputs.push(Input {
                path: format!("partners/p{index}.toml"),
                content: Content::Bytes(text.into_bytes()),
            });
        }
        inputs
    }

    fn decode_with(threads: usize) -> (Vec<String>, Vec<Diagnostic>) {
        let limits = Limits::default();
        let loaded = load::read(partners(1_000), &limits);
        let results = parallel::map_chunks_on(threads, &loaded.files, |files| {
            let decodings = decode_files(&loaded.sources, files, &limits);
            let paths: Vec<String> = decodings
                .iter()
                .filter(|decoding| decoding.entity.is_some())
                .map(|decoding| loaded.sources.path(decoding.file).to_string())
                .collect();
            let diagnostics: Vec<Diagnostic> = decodings
                .into_iter()
                .flat_map(|decoding| decoding.diagnostics)
                .collect();
            (paths, diagnostics)
        });
        let (paths, diagnostics): (Vec<_>, Vec<_>) = results.into_iter().unzip();
        (paths.concat(), diagnostics.concat())
    }

    #[test]
    fn decoding_on_several_threads_gives_what_one_thread_gives() {
        let (one_ids, one_diagnostics) = decode_with(1);
        assert_eq!(one_diagnostics.len(), 1_000usize.div_ceil(7));
        assert_eq!(one_ids.len(), 1_001 - one_diagnostics.len());
        for workers in [2, 3, 8] {
            assert_eq!(
                decode_with(workers),
                (one_ids.clone(), one_diagnostics.clone())
            );
        }
    }

    #[test]
    fn only_a_fleet_without_errors_is_valid() {
        let limits = Limits::default();
        let mut invalid = check(partners(7), &limits);
        assert!(invalid.has_errors());
        assert!(invalid.take_valid().is_none());
        assert_eq!(
            invalid.fleet.partners.len(),
            6,
            "what could be built is kept"
        );

        let mut inputs = partners(7);
        inputs.remove(1); // p0, the partner without a valid email
        let mut valid = check(inputs, &limits);
        let fleet = valid.take_valid().expect("no errors");
        assert_eq!(fleet.fleet().partners.len(), 6);
    }
}
