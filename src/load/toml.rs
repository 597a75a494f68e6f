//! TOML files to [`Node`] trees, through the `toml` crate's spanned parser.

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use crate::{
    diag::{Code, Diagnostic, FileId, Span},
    load::{Entry, Limits, Node, Value},
};

/// Parses one TOML file. The parser guards its own recursion; our limit on nesting is
/// checked while converting, so both bound the work.
pub fn parse<'a>(file: FileId, text: &'a str, limits: &Limits) -> Result<Node<'a>, Diagnostic> {
    let table = DeTable::parse(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        Diagnostic::error(
            Code::Parse,
            Span::new(file, span),
            format!("invalid TOML: {}", error.message().trim_end()),
        )
    })?;
    // The root starts at its first key, not at the comments above it, as in YAML.
    let first_key = table.get_ref().keys().map(|key| key.span().start).min();
    let span = table.span();
    let span = first_key.unwrap_or(span.start)..span.end;
    let table = table.into_inner();
    let converter = Converter { file, limits };
    Ok(Node {
        span: Span::new(file, span),
        value: converter.table(table, 1)?,
    })
}

struct Converter<'l> {
    file: FileId,
    limits: &'l Limits,
}

impl Converter<'_> {
    fn table<'a>(&self, table: DeTable<'a>, depth: usize) -> Result<Value<'a>, Diagnostic> {
        let mut entries = Vec::with_capacity(table.len());
        for (key, value) in table {
            let key_span = Span::new(self.file, key.span());
            entries.push(Entry {
                key: key.into_inner(),
                key_span,
                value: self.node(value, depth)?,
            });
        }
        Ok(Value::Table(entries))
    }

    fn node<'a>(&self, value: Spanned<DeValue<'a>>, depth: usize) -> Result<Node<'a>, Diagnostic> {
        let span = Span::new(self.file, value.span());
        if depth > self.limits.max_depth {
            return Err(Diagnostic::error(
                Code::Parse,
                span,
                format!("nesting is deeper than {} levels", self.limits.max_depth),
            ));
        }
        let value = match value.into_inner() {
            DeValue::String(text) => Value::String(text),
            DeValue::Integer(integer) => {
                match i64::from_str_radix(integer.as_str(), integer.radix()) {
                    Ok(number) => Value::Integer(number),
                    Err(_) => {
                        return Err(Diagnostic::error(
                            Code::Parse,
                            span,
                            "integer does not fit in 64 bits",
                        ));
                    }
                }
            }
            DeValue::Float(float) => Value::Float(float.as_str().parse().unwrap_or(f64::NAN)),
            DeValue::Boolean(boolean) => Value::Boolean(boolean),
            DeValue::Datetime(datetime) => Value::Datetime(datetime),
            DeValue::Array(array) => {
                let mut items = Vec::with_capacity(array.len());
                for item in array {
                    items.push(self.node(item, depth + 1)?);
                }
                Value::Array(items)
            }
            DeValue::Table(table) => self.table(table, depth + 1)?,
        };
        Ok(Node { span, value })
    }
}
