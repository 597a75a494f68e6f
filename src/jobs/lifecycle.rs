//! The lifecycle job kinds as workflows over the driver's primitives.
//!
//! Each workflow follows the seeds' runbooks. Provisioning: validate, allocate, database,
//! containers, migrations, health, smoke test, activate; its rollback removes the
//! containers, the database and the network and volume, newest first. An upgrade: validate,
//! backup, maintenance on, new containers (which migrate), migrations, health, maintenance
//! off, smoke test, activate; its rollback restores the backup under the old containers and
//! turns maintenance off. A downgrade first finds the backup it restores (and fails at once,
//! changing nothing, without one), keeps the database as it is, and restores under the old
//! version's containers; its rollback puts back what it kept.
//!
//! Every step checks before it acts, so a step re-run after a crash does its work once: a
//! backup step cut off while it ran keeps the backup it finished before the crash, and an
//! upgrade whose containers were touched already keeps the backup taken before them.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::Utc;
use futures_util::future::BoxFuture;

use crate::{
    backups::{self, Purpose},
    driver::{self, Driver, Target},
    jobs::{Context, Executor, Payload, StepDef, StepError},
    secret::Secret,
    store::{
        Store,
        audit::{Actor, Record},
        jobs::{Job, JobKind, StepStatus},
        secrets::SecretKey,
        state::{InstanceRecord, InstanceStatus},
    },
};

const SHORT: Duration = Duration::from_secs(60);
const CONTAINERS: Duration = Duration::from_secs(300);
const LONG: Duration = Duration::from_secs(60 * 60);

const VALIDATE: StepDef = StepDef::new("validate", SHORT);
const ALLOCATE: StepDef = StepDef::undone("allocate", SHORT);
const DATABASE: StepDef = StepDef::undone("database", SHORT);
const NEW_CONTAINERS: StepDef = StepDef::undone("containers", CONTAINERS);
const CONTAINERS_STEP: StepDef = StepDef::new("containers", CONTAINERS);
const MIGRATIONS: StepDef = StepDef::new("migrations", CONTAINERS);
const HEALTH: StepDef = StepDef::new("health", CONTAINERS);
const SMOKE: StepDef = StepDef::new("smoke", SHORT);
const ACTIVATE: StepDef = StepDef::new("activate", SHORT);
const BACKUP: StepDef = StepDef::new("backup", LONG);
const MAINTENANCE_ON: StepDef = StepDef::undone("maintenance", SHORT);
const MAINTENANCE_OFF: StepDef = StepDef::new("maintenance-off", SHORT);
const LOCATE: StepDef = StepDef::new("locate-backup", SHORT);
const RESTORE_UNDONE: StepDef = StepDef::undone("restore", LONG);
const RESTORE: StepDef = StepDef::new("restore", LONG);
const SCALE: StepDef = StepDef::new("scale", SHORT);
const SUSPEND: StepDef = StepDef::new("suspend", SHORT);
const RECORD: StepDef = StepDef::new("record", SHORT);
const REMOVE_CONTAINERS: StepDef = StepDef::new("remove-containers", SHORT);
const RELEASE: StepDef = StepDef::new("release", SHORT);
const DROP_DATABASE: StepDef = StepDef::new("drop-database", SHORT);
const FORGET: StepDef = StepDef::new("forget", SHORT);
const RETAIN: StepDef = StepDef::new("retain", SHORT);
const OBSERVE: StepDef = StepDef::new("observe", SHORT);

