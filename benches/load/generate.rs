//! A deterministic synthetic fleet, written as files and committed to a packed git repository.
//!
//! The shapes are those of the example fleet in `fleet/`: the same four regions and sizes,
//! the same four channels, partners, tenants, a release catalogue with `upgrade_from` chains,
//! and instances that use every field of FLEET-FORMAT.md. About 80% of the instance files
//! are TOML and 20% YAML (`.yaml` and `.yml`). Everything is chosen so the fleet validates
//! with no error and no warning.

use std::{fmt::Write as _, fs, path::Path, process::Command};

/// How big a fleet to make.
pub struct Shape {
    pub instances: usize,
    pub partners: usize,
    pub tenants: usize,
}

impl Shape {
    /// ~200 partners and ~2000 tenants for 10,000 instances, scaled with the instance count.
    pub fn for_instances(instances: usize) -> Shape {
        Shape {
            instances,
            partners: (instances / 50).max(5),
            tenants: (instances / 5).max(10),
        }
    }
}

/// What was generated, for the report.
pub struct Summary {
    pub files: usize,
    pub toml_files: usize,
    pub yaml_files: usize,
    pub bytes: u64,
    pub releases: usize,
    pub commit: String,
    pub pack_bytes: u64,
    pub loose_objects: usize,
}

/// splitmix64: small, fast and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const REGIONS: &[(&str, &str, &str)] = &[
    ("ng-lagos", "NG", "lagos"),
    ("ng-abuja", "NG", "abuja"),
    ("gh-accra", "GH", "accra"),
    ("ke-nairobi", "KE", "nairobi"),
];

const SIZES: &[(&str, &str, &str, &str)] = &[
    ("small", "1.0", "2G", "20G"),
    ("medium", "2.0", "4G", "50G"),
    ("large", "4.0", "8G", "100G"),
    ("xlarge", "8.0", "16G", "200G"),
];

const SUITES: &[&str] = &["commerce", "logistics", "finance"];
const CAPABILITIES: &[&str] = &[
    "pos",
    "inventory",
    "payments",
    "delivery",
    "invoicing",
    "loyalty",
];
const ROLES: &[&str] = &["shop", "production", "staging", "erp", "pilot", "pos"];
const WORDS: &[&str] = &[
    "Acme",
    "Kente",
    "Sahel",
    "Savanna",
    "Baobab",
    "Harmattan",
    "Lagoon",
    "Zuma",
    "Volta",
    "Rift",
    "Kilimanjaro",
    "Niger",
    "Benue",
    "Ashanti",
    "Serengeti",
    "Sahara",
];
const TRADES: &[&str] = &[
    "Fashion House",
    "Foods",
    "Pharmacy Group",
    "Hardware & Supplies",
    "Fresh Markets",
    "Electronics",
    "Books",
    "Motors",
];

/// One release of the catalogue.
struct Release {
    version: String,
    status: &'static str,
    released: String,
    breaking: bool,
    security_patch: bool,
    severity: &'static str,
    upgrade_from: String,
    migrations: Vec<String>,
}

/// 1.0.0 to 3.4.1 (minors 0..5, patches 0..2) and a 4.0.0 beta: 31 releases, each upgrading
/// from the previous minor (or major) line.
fn releases() -> Vec<Release> {
    let mut releases = Vec::new();
    let mut migration = 1;
    for major in 1..=3u32 {
        for minor in 0..5u32 {
            for patch in 0..2u32 {
                let index = releases.len();
                let upgrade_from = match (minor, patch) {
                    (0, 0) if major == 1 => ">=0.9.0, <1.0.0".to_string(),
                    (0, 0) => format!(">={}.4.0, <{major}.0.0", major - 1),
                    (_, 0) => format!(">={major}.{}.0, <{major}.{minor}.0", minor - 1),
                    _ => format!(">={major}.{minor}.0, <{major}.{minor}.{patch}"),
                };
                let security_patch = patch > 0;
                let mut migrations = Vec::new();
                if patch == 0 {
                    for _ in 0..(1 + index % 3) {
                        migrations.push(format!("{migration:04}_change_{index}"));
                        migration += 1;
                    }
                }
                releases.push(Release {
                    version: format!("{major}.{minor}.{patch}"),
                    status: if major == 1 { "deprecated" } else { "stable" },
                    released: date(index),
                    breaking: minor == 0 && patch == 0 && major > 1,
                    security_patch,
                    severity: match (security_patch, index % 2) {
                        (false, _) => "none",
                        (true, 0) => "high",
                        (true, _) => "critical",
                    },
                    upgrade_from,
                    migrations,
                });
            }
        }
    }
    let index = releases.len();
    releases.push(Release {
        version: "4.0.0-beta.1".to_string(),
        status: "beta",
        released: date(index),
        breaking: true,
        security_patch: false,
        severity: "none",
        upgrade_from: ">=3.4.0, <4.0.0".to_string(),
        migrations: vec![format!("{migration:04}_beta_schema")],
    });
    releases
}

