//! The desired state of a fleet as plain data: what the files of one commit say.
//!
//! Types mirror the file format of FLEET-FORMAT.md field for field, so the JSON Schemas under
//! `schemas/` are generated from them (`wakafleet schema`). Values that later stages point
//! at in diagnostics or plans are [`Spanned`]. Nothing here reads files or checks references;
//! `validate` builds these values and `plan` compares them.

mod quantity;

use std::{collections::BTreeMap, fmt, sync::Arc};

use chrono::NaiveDate;
use schemars::JsonSchema;
use semver::{Version, VersionReq};

pub use quantity::{ByteSize, ClockTime, Cpu, CronSchedule, Minutes, TimeZone};

use crate::diag::Spanned;

/// A whole fleet: the fleet-wide settings and every entity, keyed by id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fleet {
    pub settings: Settings,
    pub partners: BTreeMap<String, Partner>,
    pub tenants: BTreeMap<String, Tenant>,
    pub channels: BTreeMap<String, Channel>,
    /// Ordered by semver precedence, oldest first.
    pub releases: BTreeMap<Version, Release>,
    /// Shared with the decode cache (`validate::Cache`), so a fleet read again after a
    /// commit that changed one file copies no unchanged instance, and `plan::Memo` can tell
    /// an unchanged instance by its address.
    pub instances: BTreeMap<String, Arc<Instance>>,
}

impl Fleet {
    /// The migrations an instance at `version` has applied: those of every release up to and
    /// including it, releases in semver order, each release's list in its order.
    pub fn migrations_through(&self, version: &Version) -> Vec<String> {
        self.releases
            .range(..=version)
            .flat_map(|(_, release)| release.migrations.iter().cloned())
            .collect()
    }
}

/// Fleet-wide settings (`fleet.toml`): regions and instance sizes.
#[derive(Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(title = "wakafleet fleet settings", deny_unknown_fields)]
pub struct Settings {
    /// Name of the fleet.
    pub name: String,
    /// Regions instances can be placed in, by name (e.g. `ng-lagos`).
    #[serde(default)]
    pub regions: BTreeMap<String, Region>,
    /// Instance sizes, by name (e.g. `small`, `medium`).
    #[serde(default)]
    pub sizes: BTreeMap<String, Resources>,
}

/// A region: where its instances run and where their data and backups live.
#[derive(Clone, Debug, PartialEq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Region {
    /// ISO 3166-1 alpha-2 country code, e.g. `NG`.
    #[schemars(regex(pattern = "^[A-Z]{2}$"))]
    pub country: Spanned<String>,
    /// Docker engine endpoint for this region's instances (`unix://`, `tcp://` or `env:NAME`).
    pub docker: Spanned<String>,
    /// Admin URL of the region's PostgreSQL server for instance databases; use `env:NAME`.
    pub database: Spanned<String>,
    /// Folder where this region's backups are kept.
    pub backups: String,
    /// What the region can host in total.
    pub capacity: Spanned<Resources>,
}

/// CPU, memory and storage of an instance, a size or a region's capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Resources {
    pub cpu: Cpu,
    pub memory: ByteSize,
    pub storage: ByteSize,
}

impl Resources {
    /// The sum of two amounts, saturating instead of overflowing.
    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            cpu: Cpu::from_millicores(self.cpu.millicores().saturating_add(other.cpu.millicores())),
            memory: ByteSize::from_bytes(self.memory.bytes().saturating_add(other.memory.bytes())),
            storage: ByteSize::from_bytes(
                self.storage.bytes().saturating_add(other.storage.bytes()),
            ),
        }
    }
}

macro_rules! keywords {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident = $text:literal,)* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, JsonSchema)]
        pub enum $name {
            $($(#[$variant_meta])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            /// The keyword as written in fleet files.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// The value a keyword names, if any.
            pub fn parse(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Keyword for $name {
            const ALL: &[$name] = $name::ALL;

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }

            fn parse(text: &str) -> Option<$name> {
                $name::parse(text)
            }
        }
    };
}

/// An enum written as one of a fixed set of words in fleet files.
pub trait Keyword: Copy + 'static {
    const ALL: &[Self];
    fn as_str(self) -> &'static str;
    fn parse(text: &str) -> Option<Self>;
}

keywords! {
    /// Whether a partner or tenant is in service.
    #[derive(Default)]
    pub enum Standing {
        #[default]
        Active = "active",
        Suspended = "suspended",
    }
}

/// A partner (`partners/<id>.toml`): a company that resells or deploys the platform.
#[derive(Clone, Debug, PartialEq, JsonSchema)]
#[schemars(title = "wakafleet partner", deny_unknown_fields)]
pub struct Partner {
    /// Unique id; equals the file name without extension.
    pub id: Spanned<String>,
    pub name: String,
    /// Operations contact.
    #[schemars(email)]
    pub email: String,
    /// A suspended partner suspends all of its instances.
    #[serde(default)]
    pub state: Standing,
}