/// The steps of each kind.
pub fn workflow(kind: JobKind) -> Vec<StepDef> {
    match kind {
        JobKind::Provision => vec![
            VALIDATE,
            ALLOCATE,
            DATABASE,
            NEW_CONTAINERS,
            MIGRATIONS,
            HEALTH,
            SMOKE,
            ACTIVATE,
        ],
        JobKind::Configure => vec![VALIDATE, CONTAINERS_STEP, MIGRATIONS, HEALTH, ACTIVATE],
        JobKind::Scale => vec![SCALE, ACTIVATE],
        JobKind::Upgrade => vec![
            VALIDATE,
            BACKUP,
            MAINTENANCE_ON,
            NEW_CONTAINERS,
            MIGRATIONS,
            HEALTH,
            MAINTENANCE_OFF,
            SMOKE,
            ACTIVATE,
        ],
        JobKind::Downgrade => vec![
            VALIDATE,
            LOCATE,
            BACKUP,
            MAINTENANCE_ON,
            RESTORE_UNDONE,
            CONTAINERS_STEP,
            MIGRATIONS,
            HEALTH,
            MAINTENANCE_OFF,
            SMOKE,
            ACTIVATE,
        ],
        JobKind::Suspend => vec![SUSPEND, RECORD],
        // A repair is a resume of an instance that should be running: the network and volume
        // made again where missing, the containers recreated as applied.
        JobKind::Resume | JobKind::Repair => vec![
            VALIDATE,
            ALLOCATE_AGAIN,
            CONTAINERS_STEP,
            MIGRATIONS,
            HEALTH,
            ACTIVATE,
        ],
        JobKind::Terminate => vec![BACKUP, REMOVE_CONTAINERS, RELEASE, DROP_DATABASE, FORGET],
        JobKind::Backup => vec![BACKUP, RETAIN],
        JobKind::Restore => vec![
            SUSPEND,
            RESTORE,
            CONTAINERS_STEP,
            MIGRATIONS,
            HEALTH,
            ACTIVATE,
        ],
        JobKind::Health => vec![OBSERVE],
    }
}

/// Resuming re-creates what is missing and undoes nothing.
const ALLOCATE_AGAIN: StepDef = StepDef::new("allocate", SHORT);

/// Carries out lifecycle jobs on the regions' drivers.
pub struct Lifecycle {
    pub store: Arc<Store>,
    /// The key that seals instance passwords in the store.
    pub key: SecretKey,
    /// Each region's driver, by region name.
    pub drivers: BTreeMap<String, Driver>,
}

/// What a step needs, read once from its job.
struct Work<'a> {
    driver: &'a Driver,
    job: &'a Job,
    payload: Payload,
    context: &'a Context<'a>,
}

impl Executor for Lifecycle {
    fn workflow(&self, job: &Job) -> Result<Vec<StepDef>, StepError> {
        // A payload that cannot be read fails the job before any step runs.
        let payload = Payload::decode(&job.payload).map_err(StepError::Fatal)?;
        for (wire, what) in [(&payload.target, "target"), (&payload.from, "from")] {
            if let Some(wire) = wire {
                wire.target()
                    .map_err(|reason| StepError::Fatal(format!("the job's {what}: {reason}")))?;
            }
        }
        self.driver(job)?;
        Ok(workflow(job.kind))
    }

    fn run<'a>(
        &'a self,
        step: &'a StepDef,
        context: Context<'a>,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, StepError>> {
        Box::pin(async move {
            let work = self.work(&context)?;
            work.run(self, step.name).await
        })
    }

    fn undo<'a>(
        &'a self,
        step: &'a StepDef,
        context: Context<'a>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            let work = self.work(&context)?;
            work.undo(self, step.name).await
        })
    }
}

impl Lifecycle {
    fn driver(&self, job: &Job) -> Result<&Driver, StepError> {
        self.drivers.get(&job.region).ok_or_else(|| {
            StepError::Fatal(format!(
                "job {}: this worker has no driver for the region `{}` of instance `{}`",
                job.id, job.region, job.instance
            ))
        })
    }

    fn work<'a>(&'a self, context: &'a Context<'a>) -> Result<Work<'a>, StepError> {
        Ok(Work {
            driver: self.driver(context.job)?,
            job: context.job,
            payload: Payload::decode(&context.job.payload).map_err(StepError::Fatal)?,
            context,
        })
    }

    async fn password(&self, instance: &str) -> Result<Secret, StepError> {
        driver::database_password(&self.store, &self.key, instance)
            .await
            .map_err(failed)
    }
}

