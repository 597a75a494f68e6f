//! The JSON Schemas under `schemas/` are what `model` generates, and they name exactly the
//! fields the decoder accepts, so editors and `wakafleet validate` agree.

mod common;

use std::{collections::BTreeSet, path::Path};

use serde_json::{Map, Value, json};
use wakafleet::{
    diag::Code,
    load::Limits,
    model::{FILE_KINDS, schema, schema_text},
    source, validate,
};

const UNKNOWN: &str = "zzzzzz_unknown";

#[test]
fn checked_in_schemas_match_the_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    for kind in FILE_KINDS {
        let path = root.join(format!("{kind}.schema.json"));
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = schema_text(kind).expect("a schema per kind");
        assert!(
            checked_in == generated,
            "{} differs from what the model generates; run `cargo run -- schema` and commit",
            path.display()
        );
    }
    let state = std::fs::read_to_string(root.join("state.schema.json")).unwrap_or_default();
    assert!(
        state == wakafleet::plan::snapshot::schema_text(),
        "schemas/state.schema.json differs from plan::snapshot; run `cargo run -- schema` and commit"
    );
    let openapi = std::fs::read_to_string(root.join("openapi.json")).unwrap_or_default();
    assert!(
        openapi == wakafleet::http::openapi::text(),
        "schemas/openapi.json differs from what the API's code generates; run `cargo run -- schema` and commit"
    );
}

/// Follows `$ref`, `allOf` and `anyOf` to the object schema a property stands for, if any.
fn object_schema<'a>(schema: &'a Value, definitions: &'a Map<String, Value>) -> Option<&'a Value> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().expect("a $ref has a name");
        return object_schema(&definitions[name], definitions);
    }
    for combinator in ["allOf", "anyOf"] {
        if let Some(options) = schema.get(combinator).and_then(Value::as_array) {
            return options
                .iter()
                .find_map(|option| object_schema(option, definitions));
        }
    }
    (schema.get("type") == Some(&json!("object"))).then_some(schema)
}

/// A document with every property the schema names, plus one unknown key per table;
/// records the property names of each table it makes.
fn fill(
    schema: &Value,
    definitions: &Map<String, Value>,
    tables: &mut Vec<BTreeSet<String>>,
) -> Value {
    let Some(object) = object_schema(schema, definitions) else {
        return json!("x");
    };
    let mut document = Map::new();
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        tables.push(properties.keys().cloned().collect());
        for (name, property) in properties {
            document.insert(name.clone(), fill(property, definitions, tables));
        }
        document.insert(UNKNOWN.to_string(), json!("x"));
    } else if let Some(values) = object.get("additionalProperties").filter(|v| v.is_object()) {
        document.insert("entry".to_string(), fill(values, definitions, tables));
    }
    Value::Object(document)
}

#[test]
fn schemas_name_exactly_the_fields_the_decoder_accepts() {
    for kind in FILE_KINDS {
        let schema = serde_json::to_value(schema(kind).expect("a schema per kind")).expect("JSON");
        let definitions = schema
            .get("definitions")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut tables = Vec::new();
        let document = fill(&schema, &definitions, &mut tables);

        // JSON is YAML, so the document can be validated as a YAML fleet file.
        let fleet = common::minimal_fleet();
        let path = match *kind {
            "fleet" => "fleet.yaml".to_string(),
            kind => format!("{kind}s/x.yaml"),
        };
        if *kind == "fleet" {
            std::fs::remove_file(fleet.path().join("fleet.toml")).expect("remove fleet.toml");
        }
        common::write(fleet.path(), &path, document.to_string());
        let inputs = source::read_folder(fleet.path(), &Limits::default()).expect("read fleet");
        let validation = validate::check(inputs, &Limits::default());

        let mut accepted: Vec<BTreeSet<String>> = Vec::new();
        for diagnostic in &validation.diagnostics {
            if diagnostic.code != Code::UnknownField {
                continue;
            }
            assert_eq!(
                diagnostic.message,
                format!("unknown field `{UNKNOWN}`"),
                "{kind}"
            );
            let help = diagnostic.help.as_deref().expect("unknown fields get help");
            let list = help
                .strip_prefix("known fields are ")
                .expect("a list of fields");
            accepted.push(
                list.split(['`', ',', ' '])
                    .filter(|word| !word.is_empty() && *word != "or")
                    .map(str::to_string)
                    .collect(),
            );
        }
        assert!(!tables.is_empty(), "the schema of `{kind}` names no table");
        tables.sort();
        accepted.sort();
        assert_eq!(
            accepted, tables,
            "the decoder and the schema of `{kind}` disagree"
        );
    }
}