/// A tenant (`tenants/<id>.toml`): a customer of a partner.
#[derive(Clone, Debug, PartialEq, JsonSchema)]
#[schemars(title = "wakafleet tenant", deny_unknown_fields)]
pub struct Tenant {
    /// Unique id; equals the file name without extension.
    pub id: Spanned<String>,
    /// Id of the partner this tenant belongs to.
    pub partner: Spanned<String>,
    pub name: String,
    /// A suspended tenant suspends all of its instances.
    #[serde(default)]
    pub state: Standing,
}

keywords! {
    /// How a channel decides an instance's version.
    pub enum ChannelMode {
        /// The newest release of the channel's track, in the maintenance window.
        AutoUpdate = "auto-update",
        /// The `version` in the instance file; a merged change is the approval.
        ManualApproval = "manual-approval",
        /// The pinned `version`; only critical security patches when allowed.
        Frozen = "frozen",
    }
}

keywords! {
    /// Which releases an auto-update channel follows.
    #[derive(Default)]
    pub enum Track {
        #[default]
        Stable = "stable",
        Beta = "beta",
    }
}

keywords! {
    /// A day of the week.
    pub enum Day {
        Mon = "mon",
        Tue = "tue",
        Wed = "wed",
        Thu = "thu",
        Fri = "fri",
        Sat = "sat",
        Sun = "sun",
    }
}

impl Day {
    pub fn to_chrono(self) -> chrono::Weekday {
        match self {
            Day::Mon => chrono::Weekday::Mon,
            Day::Tue => chrono::Weekday::Tue,
            Day::Wed => chrono::Weekday::Wed,
            Day::Thu => chrono::Weekday::Thu,
            Day::Fri => chrono::Weekday::Fri,
            Day::Sat => chrono::Weekday::Sat,
            Day::Sun => chrono::Weekday::Sun,
        }
    }
}

/// An update channel (`channels/<name>.toml`): the policy that moves instances between releases.
#[derive(Clone, Debug, PartialEq, JsonSchema)]
#[schemars(title = "wakafleet update channel", deny_unknown_fields)]
pub struct Channel {
    /// Unique name; equals the file name without extension.
    pub name: Spanned<String>,
    pub mode: ChannelMode,
    /// Auto-update only: the release status followed.
    #[serde(default)]
    pub track: Track,
    /// When approved work may run; without it, approved work runs at once.
    pub maintenance_window: Option<Window>,
    /// Auto-update only: which kinds of release run without a new commit.
    #[serde(default)]
    pub auto_approve: AutoApprove,
    #[serde(default)]
    pub security: Security,
    /// Email addresses told about this channel's upgrades.
    #[serde(default)]
    pub notify: Vec<String>,
}

/// A weekly maintenance window in a time zone.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Window {
    /// Days the window opens on (local time); every day when left out.
    #[serde(default)]
    pub days: Vec<Day>,
    /// Local opening time, `HH:MM`.
    pub start: ClockTime,
    /// How long the window stays open, e.g. `90m`, `4h`, `1h30m` (at most a week).
    pub duration: Minutes,
    /// IANA time zone name, e.g. `Africa/Lagos`.
    pub timezone: TimeZone,
}

/// Which releases an auto-update channel applies without a new commit.
/// Breaking releases always need the instance's `approved_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AutoApprove {
    /// Apply security releases at once, outside the maintenance window.
    #[serde(default = "yes")]
    pub security_patches: bool,
    #[serde(default = "yes")]
    pub minor: bool,
    #[serde(default = "yes")]
    pub patch: bool,
}

impl Default for AutoApprove {
    fn default() -> AutoApprove {
        AutoApprove {
            security_patches: true,
            minor: true,
            patch: true,
        }
    }
}

#[allow(dead_code, reason = "named by the schema attributes as a default")]
fn yes() -> bool {
    true
}

/// Security overrides of a channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Security {
    /// Frozen channels only: allow critical security patches of the same major.minor.
    #[serde(default)]
    pub override_frozen: bool,
}

keywords! {
    /// Where a release is in its life.
    pub enum ReleaseStatus {
        Draft = "draft",
        Beta = "beta",
        Stable = "stable",
        Deprecated = "deprecated",
    }
}

keywords! {
    /// How severe the problem a security release fixes is.
    #[derive(Default)]
    pub enum Severity {
        #[default]
        None = "none",
        Low = "low",
        Medium = "medium",
        High = "high",
        Critical = "critical",
    }
}

