//! The lifecycle operations of an instance as the driver has run them so far: each a fixed
//! sequence of the primitives in `steps` (provision, configure, resume, restore, upgrade,
//! downgrade, terminate).
//!
//! These are the sequences `jobs` is taking over, as named idempotent steps with
//! compensations; this module is removed once the driver's tests run through `jobs`. Until
//! then each operation can be repeated, and resumed after a crash at any point, because
//! every primitive it calls checks before it acts.
//!
//! An upgrade takes a backup, turns maintenance on, replaces the containers (which migrate),
//! and checks migrations, health and a smoke test; on any failure it puts the old image back
//! and restores the backup by itself. An upgrade cut off once its containers were touched is
//! resumed from the backup it took, never from a new one of a half-migrated database.

use crate::{
    backups,
    driver::{Driver, Error, Target, database::Backup},
    secret::Secret,
};

impl Driver {
    /// Provisions an instance from nothing, or finishes one a crash interrupted.
    pub async fn provision(&self, target: &Target, password: &Secret) -> Result<(), Error> {
        self.validate(target).await?;
        tokio::try_join!(
            self.allocate(&target.instance),
            self.database(&target.instance, password)
        )?;
        self.containers(target, password).await?;
        self.migrations(target).await?;
        self.health(&target.instance).await?;
        self.smoke(&target.instance).await
    }

    /// Applies a new configuration (environment): containers whose configuration hash
    /// differs are replaced.
    pub async fn configure(&self, target: &Target, password: &Secret) -> Result<(), Error> {
        self.validate(target).await?;
        self.containers(target, password).await?;
        self.migrations(target).await?;
        self.health(&target.instance).await
    }

    /// Starts what suspend stopped (recreating anything missing) and waits for health.
    pub async fn resume(&self, target: &Target, password: &Secret) -> Result<(), Error> {
        self.validate(target).await?;
        self.allocate(&target.instance).await?;
        self.containers(target, password).await?;
        self.migrations(target).await?;
        self.health(&target.instance).await
    }

    /// Restores a named backup: the containers stop, the database is replaced, the
    /// containers start again.
    pub async fn restore(
        &self,
        target: &Target,
        password: &Secret,
        name: &str,
    ) -> Result<Backup, Error> {
        self.suspend(&target.instance).await?;
        let backup = self.restore_database(&target.instance, name).await?;
        self.containers(target, password).await?;
        self.migrations(target).await?;
        self.health(&target.instance).await?;
        Ok(backup)
    }

    /// Upgrades from `from` to `to`: backup, maintenance, new containers (which apply the
    /// new migrations), migrations, health and smoke test. On any failure after the backup,
    /// the old image comes back and the backup is restored, and the error says so.
    ///
    /// Run again after a crash, it resumes: while both containers still run `from`, nothing
    /// has changed but maintenance and a fresh backup is taken; once a container was touched,
    /// the newest complete backup taken before this upgrade is the one kept for a rollback.
    pub async fn upgrade(
        &self,
        from: &Target,
        to: &Target,
        password: &Secret,
    ) -> Result<Backup, Error> {
        self.validate(to).await?;
        let backup = self
            .kept_backup(from, to, backups::Purpose::Before(&to.version))
            .await?;
        self.change_version(from, to, password, &backup, None)
            .await?;
        Ok(backup)
    }

    /// Downgrades from `from` to `to`, as the plan promises: the database as it is now is
    /// kept first (`<time>-before-downgrade-to-<to>.dump`), then the newest backup taken
    /// before the upgrade to `from` (`<time>-before-<from>.dump`) is restored under `to`'s
    /// containers, so data written since that backup leaves the instance. Without such a
    /// backup nothing is changed. On any failure the kept backup and `from` come back.
    /// Returns the restored backup.
    pub async fn downgrade(
        &self,
        from: &Target,
        to: &Target,
        password: &Secret,
    ) -> Result<Backup, Error> {
        self.validate(to).await?;
        let purpose = backups::Purpose::Before(&from.version);
        let Some(restored) = self.latest_backup(&to.instance, purpose).await? else {
            return Err(Error::Invalid(format!(
                "instance `{}`: a downgrade to {} restores the backup taken before the upgrade to {}, and {} holds none ({}); nothing was changed",
                to.instance,
                to.version,
                from.version,
                self.backups_folder(&to.instance).display(),
                backups::pattern(purpose)
            )));
        };
        let kept = self
            .kept_backup(from, to, backups::Purpose::BeforeDowngradeTo(&to.version))
            .await?;
        self.change_version(from, to, password, &kept, Some(&restored))
            .await?;
        Ok(restored)
    }

    /// Removes the instance after a final backup: containers, network, volume, database
    /// and role. Returns the final backup, if the database still existed.
    pub async fn terminate(&self, instance: &str) -> Result<Option<Backup>, Error> {
        self.engine.ping().await?;
        self.server.ping().await?;
        let backup = if self.database_exists(instance).await? {
            Some(self.backup_for(instance, backups::Purpose::Final).await?)
        } else {
            None
        };
        self.remove_containers(instance).await?;
        self.release(instance).await?;
        self.drop_database(instance).await?;
        Ok(backup)
    }

    /// Takes `from` to `to` under maintenance: with `restore`, that backup replaces the
    /// database first. Rolls back to `from` with `kept` on any failure.
    async fn change_version(
        &self,
        from: &Target,
        to: &Target,
        password: &Secret,
        kept: &Backup,
        restore: Option<&Backup>,
    ) -> Result<(), Error> {
        let instance = &to.instance;
        self.set_maintenance(instance, true).await?;
        let attempt = async {
            if let Some(backup) = restore {
                self.suspend(instance).await?;
                self.restore_database(instance, &backup.name).await?;
                self.set_maintenance(instance, true).await?;
            }
            self.containers(to, password).await?;
            self.migrations(to).await?;
            self.health(instance).await?;
            self.set_maintenance(instance, false).await?;
            self.smoke(instance).await
        }
        .await;
        let Err(cause) = attempt else {
            return Ok(());
        };
        tracing::warn!(instance, error = %cause, "version change failed; rolling back");
        self.suspend(instance).await?;
        self.restore_database(instance, &kept.name).await?;
        self.containers(from, password).await?;
        self.migrations(from).await?;
        self.health(instance).await?;
        self.set_maintenance(instance, false).await?;
        Err(Error::RolledBack {
            from: from.version.clone(),
            to: to.version.clone(),
            backup: kept.name.clone(),
            cause: Box::new(cause),
        })
    }

    /// The backup a version change rolls back to: a new one while both containers still run
    /// `from`, else (a change cut off after it touched them, and a new container may have
    /// migrated the database) the newest one for `purpose`, which that change took. A
    /// backups folder that cannot be read fails here: a new backup then could be of a
    /// half-migrated database.
    async fn kept_backup(
        &self,
        from: &Target,
        to: &Target,
        purpose: backups::Purpose<'_>,
    ) -> Result<Backup, Error> {
        let instance = &to.instance;
        if !self.runs(instance, from).await?
            && let Some(backup) = self.latest_backup(instance, purpose).await?
        {
            tracing::info!(instance, backup = %backup.name, "resuming a version change that was cut off");
            return Ok(backup);
        }
        self.backup_for(instance, purpose).await
    }
}
