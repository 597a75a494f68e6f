//! Small value types written as strings in fleet files: quantities, times, zones, schedules.
//!
//! Each has a `parse` that says what is wrong in words, a `Display` that writes it back as
//! a fleet file would, and a JSON Schema that editors can check.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// CPU in thousandths of a core; written as a decimal number of cores (`"2.0"`, `0.5`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(u64);

impl Cpu {
    pub fn from_millicores(millicores: u64) -> Cpu {
        Cpu(millicores)
    }

    pub fn millicores(self) -> u64 {
        self.0
    }

    /// Parses a decimal number of cores with at most three decimals.
    pub fn parse(text: &str) -> Result<Cpu, String> {
        let invalid = || format!("`{text}` is not a number of CPU cores (e.g. \"2.0\")");
        let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let whole: u64 = whole.parse().map_err(|_| invalid())?;
        let fraction: u64 = format!("{fraction:0<3}").parse().map_err(|_| invalid())?;
        whole
            .checked_mul(1000)
            .and_then(|millicores| millicores.checked_add(fraction))
            .map(Cpu)
            .ok_or_else(invalid)
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, fraction) = (self.0 / 1000, self.0 % 1000);
        if fraction == 0 {
            write!(f, "{whole}.0")
        } else {
            let fraction = format!("{fraction:03}");
            write!(f, "{whole}.{}", fraction.trim_end_matches('0'))
        }
    }
}

impl JsonSchema for Cpu {
    fn schema_name() -> Cow<'static, str> {
        "Cpu".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "CPU cores as a decimal number, e.g. \"2.0\".",
            "anyOf": [
                { "type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,3})?$" },
                { "type": "number", "minimum": 0 }
            ]
        })
    }
}

/// An amount of memory or storage in bytes; written with a K, M, G or T suffix (powers of 1024).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

const UNITS: [(char, u32); 4] = [('K', 1), ('M', 2), ('G', 3), ('T', 4)];

impl ByteSize {
    pub fn from_bytes(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"4096M"`, `"50G"`, `"4T"`; an optional trailing `B` or `i` as in `"2GiB"` is
    /// accepted, and a bare number is bytes.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let invalid = || format!("`{text}` is not a size (e.g. \"512M\", \"50G\", \"4T\")");
        let trimmed = text.trim();
        let trimmed = trimmed
            .strip_suffix("iB")
            .or_else(|| trimmed.strip_suffix('B'))
            .unwrap_or(trimmed);
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits_end);
        if number.is_empty() {
            return Err(invalid());
        }
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let power = match unit {
            "" => 0,
            unit => {
                let upper = unit.to_ascii_uppercase();
                UNITS
                    .iter()
                    .find(|(suffix, _)| upper.len() == 1 && upper.starts_with(*suffix))
                    .map(|(_, power)| *power)
                    .ok_or_else(invalid)?
            }
        };
        number
            .checked_mul(1024u64.pow(power))
            .map(ByteSize)
            .ok_or_else(invalid)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, power) in UNITS.iter().rev() {
            let unit = 1024u64.pow(*power);
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", self.0 / unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size with a K, M, G or T suffix (powers of 1024), e.g. \"50G\".",
            "anyOf": [
                { "type": "string", "pattern": "^[0-9]+([KMGTkmgt](i?B)?)?$" },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

/// A local time of day, `HH:MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClockTime(chrono::NaiveTime);

impl ClockTime {
    pub fn parse(text: &str) -> Result<ClockTime, String> {
        let valid = text.len() == 5 && text.as_bytes()[2] == b':';
        valid
            .then(|| chrono::NaiveTime::parse_from_str(text, "%H:%M").ok())
            .flatten()
            .map(ClockTime)
            .ok_or_else(|| format!("`{text}` is not a time of day as HH:MM (00:00 to 23:59)"))
    }

    pub fn time(self) -> chrono::NaiveTime {
        self.0
    }
}

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%H:%M"))
    }
}

impl JsonSchema for ClockTime {
    fn schema_name() -> Cow<'static, str> {
        "ClockTime".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Local time of day, HH:MM.",
            "type": "string",
            "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"
        })
    }
}

/// A length of time in whole minutes; written as `90m`, `4h` or `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Minutes(u32);

/// The longest maintenance window: a week.
pub const MAX_WINDOW_MINUTES: u32 = 7 * 24 * 60;

impl Minutes {
    pub fn new(minutes: u32) -> Minutes {
        Minutes(minutes)
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// Parses `90m`, `4h`, `1h30m`; the result is more than zero and at most a week.
    pub fn parse(text: &str) -> Result<Minutes, String> {
        let invalid = || format!("`{text}` is not a duration such as \"90m\", \"4h\" or \"1h30m\"");
        let (hours, rest) = match text.split_once('h') {
            Some((hours, rest)) => (Some(hours), rest),
            None => (None, text),
        };
        let minutes = match rest {
            "" => None,
            rest => Some(rest.strip_suffix('m').ok_or_else(invalid)?),
        };
        let number = |digits: &str| -> Result<u32, String> {
            if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(invalid());
            }
            digits.parse().map_err(|_| invalid())
        };
        if hours.is_none() && minutes.is_none() {
            return Err(invalid());
        }
        let total = hours.map_or(Ok(0), number)? * 60 + minutes.map_or(Ok(0), number)?;
        if total == 0 || total > MAX_WINDOW_MINUTES {
            return Err(format!(
                "`{text}` must be more than zero and at most a week (168h)"
            ));
        }
        Ok(Minutes(total))
    }
}