/// A platform release (`releases/<version>.toml`).
#[derive(Clone, Debug, PartialEq, JsonSchema)]
#[schemars(title = "wakafleet release", deny_unknown_fields)]
pub struct Release {
    /// Semantic version; equals the file name without extension.
    #[schemars(with = "String")]
    pub version: Spanned<Version>,
    pub status: ReleaseStatus,
    /// Release date, `YYYY-MM-DD`.
    #[schemars(with = "String", extend("format" = "date"))]
    pub released: NaiveDate,
    /// Needs an instance's `approved_version` to be applied by an auto-update channel.
    #[serde(default)]
    pub breaking: bool,
    #[serde(default)]
    pub security_patch: bool,
    #[serde(default)]
    pub severity: Severity,
    /// Container image of the platform at this release.
    pub image: String,
    /// Semver requirement on the current version for an upgrade to this release; when left
    /// out, any older version may upgrade.
    #[schemars(with = "Option<String>")]
    pub upgrade_from: Option<Spanned<VersionReq>>,
    /// Database migrations this release applies, in order.
    #[serde(default)]
    pub migrations: Vec<String>,
    #[serde(default)]
    pub changelog: String,
}

keywords! {
    /// How an instance is deployed.
    pub enum InstanceType {
        SharedSaas = "shared-saas",
        PartnerDeployed = "partner-deployed",
        SelfHostedEnterprise = "self-hosted-enterprise",
    }
}

keywords! {
    /// The lifecycle state an operator asks for.
    #[derive(Default)]
    pub enum InstanceState {
        #[default]
        Active = "active",
        Suspended = "suspended",
        Terminated = "terminated",
    }
}

/// A platform instance (`instances/<name>.toml`).
#[derive(Clone, Debug, PartialEq, JsonSchema)]
#[schemars(title = "wakafleet instance", deny_unknown_fields)]
pub struct Instance {
    /// DNS label (`[a-z0-9-]`, 1 to 63 characters); equals the file name without extension.
    #[schemars(regex(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: InstanceType,
    /// Id of the owning partner.
    pub partner: Spanned<String>,
    /// Id of the tenant; required unless the type is `shared-saas`.
    pub tenant: Option<Spanned<String>>,
    /// Name of a region of `fleet.toml`.
    pub region: Spanned<String>,
    /// Countries (ISO 3166-1 alpha-2) where the instance's data may live.
    pub data_residency: Spanned<Vec<String>>,
    #[serde(default)]
    pub suites: Vec<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Host name, unique across the fleet.
    pub custom_domain: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub ssl: bool,
    /// Name of a size of `fleet.toml`; give `size` or `resources`, not both.
    pub size: Option<Spanned<String>>,
    /// Explicit resources; give `size` or `resources`, not both.
    pub resources: Option<Spanned<Resources>>,
    /// Name of the update channel.
    pub channel: Spanned<String>,
    /// Required for manual-approval and frozen channels; the floor for auto-update.
    #[schemars(with = "Option<String>")]
    pub version: Option<Spanned<Version>>,
    /// Approves breaking upgrades up to this version.
    #[schemars(with = "Option<String>")]
    pub approved_version: Option<Spanned<Version>>,
    #[serde(default)]
    pub allow_downgrade: bool,
    #[serde(default)]
    pub state: InstanceState,
    pub backup: Option<Backup>,
}

/// When an instance is backed up and how many backups are kept.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Backup {
    /// Five-field cron expression, in the channel's window time zone, else UTC.
    pub schedule: CronSchedule,
    /// How many backups to keep.
    #[serde(default = "seven")]
    #[schemars(range(min = 1))]
    pub retain: u32,
}

#[allow(dead_code, reason = "named by the schema attributes as a default")]
fn seven() -> u32 {
    7
}

/// The default number of backups kept.
pub const DEFAULT_RETAIN: u32 = 7;

/// The kinds of fleet file, one JSON Schema each.
pub const FILE_KINDS: &[&str] = &[
    "fleet", "partner", "tenant", "channel", "release", "instance",
];

/// The JSON Schema of a kind of fleet file, by the names of [`FILE_KINDS`].
pub fn schema(kind: &str) -> Option<schemars::Schema> {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = match kind {
        "fleet" => generator.into_root_schema_for::<Settings>(),
        "partner" => generator.into_root_schema_for::<Partner>(),
        "tenant" => generator.into_root_schema_for::<Tenant>(),
        "channel" => generator.into_root_schema_for::<Channel>(),
        "release" => generator.into_root_schema_for::<Release>(),
        "instance" => generator.into_root_schema_for::<Instance>(),
        _ => return None,
    };
    Some(schema)
}

/// The JSON Schema of a kind of fleet file as the text checked in under `schemas/`.
pub fn schema_text(kind: &str) -> Option<String> {
    let schema = schema(kind)?;
    Some(serde_json::to_string_pretty(&schema).expect("schemas serialize to JSON") + "\n")
}
