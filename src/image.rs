//! An edge: builds the demo platform's images on the local Docker engine, one per release of a
//! fleet, pulling nothing (DESIGN.md, "The demo platform").
//!
//! Each image is `FROM scratch` with the `demo-platform` binary at `/demo-platform`, the shared
//! libraries `ldd` lists for it (and the dynamic loader) at their absolute paths, and an
//! `/etc/nsswitch.conf` that looks names up in `/etc/hosts` first (so `host.docker.internal`
//! resolves without DNS). Its environment names its release (`DEMO_VERSION`), every migration
//! up to and including the release (`DEMO_MIGRATIONS`) and, for the releases asked for,
//! `DEMO_FAIL_HEALTH=1`. `specs` decides that from the fleet; `payload` reads the files once;
//! `build` sends a tar context to the engine's build API. This module does not run containers:
//! that is the driver's job.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use bollard::{
    Docker,
    models::{HealthConfig, ImageInspect},
    query_parameters::{BuildImageOptionsBuilder, RemoveImageOptions},
};
use futures_util::StreamExt;
use semver::Version;
use sha2::{Digest, Sha256};

use crate::validate::ValidFleet;

/// The label holding the release an image was built for.
pub const RELEASE_LABEL: &str = "org.wakafleet.release";
/// The label holding the SHA-256 of the binary in an image, in hex.
pub const DIGEST_LABEL: &str = "org.wakafleet.binary-sha256";

/// The image's Docker health check: every 10 s, three failures in a row make it unhealthy,
/// and failures in the first 5 s do not count. Each check is a process started in the
/// container, so checking many containers often costs the engine a good share of a small
/// machine; the driver asks for checks every 500 ms while its containers start (the classic
/// builder knows no `--start-interval`).
const HEALTH: HealthCheck = HealthCheck {
    interval_ms: 10_000,
    timeout_ms: 3_000,
    start_period_ms: 5_000,
    retries: 3,
};

struct HealthCheck {
    interval_ms: i64,
    timeout_ms: i64,
    start_period_ms: i64,
    retries: i64,
}

impl HealthCheck {
    /// The Dockerfile instruction.
    fn instruction(&self) -> String {
        format!(
            "HEALTHCHECK --interval={}ms --timeout={}ms --start-period={}ms --retries={} CMD [\"/demo-platform\", \"healthcheck\"]",
            self.interval_ms, self.timeout_ms, self.start_period_ms, self.retries
        )
    }

    /// Whether an image's health check is this one (Docker keeps nanoseconds).
    fn is(&self, config: Option<&HealthConfig>) -> bool {
        let ns = |ms: i64| Some(ms * 1_000_000);
        config.is_some_and(|config| {
            config.interval == ns(self.interval_ms)
                && config.timeout == ns(self.timeout_ms)
                && config.start_period == ns(self.start_period_ms)
                && config.retries == Some(self.retries)
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--fail-health {0}: the fleet has no release {0}")]
    UnknownRelease(Version),
    #[error(
        "release {version}: migration `{name}` cannot be passed in DEMO_MIGRATIONS; names must be non-empty, without commas or control characters"
    )]
    MigrationName { version: Version, name: String },
    #[error(
        "the demo platform binary `{}` does not exist: build it with `cargo build --bin demo-platform`, or name it with --binary", path.display()
    )]
    BinaryMissing { path: PathBuf },
    #[error("reading `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `ldd` to list the libraries of `{}`: install it (`apt-get install libc-bin`)", binary.display())]
    LddMissing {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`ldd {}` failed: {message}", binary.display())]
    Ldd { binary: PathBuf, message: String },
    #[error(
        "cannot reach the Docker engine: start it (`sudo systemctl start docker`, or `sudo dockerd &`), or point DOCKER_HOST at a running one"
    )]
    Docker {
        #[source]
        source: bollard::errors::Error,
    },
    #[error("inspecting the image `{image}`")]
    Inspect {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("building the image `{image}`; the build said:\n{output}")]
    Build {
        image: String,
        output: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("writing the build context of `{image}`")]
    Context {
        image: String,
        #[source]
        source: std::io::Error,
    },
}

/// The image of one release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The release's `image`, e.g. `wakafleet/demo-platform:1.5.0`.
    pub image: String,
    pub version: Version,
    /// The migrations of every release up to and including this one: releases in semver
    /// order, each release's list in its order.
    pub migrations: Vec<String>,
    /// Built with `DEMO_FAIL_HEALTH=1`, so its `/health` always answers 503.
    pub fail_health: bool,
}

/// What goes into every image: the binary and the libraries it needs.
#[derive(Clone, Debug)]
pub struct Payload {
    /// SHA-256 of the binary, lowercase hex.
    pub binary_sha256: String,
    files: Vec<File>,
}

/// A file of the image, at an absolute path.
#[derive(Clone, Debug)]
struct File {
    path: String,
    content: Vec<u8>,
    mode: u32,
}

/// What `build` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Built,
    /// An image of that name has the same binary and environment; nothing was built.
    UpToDate,
}

