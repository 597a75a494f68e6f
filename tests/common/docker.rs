//! The Docker engine in tests: the check that it runs, the demo platform's images of a small
//! test catalogue, and the sweep of everything a test made.

use std::{collections::BTreeMap, path::Path, process::Command, sync::OnceLock};

use semver::Version;
use wakafleet::{
    driver::Target,
    model::{ByteSize, Cpu, Resources},
};

use crate::common::{FLEET_TOML, write};

/// The repository of the test catalogue's images.
pub const IMAGE: &str = "wakafleet-test-driver/demo-platform";
/// The label everything a test makes carries, with the test's own value.
pub const LABEL: &str = "org.wakafleet.test";

/// Fails with how to fix it when the engine is not there.
pub fn docker_ok() {
    let output = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match output {
        Ok(output) if output.status.success() => {}
        _ => panic!(
            "the Docker engine is needed for this test: install Docker and start it (`systemctl start docker` or `dockerd &`), then check `docker info`"
        ),
    }
}

/// Builds the test catalogue's images once per test binary: 1.0.0, 1.1.0 (one more
/// migration) and 1.2.0 (whose health check fails).
pub fn images() -> &'static Path {
    static FLEET: OnceLock<tempfile::TempDir> = OnceLock::new();
    FLEET
        .get_or_init(|| {
            docker_ok();
            let fleet = tempfile::tempdir().expect("a temporary folder");
            write(fleet.path(), "fleet.toml", FLEET_TOML);
            for (version, from, migrations) in [
                ("1.0.0", None, "[\"0001_items_index\"]"),
                ("1.1.0", Some(">=1.0.0, <1.1.0"), "[\"0002_orders\"]"),
                ("1.2.0", Some(">=1.1.0, <1.2.0"), "[\"0003_broken\"]"),
            ] {
                let upgrade_from = from
                    .map(|from| format!("upgrade_from = \"{from}\"\n"))
                    .unwrap_or_default();
                write(
                    fleet.path(),
                    &format!("releases/{version}.toml"),
                    format!(
                        "version = \"{version}\"\nstatus = \"stable\"\nreleased = 2026-01-01\nimage = \"{IMAGE}:{version}\"\n{upgrade_from}migrations = {migrations}\n"
                    ),
                );
            }
            let output = Command::new(env!("CARGO_BIN_EXE_wakafleet"))
                .args(["image", "build"])
                .arg(fleet.path())
                .args(["--binary", env!("CARGO_BIN_EXE_demo-platform"), "--fail-health", "1.2.0"])
                .output()
                .expect("run wakafleet image build");
            assert!(
                output.status.success(),
                "image build failed:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            fleet
        })
        .path()
}

/// Removes everything labelled for one test, on drop.
pub struct Sweep(String);

impl Sweep {
    pub fn new() -> Sweep {
        Sweep(uuid::Uuid::new_v4().to_string())
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(LABEL.to_string(), self.0.clone())])
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let filter = format!("label={LABEL}={}", self.0);
        for (list, remove) in [
            (vec!["ps", "-aq"], vec!["rm", "-f"]),
            (vec!["network", "ls", "-q"], vec!["network", "rm"]),
            (vec!["volume", "ls", "-q"], vec!["volume", "rm", "-f"]),
        ] {
            let Ok(output) = Command::new("docker")
                .args(&list)
                .args(["--filter", &filter])
                .output()
            else {
                continue;
            };
            let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(&remove).args(&ids).output();
            }
        }
    }
}

/// The test catalogue's migrations, release by release.
const MIGRATIONS: [(&str, &str); 3] = [
    ("1.0.0", "0001_items_index"),
    ("1.1.0", "0002_orders"),
    ("1.2.0", "0003_broken"),
];

/// What an instance of the test catalogue at `version` should be.
pub fn target(instance: &str, version: &str) -> Target {
    let version = Version::parse(version).expect("a version");
    let migrations = MIGRATIONS
        .iter()
        .filter(|(release, _)| Version::parse(release).expect("a version") <= version)
        .map(|(_, name)| name.to_string())
        .collect();
    Target {
        instance: instance.into(),
        image: format!("{IMAGE}:{version}"),
        version,
        migrations,
        resources: Resources {
            cpu: Cpu::from_millicores(500),
            memory: ByteSize::from_bytes(256 << 20),
            storage: ByteSize::from_bytes(1 << 30),
        },
        environment: BTreeMap::from([("WEBWAKA_SUITES".to_string(), "commerce".to_string())]),
        secrets: BTreeMap::new(),
    }
}
