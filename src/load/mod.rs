//! From `(path, bytes)` pairs to spanned documents, TOML and YAML alike.
//!
//! The loader owns the input limits of DESIGN.md: it turns oversized files, invalid UTF-8,
//! directories where files belong, hostile YAML aliases and deep nesting into diagnostics,
//! and parses each file into a [`Node`] tree whose every key and value keeps its span.
//! It never touches the disk (`source` reads files) and does not know what fields mean
//! (`validate` decodes documents into the model).

mod document;
mod toml;
mod yaml;

use crate::diag::{Code, Diagnostic, FileId, SourceMap, Span};

pub use document::{Entry, Node, Value};

/// One file handed over by a source, with its path relative to the fleet root (`/`-separated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub path: String,
    pub content: Content,
}

/// What a source found at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    /// Larger than the limit; the source did not read it.
    TooLarge {
        size: u64,
    },
    /// A directory, a symbolic link or something else that is not a regular file.
    NotAFile(&'static str),
}

/// Bounds on what the loader accepts, so hostile input costs little.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_entities: usize,
    /// Deepest nesting of tables and arrays in one file.
    pub max_depth: usize,
    /// Most nodes a YAML file may have once its aliases are expanded.
    pub max_yaml_nodes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_bytes: 1 << 20,
            max_entities: 100_000,
            max_depth: 32,
            max_yaml_nodes: 100_000,
        }
    }
}

/// The kind of entity a file holds, given by where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Fleet,
    Partner,
    Tenant,
    Channel,
    Release,
    Instance,
}

/// The folders of a fleet repository and the kind of file each holds.
pub const FOLDERS: &[(&str, Kind)] = &[
    ("partners", Kind::Partner),
    ("tenants", Kind::Tenant),
    ("channels", Kind::Channel),
    ("releases", Kind::Release),
    ("instances", Kind::Instance),
];

const EXTENSIONS: &[&str] = &["toml", "yaml", "yml"];

impl Kind {
    /// The kind of a path relative to the fleet root, or `None` for files wakafleet ignores
    /// (READMEs, CI configuration, anything hidden).
    pub fn of_path(path: &str) -> Option<Kind> {
        let (stem_path, extension) = path.rsplit_once('.')?;
        if !EXTENSIONS.contains(&extension) || path.split('/').any(|part| part.starts_with('.')) {
            return None;
        }
        if stem_path == "fleet" {
            return Some(Kind::Fleet);
        }
        let (folder, rest) = path.split_once('/')?;
        if rest.is_empty() {
            return None;
        }
        FOLDERS
            .iter()
            .find(|(name, _)| *name == folder)
            .map(|(_, kind)| *kind)
    }

    /// Whether a folder at this path may hold fleet files.
    pub fn is_fleet_folder(path: &str) -> bool {
        let top = path.split('/').next().unwrap_or(path);
        !path.split('/').any(|part| part.starts_with('.'))
            && FOLDERS.iter().any(|(name, _)| *name == top)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Fleet => "fleet",
            Kind::Partner => "partner",
            Kind::Tenant => "tenant",
            Kind::Channel => "channel",
            Kind::Release => "release",
            Kind::Instance => "instance",
        }
    }
}

/// The syntax of a file, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

/// A parsed file: its kind and its root node.
#[derive(Debug)]
pub struct Document<'a> {
    pub file: FileId,
    pub kind: Kind,
    pub root: Node<'a>,
}

/// The text of every fleet file, ready to be parsed.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sources: SourceMap,
    /// Files that hold text, with their kind and syntax.
    pub files: Vec<(FileId, Kind, Format)>,
    /// Problems found before parsing: sizes, encodings, things that are not files.
    pub diagnostics: Vec<Diagnostic>,
}