impl fmt::Display for Minutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0 / 60, self.0 % 60) {
            (0, minutes) => write!(f, "{minutes}m"),
            (hours, 0) => write!(f, "{hours}h"),
            (hours, minutes) => write!(f, "{hours}h{minutes}m"),
        }
    }
}

impl JsonSchema for Minutes {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration such as \"90m\", \"4h\" or \"1h30m\".",
            "type": "string",
            "pattern": "^([0-9]+h)?([0-9]+m)?$"
        })
    }
}

/// An IANA time zone such as `Africa/Lagos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeZone(chrono_tz::Tz);

impl TimeZone {
    pub fn parse(text: &str) -> Result<TimeZone, String> {
        chrono_tz::Tz::from_str(text)
            .map(TimeZone)
            .map_err(|_| format!("`{text}` is not an IANA time zone (e.g. \"Africa/Lagos\")"))
    }

    pub fn tz(self) -> chrono_tz::Tz {
        self.0
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl JsonSchema for TimeZone {
    fn schema_name() -> Cow<'static, str> {
        "TimeZone".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "IANA time zone name, e.g. \"Africa/Lagos\".",
            "type": "string"
        })
    }
}

/// A five-field cron expression (minute hour day-of-month month day-of-week).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CronSchedule(String);

impl CronSchedule {
    pub fn parse(text: &str) -> Result<CronSchedule, String> {
        let fields = text.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "`{text}` has {fields} fields; a schedule has five (minute hour day month weekday)"
            ));
        }
        croner::Cron::from_str(text)
            .map(|_| CronSchedule(text.to_string()))
            .map_err(|error| {
                let reason = error.to_string().to_lowercase();
                format!(
                    "`{text}` is not a cron schedule: {}",
                    reason.trim_end_matches('.')
                )
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for CronSchedule {
    fn schema_name() -> Cow<'static, str> {
        "CronSchedule".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Five-field cron expression: minute hour day-of-month month day-of-week.",
            "type": "string"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_decimal_cores() {
        assert_eq!(Cpu::parse("2.0").map(Cpu::millicores), Ok(2000));
        assert_eq!(Cpu::parse("0.25").map(Cpu::millicores), Ok(250));
        assert_eq!(Cpu::parse("64").map(Cpu::millicores), Ok(64000));
        assert!(Cpu::parse("1.2345").is_err());
        assert!(Cpu::parse("-1").is_err());
        assert!(Cpu::parse("").is_err());
        assert!(Cpu::parse("99999999999999999999").is_err());
        assert_eq!(Cpu::from_millicores(2500).to_string(), "2.5");
        assert_eq!(Cpu::from_millicores(1000).to_string(), "1.0");
    }

    #[test]
    fn byte_sizes_use_powers_of_1024() {
        assert_eq!(
            ByteSize::parse("4096M").map(ByteSize::bytes),
            Ok(4096 << 20)
        );
        assert_eq!(ByteSize::parse("2G").map(ByteSize::bytes), Ok(2 << 30));
        assert_eq!(ByteSize::parse("4T").map(ByteSize::bytes), Ok(4 << 40));
        assert_eq!(ByteSize::parse("2GiB").map(ByteSize::bytes), Ok(2 << 30));
        assert_eq!(ByteSize::parse("512").map(ByteSize::bytes), Ok(512));
        assert!(ByteSize::parse("2X").is_err());
        assert!(ByteSize::parse("G").is_err());
        assert!(ByteSize::parse("99999999999T").is_err());
        assert_eq!(ByteSize::from_bytes(50 << 30).to_string(), "50G");
    }

    #[test]
    fn durations_are_minutes_up_to_a_week() {
        assert_eq!(Minutes::parse("90m").map(Minutes::get), Ok(90));
        assert_eq!(Minutes::parse("4h").map(Minutes::get), Ok(240));
        assert_eq!(Minutes::parse("1h30m").map(Minutes::get), Ok(90));
        for bad in ["", "0m", "4", "h", "m", "169h", "1h30", "-1h", "4 h"] {
            assert!(Minutes::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(Minutes::new(90).to_string(), "1h30m");
    }

    #[test]
    fn clock_times_are_hh_mm() {
        assert!(ClockTime::parse("02:00").is_ok());
        assert!(ClockTime::parse("23:59").is_ok());
        for bad in ["24:00", "2:00", "02:60", "0200", "02:00:00"] {
            assert!(ClockTime::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn cron_schedules_have_five_fields() {
        assert!(CronSchedule::parse("0 2 * * *").is_ok());
        assert!(CronSchedule::parse("*/15 * * * mon-fri").is_ok());
        assert!(CronSchedule::parse("0 0 2 * * *").is_err());
        assert!(CronSchedule::parse("61 * * * *").is_err());
        assert!(CronSchedule::parse("every day").is_err());
    }
}
