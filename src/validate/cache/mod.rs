//! What decoding each file produced, kept between validations so an unchanged file is
//! parsed and decoded once.
//!
//! A [`Cache`] is plain data the caller owns (the daemon keeps one for its fleet, `plan
//! --base` one for base and head); it does no I/O. It is keyed by [`ContentId`], the git blob
//! id of a file's bytes, which a source knows for a file of a commit without reading it, so
//! a source can leave the bytes of known files unread ([`CachedContent::Known`]).
//!
//! Spans name the file they are in by its [`FileId`] in one validation's `SourceMap`, and a
//! file's id changes when files before it (in path order) come or go. A validation through
//! the cache builds its `SourceMap` exactly as [`super::check`] does and moves the spans of a
//! reused decoding to the file's id in it, so a cached validation is equal to a plain one,
//! spans included. Only per-file work is kept: parsing, the secret scan, decoding and their
//! diagnostics; the rules across files run over the whole fleet every time.
//!
//! What the latest two validations did not use is dropped at the end of each, so memory
//! follows the fleet, not the history: a daemon that validates commit after commit holds at
//! most two versions of each file, and `plan --base` holds base and head.

use std::{collections::HashMap, fmt, sync::Arc};

use crate::{
    diag::{Diagnostic, FileId, Span, Spanned},
    load::{Content, Format, Input, Kind, Limits},
    model::{Channel, Instance, Partner, Region, Release, Settings, Tenant},
};

use super::{Entity, revise::Last};

/// The git blob id of a file's bytes (SHA-1 of `blob <length>\0` and the bytes).
///
/// Git ids are what a commit's tree already holds for every file, so a source learns a
/// file's id without reading its blob; a source that reads a folder computes the same id from
/// the bytes, so a work tree and a commit share the cache.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId([u8; 20]);

impl ContentId {
    /// The id from its 20 raw bytes.
    pub fn from_bytes(bytes: [u8; 20]) -> ContentId {
        ContentId(bytes)
    }

    /// The id's 20 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

/// A file as a source hands it to [`super::check_cached`]: its path relative to the fleet
/// root (`/`-separated) and what stands there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedInput {
    pub path: String,
    pub content: CachedContent,
}

/// What a source found at a path, for a validation through a [`Cache`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CachedContent {
    /// Bytes the source read, with their id.
    Read { id: ContentId, bytes: Vec<u8> },
    /// Bytes the cache holds ([`Cache::known`]), which the source therefore did not read.
    Known(Known),
    /// Anything without an id: too large, not a file, or bytes from a source that does not
    /// identify them. Validated as [`super::check`] would, and not kept.
    Other(Content),
}

/// The bytes of a content the cache holds, shared with it: they stay valid even if the cache
/// drops them before the validation they are handed to.
#[derive(Clone, PartialEq, Eq)]
pub struct Known {
    id: ContentId,
    bytes: Arc<[u8]>,
}

impl Known {
    /// The id of the bytes.
    pub fn id(&self) -> ContentId {
        self.id
    }

    /// The number of bytes, so a source can apply the size limit without reading them.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Known {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Known({}, {} bytes)", self.id, self.bytes.len())
    }
}

impl CachedInput {
    /// An input validated without the cache's help: its content has no id.
    pub fn uncached(input: Input) -> CachedInput {
        CachedInput {
            path: input.path,
            content: CachedContent::Other(input.content),
        }
    }

    /// The id of its content, if it has one.
    pub fn id(&self) -> Option<ContentId> {
        match &self.content {
            CachedContent::Read { id, .. } => Some(*id),
            CachedContent::Known(known) => Some(known.id),
            CachedContent::Other(_) => None,
        }
    }

    /// The plain input, for [`super::check`]; known bytes are copied out of the cache.
    pub fn into_input(self) -> Input {
        let content = match self.content {
            CachedContent::Read { bytes, .. } => Content::Bytes(bytes),
            CachedContent::Known(known) => Content::Bytes(known.bytes.to_vec()),
            CachedContent::Other(content) => content,
        };
        Input {
            path: self.path,
            content,
        }
    }
}

