//! Documents to model values, one field at a time, with a diagnostic for every field that is
//! unknown, missing or malformed.
//!
//! We decode by hand rather than with serde so that every problem of a file is reported (not
//! the first), each at the span of its key or value, and unknown keys get a "did you mean".

use std::{borrow::Cow, collections::HashMap};

use chrono::NaiveDate;
use semver::{Version, VersionReq};

use crate::{
    diag::{Code, Diagnostic, Span, Spanned, did_you_mean},
    load::{Entry, Node, Value},
    model::{ByteSize, Cpu, CronSchedule, Keyword, Resources},
};

/// The diagnostics of one validation run, and the value decoders that add to them.
#[derive(Default)]
pub struct Ctx {
    pub diagnostics: Vec<Diagnostic>,
    /// Cron schedules already parsed: a fleet repeats a few schedules thousands of times,
    /// and parsing one costs tens of microseconds.
    schedules: HashMap<String, Result<CronSchedule, String>>,
}

/// The keys of one table, tracking which ones a decoder has asked for.
pub struct Fields<'n, 'a> {
    entries: &'n [Entry<'a>],
    span: Span,
    used: Vec<bool>,
    known: Vec<&'static str>,
}

impl<'n, 'a> Fields<'n, 'a> {
    /// The value of a key, if present and not YAML's null; marks the key as known.
    pub fn get(&mut self, name: &'static str) -> Option<&'n Node<'a>> {
        self.known.push(name);
        let index = self.entries.iter().position(|entry| entry.key == name)?;
        self.used[index] = true;
        let value = &self.entries[index].value;
        (!value.value.is_null()).then_some(value)
    }

    /// The span of a key, if present.
    pub fn key_span(&self, name: &str) -> Option<Span> {
        self.entries
            .iter()
            .find(|entry| entry.key == name)
            .map(|entry| entry.key_span)
    }

    /// The span of the whole table.
    pub fn span(&self) -> Span {
        self.span
    }
}

impl Ctx {
    /// A context that continues a list of diagnostics.
    pub fn new(diagnostics: Vec<Diagnostic>) -> Ctx {
        Ctx {
            diagnostics,
            schedules: HashMap::new(),
        }
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    /// Opens a table for decoding; anything else is an `invalid-value`.
    pub fn table<'n, 'a>(&mut self, node: &'n Node<'a>, what: &str) -> Option<Fields<'n, 'a>> {
        let Some(entries) = node.as_table() else {
            self.wrong_type(node, &format!("{what} (a table)"));
            return None;
        };
        Some(Fields {
            entries,
            span: node.span,
            used: vec![false; entries.len()],
            known: Vec::new(),
        })
    }

    /// The value of a required key; reports `missing-field` when it is absent.
    pub fn required<'n, 'a>(
        &mut self,
        fields: &mut Fields<'n, 'a>,
        name: &'static str,
    ) -> Option<&'n Node<'a>> {
        let value = fields.get(name);
        if value.is_none() {
            let span = fields
                .key_span(name)
                .unwrap_or(fields.span.with_end_at_start());
            self.push(
                Diagnostic::error(Code::MissingField, span, format!("missing field `{name}`"))
                    .with_label(format!("`{name}` is required")),
            );
        }
        value
    }

    /// Reports every key no decoder asked for as `unknown-field`.
    pub fn finish(&mut self, fields: Fields<'_, '_>) {
        for (entry, used) in fields.entries.iter().zip(&fields.used) {
            if *used {
                continue;
            }
            let mut diagnostic = Diagnostic::error(
                Code::UnknownField,
                entry.key_span,
                format!("unknown field `{}`", entry.key),
            )
            .with_label("not a field of this table");
            diagnostic.help = Some(match did_you_mean(&entry.key, &fields.known) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("known fields are {}", quoted_list(&fields.known)),
            });
            self.push(diagnostic);
        }
    }

    fn wrong_type(&mut self, node: &Node<'_>, expected: &str) {
        self.push(
            Diagnostic::error(
                Code::InvalidValue,
                node.span,
                format!("expected {expected}, found {}", node.value.describe()),
            )
            .with_label(format!("expected {expected}")),
        );
    }

    /// An `invalid-value` (or other code) at a node, labelled by what the code is about.
    pub fn invalid(&mut self, code: Code, span: Span, message: String) {
        let label = match code {
            Code::InvalidSemver => "not semver",
            Code::InvalidCron => "not a cron schedule",
            Code::InvalidWindow => "not a valid window setting",
            _ => "invalid value",
        };
        self.push(Diagnostic::error(code, span, message).with_label(label));
    }