/// Sorts inputs into fleet files, checks the limits and the encoding, and keeps their text.
///
/// Inputs wakafleet ignores (see [`Kind::of_path`]) are dropped. Never fails: each problem
/// becomes a diagnostic and the file is left out.
pub fn read(mut inputs: Vec<Input>, limits: &Limits) -> Loaded {
    let mut loaded = Loaded::default();
    inputs.retain(|input| Kind::of_path(&input.path).is_some());
    inputs.sort_by(|a, b| a.path.cmp(&b.path));
    if inputs.len() > limits.max_entities {
        let root = loaded.sources.add(".", String::new());
        loaded.diagnostics.push(Diagnostic::error(
            Code::TooLarge,
            Span::file_start(root),
            format!(
                "the fleet has {} files, more than the limit of {}",
                inputs.len(),
                limits.max_entities
            ),
        ));
        return loaded;
    }
    if !inputs
        .iter()
        .any(|input| Kind::of_path(&input.path) == Some(Kind::Fleet))
    {
        let file = loaded.sources.add("fleet.toml", String::new());
        loaded.diagnostics.push(
            Diagnostic::error(
                Code::MissingField,
                Span::file_start(file),
                "the fleet has no fleet.toml",
            )
            .with_help(
                "a fleet folder holds fleet.toml (or fleet.yaml) with its regions and sizes",
            ),
        );
    }
    for input in inputs {
        let kind = Kind::of_path(&input.path).expect("inputs were filtered to fleet files");
        let format = if input.path.ends_with(".toml") {
            Format::Toml
        } else {
            Format::Yaml
        };
        match input.content {
            Content::Bytes(bytes) if bytes.len() as u64 > limits.max_file_bytes => {
                let size = bytes.len() as u64;
                too_large(&mut loaded, input.path, size, limits);
            }
            Content::Bytes(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    let file = loaded.sources.add(input.path, text);
                    loaded.files.push((file, kind, format));
                }
                Err(error) => {
                    let valid_up_to = error.utf8_error().valid_up_to();
                    let text = String::from_utf8_lossy(error.as_bytes()).into_owned();
                    let file = loaded.sources.add(input.path, text);
                    loaded.diagnostics.push(
                        Diagnostic::error(
                            Code::Parse,
                            Span::new(file, valid_up_to..valid_up_to + 1),
                            "the file is not valid UTF-8",
                        )
                        .with_label("invalid byte here")
                        .with_help("fleet files are UTF-8 text"),
                    );
                }
            },
            Content::TooLarge { size } => too_large(&mut loaded, input.path, size, limits),
            Content::NotAFile(what) => {
                let file = loaded.sources.add(input.path, String::new());
                loaded.diagnostics.push(Diagnostic::error(
                    Code::Parse,
                    Span::file_start(file),
                    format!("expected a file, found {what}"),
                ));
            }
        }
    }
    loaded
}

fn too_large(loaded: &mut Loaded, path: String, size: u64, limits: &Limits) {
    let file = loaded.sources.add(path, String::new());
    loaded.diagnostics.push(Diagnostic::error(
        Code::TooLarge,
        Span::file_start(file),
        format!(
            "the file is {size} bytes, more than the limit of {} bytes",
            limits.max_file_bytes
        ),
    ));
}

/// Parses every file of `loaded` into a document; a file that does not parse gives a
/// diagnostic instead.
pub fn parse<'a>(loaded: &'a Loaded, limits: &Limits) -> (Vec<Document<'a>>, Vec<Diagnostic>) {
    let mut documents = Vec::with_capacity(loaded.files.len());
    let mut diagnostics = Vec::new();
    for &(file, kind, format) in &loaded.files {
        match parse_file(&loaded.sources, file, format, limits) {
            Ok(root) => documents.push(Document { file, kind, root }),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    (documents, diagnostics)
}

/// Parses one file of a source map into its root node.
pub fn parse_file<'a>(
    sources: &'a SourceMap,
    file: FileId,
    format: Format,
    limits: &Limits,
) -> Result<Node<'a>, Diagnostic> {
    let text = sources.text(file);
    match format {
        Format::Toml => toml::parse(file, text, limits),
        Format::Yaml => yaml::parse(file, text, limits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_folders_and_extensions() {
        assert_eq!(Kind::of_path("fleet.toml"), Some(Kind::Fleet));
        assert_eq!(Kind::of_path("fleet.yml"), Some(Kind::Fleet));
        assert_eq!(Kind::of_path("instances/a.yaml"), Some(Kind::Instance));
        assert_eq!(
            Kind::of_path("instances/lagos/a.toml"),
            Some(Kind::Instance)
        );
        assert_eq!(Kind::of_path("releases/1.5.0.toml"), Some(Kind::Release));
        assert_eq!(Kind::of_path("README.md"), None);
        assert_eq!(Kind::of_path("instances/README.md"), None);
        assert_eq!(Kind::of_path(".github/workflows/plan.yml"), None);
        assert_eq!(Kind::of_path("instances/.hidden.toml"), None);
        assert_eq!(Kind::of_path("other/a.toml"), None);
        assert_eq!(Kind::of_path("instances.toml"), None);
    }
}
