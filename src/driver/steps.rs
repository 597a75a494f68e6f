//! The driver's primitives: each makes, changes, checks or removes one part of an
//! instance, and each checks what exists before it acts, so it can be repeated, and a
//! sequence of them resumed after a crash at any point. Provisioning follows the seeds'
//! runbooks: validate, allocate, database, containers, migrations, health, smoke test.
//!
//! No primitive decides what comes next: the order of the steps, their retries and their
//! compensations belong to the caller, the workflows of `jobs::lifecycle`.

use std::time::Duration;

use crate::{
    backups,
    driver::{
        Driver, Error, PORT, container_name,
        database::Backup,
        database_name, http, labels, network_name,
        target::{Role, Target},
        volume_name,
    },
    secret::Secret,
};

/// The item the smoke test makes and deletes, and its name in a query string.
const SMOKE_ITEM: &str = "wakafleet smoke test";
const SMOKE_ITEM_QUERY: &str = "wakafleet%20smoke%20test";

/// How often a local instance is asked whether it is ready.
const POLL: Duration = Duration::from_millis(20);

/// How often, while polling, the containers are checked for having stopped.
const LIVENESS_EVERY: u32 = 5;

impl Driver {
    // Making an instance, step by step.

    /// validate: both the engine and the server answer, and the image is there.
    pub async fn validate(&self, target: &Target) -> Result<(), Error> {
        let (_, _, has_image) = tokio::try_join!(
            self.engine.ping(),
            self.server.ping(),
            self.engine.has_image(&target.image)
        )?;
        if !has_image {
            return Err(Error::Invalid(format!(
                "region `{}`: the image `{}` is not on the engine at {}; build it with `wakafleet image build`",
                self.region.name, target.image, self.region.docker
            )));
        }
        Ok(())
    }

    /// allocate: the instance's network and volume.
    pub async fn allocate(&self, instance: &str) -> Result<(), Error> {
        let (labels, network, volume) = (
            self.labels(instance),
            network_name(instance),
            volume_name(instance),
        );
        tokio::try_join!(
            self.engine.ensure_network(&network, &labels),
            self.engine.ensure_volume(&volume, &labels)
        )?;
        Ok(())
    }

    /// database: the instance's role (with `password`) and database.
    pub async fn database(&self, instance: &str, password: &Secret) -> Result<(), Error> {
        self.server
            .ensure_database(&database_name(instance), password)
            .await
    }

    /// containers: app and worker as the target says, replacing any that differ.
    pub async fn containers(&self, target: &Target, password: &Secret) -> Result<(), Error> {
        tokio::try_join!(
            self.container(target, Role::App, password),
            self.container(target, Role::Worker, password)
        )?;
        Ok(())
    }

    /// One of the containers as the target says, replacing one that differs.
    pub async fn container(
        &self,
        target: &Target,
        role: Role,
        password: &Secret,
    ) -> Result<(), Error> {
        let nano_cpus = self.cpu_limit(target.resources).await?;
        let spec = self.spec(target, role, password, nano_cpus)?;
        self.engine.ensure_running(&spec).await
    }

    /// migrations: the release's containers apply its migrations as they start; this waits
    /// until the database records every one of `target.migrations` (the runbook's check of
    /// `schema_migrations`), and fails as soon as a container stops, with its output.
    pub async fn migrations(&self, target: &Target) -> Result<(), Error> {
        let database = database_name(&target.instance);
        let deadline = tokio::time::Instant::now() + self.options.migration_timeout;
        let mut connection = self.server.connect(&database).await?;
        let mut round = 0_u32;
        loop {
            let applied = self.server.applied_migrations(&mut connection).await?;
            let missing: Vec<String> = target
                .migrations
                .iter()
                .filter(|name| !applied.contains(name))
                .cloned()
                .collect();
            if missing.is_empty() {
                break;
            }
            if round.is_multiple_of(LIVENESS_EVERY) {
                for role in Role::ALL {
                    self.running(
                        &container_name(&target.instance, role.as_str()),
                        "migrations",
                    )
                    .await?;
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Step {
                    step: "migrations".into(),
                    reason: format!(
                        "{} were not applied within {:?}",
                        missing.join(", "),
                        self.options.migration_timeout
                    ),
                });
            }
            round += 1;
            tokio::time::sleep(POLL).await;
        }
        drop(sqlx::Connection::close(connection).await);
        Ok(())
    }

