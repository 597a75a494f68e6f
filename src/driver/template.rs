//! The environment of an instance's containers, rendered with minijinja from a template
//! (`templates/environment.env`): one `VARIABLE=value` per line; a value `env:NAME` is a
//! secret, read from wakafleet's own environment only when the containers are made.

use std::collections::BTreeMap;

use crate::{
    driver::{Error, Target},
    model::{Fleet, Instance},
    validate,
};

/// The template wakafleet ships, used when a fleet brings none.
pub const DEFAULT: &str = include_str!("../../templates/environment.env");

/// What a template sees of an instance.
pub fn context(instance: &Instance) -> serde_json::Value {
    serde_json::json!({
        "instance": {
            "name": instance.name.value,
            "type": instance.kind.as_str(),
            "partner": instance.partner.value,
            "tenant": instance.tenant.as_ref().map(|tenant| tenant.value.clone()),
            "region": instance.region.value,
            "data_residency": instance.data_residency.value,
            "suites": instance.suites,
            "capabilities": instance.capabilities,
            "custom_domain": instance.custom_domain.as_ref().map(|domain| domain.value.clone()),
            "ssl": instance.ssl,
        }
    })
}

/// A rendered environment: plain variables, and secrets as `env:NAME` references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub environment: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
}

/// Renders `template` and splits it into plain variables and secret references.
pub fn render(template: &str, context: &serde_json::Value) -> Result<Rendered, Error> {
    let mut environment = minijinja::Environment::new();
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let text = environment
        .render_str(template, minijinja::value::Serde(context))
        .map_err(|error| Error::Invalid(format!("the environment template: {error}")))?;
    let mut plain = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').ok_or_else(|| {
            Error::Invalid(format!(
                "the environment template's line {} renders as `{line}`, not VARIABLE=value",
                number + 1
            ))
        })?;
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(Error::Invalid(format!(
                "the environment template sets `{name}`; names are A-Z, 0-9 and _"
            )));
        }
        if value.starts_with("env:") {
            secrets.insert(name.to_string(), value.to_string());
        } else {
            plain.insert(name.to_string(), value.to_string());
        }
    }
    Ok(Rendered {
        environment: plain,
        secrets,
    })
}

/// What the driver should make of `instance` at `version`, by the fleet and the template.
pub fn target(
    fleet: &Fleet,
    instance: &Instance,
    version: &semver::Version,
    template: &str,
) -> Result<Target, Error> {
    let release = fleet.releases.get(version).ok_or_else(|| {
        Error::Invalid(format!(
            "instance `{}`: there is no release {version} in the catalogue",
            instance.name.value
        ))
    })?;
    let resources = validate::resources_of(fleet, instance).ok_or_else(|| {
        Error::Invalid(format!(
            "instance `{}` has neither a size nor resources",
            instance.name.value
        ))
    })?;
    let Rendered {
        environment,
        secrets,
    } = render(template, &context(instance))?;
    Ok(Target {
        instance: instance.name.value.clone(),
        version: version.clone(),
        image: release.image.clone(),
        migrations: fleet.migrations_through(version),
        resources,
        environment,
        secrets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_kept_apart_and_bad_lines_refused() {
        let context = serde_json::json!({"name": "web"});
        let Rendered {
            environment: plain,
            secrets,
        } = render("A={{ name }}\n# comment\n\nKEY=env:WEB_KEY\n", &context).expect("rendered");
        assert_eq!(
            plain,
            BTreeMap::from([("A".to_string(), "web".to_string())])
        );
        assert_eq!(
            secrets,
            BTreeMap::from([("KEY".to_string(), "env:WEB_KEY".to_string())])
        );
        assert!(render("no equals sign", &context).is_err());
        assert!(render("lower=case", &context).is_err());
        assert!(
            render("A={{ missing }}", &context).is_err(),
            "undefined names are errors"
        );
    }
}
