//! YAML files to [`Node`] trees, from saphyr-parser's event stream.
//!
//! Building the tree here, rather than through a serde deserializer, is what lets us keep a
//! span on every key and value, expand aliases within a budget (the billion-laughs document
//! is an error, not a hang), bound nesting, reject duplicate keys, and leave plain scalars
//! untyped until a field says what it expects.

use std::{borrow::Cow, collections::HashMap};

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YamlSpan};

use crate::{
    diag::{Code, Diagnostic, FileId, Span},
    load::{Entry, Limits, Node, Value},
};

/// Parses one YAML file holding at most one document; an empty file is an empty table.
pub fn parse<'a>(file: FileId, text: &'a str, limits: &Limits) -> Result<Node<'a>, Diagnostic> {
    let offsets = Offsets::new(text);
    let mut builder = Builder {
        file,
        limits,
        offsets: &offsets,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        root: None,
        documents: 0,
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|error| {
            let at = offsets.byte(error.marker().index());
            Diagnostic::error(
                Code::Parse,
                Span::new(file, at..at),
                format!("invalid YAML: {}", error.info()),
            )
        })?;
        builder.event(event, span)?;
    }
    Ok(builder.root.unwrap_or(Node {
        span: Span::new(file, 0..0),
        value: Value::Table(Vec::new()),
    }))
}

/// Maps the parser's character indices to byte offsets.
struct Offsets {
    /// Byte offset of each character, for non-ASCII text; ASCII maps one to one.
    chars: Option<Vec<u32>>,
    len: usize,
}

