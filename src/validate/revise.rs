//! Validating a commit as an edit of the validation before it.
//!
//! A daemon validates commit after commit of one fleet, and most commits change a few
//! instance files of thousands. When the last validation through a [`Cache`] found nothing
//! wrong and the new one is given the same paths in the same order, with only instance files
//! changed, each keeping its instance's name and custom domain, then the rules across files
//! can only fail for the changed instances and for capacity: names, duplicates and domains
//! are as they were, and the partners, tenants, regions, sizes, channels and releases the
//! changed instances point at are unchanged. [`revise`] then takes the last fleet and file
//! texts, replaces the changed instances, decodes their files (or finds them in the cache),
//! and checks the changed instances and every region's capacity. Any other commit is
//! validated from scratch.
//!
//! The result equals what [`super::check`] returns, spans included (the tests check it
//! commit after commit); only the work is smaller: one decoding and one instance's
//! references instead of every file's.

use std::sync::Arc;

use crate::{
    diag::{self, FileId, SourceMap},
    load::{Format, Kind, Limits},
    model::{Fleet, Instance},
};

use super::{
    CachedContent, CachedInput, Entity, Validation,
    cache::{Cache, ContentId, Decoding, Key},
    check_capacity, check_instance,
    decode::Ctx,
    decode_files,
};

/// What a validation from scratch leaves for the next to revise.
#[derive(Debug)]
pub(super) struct Last {
    /// The inputs as they were given, with their ids and the file each became (`None`: a
    /// file wakafleet ignores).
    inputs: Vec<(String, ContentId, Option<FileId>)>,
    /// The fleet files, with their kind and syntax, by file id.
    files: Vec<(FileId, Kind, Format)>,
    sources: SourceMap,
    fleet: Fleet,
    /// The decodings (and their contents) the last validation replaced, dropped at the
    /// next, so the cache holds what the latest two validations used.
    retired: Vec<Key>,
}

impl Last {
    /// What to remember of a validation, if the next can revise it: every input had an id,
    /// no path came twice, and nothing was wrong.
    pub fn of(
        given: Vec<(String, Option<ContentId>)>,
        files: &[(FileId, Kind, Format)],
        validation: &Validation,
    ) -> Option<Last> {
        if !validation.diagnostics.is_empty() {
            return None;
        }
        let sources = &validation.sources;
        let by_path: std::collections::HashMap<&str, FileId> = sources
            .ids()
            .map(|file| (sources.path(file), file))
            .collect();
        if by_path.len() != sources.len() {
            return None;
        }
        let mut inputs = Vec::with_capacity(given.len());
        for (path, id) in given {
            let file = by_path.get(path.as_str()).copied();
            inputs.push((path, id?, file));
        }
        let mut seen = vec![false; sources.len()];
        for file in inputs.iter().filter_map(|(_, _, file)| *file) {
            if std::mem::replace(&mut seen[file.index()], true) {
                return None;
            }
        }
        Some(Last {
            inputs,
            files: files.to_vec(),
            sources: sources.clone(),
            fleet: validation.fleet.clone(),
            retired: Vec::new(),
        })
    }
}

/// One instance file whose content changed.
struct Change {
    file: FileId,
    key: Key,
    /// What the file held before.
    old: Key,
    text: String,
}