/// The 15th of one month after another, from January 2023.
fn date(index: usize) -> String {
    format!("{}-{:02}-15", 2023 + index / 12, index % 12 + 1)
}

/// The text of one file and its path relative to the fleet root.
struct File {
    path: String,
    text: String,
}

fn quoted_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn yaml_list(items: &[&str]) -> String {
    format!("[{}]", items.join(", "))
}

/// A non-empty subset of `items`, in order, starting with a random one.
fn subset<'a>(rng: &mut Rng, items: &[&'a str], most: usize) -> Vec<&'a str> {
    let count = 1 + rng.below(most.min(items.len()));
    let start = rng.below(items.len());
    (0..count)
        .map(|k| items[(start + k) % items.len()])
        .collect()
}

fn settings() -> File {
    let mut text = String::from(
        "#:schema ../schemas/fleet.schema.json\n\
         # Synthetic fleet for the load benchmark; capacities are huge so none is exceeded.\n\n\
         name = \"webwaka-bench\"\n",
    );
    for (name, country, _) in REGIONS {
        let env = name.to_ascii_uppercase().replace('-', "_");
        write!(
            text,
            "\n[regions.{name}]\n\
             country = \"{country}\"\n\
             docker = \"unix:///var/run/docker.sock\"\n\
             database = \"env:WAKAFLEET_{env}_DATABASE_URL\"\n\
             backups = \"/var/lib/wakafleet/backups/{name}\"\n\
             capacity = {{ cpu = \"1000000\", memory = \"100000T\", storage = \"1000000T\" }}\n"
        )
        .unwrap();
    }
    for (name, cpu, memory, storage) in SIZES {
        write!(
            text,
            "\n[sizes.{name}]\ncpu = \"{cpu}\"\nmemory = \"{memory}\"\nstorage = \"{storage}\"\n"
        )
        .unwrap();
    }
    File {
        path: "fleet.toml".to_string(),
        text,
    }
}

fn channels() -> Vec<File> {
    vec![
        File {
            path: "channels/stable-auto.toml".to_string(),
            text: "#:schema ../../schemas/channel.schema.json\n\
                   # Shared SaaS and most partner instances: follow stable releases inside a nightly window.\n\
                   name = \"stable-auto\"\n\
                   mode = \"auto-update\"\n\
                   track = \"stable\"\n\
                   notify = [\"ops@webwaka.example\"]\n\n\
                   [maintenance_window]\n\
                   days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\
                   start = \"01:00\"\n\
                   duration = \"3h\"\n\
                   timezone = \"Africa/Lagos\"\n\n\
                   [auto_approve]\n\
                   security_patches = true\n\
                   minor = true\n\
                   patch = true\n"
                .to_string(),
        },
        File {
            path: "channels/beta-auto.yaml".to_string(),
            text: "# yaml-language-server: $schema=../../schemas/channel.schema.json\n\
                   # Staging and pilot instances: follow beta releases on weekday mornings.\n\
                   name: beta-auto\n\
                   mode: auto-update\n\
                   track: beta\n\
                   notify:\n  - ops@webwaka.example\n  - qa@webwaka.example\n\
                   maintenance_window:\n  days: [mon, tue, wed, thu, fri]\n  start: \"03:00\"\n  \
                   duration: \"2h\"\n  timezone: Africa/Nairobi\n\
                   auto_approve:\n  security_patches: true\n  minor: true\n  patch: true\n"
                .to_string(),
        },
        File {
            path: "channels/prod-manual.toml".to_string(),
            text: "#:schema ../../schemas/channel.schema.json\n\
                   # Partner production instances: a merged version change is the approval.\n\
                   name = \"prod-manual\"\n\
                   mode = \"manual-approval\"\n\
                   notify = [\"ops@webwaka.example\", \"partners@webwaka.example\"]\n\n\
                   [maintenance_window]\n\
                   days = [\"sat\", \"sun\"]\n\
                   start = \"02:00\"\n\
                   duration = \"4h\"\n\
                   timezone = \"Africa/Lagos\"\n"
                .to_string(),
        },
        File {
            path: "channels/enterprise-frozen.toml".to_string(),
            text: "#:schema ../../schemas/channel.schema.json\n\
                   # Self-hosted enterprise instances: pinned; only critical security patches.\n\
                   name = \"enterprise-frozen\"\n\
                   mode = \"frozen\"\n\
                   notify = [\"enterprise@webwaka.example\"]\n\n\
                   [maintenance_window]\n\
                   days = [\"sun\"]\n\
                   start = \"00:30\"\n\
                   duration = \"90m\"\n\
                   timezone = \"Africa/Accra\"\n\n\
                   [security]\n\
                   override_frozen = true\n"
                .to_string(),
        },
    ]
}

