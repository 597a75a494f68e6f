//! Diagnostics: what went wrong in which fleet file, and where.
//!
//! A [`Diagnostic`] is plain data: a stable [`Code`] from FLEET-FORMAT.md, a message, a primary
//! [`Span`] and optional secondary spans and help. Spans are byte ranges into a file of the
//! [`SourceMap`]; line and column are computed only when rendering (see [`render`]).
//! This module does not decide what is wrong; `load` and `validate` do.

pub mod render;

use std::{fmt, ops::Range};

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(u32);

impl FileId {
    /// The position of the file in its [`SourceMap`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A byte range in one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, range: Range<usize>) -> Span {
        // Files are at most a few MiB (the loader enforces the limit), so offsets fit in u32;
        // saturate rather than wrap if a caller ever passes more.
        let clamp = |offset: usize| u32::try_from(offset).unwrap_or(u32::MAX);
        Span {
            file,
            start: clamp(range.start),
            end: clamp(range.end.max(range.start)),
        }
    }

    /// The empty span at the start of a file: for problems with a file as a whole.
    pub fn file_start(file: FileId) -> Span {
        Span {
            file,
            start: 0,
            end: 0,
        }
    }

    /// The empty span where this one starts: for "something is missing here".
    pub fn with_end_at_start(self) -> Span {
        Span {
            end: self.start,
            ..self
        }
    }

    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A value together with where it was written.
///
/// Equality and ordering look at the value only: two fleets that say the same thing in
/// different places are equal.
#[derive(Clone, Copy, Debug)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Spanned<T> {
        Spanned { value, span }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Spanned<U> {
        Spanned {
            value: f(self.value),
            span: self.span,
        }
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Spanned<T> {}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

macro_rules! codes {
    ($($variant:ident => $text:literal,)*) => {
        /// The stable diagnostic codes of FLEET-FORMAT.md.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $($variant,)* }

        impl Code {
            /// Every code, in the order of FLEET-FORMAT.md's table.
            pub const ALL: &[Code] = &[$(Code::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $text,)* }
            }
        }
    };
}

codes! {
    Parse => "parse",
    UnknownField => "unknown-field",
    MissingField => "missing-field",
    InvalidValue => "invalid-value",
    FileNameMismatch => "file-name-mismatch",
    DuplicateId => "duplicate-id",
    DuplicateDomain => "duplicate-domain",
    InvalidName => "invalid-name",
    DanglingReference => "dangling-reference",
    PartnerMismatch => "partner-mismatch",
    ResidencyViolation => "residency-violation",
    UnknownVersion => "unknown-version",
    InvalidSemver => "invalid-semver",
    FrozenWithoutVersion => "frozen-without-version",
    SizeAndResources => "size-and-resources",
    CapacityExceeded => "capacity-exceeded",
    InvalidCron => "invalid-cron",
    InvalidWindow => "invalid-window",
    SecretInRepo => "secret-in-repo",
    TooLarge => "too-large",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found in the fleet files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    /// Where the problem is; its label is printed under the caret.
    pub primary: Span,
    pub label: String,
    /// Other places that explain the problem, such as the first of two duplicates.
    pub secondary: Vec<(Span, String)>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            primary: span,
            label: String::new(),
            secondary: Vec::new(),
            help: None,
        }
    }

    pub fn warning(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, span, message)
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }

    pub fn with_secondary(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.secondary.push((span, label.into()));
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The fleet's files as text, so spans can be turned into lines, columns and snippets.
///
/// Files are shared between clones, so a map of thousands of files is copied in a moment
/// (the decode cache keeps the last validation's to revise it).
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<std::sync::Arc<SourceFile>>,
}

#[derive(Debug)]
struct SourceFile {
    path: String,
    text: String,
    /// Byte offsets at which lines start, computed when first needed.
    line_starts: std::sync::OnceLock<Vec<u32>>,
}

/// A 1-based line and column; the column counts characters, as editors do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl SourceMap {
    pub fn new() -> SourceMap {
        SourceMap::default()
    }

    /// Adds a file; `path` is relative to the fleet root, with `/` separators.
    pub fn add(&mut self, path: impl Into<String>, text: String) -> FileId {
        let id = FileId(u32::try_from(self.files.len()).expect("fewer than 2^32 files"));
        self.files.push(std::sync::Arc::new(SourceFile {
            path: path.into(),
            text,
            line_starts: std::sync::OnceLock::new(),
        }));
        id
    }

    /// Replaces the text of a file, keeping its path and id.
    pub(crate) fn replace(&mut self, file: FileId, text: String) {
        let path = self.path(file).to_string();
        self.files[file.index()] = std::sync::Arc::new(SourceFile {
            path,
            text,
            line_starts: std::sync::OnceLock::new(),
        });
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = FileId> + use<> {
        (0..self.files.len()).map(|index| FileId(index as u32))
    }

    pub fn path(&self, file: FileId) -> &str {
        &self.files[file.index()].path
    }

    pub fn text(&self, file: FileId) -> &str {
        &self.files[file.index()].text
    }

    /// The text a span covers (empty if the span is out of range).
    pub fn slice(&self, span: Span) -> &str {
        self.text(span.file).get(span.range()).unwrap_or("")
    }

    pub fn line_starts(&self, file: FileId) -> &[u32] {
        let source = &self.files[file.index()];
        source.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(
                    source
                        .text
                        .bytes()
                        .enumerate()
                        .filter(|&(_, byte)| byte == b'\n')
                        .map(|(offset, _)| offset as u32 + 1),
                )
                .collect()
        })
    }

    /// Line and column of a byte offset; offsets past the end clamp to the end.
    pub fn location(&self, file: FileId, offset: u32) -> Location {
        let text = self.text(file);
        let mut offset = (offset as usize).min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let starts = self.line_starts(file);
        let line = starts.partition_point(|&start| start as usize <= offset) - 1;
        let line_start = starts[line] as usize;
        Location {
            line: line + 1,
            column: text[line_start..offset].chars().count() + 1,
        }
    }
}

/// Sorts diagnostics by file, then position, then code, so output is stable.
pub fn sort(diagnostics: &mut [Diagnostic], sources: &SourceMap) {
    diagnostics.sort_by(|a, b| {
        (
            sources.path(a.primary.file),
            a.primary.start,
            a.code,
            &a.message,
        )
            .cmp(&(
                sources.path(b.primary.file),
                b.primary.start,
                b.code,
                &b.message,
            ))
    });
}

/// The closest of `candidates` to `name`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| (strsim::jaro_winkler(name, candidate), *candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based_and_count_characters() {
        let mut sources = SourceMap::new();
        let file = sources.add("a.toml", "ab\nçd = 1\n".to_string());
        assert_eq!(sources.location(file, 0), Location { line: 1, column: 1 });
        assert_eq!(sources.location(file, 3), Location { line: 2, column: 1 });
        // 'ç' is two bytes; the byte after it is column 2.
        assert_eq!(sources.location(file, 5), Location { line: 2, column: 2 });
        assert_eq!(sources.location(file, 99), Location { line: 3, column: 1 });
    }

    #[test]
    fn did_you_mean_finds_close_names_only() {
        let names = ["name", "partner", "tenant"];
        assert_eq!(did_you_mean("nmae", &names), Some("name"));
        assert_eq!(did_you_mean("partnr", &names), Some("partner"));
        assert_eq!(did_you_mean("zzz", &names), None);
    }
}