/// The validation of `inputs` as an edit of the last one through `cache`, if it is one
/// (see the module's documentation); `None` when it must be made from scratch.
pub(super) fn revise(
    inputs: &[CachedInput],
    limits: &Limits,
    cache: &mut Cache,
) -> Option<Validation> {
    let changes = changed_files(inputs, limits, cache)?;
    let mut sources = cache.last.as_ref()?.sources.clone();
    for change in &changes {
        sources.replace(change.file, change.text.clone());
    }
    let (decodings, decoded) = decode(&changes, &sources, limits, cache);

    // The same instances, under the same names and domains.
    let last = cache.last.as_ref()?;
    let mut instances = Vec::with_capacity(changes.len());
    for (change, decoding) in changes.iter().zip(&decodings) {
        let (Some(Entity::Instance(old)), Some(Entity::Instance(new))) =
            (cache.entity(&change.old), &decoding.entity)
        else {
            return None;
        };
        let domain = |instance: &Instance| {
            instance
                .custom_domain
                .as_ref()
                .map(|domain| domain.value.to_ascii_lowercase())
        };
        let registered_here = last
            .fleet
            .instances
            .get(&old.name.value)
            .is_some_and(|instance| instance.name.span.file == change.file);
        if new.name.value != old.name.value || domain(new) != domain(old) || !registered_here {
            return None;
        }
        instances.push(Arc::clone(new));
    }

    // The rules the changed instances can break, on the last fleet with them replaced.
    let last = cache.last.as_mut()?;
    for instance in &instances {
        last.fleet
            .instances
            .insert(instance.name.value.clone(), Arc::clone(instance));
    }
    let mut ctx = Ctx::new(Vec::new());
    for decoding in &decodings {
        ctx.diagnostics.extend(decoding.diagnostics.iter().cloned());
    }
    for instance in &instances {
        check_instance(&last.fleet, instance, &mut ctx);
    }
    check_capacity(&last.fleet, &mut ctx);
    let mut diagnostics = ctx.diagnostics;
    diag::sort(&mut diagnostics, &sources);
    // A fleet with problems is not revised again: the cache lets go of it.
    let fleet = if diagnostics.is_empty() {
        last.fleet.clone()
    } else {
        std::mem::take(&mut last.fleet)
    };

    let changed = changes
        .into_iter()
        .map(|change| (change.old, change.key, Arc::from(change.text.into_bytes())))
        .collect();
    let validation = Validation {
        sources,
        fleet,
        diagnostics,
    };
    cache.revised(inputs, changed, decoded, &validation);
    Some(validation)
}

/// The decodings of the changed files: from the cache where it has them, made now (and
/// kept) where it does not; and how many were made.
fn decode(
    changes: &[Change],
    sources: &SourceMap,
    limits: &Limits,
    cache: &mut Cache,
) -> (Vec<Decoding>, usize) {
    let reused: Vec<Option<Decoding>> = changes
        .iter()
        .map(|change| cache.get(&change.key, change.file))
        .collect();
    let missing: Vec<(FileId, Kind, Format)> = changes
        .iter()
        .zip(&reused)
        .filter(|(_, reused)| reused.is_none())
        .map(|(change, _)| (change.file, Kind::Instance, change.key.format()))
        .collect();
    let mut made = decode_files(sources, &missing, limits).into_iter();
    let mut kept = Vec::new();
    let decodings: Vec<Decoding> = changes
        .iter()
        .zip(reused)
        .map(|(change, reused)| {
            reused.unwrap_or_else(|| {
                let decoding = made.next().expect("one decoding per missing file");
                kept.push((change.key, decoding.clone()));
                decoding
            })
        })
        .collect();
    let decoded = kept.len();
    cache.record(&[], decoded, kept);
    (decodings, decoded)
}

/// The instance files whose content changed since the last validation, if the inputs
/// are otherwise the same; `None` when the validation cannot be a revision.
fn changed_files(inputs: &[CachedInput], limits: &Limits, cache: &Cache) -> Option<Vec<Change>> {
    let last = cache.last.as_ref()?;
    if !cache.made_under(limits) || inputs.len() != last.inputs.len() {
        return None;
    }
    let mut changes = Vec::new();
    for (input, (path, id, file)) in inputs.iter().zip(&last.inputs) {
        let (new_id, bytes) = match &input.content {
            CachedContent::Read { id, bytes } => (*id, &bytes[..]),
            CachedContent::Known(known) => (known.id(), known.bytes()),
            CachedContent::Other(_) => return None,
        };
        if input.path != *path {
            return None;
        }
        // A file wakafleet ignores leaves the fleet as it was, whatever it holds.
        let Some(file) = file.filter(|_| new_id != *id) else {
            continue;
        };
        let (at, kind, format) = *last.files.get(file.index())?;
        if at != file || kind != Kind::Instance || bytes.len() as u64 > limits.max_file_bytes {
            return None;
        }
        changes.push(Change {
            file,
            key: Key::new(new_id, kind, format),
            old: Key::new(*id, kind, format),
            text: String::from_utf8(bytes.to_vec()).ok()?,
        });
    }
    Some(changes)
}

impl Last {
    /// Moves what is remembered to `validation`, the revision of `inputs` that replaced
    /// the decodings `replaced` (its fleet is already this one's); returns what the revision before replaced, for the cache
    /// to drop.
    pub fn revise(
        &mut self,
        inputs: &[CachedInput],
        replaced: &[Key],
        validation: &Validation,
    ) -> Vec<Key> {
        for ((_, id, _), input) in self.inputs.iter_mut().zip(inputs) {
            if let Some(new) = input.id() {
                *id = new;
            }
        }
        // The fleet was revised in place.
        self.sources = validation.sources.clone();
        std::mem::replace(&mut self.retired, replaced.to_vec())
    }
}