    /// Text of a string or YAML scalar.
    pub fn text<'n>(&mut self, node: &'n Node<'_>) -> Option<&'n str> {
        match &node.value {
            Value::String(text) | Value::Plain(text) => Some(text),
            _ => {
                self.wrong_type(node, "a string");
                None
            }
        }
    }

    pub fn string(&mut self, node: &Node<'_>) -> Option<Spanned<String>> {
        let text = self.text(node)?;
        Some(Spanned::new(text.to_string(), node.span))
    }

    /// A string that must not be empty.
    pub fn nonempty(&mut self, node: &Node<'_>) -> Option<Spanned<String>> {
        let text = self.string(node)?;
        if text.value.trim().is_empty() {
            self.invalid(
                Code::InvalidValue,
                node.span,
                "expected a non-empty string".into(),
            );
            return None;
        }
        Some(text)
    }

    pub fn boolean(&mut self, node: &Node<'_>) -> Option<bool> {
        match &node.value {
            Value::Boolean(value) => Some(*value),
            Value::Plain(text) if matches!(text.as_ref(), "true" | "True" | "TRUE") => Some(true),
            Value::Plain(text) if matches!(text.as_ref(), "false" | "False" | "FALSE") => {
                Some(false)
            }
            _ => {
                self.wrong_type(node, "`true` or `false`");
                None
            }
        }
    }

    /// A whole number from 0 to `u32::MAX`.
    pub fn count(&mut self, node: &Node<'_>) -> Option<u32> {
        let number = match &node.value {
            Value::Integer(number) => u32::try_from(*number).ok(),
            Value::Plain(text) => text.parse().ok(),
            _ => {
                self.wrong_type(node, "a whole number");
                return None;
            }
        };
        if number.is_none() {
            self.invalid(
                Code::InvalidValue,
                node.span,
                format!("expected a whole number from 0 to {}", u32::MAX),
            );
        }
        number
    }

    pub fn list<T>(
        &mut self,
        node: &Node<'_>,
        mut item: impl FnMut(&mut Ctx, &Node<'_>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Value::Array(items) = &node.value else {
            self.wrong_type(node, "an array");
            return None;
        };
        let mut values = Vec::with_capacity(items.len());
        let mut ok = true;
        for node in items {
            match item(self, node) {
                Some(value) => values.push(value),
                None => ok = false,
            }
        }
        ok.then_some(values)
    }

    pub fn strings(&mut self, node: &Node<'_>) -> Option<Vec<String>> {
        self.list(node, |ctx, node| ctx.string(node).map(|text| text.value))
    }

    /// One of the words of a keyword enum, with "did you mean" for near misses.
    pub fn keyword<K: Keyword>(&mut self, node: &Node<'_>) -> Option<K> {
        self.keyword_with(node, Code::InvalidValue)
    }

    pub fn keyword_with<K: Keyword>(&mut self, node: &Node<'_>, code: Code) -> Option<K> {
        let text = self.text(node)?;
        if let Some(value) = K::parse(text) {
            return Some(value);
        }
        let words: Vec<&str> = K::ALL.iter().map(|word| word.as_str()).collect();
        let mut diagnostic = Diagnostic::error(
            code,
            node.span,
            format!("`{text}` is not one of {}", quoted_list(&words)),
        )
        .with_label("unknown value");
        if let Some(close) = did_you_mean(text, &words) {
            diagnostic = diagnostic.with_help(format!("did you mean `{close}`?"));
        }
        self.push(diagnostic);
        None
    }

    /// A value parsed from text by `parse`, reported under `code` when it does not parse.
    pub fn parsed<T>(
        &mut self,
        node: &Node<'_>,
        code: Code,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(node)?;
        match parse(text) {
            Ok(value) => Some(value),
            Err(message) => {
                self.invalid(code, node.span, message);
                None
            }
        }
    }

    /// A cron schedule (`invalid-cron`), parsed once per distinct text.
    pub fn schedule(&mut self, node: &Node<'_>) -> Option<CronSchedule> {
        let text = self.text(node)?;
        let parsed = match self.schedules.get(text) {
            Some(parsed) => parsed.clone(),
            None => {
                let parsed = CronSchedule::parse(text);
                self.schedules.insert(text.to_string(), parsed.clone());
                parsed
            }
        };
        parsed
            .map_err(|message| self.invalid(Code::InvalidCron, node.span, message))
            .ok()
    }