impl Offsets {
    fn new(text: &str) -> Offsets {
        let chars = (!text.is_ascii()).then(|| {
            text.char_indices()
                .map(|(offset, _)| offset as u32)
                .collect()
        });
        Offsets {
            chars,
            len: text.len(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.chars {
            None => char_index.min(self.len),
            Some(chars) => chars
                .get(char_index)
                .map_or(self.len, |&offset| offset as usize),
        }
    }
}

/// A collection being built.
enum Frame<'a> {
    Sequence {
        start: usize,
        anchor: usize,
        items: Vec<Node<'a>>,
    },
    Mapping {
        start: usize,
        anchor: usize,
        entries: Vec<Entry<'a>>,
        key: Option<(Cow<'a, str>, Span)>,
        /// Index of the keys, made once a mapping is large enough that scanning is slow.
        index: Option<HashMap<Cow<'a, str>, Span>>,
    },
}

/// Mappings with more keys than this look duplicates up in a hash map.
const SCAN_LIMIT: usize = 16;

struct Builder<'a, 'o> {
    file: FileId,
    limits: &'o Limits,
    offsets: &'o Offsets,
    stack: Vec<Frame<'a>>,
    /// Anchored nodes and their sizes in nodes, for alias expansion.
    anchors: HashMap<usize, (Node<'a>, usize)>,
    /// Nodes made so far, counting every copy an alias makes.
    nodes: usize,
    root: Option<Node<'a>>,
    documents: usize,
}

impl<'a> Builder<'a, '_> {
    fn span(&self, span: YamlSpan) -> Span {
        Span::new(
            self.file,
            self.offsets.byte(span.start.index())..self.offsets.byte(span.end.index()),
        )
    }

    fn error(&self, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(Code::Parse, span, message)
    }

    fn count(&mut self, nodes: usize, span: Span) -> Result<(), Diagnostic> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > self.limits.max_yaml_nodes {
            return Err(Diagnostic::error(
                Code::TooLarge,
                span,
                format!(
                    "the document expands to more than {} values",
                    self.limits.max_yaml_nodes
                ),
            )
            .with_help("YAML aliases are expanded; an alias of an alias multiplies the size"));
        }
        Ok(())
    }

    fn event(&mut self, event: Event<'a>, yaml_span: YamlSpan) -> Result<(), Diagnostic> {
        let span = self.span(yaml_span);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(self
                        .error(span, "a fleet file holds one YAML document")
                        .with_help("put each entity in a file of its own"));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, span)?;
                let is_str_tag = tag
                    .as_ref()
                    .is_some_and(|tag| tag.is_yaml_core_schema() && tag.suffix == "str");
                let value = if style == ScalarStyle::Plain && !is_str_tag {
                    Value::Plain(text)
                } else {
                    Value::String(text)
                };
                self.finish(Node { span, value }, anchor, 1)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open(span)?;
                self.stack.push(Frame::Sequence {
                    start: span.start as usize,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.open(span)?;
                self.stack.push(Frame::Mapping {
                    start: span.start as usize,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                    index: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let frame = self.stack.pop().expect("the parser balances collections");
                // A flow collection ends at its bracket; a block one at its last value, not
                // at the next token (which may be lines further down).
                let end = if span.start < span.end {
                    span.end as usize
                } else {
                    last_end(&frame).unwrap_or(span.end as usize)
                };
                let (start, anchor, value) = match frame {
                    Frame::Sequence {
                        start,
                        anchor,
                        items,
                    } => (start, anchor, Value::Array(items)),
                    Frame::Mapping {
                        start,
                        anchor,
                        entries,
                        ..
                    } => (start, anchor, Value::Table(entries)),
                };
                let node = Node {
                    span: Span::new(self.file, start..end.max(start)),
                    value,
                };
                let size = node_count(&node);
                self.finish(node, anchor, size)?;
            }
            Event::Alias(anchor) => {
                let Some((node, size)) = self.anchors.get(&anchor).cloned() else {
                    return Err(self.error(span, "alias to an unknown anchor"));
                };
                self.count(size, span)?;
                // The copy is reported where the alias is written.
                let node = Node { span, ..node };
                self.finish(node, 0, size)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }

    fn open(&mut self, span: Span) -> Result<(), Diagnostic> {
        self.count(1, span)?;
        if self.stack.len() >= self.limits.max_depth {
            return Err(self.error(
                span,
                format!("nesting is deeper than {} levels", self.limits.max_depth),
            ));
        }
        if let Some(Frame::Mapping { key: None, .. }) = self.stack.last() {
            return Err(self.error(span, "a mapping key must be a scalar"));
        }
        Ok(())
    }

    /// Places a finished node in its parent, or makes it the document's root.
    fn finish(&mut self, node: Node<'a>, anchor: usize, size: usize) -> Result<(), Diagnostic> {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Sequence { items, .. }) => items.push(node),
            Some(Frame::Mapping {
                entries,
                key,
                index,
                ..
            }) => match key.take() {
                None => {
                    let text = match node.value {
                        Value::String(text) | Value::Plain(text) => text,
                        _ => return Err(self.error(node.span, "a mapping key must be a scalar")),
                    };
                    if index.is_none() && entries.len() >= SCAN_LIMIT {
                        let keys = entries
                            .iter()
                            .map(|entry| (entry.key.clone(), entry.key_span));
                        *index = Some(keys.collect());
                    }
                    let first = match index {
                        Some(index) => index.get(&text).copied(),
                        None => entries
                            .iter()
                            .find(|entry| entry.key == text)
                            .map(|entry| entry.key_span),
                    };
                    if let Some(first) = first {
                        return Err(self
                            .error(node.span, format!("duplicate key `{text}`"))
                            .with_label("second definition")
                            .with_secondary(first, "first defined here"));
                    }
                    if let Some(index) = index {
                        index.insert(text.clone(), node.span);
                    }
                    *key = Some((text, node.span));
                }
                Some((key, key_span)) => entries.push(Entry {
                    key,
                    key_span,
                    value: node,
                }),
            },
        }
        Ok(())
    }
}

/// Where the last value of a collection ends.
fn last_end(frame: &Frame<'_>) -> Option<usize> {
    let last = match frame {
        Frame::Sequence { items, .. } => items.last(),
        Frame::Mapping { entries, .. } => entries.last().map(|entry| &entry.value),
    };
    last.map(|node| node.span.end as usize)
}

fn node_count(node: &Node<'_>) -> usize {
    let mut count = 0;
    node.walk(&mut |_| count += 1);
    count
}
