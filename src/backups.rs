//! Where an instance's backups go and what each one is called.
//!
//! The plan promises these names to reviewers ("a final backup is taken to …") and the
//! driver writes and finds the files by them; both go through this module, so a promise and
//! the file that keeps it cannot drift apart. It is part of the core: it names paths, it
//! does not touch them.
//!
//! An instance's backups live in `<region backups>/<instance>/`. A backup taken for a
//! purpose is `<time>-<purpose>.dump`, `<time>` being the UTC time it was started at,
//! `20260115T120000.123456Z`, so names sort by time; a named backup is `<name>.dump`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use semver::Version;

/// Why a backup is taken; its file name says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose<'a> {
    /// Taken before the instance is terminated.
    Final,
    /// Taken before the instance's version is changed to this one: the backup a downgrade
    /// from it restores.
    Before(&'a Version),
    /// Taken before a downgrade to this version restores an older backup: the data the
    /// downgrade takes out of the instance.
    BeforeDowngradeTo(&'a Version),
    /// Taken on the instance's backup schedule; only these count against its `retain`.
    Scheduled,
}

impl Purpose<'_> {
    fn suffix(self) -> String {
        match self {
            Purpose::Final => "final".to_string(),
            Purpose::Before(version) => format!("before-{version}"),
            Purpose::BeforeDowngradeTo(version) => format!("before-downgrade-to-{version}"),
            Purpose::Scheduled => "scheduled".to_string(),
        }
    }
}

/// The extension of every backup file.
pub const EXTENSION: &str = ".dump";

/// How the time in a name is written.
const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.6fZ";

/// The folder of `instance`'s backups inside its region's backups folder.
pub fn folder(region_backups: &Path, instance: &str) -> PathBuf {
    region_backups.join(instance)
}

/// The label (the file name without [`EXTENSION`]) of a backup for `purpose` started at `at`.
pub fn label(purpose: Purpose<'_>, at: DateTime<Utc>) -> String {
    format!("{}-{}", at.format(TIME_FORMAT), purpose.suffix())
}

/// The file name of a backup for `purpose` started at `at`.
pub fn file_name(purpose: Purpose<'_>, at: DateTime<Utc>) -> String {
    format!("{}{EXTENSION}", label(purpose, at))
}

/// The file name of a named backup.
pub fn named(name: &str) -> String {
    format!("{name}{EXTENSION}")
}

/// The file name pattern a plan can promise before the backup exists, its time as a
/// pattern: `YYYYMMDDTHHMMSS.ffffffZ-final.dump` (no `<` or `>`, which Markdown would take
/// for a tag).
pub fn pattern(purpose: Purpose<'_>) -> String {
    format!("YYYYMMDDTHHMMSS.ffffffZ-{}{EXTENSION}", purpose.suffix())
}

/// Whether `name` is the file name of a backup for `purpose`, taken at any time.
pub fn is_for(name: &str, purpose: Purpose<'_>) -> bool {
    let Some(label) = name.strip_suffix(EXTENSION) else {
        return false;
    };
    // The time holds no `-`; a version may.
    let Some((time, suffix)) = label.split_once('-') else {
        return false;
    };
    suffix == purpose.suffix() && NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%S%.fZ").is_ok()
}

/// When the backup named `name` (a file name for a purpose) was started; none for a named
/// backup or any other file.
pub fn taken_at(name: &str) -> Option<DateTime<Utc>> {
    let label = name.strip_suffix(EXTENSION)?;
    let (time, _) = label.split_once('-')?;
    NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%S%.fZ")
        .ok()
        .map(|time| time.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_their_purpose_and_sort_by_time() {
        let version = Version::parse("1.5.0-rc.1").expect("a version");
        let at = |seconds| DateTime::from_timestamp(seconds, 123_456_000).expect("a time");
        let earlier = file_name(Purpose::Before(&version), at(1_768_478_400));
        let later = file_name(Purpose::Before(&version), at(1_768_478_401));
        assert_eq!(earlier, "20260115T120000.123456Z-before-1.5.0-rc.1.dump");
        assert!(earlier < later);
        assert!(is_for(&earlier, Purpose::Before(&version)));
        assert!(!is_for(&earlier, Purpose::BeforeDowngradeTo(&version)));
        assert!(!is_for(&earlier, Purpose::Final));
        let downgrade = file_name(Purpose::BeforeDowngradeTo(&version), at(0));
        assert!(!is_for(&downgrade, Purpose::Before(&version)));
        assert!(is_for(&file_name(Purpose::Final, at(0)), Purpose::Final));
        assert_eq!(taken_at(&earlier), Some(at(1_768_478_400)));
        assert_eq!(taken_at("nightly.dump"), None);
        assert!(is_for(
            &file_name(Purpose::Scheduled, at(5)),
            Purpose::Scheduled
        ));
        for other in [
            "x-final.dump",
            "20260115T120000.123456Z-final.dump.sha256",
            "20260115T120000.123456Z-final.dump.partial",
            "final.dump",
        ] {
            assert!(!is_for(other, Purpose::Final), "{other}");
        }
        assert_eq!(
            pattern(Purpose::Final),
            "YYYYMMDDTHHMMSS.ffffffZ-final.dump"
        );
        assert_eq!(
            folder(Path::new("/b/ng-lagos"), "web"),
            Path::new("/b/ng-lagos/web")
        );
    }
}