    pub fn version(&mut self, node: &Node<'_>) -> Option<Spanned<Version>> {
        self.parsed(node, Code::InvalidSemver, |text| {
            Version::parse(text)
                .map_err(|error| format!("`{text}` is not a semantic version: {error}"))
        })
        .map(|version| Spanned::new(version, node.span))
    }

    pub fn version_req(&mut self, node: &Node<'_>) -> Option<Spanned<VersionReq>> {
        self.parsed(node, Code::InvalidSemver, |text| {
            VersionReq::parse(text)
                .map_err(|error| format!("`{text}` is not a semver requirement: {error}"))
        })
        .map(|requirement| Spanned::new(requirement, node.span))
    }

    /// A date: a TOML local date or `YYYY-MM-DD` text.
    pub fn date(&mut self, node: &Node<'_>) -> Option<NaiveDate> {
        let text: Cow<'_, str> = match &node.value {
            Value::Datetime(datetime) if datetime.time.is_none() && datetime.offset.is_none() => {
                Cow::Owned(datetime.to_string())
            }
            Value::String(text) | Value::Plain(text) => Cow::Borrowed(text),
            _ => {
                self.wrong_type(node, "a date (YYYY-MM-DD)");
                return None;
            }
        };
        let date = NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok();
        if date.is_none() {
            self.invalid(
                Code::InvalidValue,
                node.span,
                format!("`{text}` is not a date as YYYY-MM-DD"),
            );
        }
        date
    }

    pub fn cpu(&mut self, node: &Node<'_>) -> Option<Cpu> {
        let text = match &node.value {
            Value::Integer(number) if *number >= 0 => number.to_string(),
            Value::Float(number) if *number >= 0.0 => number.to_string(),
            Value::String(text) | Value::Plain(text) => text.to_string(),
            _ => {
                self.wrong_type(node, "a number of CPU cores");
                return None;
            }
        };
        self.quantity(node, Cpu::parse(&text))
    }

    pub fn byte_size(&mut self, node: &Node<'_>) -> Option<ByteSize> {
        let parsed = match &node.value {
            Value::Integer(number) => u64::try_from(*number)
                .map(ByteSize::from_bytes)
                .map_err(|_| format!("`{number}` is not a size")),
            Value::String(text) | Value::Plain(text) => ByteSize::parse(text),
            _ => {
                self.wrong_type(node, "a size such as \"50G\"");
                return None;
            }
        };
        self.quantity(node, parsed)
    }

    fn quantity<T>(&mut self, node: &Node<'_>, parsed: Result<T, String>) -> Option<T> {
        parsed
            .map_err(|message| self.invalid(Code::InvalidValue, node.span, message))
            .ok()
    }

    /// A `{ cpu, memory, storage }` table.
    pub fn resources(&mut self, node: &Node<'_>) -> Option<Spanned<Resources>> {
        let mut fields = self.table(node, "resources")?;
        let cpu = self
            .required(&mut fields, "cpu")
            .and_then(|node| self.cpu(node));
        let memory = self
            .required(&mut fields, "memory")
            .and_then(|node| self.byte_size(node));
        let storage = self
            .required(&mut fields, "storage")
            .and_then(|node| self.byte_size(node));
        self.finish(fields);
        Some(Spanned::new(
            Resources {
                cpu: cpu?,
                memory: memory?,
                storage: storage?,
            },
            node.span,
        ))
    }

    /// A map from names to values, such as `[regions.ng-lagos]`.
    pub fn map<T>(
        &mut self,
        node: &Node<'_>,
        what: &str,
        mut value: impl FnMut(&mut Ctx, &Node<'_>) -> Option<T>,
    ) -> Vec<(Spanned<String>, T)> {
        let Some(entries) = node.as_table() else {
            self.wrong_type(node, &format!("a table of {what}"));
            return Vec::new();
        };
        entries
            .iter()
            .filter_map(|entry| {
                let value = value(self, &entry.value)?;
                Some((Spanned::new(entry.key.to_string(), entry.key_span), value))
            })
            .collect()
    }
}

/// `a`, `b` or `c`, for messages.
pub fn quoted_list(words: &[&str]) -> String {
    match words {
        [] => "none".to_string(),
        [only] => format!("`{only}`"),
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(|word| format!("`{word}`")).collect();
            format!("{} or `{last}`", rest.join(", "))
        }
    }
}
