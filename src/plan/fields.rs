//! Entities as flat maps of field name to rendered value, so any two versions of an entity
//! can be compared field by field and the difference shown as FLEET-FORMAT.md writes it.

use std::collections::BTreeMap;

use crate::model::{Channel, Fleet, Instance, Partner, Release, Tenant};

/// The kinds of resource a plan acts on, in the order plans list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Partner,
    Tenant,
    Channel,
    Release,
    Instance,
}

impl ResourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Partner => "partner",
            ResourceType::Tenant => "tenant",
            ResourceType::Channel => "channel",
            ResourceType::Release => "release",
            ResourceType::Instance => "instance",
        }
    }
}

/// Field name to value as a fleet file would write it (lists as `a, b`).
pub type Fields = BTreeMap<String, String>;

fn put(fields: &mut Fields, name: &str, value: impl ToString) {
    fields.insert(name.to_string(), value.to_string());
}

/// A list as `a, b`; an empty list is left out, as a file would leave it out.
fn put_list(fields: &mut Fields, name: &str, values: &[String]) {
    if !values.is_empty() {
        put(fields, name, values.join(", "));
    }
}

pub fn partner(partner: &Partner) -> Fields {
    let mut fields = Fields::new();
    put(&mut fields, "name", &partner.name);
    put(&mut fields, "email", &partner.email);
    put(&mut fields, "state", partner.state);
    fields
}

pub fn tenant(tenant: &Tenant) -> Fields {
    let mut fields = Fields::new();
    put(&mut fields, "partner", &tenant.partner.value);
    put(&mut fields, "name", &tenant.name);
    put(&mut fields, "state", tenant.state);
    fields
}

pub fn channel(channel: &Channel) -> Fields {
    let mut fields = Fields::new();
    put(&mut fields, "mode", channel.mode);
    put(&mut fields, "track", channel.track);
    if let Some(window) = &channel.maintenance_window {
        let days: Vec<String> = window.days.iter().map(ToString::to_string).collect();
        put_list(&mut fields, "maintenance_window.days", &days);
        put(&mut fields, "maintenance_window.start", window.start);
        put(&mut fields, "maintenance_window.duration", window.duration);
        put(&mut fields, "maintenance_window.timezone", window.timezone);
    }
    let auto = channel.auto_approve;
    put(
        &mut fields,
        "auto_approve.security_patches",
        auto.security_patches,
    );
    put(&mut fields, "auto_approve.minor", auto.minor);
    put(&mut fields, "auto_approve.patch", auto.patch);
    put(
        &mut fields,
        "security.override_frozen",
        channel.security.override_frozen,
    );
    put_list(&mut fields, "notify", &channel.notify);
    fields
}

pub fn release(release: &Release) -> Fields {
    let mut fields = Fields::new();
    put(&mut fields, "status", release.status);
    put(&mut fields, "released", release.released);
    put(&mut fields, "breaking", release.breaking);
    put(&mut fields, "security_patch", release.security_patch);
    put(&mut fields, "severity", release.severity);
    put(&mut fields, "image", &release.image);
    if let Some(requirement) = &release.upgrade_from {
        put(&mut fields, "upgrade_from", &requirement.value);
    }
    put_list(&mut fields, "migrations", &release.migrations);
    put(&mut fields, "changelog", &release.changelog);
    fields
}

/// The configuration of an instance: every field but its version, state and resources,
/// which plans treat as upgrades, lifecycle changes and scaling.
pub fn instance_config(instance: &Instance) -> Fields {
    let mut fields = Fields::new();
    put(&mut fields, "type", instance.kind);
    put(&mut fields, "partner", &instance.partner.value);
    if let Some(tenant) = &instance.tenant {
        put(&mut fields, "tenant", &tenant.value);
    }
    put(&mut fields, "region", &instance.region.value);
    put_list(
        &mut fields,
        "data_residency",
        &instance.data_residency.value,
    );
    put_list(&mut fields, "suites", &instance.suites);
    put_list(&mut fields, "capabilities", &instance.capabilities);
    if let Some(domain) = &instance.custom_domain {
        put(&mut fields, "custom_domain", &domain.value);
    }
    put(&mut fields, "ssl", instance.ssl);
    put(&mut fields, "channel", &instance.channel.value);
    if let Some(backup) = &instance.backup {
        put(&mut fields, "backup.schedule", &backup.schedule);
        put(&mut fields, "backup.retain", backup.retain);
    }
    fields
}

/// Every partner, tenant, channel and release of a fleet, field by field.
pub fn entities(fleet: &Fleet) -> BTreeMap<(ResourceType, String), Fields> {
    let mut entities = BTreeMap::new();
    for (id, value) in &fleet.partners {
        entities.insert((ResourceType::Partner, id.clone()), partner(value));
    }
    for (id, value) in &fleet.tenants {
        entities.insert((ResourceType::Tenant, id.clone()), tenant(value));
    }
    for (id, value) in &fleet.channels {
        entities.insert((ResourceType::Channel, id.clone()), channel(value));
    }
    for (version, value) in &fleet.releases {
        entities.insert((ResourceType::Release, version.to_string()), release(value));
    }
    entities
}