/// Files decoded and contents held, per content id; see the module's documentation.
///
/// Created empty with `Cache::default()`; pass it to every [`super::check_cached`] of the
/// same fleet, and to the source that reads the next commit.
#[derive(Debug, Default)]
pub struct Cache {
    /// The limits the cached decodings were made under; other limits clear the cache.
    limits: Option<Limits>,
    /// The number of validations made through the cache so far.
    validations: u64,
    contents: HashMap<ContentId, Held<Arc<[u8]>>>,
    decodings: HashMap<Key, Held<Decoding>>,
    decoded: u64,
    reused: u64,
    revised: u64,
    /// The last validation, if the next may revise it (`super::revise`).
    pub(super) last: Option<Last>,
}

/// What a cache holds and has done: counts since it was created, sizes now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files parsed and decoded.
    pub decoded: u64,
    /// Files whose decoding was reused instead.
    pub reused: u64,
    /// Validations made by revising the one before (only instance files changed).
    pub revised: u64,
    /// Contents (file bytes) held now.
    pub contents: usize,
    /// Decodings held now.
    pub decodings: usize,
}

/// Validations whose contents and decodings are kept: the latest and the one before, so
/// the next commit, which usually shares most files with both, finds them.
const KEPT_VALIDATIONS: u64 = 2;

#[derive(Debug)]
struct Held<T> {
    value: T,
    /// The validation that used it last.
    used: u64,
}

/// What parsing and decoding one file produced: its entity, if it could be built, and its
/// diagnostics, all with spans in `file`.
#[derive(Clone, Debug)]
pub(super) struct Decoding {
    pub file: FileId,
    pub entity: Option<Entity>,
    pub diagnostics: Vec<Diagnostic>,
}

/// What a decoding is filed under: its bytes, and the kind and syntax its path gives them
/// (see [`Key::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    id: ContentId,
    kind: Kind,
    /// Whether the syntax is TOML (else YAML); `load::Format` is not `Hash`.
    toml: bool,
}

impl Key {
    pub fn new(id: ContentId, kind: Kind, format: Format) -> Key {
        Key {
            id,
            kind,
            toml: format == Format::Toml,
        }
    }

    pub fn format(&self) -> Format {
        if self.toml {
            Format::Toml
        } else {
            Format::Yaml
        }
    }
}

impl Cache {
    /// The bytes of `id`, if the cache holds them: a source need not read them again.
    pub fn known(&self, id: &ContentId) -> Option<Known> {
        self.contents.get(id).map(|held| Known {
            id: *id,
            bytes: Arc::clone(&held.value),
        })
    }

    /// What the cache holds now and has done since it was created.
    pub fn stats(&self) -> Stats {
        Stats {
            decoded: self.decoded,
            reused: self.reused,
            revised: self.revised,
            contents: self.contents.len(),
            decodings: self.decodings.len(),
        }
    }