fn release_file(release: &Release, yaml: bool) -> File {
    let Release {
        version,
        status,
        released,
        breaking,
        security_patch,
        severity,
        upgrade_from,
        migrations,
    } = release;
    let changelog = format!("Release {version}: faster checkout and fixes.");
    if yaml {
        let mut text = format!(
            "# yaml-language-server: $schema=../../schemas/release.schema.json\n\
             version: \"{version}\"\nstatus: {status}\nreleased: {released}\n\
             breaking: {breaking}\nsecurity_patch: {security_patch}\nseverity: {severity}\n\
             image: \"wakafleet/demo-platform:{version}\"\nupgrade_from: \"{upgrade_from}\"\n"
        );
        if migrations.is_empty() {
            text.push_str("migrations: []\n");
        } else {
            text.push_str("migrations:\n");
            for migration in migrations {
                writeln!(text, "  - \"{migration}\"").unwrap();
            }
        }
        writeln!(text, "changelog: \"{changelog}\"").unwrap();
        File {
            path: format!("releases/{version}.yaml"),
            text,
        }
    } else {
        let migrations: Vec<&str> = migrations.iter().map(String::as_str).collect();
        let text = format!(
            "#:schema ../../schemas/release.schema.json\n\
             version = \"{version}\"\nstatus = \"{status}\"\nreleased = {released}\n\
             breaking = {breaking}\nsecurity_patch = {security_patch}\nseverity = \"{severity}\"\n\
             image = \"wakafleet/demo-platform:{version}\"\nupgrade_from = \"{upgrade_from}\"\n\
             migrations = {}\nchangelog = \"{changelog}\"\n",
            quoted_list(&migrations)
        );
        File {
            path: format!("releases/{version}.toml"),
            text,
        }
    }
}

fn entity_file(folder: &str, id: &str, fields: &[(&str, String)], yaml: Option<&str>) -> File {
    // "partners/" -> "partner", as in ../../schemas/partner.schema.json.
    let schema = folder.trim_end_matches('/').trim_end_matches('s');
    let mut text = String::new();
    match yaml {
        Some(_) => {
            writeln!(
                text,
                "# yaml-language-server: $schema=../../schemas/{schema}.schema.json"
            )
            .unwrap();
            for (key, value) in fields {
                writeln!(text, "{key}: {value}").unwrap();
            }
        }
        None => {
            writeln!(text, "#:schema ../../schemas/{schema}.schema.json").unwrap();
            for (key, value) in fields {
                writeln!(text, "{key} = \"{value}\"").unwrap();
            }
        }
    }
    File {
        path: format!("{folder}/{id}.{}", yaml.unwrap_or("toml")),
        text,
    }
}

