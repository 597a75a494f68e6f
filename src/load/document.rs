//! The spanned tree both parsers produce.

use std::borrow::Cow;

use crate::diag::Span;

/// A value of a fleet file and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Node<'a> {
    pub span: Span,
    pub value: Value<'a>,
}

/// What a node holds. TOML values arrive typed; YAML plain scalars stay text until the
/// field that reads them says what it expects, so `country: NO` is the country, not `false`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    /// A string: any TOML string, a quoted YAML scalar, or one tagged `!!str`.
    String(Cow<'a, str>),
    /// A YAML plain (unquoted) scalar.
    Plain(Cow<'a, str>),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// A TOML date, time or date-time.
    Datetime(::toml::value::Datetime),
    Array(Vec<Node<'a>>),
    Table(Vec<Entry<'a>>),
}

/// A key of a table with its span, and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<'a> {
    pub key: Cow<'a, str>,
    pub key_span: Span,
    pub value: Node<'a>,
}

impl Value<'_> {
    /// How the value is named in messages: "a string", "a table".
    pub fn describe(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Plain(text) if is_yaml_null(text) => "null",
            Value::Plain(_) => "a plain scalar",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }

    /// Whether this is YAML's null (`~`, `null` or nothing).
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Plain(text) if is_yaml_null(text))
    }
}

/// YAML 1.2 core schema nulls.
pub fn is_yaml_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

impl<'a> Node<'a> {
    /// The node as a table, if it is one.
    pub fn as_table(&self) -> Option<&[Entry<'a>]> {
        match &self.value {
            Value::Table(entries) => Some(entries),
            _ => None,
        }
    }

    /// Visits this node and every node below it, depth first.
    pub fn walk(&self, visit: &mut impl FnMut(&Node<'a>)) {
        visit(self);
        match &self.value {
            Value::Array(items) => items.iter().for_each(|item| item.walk(visit)),
            Value::Table(entries) => entries.iter().for_each(|entry| entry.value.walk(visit)),
            _ => {}
        }
    }
}