impl Work<'_> {
    fn instance(&self) -> &str {
        &self.job.instance
    }

    fn target(&self) -> Result<Target, StepError> {
        let wire = self.payload.target.as_ref().ok_or_else(|| {
            StepError::Fatal(format!(
                "a {} job needs a target in its payload",
                self.job.kind.as_str()
            ))
        })?;
        wire.target().map_err(StepError::Fatal)
    }

    fn from(&self) -> Result<Target, StepError> {
        let wire = self.payload.from.as_ref().ok_or_else(|| {
            StepError::Fatal(format!(
                "a {} job needs the target it leaves (`from`) in its payload",
                self.job.kind.as_str()
            ))
        })?;
        wire.target().map_err(StepError::Fatal)
    }

    /// The backup an earlier step of this job named in its output.
    fn output_backup(&self, step: &str, field: &str) -> Result<String, StepError> {
        self.context
            .outputs
            .get(step)
            .and_then(|output| output.get(field))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                StepError::Fatal(format!(
                    "job {}: the step `{step}` left no {field}",
                    self.job.id
                ))
            })
    }

    async fn run(
        &self,
        lifecycle: &Lifecycle,
        step: &str,
    ) -> Result<Option<serde_json::Value>, StepError> {
        let (driver, instance) = (self.driver, self.instance());
        match step {
            "validate" => driver.validate(&self.target()?).await.map_err(failed)?,
            "allocate" => driver.allocate(instance).await.map_err(failed)?,
            "database" => {
                let password = lifecycle.password(instance).await?;
                driver.database(instance, &password).await.map_err(failed)?;
            }
            "containers" => {
                let password = lifecycle.password(instance).await?;
                driver
                    .containers(&self.target()?, &password)
                    .await
                    .map_err(failed)?;
            }
            "migrations" => driver.migrations(&self.target()?).await.map_err(failed)?,
            "health" => driver.health(instance).await.map_err(failed)?,
            "smoke" => driver.smoke(instance).await.map_err(failed)?,
            "activate" => self.record(lifecycle, InstanceStatus::Active).await?,
            "record" => self.record(lifecycle, InstanceStatus::Suspended).await?,
            "backup" => return self.backup().await,
            "maintenance" => driver
                .set_maintenance(instance, true)
                .await
                .map_err(failed)?,
            "maintenance-off" => driver
                .set_maintenance(instance, false)
                .await
                .map_err(failed)?,
            "locate-backup" => return self.locate().await,
            "restore" => {
                let name = match self.job.kind {
                    JobKind::Downgrade => self.output_backup("locate-backup", "restore")?,
                    _ => self
                        .payload
                        .backup
                        .clone()
                        .map(|name| backups::named(&name))
                        .ok_or_else(|| {
                            StepError::Fatal(
                                "a restore job needs the backup's name in its payload".into(),
                            )
                        })?,
                };
                driver.suspend(instance).await.map_err(failed)?;
                driver
                    .restore_database(instance, &name)
                    .await
                    .map_err(failed)?;
                if self.job.kind == JobKind::Downgrade {
                    // The restored database has the maintenance flag of its time.
                    driver
                        .set_maintenance(instance, true)
                        .await
                        .map_err(failed)?;
                }
            }
            "scale" => driver.scale(&self.target()?).await.map_err(failed)?,
            "suspend" => driver.suspend(instance).await.map_err(failed)?,
            "remove-containers" => driver.remove_containers(instance).await.map_err(failed)?,
            "release" => driver.release(instance).await.map_err(failed)?,
            "drop-database" => driver.drop_database(instance).await.map_err(failed)?,
            "forget" => {
                lifecycle
                    .store
                    .delete_secrets(instance)
                    .await
                    .map_err(store_failed)?;
                self.record(lifecycle, InstanceStatus::Terminated).await?;
            }
            "retain" => return self.retain(lifecycle).await,
            "observe" => {
                let drift = driver.observe(&self.target()?).await.map_err(failed)?;
                let found: Vec<String> = drift.iter().map(ToString::to_string).collect();
                let health = serde_json::json!({
                    "health": if found.is_empty() { "healthy" } else { "unhealthy" },
                    "drift": found,
                    "checked_at": Utc::now().to_rfc3339(),
                });
                lifecycle
                    .store
                    .set_instance_health(instance, &health, Utc::now())
                    .await
                    .map_err(store_failed)?;
                return Ok(Some(serde_json::json!({ "drift": found })));
            }
            other => {
                return Err(StepError::Fatal(format!(
                    "a {} job has no step `{other}`",
                    self.job.kind.as_str()
                )));
            }
        }
        Ok(None)
    }

    async fn undo(&self, lifecycle: &Lifecycle, step: &str) -> Result<(), StepError> {
        let (driver, instance) = (self.driver, self.instance());
        match (self.job.kind, step) {
            (_, "allocate") => driver.release(instance).await.map_err(failed),
            (_, "database") => driver.drop_database(instance).await.map_err(failed),
            (JobKind::Provision, "containers") => {
                driver.remove_containers(instance).await.map_err(failed)
            }
            (_, "maintenance") => driver
                .set_maintenance(instance, false)
                .await
                .map_err(failed),
            // The old containers on the backup kept before the change.
            (JobKind::Upgrade, "containers") | (JobKind::Downgrade, "restore") => {
                let kept = self.output_backup("backup", "backup")?;
                let from = self.from()?;
                let password = lifecycle.password(instance).await?;
                driver.suspend(instance).await.map_err(failed)?;
                driver
                    .restore_database(instance, &kept)
                    .await
                    .map_err(failed)?;
                driver.containers(&from, &password).await.map_err(failed)?;
                driver.migrations(&from).await.map_err(failed)?;
                driver.health(instance).await.map_err(failed)
            }
            (kind, other) => Err(StepError::Fatal(format!(
                "a {} job cannot undo `{other}`",
                kind.as_str()
            ))),
        }
    }

    /// The backup step: what it is for depends on the job; check-then-act, it keeps a
    /// backup it finished before a crash cut it off, and one an interrupted version change
    /// took before it touched the containers.
    async fn backup(&self) -> Result<Option<serde_json::Value>, StepError> {
        let (driver, instance) = (self.driver, self.instance());
        let to;
        let purpose = match self.job.kind {
            JobKind::Upgrade => {
                to = self.target()?.version;
                Purpose::Before(&to)
            }
            JobKind::Downgrade => {
                to = self.target()?.version;
                Purpose::BeforeDowngradeTo(&to)
            }
            JobKind::Terminate => {
                if !driver.database_exists(instance).await.map_err(failed)? {
                    return Ok(Some(serde_json::json!({ "backup": null })));
                }
                Purpose::Final
            }
            JobKind::Backup => {
                if let Some(name) = &self.payload.backup {
                    let backup = driver.backup(instance, name).await.map_err(failed)?;
                    return Ok(Some(serde_json::json!({ "backup": backup.name })));
                }
                Purpose::Scheduled
            }
            kind => {
                return Err(StepError::Fatal(format!(
                    "a {} job takes no backup",
                    kind.as_str()
                )));
            }
        };
        // Cut off while it ran: a backup it finished since is the one.
        if let Some(previous) = self.context.previous
            && previous.status == StepStatus::Running
            && let Some(backup) = driver
                .latest_backup(instance, purpose)
                .await
                .map_err(failed)?
            && backups::taken_at(&backup.name).is_some_and(|at| at >= previous.started_at)
        {
            return Ok(Some(serde_json::json!({ "backup": backup.name })));
        }
        // A version change that touched the containers already: the database may be
        // half-migrated, so the backup taken before is kept.
        if matches!(self.job.kind, JobKind::Upgrade | JobKind::Downgrade)
            && !driver.runs(instance, &self.from()?).await.map_err(failed)?
        {
            let kept = driver
                .latest_backup(instance, purpose)
                .await
                .map_err(failed)?;
            return match kept {
                Some(backup) => Ok(Some(serde_json::json!({ "backup": backup.name }))),
                None => Err(StepError::Fatal(format!(
                    "instance `{instance}` no longer runs {} and has no backup {}: the version change cannot be made safely",
                    self.from()?.version,
                    backups::pattern(purpose)
                ))),
            };
        }
        let backup = driver.backup_for(instance, purpose).await.map_err(failed)?;
        Ok(Some(serde_json::json!({ "backup": backup.name })))
    }

    /// The downgrade's first look: the backup taken before the upgrade it undoes.
    async fn locate(&self) -> Result<Option<serde_json::Value>, StepError> {
        let from = self.from()?;
        let to = self.target()?;
        let purpose = Purpose::Before(&from.version);
        match self
            .driver
            .latest_backup(self.instance(), purpose)
            .await
            .map_err(failed)?
        {
            Some(backup) => Ok(Some(serde_json::json!({ "restore": backup.name }))),
            None => Err(StepError::Fatal(format!(
                "instance `{}`: a downgrade to {} restores the backup taken before the upgrade to {}, and there is none ({}); nothing was changed",
                self.instance(),
                to.version,
                from.version,
                backups::pattern(purpose)
            ))),
        }
    }

    /// Removes the instance's oldest scheduled backups beyond `retain`, each removal audited.
    async fn retain(&self, lifecycle: &Lifecycle) -> Result<Option<serde_json::Value>, StepError> {
        let Some(retain) = self.payload.retain else {
            return Ok(None);
        };
        let instance = self.instance();
        let scheduled: Vec<String> = self
            .driver
            .backups(instance)
            .await
            .map_err(failed)?
            .into_iter()
            .filter(|name| backups::is_for(name, Purpose::Scheduled))
            .collect();
        let excess = scheduled.len().saturating_sub(retain as usize);
        let mut removed = Vec::new();
        for name in scheduled.into_iter().take(excess) {
            self.driver
                .remove_backup(instance, &name)
                .await
                .map_err(failed)?;
            let mut record = Record::new(
                Actor::system(self.context.worker),
                "instance.backup.removed",
                &format!("instance/{instance}"),
            );
            record.job = Some(self.job.id.clone());
            record.region = Some(self.job.region.clone());
            record.reason = Some(format!(
                "the instance keeps its {retain} newest scheduled backups"
            ));
            record
                .metadata
                .insert("backup".into(), serde_json::json!(name));
            record.key = Some(format!("job/{}/retain/{name}", self.job.id));
            lifecycle
                .store
                .append_one(record)
                .await
                .map_err(store_failed)?;
            removed.push(name);
        }
        Ok(Some(serde_json::json!({ "removed": removed })))
    }

    /// Records what the job made of the instance.
    async fn record(&self, lifecycle: &Lifecycle, status: InstanceStatus) -> Result<(), StepError> {
        let target = self.payload.target.as_ref();
        let existing = lifecycle
            .store
            .instance(self.instance())
            .await
            .map_err(store_failed)?;
        let record = InstanceRecord {
            name: self.instance().to_string(),
            status,
            version: target
                .map(|target| target.version.clone())
                .or_else(|| existing.as_ref().and_then(|record| record.version.clone())),
            config_hash: target.map(|target| target.config_hash.clone()).or_else(|| {
                existing
                    .as_ref()
                    .and_then(|record| record.config_hash.clone())
            }),
            // The applied state is the status the job leaves, whatever the payload said, so
            // plans against the record see a terminated instance as terminated.
            spec: self
                .payload
                .spec
                .clone()
                .or_else(|| existing.as_ref().and_then(|record| record.spec.clone()))
                .map(|mut spec| {
                    spec.state = status.as_str().to_string();
                    spec
                }),
            health: existing.and_then(|record| record.health),
            last_error: None,
            updated_at: Utc::now(),
        };
        lifecycle
            .store
            .put_instance(&record)
            .await
            .map_err(store_failed)
    }
}

fn failed(error: driver::Error) -> StepError {
    // The driver's errors name their cause once, as their source.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    StepError::Failed(message)
}

fn store_failed(error: crate::store::Error) -> StepError {
    StepError::Failed(format!("the store: {error}"))
}