/// Every file of the fleet, in a fixed order.
fn files(shape: &Shape) -> (Vec<File>, usize) {
    let mut rng = Rng(0x5EED_F1EE_7000_0001);
    let mut files = vec![settings()];
    files.extend(channels());

    let releases = releases();
    for (index, release) in releases.iter().enumerate() {
        files.push(release_file(release, index % 5 == 4));
    }
    let stable: Vec<&str> = releases
        .iter()
        .filter(|release| release.status != "beta" && release.version.starts_with(['2', '3']))
        .map(|release| release.version.as_str())
        .collect();
    let any_version: Vec<&str> = releases.iter().map(|r| r.version.as_str()).collect();

    // Partner 0 is WebWaka itself, owner of the shared SaaS instances.
    let partners: Vec<String> = (0..shape.partners)
        .map(|index| match index {
            0 => "webwaka-direct".to_string(),
            _ => format!(
                "{}-partners-{index:03}",
                WORDS[index % WORDS.len()].to_ascii_lowercase()
            ),
        })
        .collect();
    for (index, id) in partners.iter().enumerate() {
        let yaml = (index % 5 == 2).then_some("yaml");
        let name = match index {
            0 => "WebWaka Direct".to_string(),
            _ => format!("{} Partners {index} Ltd", WORDS[index % WORDS.len()]),
        };
        let state = if index % 40 == 39 {
            "suspended"
        } else {
            "active"
        };
        files.push(entity_file(
            "partners/",
            id,
            &[
                ("id", id.clone()),
                ("name", name),
                ("email", format!("ops@{id}.example")),
                ("state", state.to_string()),
            ],
            yaml,
        ));
    }

    // Tenants belong to partners 1.. (never to webwaka-direct).
    let tenants: Vec<(String, usize)> = (0..shape.tenants)
        .map(|index| {
            let word = WORDS[(index / 3) % WORDS.len()].to_ascii_lowercase();
            (
                format!("{word}-tenant-{index:04}"),
                1 + index % (shape.partners - 1),
            )
        })
        .collect();
    for (index, (id, partner)) in tenants.iter().enumerate() {
        let yaml = match index % 10 {
            3 => Some("yaml"),
            7 => Some("yml"),
            _ => None,
        };
        let name = format!(
            "{} {} {index}",
            WORDS[(index / 3) % WORDS.len()],
            TRADES[index % TRADES.len()]
        );
        let name = if yaml.is_some() && name.contains('&') {
            format!("\"{name}\"")
        } else {
            name
        };
        files.push(entity_file(
            "tenants/",
            id,
            &[
                ("id", id.clone()),
                ("partner", partners[*partner].clone()),
                ("name", name),
                ("state", "active".to_string()),
            ],
            yaml,
        ));
    }

    for index in 0..shape.instances {
        files.push(instance(
            &mut rng,
            index,
            &partners,
            &tenants,
            &stable,
            &any_version,
        ));
    }
    (files, releases.len())
}