/// The images of a fleet's releases, in semver order. `fail_health` names the releases whose
/// image reports itself unhealthy; naming a release the fleet lacks is an error, as is a
/// migration name `DEMO_MIGRATIONS` cannot carry.
pub fn specs(fleet: &ValidFleet, fail_health: &[Version]) -> Result<Vec<Spec>, Error> {
    let releases = &fleet.fleet().releases;
    if let Some(unknown) = fail_health.iter().find(|v| !releases.contains_key(*v)) {
        return Err(Error::UnknownRelease(unknown.clone()));
    }
    let mut specs = Vec::new();
    for (version, release) in releases {
        let bad = release.migrations.iter().find(|name| {
            name.is_empty() || name.contains(',') || name.chars().any(char::is_control)
        });
        if let Some(name) = bad {
            return Err(Error::MigrationName {
                version: version.clone(),
                name: name.clone(),
            });
        }
        specs.push(Spec {
            image: release.image.clone(),
            version: version.clone(),
            migrations: fleet.fleet().migrations_through(version),
            fail_health: fail_health.contains(version),
        });
    }
    Ok(specs)
}

impl Spec {
    /// The image's `DEMO_*` environment, as `NAME=value`, sorted by name.
    pub fn env(&self) -> Vec<String> {
        let mut env = vec![
            format!("DEMO_MIGRATIONS={}", self.migrations.join(",")),
            format!("DEMO_VERSION={}", self.version),
        ];
        if self.fail_health {
            env.insert(0, "DEMO_FAIL_HEALTH=1".to_string());
        }
        env
    }
}

/// Reads the binary and the libraries `ldd` lists for it.
pub fn payload(binary: &Path) -> Result<Payload, Error> {
    if !binary.is_file() {
        return Err(Error::BinaryMissing {
            path: binary.to_path_buf(),
        });
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let content = read(binary)?;
    let binary_sha256 = hex::encode(Sha256::digest(&content));
    let mut files = vec![
        File {
            path: "/demo-platform".to_string(),
            content,
            mode: 0o755,
        },
        File {
            path: "/etc/nsswitch.conf".to_string(),
            content: b"hosts: files dns\n".to_vec(),
            mode: 0o644,
        },
    ];
    for library in libraries(binary)? {
        // Links are followed: the file's content goes where the loader looks for it.
        files.push(File {
            content: read(&library)?,
            path: library.to_string_lossy().into_owned(),
            mode: 0o755,
        });
    }
    Ok(Payload {
        binary_sha256,
        files,
    })
}

/// Connects to the Docker engine of `DOCKER_HOST` (the local socket when unset), speaking
/// the engine's API version when it is older than bollard's.
pub async fn connect() -> Result<Docker, Error> {
    let docker = Docker::connect_with_defaults().map_err(|source| Error::Docker { source })?;
    docker
        .negotiate_version()
        .await
        .map_err(|source| Error::Docker { source })
}

/// Builds the image of `spec` unless an image of that name already holds the same binary
/// and the same `DEMO_*` environment.
pub async fn build(docker: &Docker, spec: &Spec, payload: &Payload) -> Result<Outcome, Error> {
    let replaced = match docker.inspect_image(&spec.image).await {
        Ok(existing) if is_up_to_date(&existing, spec, payload) => return Ok(Outcome::UpToDate),
        Ok(existing) => existing.id,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => None,
        Err(source) => {
            return Err(Error::Inspect {
                image: spec.image.clone(),
                source,
            });
        }
    };
    let context = context(spec, payload).map_err(|source| Error::Context {
        image: spec.image.clone(),
        source,
    })?;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&spec.image)
        .rm(true)
        .forcerm(true)
        .build();
    let mut output = Vec::new();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => output.extend(info.stream),
            Err(source) => {
                // The last lines say which step failed.
                let text = output.concat();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                return Err(Error::Build {
                    image: spec.image.clone(),
                    output: tail,
                    source,
                });
            }
        }
    }
    // The image the tag named before is left without a name: remove it, unless a container
    // or another tag still uses it (then the engine refuses, and it stays).
    if let Some(replaced) = replaced {
        let _ = docker
            .remove_image(&replaced, None::<RemoveImageOptions>, None)
            .await;
    }
    Ok(Outcome::Built)
}

fn is_up_to_date(existing: &ImageInspect, spec: &Spec, payload: &Payload) -> bool {
    let Some(config) = &existing.config else {
        return false;
    };
    let digest = config
        .labels
        .as_ref()
        .and_then(|labels| labels.get(DIGEST_LABEL));
    let mut env: Vec<String> = config
        .env
        .iter()
        .flatten()
        .filter(|entry| entry.starts_with("DEMO_"))
        .cloned()
        .collect();
    env.sort();
    digest == Some(&payload.binary_sha256)
        && env == spec.env()
        && HEALTH.is(config.healthcheck.as_ref())
}