    /// health: both containers answer `/health` with 200. They are asked directly, every
    /// 20 ms, when the engine's containers are reachable from here (a local engine); else
    /// the image's Docker health check decides, asked every 500 ms while the container starts.
    pub async fn health(&self, instance: &str) -> Result<(), Error> {
        tokio::try_join!(
            self.role_health(instance, Role::App),
            self.role_health(instance, Role::Worker)
        )?;
        Ok(())
    }

    /// smoke test: create, read and delete an item through the app. Items a smoke test cut
    /// off earlier left behind are deleted first, so no crash leaves one in the instance.
    pub async fn smoke(&self, instance: &str) -> Result<(), Error> {
        let failed = |reason: String| Error::Step {
            step: "smoke test".into(),
            reason,
        };
        let address = self
            .engine
            .address(&container_name(instance, "app"), &network_name(instance))
            .await?
            .ok_or_else(|| failed("the app container has no address".into()))?;
        let address = format!("{address}:{PORT}");
        let request = |method: &'static str, path: String, body: Option<serde_json::Value>| {
            let address = &address;
            async move {
                let (status, text) = http::request(address, method, &path, body.as_ref())
                    .await
                    .map_err(&failed)?;
                let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                Ok::<_, Error>((status, text, json))
            }
        };
        let (status, text, leftovers) =
            request("GET", format!("/items?name={SMOKE_ITEM_QUERY}"), None).await?;
        if status != 200 {
            return Err(failed(format!("GET /items answered {status}: {text}")));
        }
        let leftovers = leftovers.as_array().cloned().unwrap_or_default();
        for id in leftovers.iter().filter_map(|item| item["id"].as_i64()) {
            request("DELETE", format!("/items/{id}"), None).await?;
        }
        let item = serde_json::json!({"name": SMOKE_ITEM});
        let (status, text, created) = request("POST", "/items".into(), Some(item)).await?;
        if status != 201 {
            return Err(failed(format!("POST /items answered {status}: {text}")));
        }
        let id = created["id"]
            .as_i64()
            .ok_or_else(|| failed(format!("POST /items gave no id: {text}")))?;
        let (status, text, read) = request("GET", format!("/items/{id}"), None).await?;
        if status != 200 || read["name"] != SMOKE_ITEM {
            return Err(failed(format!("GET /items/{id} answered {status}: {text}")));
        }
        let (status, text, _) = request("DELETE", format!("/items/{id}"), None).await?;
        if !(200..300).contains(&status) {
            return Err(failed(format!(
                "DELETE /items/{id} answered {status}: {text}"
            )));
        }
        Ok(())
    }

    // Changing a running instance.

    /// New CPU and memory limits, in place, without a restart.
    pub async fn scale(&self, target: &Target) -> Result<(), Error> {
        let nano_cpus = self.cpu_limit(target.resources).await?;
        for role in Role::ALL {
            let name = container_name(&target.instance, role.as_str());
            self.engine
                .update_limits(
                    &name,
                    nano_cpus,
                    i64::try_from(target.resources.memory.bytes()).unwrap_or(i64::MAX),
                )
                .await?;
        }
        Ok(())
    }

    /// Stops the containers; the data stays.
    pub async fn suspend(&self, instance: &str) -> Result<(), Error> {
        for role in Role::ALL {
            self.engine
                .stop(&container_name(instance, role.as_str()))
                .await?;
        }
        Ok(())
    }

    /// maintenance: turns the platform's maintenance mode on or off in the instance's
    /// database. It looks for the platform's settings table first: before the first migration
    /// there is none, and nothing is turned. Setting the mode it already has changes nothing.
    pub async fn set_maintenance(&self, instance: &str, on: bool) -> Result<(), Error> {
        self.server
            .set_maintenance(&database_name(instance), on)
            .await
    }

    // Checks, which only read.

    /// Whether both of the instance's containers exist, running or stopped, with `target`'s
    /// release label and image: a change away from `target` has not touched them yet. It
    /// only reads; `target.instance` is not consulted, `instance` names the containers.
    pub async fn runs(&self, instance: &str, target: &Target) -> Result<bool, Error> {
        let (app, worker) = (
            container_name(instance, Role::App.as_str()),
            container_name(instance, Role::Worker.as_str()),
        );
        let (app, worker) =
            tokio::try_join!(self.engine.container(&app), self.engine.container(&worker))?;
        let release = target.version.to_string();
        Ok([app, worker].into_iter().all(|view| {
            view.is_some_and(|view| {
                view.labels.get(labels::RELEASE) == Some(&release) && view.image == target.image
            })
        }))
    }

    /// Whether the server's catalogue holds the instance's database. It only reads.
    pub async fn database_exists(&self, instance: &str) -> Result<bool, Error> {
        self.server.database_exists(&database_name(instance)).await
    }

    // Backups, in the instance's folder of the region's backups.

    /// Backs the instance's database up into its backups folder as `<name>.dump`.
    pub async fn backup(&self, instance: &str, name: &str) -> Result<Backup, Error> {
        self.server
            .backup(
                &database_name(instance),
                &self.backups_folder(instance),
                name,
            )
            .await
    }

    /// Backs the instance's database up for `purpose`, named as [`backups`] says with the
    /// time now. It checks for no earlier backup: every call takes a new one, so a caller that
    /// may have taken it already asks [`Driver::latest_backup`] first.
    pub async fn backup_for(
        &self,
        instance: &str,
        purpose: backups::Purpose<'_>,
    ) -> Result<Backup, Error> {
        let label = backups::label(purpose, chrono::Utc::now());
        self.backup(instance, &label).await
    }

    /// The file names of the instance's complete backups (each `.dump` file whose checksum is
    /// written beside it) in name order, which is oldest first for backups taken for a
    /// purpose (their names start with their time). It only reads. A folder that does not
    /// exist holds none; one that cannot be read is an error, never an empty list.
    pub async fn backups(&self, instance: &str) -> Result<Vec<String>, Error> {
        self.server.backups(&self.backups_folder(instance)).await
    }

    /// The newest complete backup of the instance for `purpose`, checked against its recorded
    /// checksum, or `None` when its folder holds none. It only reads. A folder that cannot be
    /// read, or a newest backup that does not match its checksum, is an error, never `None`:
    /// the caller would take a new backup in place of the one it is looking for.
    pub async fn latest_backup(
        &self,
        instance: &str,
        purpose: backups::Purpose<'_>,
    ) -> Result<Option<Backup>, Error> {
        let folder = self.backups_folder(instance);
        let Some(name) = self.server.latest_backup(&folder, purpose).await? else {
            return Ok(None);
        };
        self.server.checked_backup(&folder, &name).await.map(Some)
    }

    /// restore: replaces the instance's database with the backup `name` of its folder, after
    /// checking the file against its recorded checksum (and refusing a name that is not a
    /// backup's file name). The restore runs in one transaction, so a repeated or cut-off one
    /// leaves the backup's database or the one before. The containers are the caller's:
    /// stop them first, start them after.
    pub async fn restore_database(&self, instance: &str, name: &str) -> Result<Backup, Error> {
        self.server
            .restore(
                &database_name(instance),
                &self.backups_folder(instance),
                name,
            )
            .await
    }

    /// Deletes the instance's backup `name` and its checksum; one already gone is fine. A
    /// name that is not a backup's plain file name (one with a `/` or `..`, or without
    /// `.dump`) is refused, and nothing is deleted.
    pub async fn remove_backup(&self, instance: &str, name: &str) -> Result<(), Error> {
        self.server
            .remove_backup(&self.backups_folder(instance), name)
            .await
    }

    // Taking an instance apart; a part already gone counts as removed.

    /// Removes both of the instance's containers, running or not. Docker's answer that one
    /// does not exist counts as done, so this can be repeated.
    pub async fn remove_containers(&self, instance: &str) -> Result<(), Error> {
        let (app, worker) = (
            container_name(instance, Role::App.as_str()),
            container_name(instance, Role::Worker.as_str()),
        );
        tokio::try_join!(
            self.engine.remove_container(&app),
            self.engine.remove_container(&worker)
        )?;
        Ok(())
    }

    /// release: removes the instance's network, and its volume with the data in it. Docker's
    /// answer that one does not exist counts as done. Docker refuses while a container uses
    /// them: remove the containers first.
    pub async fn release(&self, instance: &str) -> Result<(), Error> {
        let (network, volume) = (network_name(instance), volume_name(instance));
        tokio::try_join!(
            self.engine.remove_network(&network),
            self.engine.remove_volume(&volume)
        )?;
        Ok(())
    }

    /// Drops the instance's database and its role, closing their sessions first; each only
    /// if it exists, so this can be repeated. What the database held is gone: take a final
    /// backup first.
    pub async fn drop_database(&self, instance: &str) -> Result<(), Error> {
        self.server.drop_database(&database_name(instance)).await
    }

    // The steps' own helpers.

    /// Fails when the container is gone or stopped, with its exit code and last output.
    async fn running(&self, name: &str, step: &str) -> Result<(), Error> {
        let view = self.engine.container(name).await?;
        if view.as_ref().is_some_and(|view| view.running) {
            return Ok(());
        }
        Err(Error::Step {
            step: step.into(),
            reason: match view {
                None => format!("the container {name} is gone"),
                Some(view) => format!(
                    "{name} stopped (exit code {}): {}",
                    view.exit_code.unwrap_or(-1),
                    self.engine.logs(name).await.unwrap_or_default().trim()
                ),
            },
        })
    }

    async fn role_health(&self, instance: &str, role: Role) -> Result<(), Error> {
        let name = container_name(instance, role.as_str());
        match self.engine.address(&name, &network_name(instance)).await? {
            Some(address) if self.local_engine() => {
                self.poll_health(&name, &format!("{address}:{PORT}")).await
            }
            _ => {
                self.engine
                    .wait_healthy(&name, self.options.health_timeout)
                    .await
            }
        }
    }

    async fn poll_health(&self, name: &str, address: &str) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + self.options.health_timeout;
        // An instance that calls itself unhealthy for this long (degraded is a start-up
        // state: the worker's first heartbeat) has failed.
        let patience = Duration::from_secs(3);
        let mut unhealthy_since = None;
        let mut round = 0_u32;
        loop {
            let answer = http::request(address, "GET", "/health", None).await;
            match &answer {
                Ok((200, _)) => return Ok(()),
                Ok((_, body)) if body.contains("\"unhealthy\"") => {
                    let since = *unhealthy_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > patience {
                        return Err(Error::Step {
                            step: "health".into(),
                            reason: format!("{name} is unhealthy: {body}"),
                        });
                    }
                }
                _ => unhealthy_since = None,
            }
            if round.is_multiple_of(LIVENESS_EVERY) {
                self.running(name, "health").await?;
            }
            round += 1;
            if tokio::time::Instant::now() > deadline {
                let last = match answer {
                    Ok((status, body)) => format!("{status} {body}"),
                    Err(error) => error,
                };
                return Err(Error::Step {
                    step: "health".into(),
                    reason: format!(
                        "{name} was not healthy within {:?}; /health answered: {last}",
                        self.options.health_timeout
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use semver::Version;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::driver::{Options, Region};

    /// A driver whose region keeps its backups in `folder`; it contacts nothing.
    fn driver(folder: &Path) -> Driver {
        let region = Region {
            name: "ng-lagos".into(),
            docker: "tcp://127.0.0.1:9".into(),
            database: Secret::new("postgres://admin:unused@127.0.0.1:9/postgres"),
            backups: folder.to_path_buf(),
        };
        Driver::new(&region, Options::default()).expect("a driver")
    }

    /// A driver whose instance `web` has `files` in its backups folder: a backup holds its
    /// own name, and a `.sha256` file the checksum of the file it is named after.
    fn region_with(files: &[&str]) -> (Driver, tempfile::TempDir) {
        let region = tempfile::tempdir().expect("a temporary folder");
        let folder = region.path().join("web");
        std::fs::create_dir_all(&folder).expect("the instance's folder");
        for name in files {
            let text = match name.strip_suffix(".sha256") {
                Some(backup) => format!("{}  {backup}\n", hex::encode(Sha256::digest(backup))),
                None => name.to_string(),
            };
            std::fs::write(folder.join(name), text).expect("a file");
        }
        (driver(region.path()), region)
    }

    /// Checks what `backups` lists for a folder holding `files`.
    async fn check(files: &[&str], expected: &[&str]) {
        let (driver, _region) = region_with(files);
        let listed = driver.backups("web").await.expect("listed");
        assert_eq!(listed, expected, "{files:?}");
    }

    const FIRST: &str = "20260101T000000.000000Z-before-1.1.0.dump";
    const SECOND: &str = "20260102T000000.000000Z-final.dump";
    const THIRD: &str = "20260103T000000.000000Z-final.dump";

    #[tokio::test]
    async fn backups_are_the_dumps_with_a_checksum_in_name_order() {
        check(&[], &[]).await;
        check(
            &[
                "manual.dump",
                "manual.dump.sha256",
                SECOND,
                "20260102T000000.000000Z-final.dump.sha256",
                FIRST,
                "20260101T000000.000000Z-before-1.1.0.dump.sha256",
                // Cut off before its checksum was written, and before it was moved into place.
                THIRD,
                "20260104T000000.000000Z-final.dump.partial",
                "gone.dump.sha256",
                "notes.txt",
            ],
            &[FIRST, SECOND, "manual.dump"],
        )
        .await;
    }

    #[tokio::test]
    async fn an_absent_backups_folder_holds_none_and_an_unreadable_one_is_an_error() {
        let region = tempfile::tempdir().expect("a temporary folder");
        let driver = driver(region.path());
        assert!(driver.backups("web").await.expect("listed").is_empty());
        std::fs::write(region.path().join("web"), "not a folder").expect("a file");
        let error = driver.backups("web").await.expect_err("unreadable");
        assert!(
            error.to_string().contains("cannot read the backups folder"),
            "{error}"
        );
        let error = driver
            .latest_backup("web", backups::Purpose::Final)
            .await
            .expect_err("unreadable");
        assert!(
            error.to_string().contains("cannot read the backups folder"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_latest_backup_is_the_newest_complete_one_for_its_purpose_checked() {
        let (driver, region) = region_with(&[
            SECOND,
            "20260102T000000.000000Z-final.dump.sha256",
            FIRST,
            "20260101T000000.000000Z-before-1.1.0.dump.sha256",
            THIRD,
        ]);
        let latest = driver
            .latest_backup("web", backups::Purpose::Final)
            .await
            .expect("read")
            .expect("a final backup");
        assert_eq!(latest.name, SECOND);
        assert_eq!(latest.sha256, hex::encode(Sha256::digest(SECOND)));
        let version = Version::new(1, 1, 0);
        let none = driver
            .latest_backup("web", backups::Purpose::BeforeDowngradeTo(&version))
            .await
            .expect("read");
        assert_eq!(none, None);
        // A newest backup that does not match its checksum fails; no older one stands in.
        std::fs::write(region.path().join("web").join(SECOND), "changed").expect("a file");
        let error = driver
            .latest_backup("web", backups::Purpose::Final)
            .await
            .expect_err("a changed backup");
        assert!(
            error.to_string().contains("does not match its checksum"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn remove_backup_deletes_the_backup_and_its_checksum_only() {
        let (driver, region) = region_with(&["a.dump", "a.dump.sha256", "b.dump", "b.dump.sha256"]);
        driver
            .remove_backup("web", "a.dump")
            .await
            .expect("removed");
        driver
            .remove_backup("web", "a.dump")
            .await
            .expect("removed again, already gone");
        driver
            .remove_backup("nobody", "a.dump")
            .await
            .expect("no folder, nothing to remove");
        let mut left: Vec<String> = std::fs::read_dir(region.path().join("web"))
            .expect("the folder")
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8")
            })
            .collect();
        left.sort();
        assert_eq!(left, ["b.dump", "b.dump.sha256"]);
    }

    #[tokio::test]
    async fn remove_backup_refuses_what_is_not_a_backups_file_name() {
        let (driver, region) = region_with(&["b.dump", "b.dump.sha256"]);
        // Files a name reaching outside the instance's folder would hit.
        std::fs::write(region.path().join("other.dump"), "other").expect("a file");
        std::fs::create_dir(region.path().join("web").join("sub")).expect("a folder");
        std::fs::write(region.path().join("web").join("sub").join("c.dump"), "c").expect("a file");
        for name in [
            "../other.dump",
            "sub/c.dump",
            "/tmp/x.dump",
            "..",
            "",
            "b.dump.sha256",
        ] {
            let error = driver
                .remove_backup("web", name)
                .await
                .expect_err("refused");
            assert!(
                error.to_string().contains("is not a backup name"),
                "{name}: {error}"
            );
        }
        assert!(region.path().join("other.dump").is_file());
        assert!(
            region
                .path()
                .join("web")
                .join("sub")
                .join("c.dump")
                .is_file()
        );
        assert_eq!(driver.backups("web").await.expect("listed"), ["b.dump"]);
    }
}