/// One instance, with every field of FLEET-FORMAT.md used by some instances.
fn instance(
    rng: &mut Rng,
    index: usize,
    partners: &[String],
    tenants: &[(String, usize)],
    stable: &[&str],
    any_version: &[&str],
) -> File {
    let (region, country, city) = *rng.pick(REGIONS);
    let roll = rng.below(100);
    let kind = match roll {
        0..10 => "shared-saas",
        10..85 => "partner-deployed",
        _ => "self-hosted-enterprise",
    };
    let tenant = (kind != "shared-saas").then(|| rng.pick(tenants));
    let partner = match tenant {
        Some((_, partner)) => partners[*partner].as_str(),
        None => partners[0].as_str(),
    };
    let role = if kind == "shared-saas" {
        "saas"
    } else {
        *rng.pick(ROLES)
    };
    let name = format!("{city}-{role}-{index:05}");
    let channel = match kind {
        "shared-saas" => "stable-auto",
        "self-hosted-enterprise" => "enterprise-frozen",
        _ => match rng.below(100) {
            0..50 => "stable-auto",
            50..85 => "prod-manual",
            _ => "beta-auto",
        },
    };
    let version = if channel == "beta-auto" && rng.percent(50) {
        any_version[any_version.len() - 1]
    } else {
        *rng.pick(stable)
    };
    // Some instances approve a breaking upgrade to the newest stable release.
    let approved =
        (channel != "enterprise-frozen" && rng.percent(10) && version != stable[stable.len() - 1])
            .then(|| stable[stable.len() - 1]);
    let mut residency = vec![country];
    if country == "GH" && rng.percent(30) {
        residency.push("NG");
    }
    let suites = subset(rng, SUITES, 2);
    let capabilities = subset(rng, CAPABILITIES, 4);
    let domain = rng
        .percent(70)
        .then(|| format!("{role}-{index:05}.{city}.shops.example"));
    let ssl = !rng.percent(3);
    let size = rng.percent(80).then(|| rng.pick(SIZES).0);
    let resources = ["1.5", "3.0", "6"][rng.below(3)];
    let memory = ["3G", "6G", "24G"][rng.below(3)];
    let storage = ["30G", "80G", "500G"][rng.below(3)];
    let allow_downgrade = channel == "beta-auto" || rng.percent(5);
    let state = match rng.below(100) {
        0..90 => "active",
        90..96 => "suspended",
        _ => "terminated",
    };
    let backup = rng.percent(80).then(|| {
        let minute = [0, 15, 30, 45][rng.below(4)];
        let hour = rng.below(5);
        let retain = [3, 7, 14, 30][rng.below(4)];
        (format!("{minute} {hour} * * *"), retain)
    });

    let mut text = String::with_capacity(700);
    // 80% TOML, 10% .yaml, 10% .yml.
    let yaml = match index % 10 {
        3 => Some("yaml"),
        8 => Some("yml"),
        _ => None,
    };
    match yaml {
        None => {
            text.push_str("#:schema ../../schemas/instance.schema.json\n");
            if index.is_multiple_of(7) {
                text.push_str("# Synthetic instance for the load benchmark.\n");
            }
            writeln!(text, "name = \"{name}\"").unwrap();
            writeln!(text, "type = \"{kind}\"").unwrap();
            writeln!(text, "partner = \"{partner}\"").unwrap();
            if let Some((tenant, _)) = tenant {
                writeln!(text, "tenant = \"{tenant}\"").unwrap();
            }
            writeln!(text, "region = \"{region}\"").unwrap();
            writeln!(text, "data_residency = {}", quoted_list(&residency)).unwrap();
            writeln!(text, "suites = {}", quoted_list(&suites)).unwrap();
            writeln!(text, "capabilities = {}", quoted_list(&capabilities)).unwrap();
            if let Some(domain) = &domain {
                writeln!(text, "custom_domain = \"{domain}\"").unwrap();
            }
            writeln!(text, "ssl = {ssl}").unwrap();
            if let Some(size) = size {
                writeln!(text, "size = \"{size}\"").unwrap();
            }
            writeln!(text, "channel = \"{channel}\"").unwrap();
            writeln!(text, "version = \"{version}\"").unwrap();
            if let Some(approved) = approved {
                writeln!(text, "approved_version = \"{approved}\"").unwrap();
            }
            writeln!(text, "allow_downgrade = {allow_downgrade}").unwrap();
            writeln!(text, "state = \"{state}\"").unwrap();
            if size.is_none() {
                write!(
                    text,
                    "\n[resources]\ncpu = \"{resources}\"\nmemory = \"{memory}\"\nstorage = \"{storage}\"\n"
                )
                .unwrap();
            }
            if let Some((schedule, retain)) = &backup {
                write!(
                    text,
                    "\n[backup]\nschedule = \"{schedule}\"\nretain = {retain}\n"
                )
                .unwrap();
            }
        }
        Some(_) => {
            text.push_str("# yaml-language-server: $schema=../../schemas/instance.schema.json\n");
            writeln!(text, "name: {name}").unwrap();
            writeln!(text, "type: {kind}").unwrap();
            writeln!(text, "partner: {partner}").unwrap();
            if let Some((tenant, _)) = tenant {
                writeln!(text, "tenant: {tenant}").unwrap();
            }
            writeln!(text, "region: {region}").unwrap();
            writeln!(text, "data_residency: {}", quoted_list(&residency)).unwrap();
            writeln!(text, "suites: {}", yaml_list(&suites)).unwrap();
            writeln!(text, "capabilities: {}", yaml_list(&capabilities)).unwrap();
            if let Some(domain) = &domain {
                writeln!(text, "custom_domain: {domain}").unwrap();
            }
            writeln!(text, "ssl: {ssl}").unwrap();
            match size {
                Some(size) => writeln!(text, "size: {size}").unwrap(),
                None => write!(
                    text,
                    "resources:\n  cpu: \"{resources}\"\n  memory: \"{memory}\"\n  storage: \"{storage}\"\n"
                )
                .unwrap(),
            }
            writeln!(text, "channel: {channel}").unwrap();
            writeln!(text, "version: \"{version}\"").unwrap();
            if let Some(approved) = approved {
                writeln!(text, "approved_version: \"{approved}\"").unwrap();
            }
            writeln!(text, "allow_downgrade: {allow_downgrade}").unwrap();
            writeln!(text, "state: {state}").unwrap();
            if let Some((schedule, retain)) = &backup {
                write!(
                    text,
                    "backup:\n  schedule: \"{schedule}\"\n  retain: {retain}\n"
                )
                .unwrap();
            }
        }
    }
    File {
        path: format!("instances/{name}.{}", yaml.unwrap_or("toml")),
        text,
    }
}