    /// Starts a validation under `limits`, and turns its inputs into plain inputs and the
    /// ids of their paths. Contents read are kept; a path given twice gets no id, so it is
    /// decoded afresh each time, as the plain validation does.
    pub(super) fn begin(
        &mut self,
        inputs: Vec<CachedInput>,
        limits: &Limits,
    ) -> (Vec<Input>, HashMap<String, ContentId>) {
        if self.limits != Some(*limits) {
            // Parsing depends on the depth and YAML limits; what was decoded under others
            // may differ.
            self.contents.clear();
            self.decodings.clear();
            self.last = None;
            self.limits = Some(*limits);
        }
        self.validations += 1;
        let now = self.validations;
        let mut ids = HashMap::with_capacity(inputs.len());
        let mut given_twice = Vec::new();
        let mut plain = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (id, content) = match input.content {
                CachedContent::Read { id, bytes } => {
                    let held = self.contents.entry(id).or_insert_with(|| Held {
                        value: Arc::from(bytes.as_slice()),
                        used: now,
                    });
                    held.used = now;
                    (Some(id), Content::Bytes(bytes))
                }
                CachedContent::Known(known) => {
                    let bytes = known.bytes.to_vec();
                    let held = self.contents.entry(known.id).or_insert(Held {
                        value: known.bytes,
                        used: now,
                    });
                    held.used = now;
                    (Some(known.id), Content::Bytes(bytes))
                }
                CachedContent::Other(content) => (None, content),
            };
            if let Some(id) = id
                && ids.insert(input.path.clone(), id).is_some()
            {
                given_twice.push(input.path.clone());
            }
            plain.push(Input {
                path: input.path,
                content,
            });
        }
        for path in given_twice {
            ids.remove(&path);
        }
        (plain, ids)
    }

    /// Whether its decodings were made under `limits`.
    pub(super) fn made_under(&self, limits: &Limits) -> bool {
        self.limits == Some(*limits)
    }

    /// The entity of the decoding filed under `key`, if there is one.
    pub(super) fn entity(&self, key: &Key) -> Option<&Entity> {
        self.decodings.get(key)?.value.entity.as_ref()
    }

    /// Ends a validation that revised the last one (`super::revise`): `changed` are the
    /// changed files' decodings (before, after) and bytes, `decoded` of them made now. The
    /// decodings and contents the revision before replaced are dropped now; those of the
    /// unchanged files stay.
    pub(super) fn revised(
        &mut self,
        inputs: &[CachedInput],
        changed: Vec<(Key, Key, Arc<[u8]>)>,
        decoded: usize,
        validation: &super::Validation,
    ) {
        self.validations += 1;
        let now = self.validations;
        self.revised += 1;
        self.reused += (validation.sources.len() - decoded) as u64;
        for (_, key, bytes) in &changed {
            self.contents
                .entry(key.id)
                .or_insert_with(|| Held {
                    value: Arc::clone(bytes),
                    used: now,
                })
                .used = now;
            if let Some(held) = self.decodings.get_mut(key) {
                held.used = now;
            }
        }
        let replaced: Vec<Key> = changed.iter().map(|(old, _, _)| *old).collect();
        let retired = match &mut self.last {
            Some(last) if validation.diagnostics.is_empty() => {
                last.revise(inputs, &replaced, validation)
            }
            _ => {
                // The next validation starts from scratch, and drops what this one does
                // not use.
                self.last = None;
                Vec::new()
            }
        };
        for key in retired {
            if self.decodings.get(&key).is_some_and(|held| held.used < now) {
                self.decodings.remove(&key);
            }
            if self
                .contents
                .get(&key.id)
                .is_some_and(|held| held.used < now)
            {
                self.contents.remove(&key.id);
            }
        }
    }

    /// The decoding filed under `key`, moved to `file`, if there is one.
    pub(super) fn get(&self, key: &Key, file: FileId) -> Option<Decoding> {
        let held = self.decodings.get(key)?;
        Some(held.value.moved_to(file))
    }

    /// Records that the current validation reused the decodings of `reused`, decoded
    /// `decoded` files, and made the decodings of `made` to keep (files without an id are
    /// decoded but not kept).
    pub(super) fn record(&mut self, reused: &[Key], decoded: usize, made: Vec<(Key, Decoding)>) {
        let now = self.validations;
        for key in reused {
            if let Some(held) = self.decodings.get_mut(key) {
                held.used = now;
            }
        }
        self.reused += reused.len() as u64;
        self.decoded += decoded as u64;
        for (key, value) in made {
            self.decodings.insert(key, Held { value, used: now });
        }
    }

    /// Ends the current validation: drops what neither it nor the one before used.
    pub(super) fn finish(&mut self) {
        let oldest_kept = self.validations.saturating_sub(KEPT_VALIDATIONS - 1);
        self.contents.retain(|_, held| held.used >= oldest_kept);
        self.decodings.retain(|_, held| held.used >= oldest_kept);
    }
}

impl Decoding {
    /// A copy whose spans are in `file`.
    fn moved_to(&self, file: FileId) -> Decoding {
        let mut decoding = self.clone();
        if file != self.file {
            let from = self.file;
            decoding.file = file;
            decoding.entity.relocate(from, file);
            decoding.diagnostics.relocate(from, file);
        }
        decoding
    }
}

/// Moves the spans of a value from one file to another.
///
/// The model's types are destructured without `..`, so a field added to them does not
/// compile until someone says here whether it holds a span.
trait Relocate {
    fn relocate(&mut self, from: FileId, to: FileId);
}

