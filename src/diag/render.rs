//! Renderings of diagnostics: rustc-like text for people, JSON for machines.

use codespan_reporting::{
    diagnostic as cs,
    files::{self, Files},
    term,
};
use serde::Serialize;

use crate::diag::{Diagnostic, FileId, Severity, SourceMap};

/// Whether text output may use ANSI colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    Never,
    Always,
}

impl Color {
    /// Colour only on a terminal, and never when the user asked for none (the CLI reads
    /// `NO_COLOR`; the core reads no environment).
    pub fn for_terminal(is_terminal: bool, no_color: bool) -> Color {
        if is_terminal && !no_color {
            Color::Always
        } else {
            Color::Never
        }
    }
}

/// Renders diagnostics like rustc: `error[code]: message`, `--> file:line:column`, the source
/// line with a caret under the span, then help.
pub fn text(diagnostics: &[Diagnostic], sources: &SourceMap, color: Color) -> String {
    let mut buffer = match color {
        Color::Always => termcolor::Buffer::ansi(),
        Color::Never => termcolor::Buffer::no_color(),
    };
    let config = term::Config {
        chars: term::Chars::ascii(),
        ..term::Config::default()
    };
    for diagnostic in diagnostics {
        // Rendering into memory cannot fail; a span past the end of its file is clamped by
        // `SourceMap`'s `Files` implementation below.
        let _ = term::emit_to_write_style(&mut buffer, &config, sources, &to_codespan(diagnostic));
    }
    String::from_utf8_lossy(buffer.as_slice()).into_owned()
}

fn to_codespan(diagnostic: &Diagnostic) -> cs::Diagnostic<FileId> {
    let severity = match diagnostic.severity {
        Severity::Error => cs::Severity::Error,
        Severity::Warning => cs::Severity::Warning,
    };
    let mut labels = vec![
        cs::Label::primary(diagnostic.primary.file, diagnostic.primary.range())
            .with_message(&diagnostic.label),
    ];
    labels.extend(
        diagnostic
            .secondary
            .iter()
            .map(|(span, label)| cs::Label::secondary(span.file, span.range()).with_message(label)),
    );
    let notes = diagnostic
        .help
        .iter()
        .map(|help| format!("help: {help}"))
        .collect();
    cs::Diagnostic::new(severity)
        .with_code(diagnostic.code.as_str())
        .with_message(&diagnostic.message)
        .with_labels(labels)
        .with_notes(notes)
}

impl<'a> Files<'a> for SourceMap {
    type FileId = FileId;
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, id: FileId) -> Result<&'a str, files::Error> {
        self.check(id)?;
        Ok(self.path(id))
    }

    fn source(&'a self, id: FileId) -> Result<&'a str, files::Error> {
        self.check(id)?;
        Ok(self.text(id))
    }

    fn line_index(&'a self, id: FileId, byte_index: usize) -> Result<usize, files::Error> {
        self.check(id)?;
        let starts = self.line_starts(id);
        Ok(starts.partition_point(|&start| start as usize <= byte_index) - 1)
    }

    fn line_range(
        &'a self,
        id: FileId,
        line_index: usize,
    ) -> Result<std::ops::Range<usize>, files::Error> {
        self.check(id)?;
        let starts = self.line_starts(id);
        let len = self.text(id).len();
        let start = *starts.get(line_index).ok_or(files::Error::LineTooLarge {
            given: line_index,
            max: starts.len() - 1,
        })? as usize;
        let end = starts
            .get(line_index + 1)
            .map_or(len, |&next| next as usize);
        Ok(start..end)
    }
}

impl SourceMap {
    fn check(&self, id: FileId) -> Result<(), files::Error> {
        if id.index() < self.len() {
            Ok(())
        } else {
            Err(files::Error::FileMissing)
        }
    }
}

/// The JSON document of `wakafleet validate --format json`.
#[derive(Serialize)]
pub struct Report<'a> {
    pub format_version: u32,
    pub diagnostics: Vec<Entry<'a>>,
}

/// One diagnostic as FLEET-FORMAT.md's JSON shape.
#[derive(Serialize)]
pub struct Entry<'a> {
    pub code: &'static str,
    pub severity: &'static str,
    pub file: &'a str,
    pub line: usize,
    pub column: usize,
    pub message: &'a str,
    pub help: Option<&'a str>,
}

/// The JSON entries of a list of diagnostics, with file paths as the source map has them.
pub fn entries<'a>(diagnostics: &'a [Diagnostic], sources: &'a SourceMap) -> Vec<Entry<'a>> {
    diagnostics
        .iter()
        .map(|diagnostic| {
            let location = sources.location(diagnostic.primary.file, diagnostic.primary.start);
            Entry {
                code: diagnostic.code.as_str(),
                severity: diagnostic.severity.as_str(),
                file: sources.path(diagnostic.primary.file),
                line: location.line,
                column: location.column,
                message: &diagnostic.message,
                help: diagnostic.help.as_deref(),
            }
        })
        .collect()
}

/// Renders diagnostics as `{"format_version":1,"diagnostics":[...]}`.
pub fn json(diagnostics: &[Diagnostic], sources: &SourceMap) -> String {
    let report = Report {
        format_version: 1,
        diagnostics: entries(diagnostics, sources),
    };
    serde_json::to_string_pretty(&report).expect("diagnostics serialize to JSON")
}