/// Writes the fleet into `root` (which must be empty), commits every file with git2 and
/// packs the repository with `git repack -adf`, so all objects are in one packfile.
pub fn write(root: &Path, shape: &Shape) -> Summary {
    let (files, releases) = files(shape);
    let mut summary = Summary {
        files: files.len(),
        toml_files: 0,
        yaml_files: 0,
        bytes: 0,
        releases,
        commit: String::new(),
        pack_bytes: 0,
        loose_objects: 0,
    };
    for folder in ["partners", "tenants", "channels", "releases", "instances"] {
        fs::create_dir_all(root.join(folder)).expect("creating a fleet folder");
    }
    for file in &files {
        if file.path.ends_with(".toml") {
            summary.toml_files += 1;
        } else {
            summary.yaml_files += 1;
        }
        summary.bytes += file.text.len() as u64;
        fs::write(root.join(&file.path), &file.text).expect("writing a fleet file");
    }

    git2::Repository::init(root).expect("git init");
    summary.commit = commit_and_repack(
        root,
        1_767_225_600,
        "Synthetic fleet for the load benchmark",
    );

    let objects = root.join(".git/objects");
    for entry in fs::read_dir(&objects).expect("listing .git/objects") {
        let entry = entry.expect("an entry of .git/objects");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            summary.loose_objects += fs::read_dir(entry.path()).map_or(0, Iterator::count);
        }
    }
    for entry in fs::read_dir(objects.join("pack")).expect("listing the packs") {
        let entry = entry.expect("an entry of .git/objects/pack");
        if entry.path().extension().is_some_and(|ext| ext == "pack") {
            summary.pack_bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    summary
}

/// Commits the work tree of `root` on top of HEAD (if any) at the time `seconds`, then packs
/// the repository with `git repack -adf`; returns the new commit.
pub fn commit_and_repack(root: &Path, seconds: i64, message: &str) -> String {
    let repository = git2::Repository::open(root).expect("opening the repository");
    let mut index = repository.index().expect("the index");
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .expect("git add");
    index.update_all(["*"], None).expect("git add of removals");
    index.write().expect("writing the index");
    let tree = repository
        .find_tree(index.write_tree().expect("writing the tree"))
        .expect("the tree");
    let parent = repository
        .head()
        .and_then(|head| head.peel_to_commit())
        .ok();
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    let time = git2::Time::new(seconds, 0);
    let signature = git2::Signature::new("wakafleet bench", "bench@wakafleet.example", &time)
        .expect("signature");
    let commit = repository
        .commit(
            Some("HEAD"),
            &signature,
            &signature,
            message,
            &tree,
            &parents,
        )
        .expect("git commit");
    let status = Command::new("git")
        .args(["repack", "-a", "-d", "-f", "-q"])
        .current_dir(root)
        .status()
        .expect("running git repack (is git installed?)");
    assert!(status.success(), "git repack failed: {status}");
    commit.to_string()
}

/// The `index`th change of a large pull request, as the plan's reviewers meet them: every
/// 25th instance terminated, every 40th (if active) suspended, every 5th given a domain of its
/// own (an entry that groups with nothing), the others with `ssl` toggled. Used by the render
/// benchmark and the Markdown budget test.
#[allow(dead_code, reason = "the load benchmark does not change fleets")]
pub fn review_change(text: &str, name: &str, index: usize) -> String {
    let toml = text.contains("ssl = ");
    let (active, suspended, terminated, ssl_on, ssl_off, domain) = if toml {
        (
            "state = \"active\"",
            "state = \"suspended\"",
            "state = \"terminated\"",
            "ssl = true",
            "ssl = false",
            format!("custom_domain = \"{name}.bench.example\"\nssl = "),
        )
    } else {
        (
            "state: active",
            "state: suspended",
            "state: terminated",
            "ssl: true",
            "ssl: false",
            format!("custom_domain: \"{name}.bench.example\"\nssl: "),
        )
    };
    if index.is_multiple_of(25) {
        return text
            .replacen(active, terminated, 1)
            .replacen(suspended, terminated, 1);
    }
    if index % 40 == 1 && text.contains(active) {
        return text.replacen(active, suspended, 1);
    }
    if index % 5 == 2 && !text.contains("custom_domain") {
        return text.replacen(if toml { "ssl = " } else { "ssl: " }, &domain, 1);
    }
    if text.contains(ssl_on) {
        text.replacen(ssl_on, ssl_off, 1)
    } else {
        text.replacen(ssl_off, ssl_on, 1)
    }
}