impl Relocate for Span {
    fn relocate(&mut self, from: FileId, to: FileId) {
        if self.file == from {
            self.file = to;
        }
    }
}

/// The values the model spans (names, versions, resources) hold no spans themselves.
impl<T> Relocate for Spanned<T> {
    fn relocate(&mut self, from: FileId, to: FileId) {
        self.span.relocate(from, to);
    }
}

impl<T: Relocate> Relocate for Option<T> {
    fn relocate(&mut self, from: FileId, to: FileId) {
        if let Some(value) = self {
            value.relocate(from, to);
        }
    }
}

impl<T: Relocate> Relocate for Vec<T> {
    fn relocate(&mut self, from: FileId, to: FileId) {
        for value in self {
            value.relocate(from, to);
        }
    }
}

impl Relocate for Diagnostic {
    fn relocate(&mut self, from: FileId, to: FileId) {
        self.primary.relocate(from, to);
        for (span, _) in &mut self.secondary {
            span.relocate(from, to);
        }
    }
}

impl Relocate for Entity {
    fn relocate(&mut self, from: FileId, to: FileId) {
        match self {
            Entity::Settings(settings) => settings.relocate(from, to),
            Entity::Partner(partner) => partner.relocate(from, to),
            Entity::Tenant(tenant) => tenant.relocate(from, to),
            Entity::Channel(channel) => channel.relocate(from, to),
            Entity::Release(release) => release.relocate(from, to),
            Entity::Instance(instance) => instance.relocate(from, to),
        }
    }
}

impl Relocate for Settings {
    fn relocate(&mut self, from: FileId, to: FileId) {
        let Settings {
            name: _,
            regions,
            sizes: _,
        } = self;
        for region in regions.values_mut() {
            region.relocate(from, to);
        }
    }
}

impl Relocate for Region {
    fn relocate(&mut self, from: FileId, to: FileId) {
        let Region {
            country,
            docker,
            database,
            backups: _,
            capacity,
        } = self;
        country.relocate(from, to);
        docker.relocate(from, to);
        database.relocate(from, to);
        capacity.relocate(from, to);
    }
}

impl Relocate for Partner {
    fn relocate(&mut self, from: FileId, to: FileId) {
        let Partner {
            id,
            name: _,
            email: _,
            state: _,
        } = self;
        id.relocate(from, to);
    }
}

impl Relocate for Tenant {
    fn relocate(&mut self, from: FileId, to: FileId) {
        let Tenant {
            id,
            partner,
            name: _,
            state: _,
        } = self;
        id.relocate(from, to);
        partner.relocate(from, to);
    }
}

impl Relocate for Channel {
    fn relocate(&mut self, from: FileId, to: FileId) {
        let Channel {
            name,
            mode: _,
            track: _,
            maintenance_window: _,
            auto_approve: _,
            security: _,
            notify: _,
        } = self;
        name.relocate(from, to);
    }
}

impl Relocate for Release {
    fn relocate(&mut self, from: FileId, to: FileId) {
        let Release {
            version,
            status: _,
            released: _,
            breaking: _,
            security_patch: _,
            severity: _,
            image: _,
            upgrade_from,
            migrations: _,
            changelog: _,
        } = self;
        version.relocate(from, to);
        upgrade_from.relocate(from, to);
    }
}

/// Copied only when its file moved: a decoding reused in place stays shared.
impl Relocate for Arc<Instance> {
    fn relocate(&mut self, from: FileId, to: FileId) {
        let Instance {
            name,
            kind: _,
            partner,
            tenant,
            region,
            data_residency,
            suites: _,
            capabilities: _,
            custom_domain,
            ssl: _,
            size,
            resources,
            channel,
            version,
            approved_version,
            allow_downgrade: _,
            state: _,
            backup: _,
        } = Arc::make_mut(self);
        for spanned in [name, partner, region, channel] {
            spanned.relocate(from, to);
        }
        for spanned in [tenant, custom_domain, size] {
            spanned.relocate(from, to);
        }
        data_residency.relocate(from, to);
        resources.relocate(from, to);
        version.relocate(from, to);
        approved_version.relocate(from, to);
    }
}

#[cfg(test)]
mod tests;