/// The Dockerfile of `spec`. The files come first, so every release's image shares their
/// layer.
fn dockerfile(spec: &Spec, payload: &Payload) -> String {
    let env: Vec<String> = spec
        .env()
        .iter()
        .map(|entry| {
            let (name, value) = entry.split_once('=').expect("env entries are NAME=value");
            format!("{name}={}", quote(value))
        })
        .collect();
    // Sorted by name, like the environment.
    let labels = [
        format!("{DIGEST_LABEL}={}", quote(&payload.binary_sha256)),
        format!("{RELEASE_LABEL}={}", quote(&spec.version.to_string())),
    ];
    format!(
        "FROM scratch\n\
         COPY rootfs/ /\n\
         ENV {}\n\
         LABEL {}\n\
         {}\n\
         ENTRYPOINT [\"/demo-platform\"]\n\
         CMD [\"serve\"]\n",
        env.join(" "),
        labels.join(" "),
        HEALTH.instruction(),
    )
}

/// A Dockerfile double-quoted word: no variable expansion, quotes and backslashes escaped.
fn quote(value: &str) -> String {
    let mut quoted = String::from("\"");
    for char in value.chars() {
        if matches!(char, '"' | '\\' | '$') {
            quoted.push('\\');
        }
        quoted.push(char);
    }
    quoted + "\""
}

/// The build context: the Dockerfile and `rootfs/`, the image's files. Times and owners are
/// fixed, so the same files make the same layer.
fn context(spec: &Spec, payload: &Payload) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut append = |path: &str, content: &[u8], mode: u32, kind: tar::EntryType| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, path, content)
    };
    append(
        "Dockerfile",
        dockerfile(spec, payload).as_bytes(),
        0o644,
        tar::EntryType::Regular,
    )?;
    let folders: BTreeSet<&Path> = payload
        .files
        .iter()
        .flat_map(|file| Path::new(&file.path).ancestors().skip(1))
        .collect();
    for folder in folders {
        let path = format!("rootfs{}/", folder.display());
        append(&path, &[], 0o755, tar::EntryType::Directory)?;
    }
    for file in &payload.files {
        let path = format!("rootfs{}", file.path);
        append(&path, &file.content, file.mode, tar::EntryType::Regular)?;
    }
    tar.into_inner()
}

/// The absolute paths `ldd` lists for `binary`: its libraries and the dynamic loader. A static
/// binary needs none.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| Error::LddMissing {
            binary: binary.to_path_buf(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.contains("statically linked") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(Error::Ldd {
            binary: binary.to_path_buf(),
            message: format!("{}{}", stderr.trim(), stdout.trim()),
        });
    }
    parse_ldd(&stdout).map_err(|message| Error::Ldd {
        binary: binary.to_path_buf(),
        message,
    })
}

/// Reads lines such as `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x…)` and `linux-vdso.so.1 (0x…)` (the kernel's, no file).
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if line.contains("not found") {
            return Err(format!("a library is missing: {line}"));
        }
        let target = match line.split_once("=>") {
            Some((_, target)) => target.trim(),
            None => line,
        };
        let path = target.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') && !paths.iter().any(|known: &PathBuf| known == Path::new(path)) {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lists_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f69)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f69)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f69)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn an_image_with_another_health_check_is_rebuilt() {
        assert!(HEALTH.instruction().starts_with(
            "HEALTHCHECK --interval=10000ms --timeout=3000ms --start-period=5000ms --retries=3 "
        ));
        let built = HealthConfig {
            test: Some(vec![
                "CMD".into(),
                "/demo-platform".into(),
                "healthcheck".into(),
            ]),
            interval: Some(10_000_000_000),
            timeout: Some(3_000_000_000),
            retries: Some(3),
            start_period: Some(5_000_000_000),
            start_interval: None,
        };
        assert!(HEALTH.is(Some(&built)));
        let older = HealthConfig {
            interval: Some(2_000_000_000),
            ..built
        };
        assert!(!HEALTH.is(Some(&older)));
        assert!(!HEALTH.is(None));
    }

    #[test]
    fn dockerfile_words_cannot_expand_or_escape() {
        assert_eq!(quote(r#"a"b\c$d"#), r#""a\"b\\c\$d""#);
    }

    #[test]
    fn the_environment_names_the_release_and_its_migrations() {
        let spec = Spec {
            image: "wakafleet/demo-platform:1.5.0".into(),
            version: Version::new(1, 5, 0),
            migrations: vec!["0011_a".into(), "0012_b".into()],
            fail_health: true,
        };
        assert_eq!(
            spec.env(),
            [
                "DEMO_FAIL_HEALTH=1",
                "DEMO_MIGRATIONS=0011_a,0012_b",
                "DEMO_VERSION=1.5.0"
            ]
        );
        let payload = Payload {
            binary_sha256: "ab".into(),
            files: Vec::new(),
        };
        let dockerfile = dockerfile(&spec, &payload);
        assert!(dockerfile.contains(
            "ENV DEMO_FAIL_HEALTH=\"1\" DEMO_MIGRATIONS=\"0011_a,0012_b\" DEMO_VERSION=\"1.5.0\"\n"
        ));
        assert!(dockerfile.contains(
            "LABEL org.wakafleet.binary-sha256=\"ab\" org.wakafleet.release=\"1.5.0\"\n"
        ));
    }
}
