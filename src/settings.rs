//! Settings stored in `lease_configs`, read at the start of every operation so that a change
//! takes effect on the next one without a restart.

use serde::{Deserialize, Serialize};

use crate::error::LeaseError;

/// The kind of value a setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    /// A whole number in `[min, max]`.
    Integer {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// `true` or `false`.
    Boolean,
}

/// What a setting is, its default and its range.
#[derive(Debug, Clone, Copy)]
pub struct SettingSpec {
    /// The key in `lease_configs`.
    pub key: &'static str,
    /// Its kind and range.
    pub kind: SettingKind,
    /// Its default, in stored (text) form.
    pub default: &'static str,
    /// What it does.
    pub description: &'static str,
}

const YEAR_SECONDS: i64 = 365 * 24 * 3600;

/// Every setting, with its default.
pub const SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        key: "default_ttl_seconds",
        kind: SettingKind::Integer {
            min: 1,
            max: YEAR_SECONDS,
        },
        default: "3600",
        description: "time-to-live of a lease whose request names none",
    },
    SettingSpec {
        key: "max_renewals",
        kind: SettingKind::Integer {
            min: -1,
            max: u32::MAX as i64,
        },
        default: "-1",
        description: "renewal limit of a lease whose request names none; -1 is unlimited",
    },
    SettingSpec {
        key: "acquisition_timeout_ms",
        kind: SettingKind::Integer {
            min: 0,
            max: 24 * 3600 * 1000,
        },
        default: "30000",
        description: "how long a wait lasts when the caller asks to wait without saying how long",
    },
    SettingSpec {
        key: "cleanup_interval_seconds",
        kind: SettingKind::Integer {
            min: 1,
            max: 24 * 3600,
        },
        default: "300",
        description: "how often background cleanup marks expired leases and purges old history",
    },
    SettingSpec {
        key: "auto_expire_enabled",
        kind: SettingKind::Boolean,
        default: "true",
        description:
            "whether background cleanup runs (expired leases never block anyone either way)",
    },
    SettingSpec {
        key: "blocking_mode_enabled",
        kind: SettingKind::Boolean,
        default: "true",
        description: "whether requests may wait in the queue; when false, waits are refused",
    },
    SettingSpec {
        key: "keep_history",
        kind: SettingKind::Boolean,
        default: "true",
        description: "whether history events are written",
    },
    SettingSpec {
        key: "history_retention_days",
        kind: SettingKind::Integer { min: 1, max: 36500 },
        default: "30",
        description: "history older than this many days is purged",
    },
    SettingSpec {
        key: "max_ttl_seconds",
        kind: SettingKind::Integer {
            min: 1,
            max: YEAR_SECONDS,
        },
        default: "604800",
        description: "the longest time-to-live a request may ask for",
    },
];

/// The settings in force, typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// TTL of a lease whose request names none, in seconds.
    pub default_ttl_seconds: u64,
    /// Renewal limit of a lease whose request names none; -1 is unlimited.
    pub max_renewals: i64,
    /// Wait used when a caller asks to wait without a duration, in milliseconds.
    pub acquisition_timeout_ms: u64,
    /// Period of background cleanup, in seconds.
    pub cleanup_interval_seconds: u64,
    /// Whether background cleanup runs.
    pub auto_expire_enabled: bool,
    /// Whether requests may wait.
    pub blocking_mode_enabled: bool,
    /// Whether history is written.
    pub keep_history: bool,
    /// Age after which history is purged, in days.
    pub history_retention_days: u64,
    /// Longest TTL a request may ask for, in seconds.
    pub max_ttl_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_pairs(std::iter::empty()).expect("the defaults are valid")
    }
}

impl Settings {
    /// [`Settings::from_pairs`] of the pairs as a store returns them.
    pub fn from_stored(pairs: &[(String, String)]) -> Result<Settings, LeaseError> {
        Settings::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Builds settings from stored `(key, value)` pairs; missing keys take their defaults.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Settings, LeaseError> {
        let mut values: Vec<(&'static str, String)> = SETTINGS
            .iter()
            .map(|s| (s.key, s.default.to_string()))
            .collect();
        for (key, value) in pairs {
            let normalised = validate_setting(key, value)?;
            if let Some(slot) = values.iter_mut().find(|(k, _)| *k == key) {
                slot.1 = normalised;
            }
        }
        let get = |key: &str| {
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let int = |key: &str| get(key).parse::<i64>().unwrap_or_default();
        let boolean = |key: &str| get(key) == "true";
        Ok(Settings {
            default_ttl_seconds: int("default_ttl_seconds") as u64,
            max_renewals: int("max_renewals"),
            acquisition_timeout_ms: int("acquisition_timeout_ms") as u64,
            cleanup_interval_seconds: int("cleanup_interval_seconds") as u64,
            auto_expire_enabled: boolean("auto_expire_enabled"),
            blocking_mode_enabled: boolean("blocking_mode_enabled"),
            keep_history: boolean("keep_history"),
            history_retention_days: int("history_retention_days") as u64,
            max_ttl_seconds: int("max_ttl_seconds") as u64,
        })
    }

    /// Every setting as `(key, value)` in stored form, in the order of [`SETTINGS`].
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let value = serde_json::to_value(self).unwrap_or_default();
        SETTINGS
            .iter()
            .map(|s| {
                let v = match &value[s.key] {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                (s.key, v)
            })
            .collect()
    }

    /// The renewal limit for a lease whose request names none.
    pub fn default_max_renewals(&self) -> Option<u32> {
        u32::try_from(self.max_renewals).ok()
    }
}

/// Checks a setting's key and value and returns the value in stored form.
/// Unknown keys, ill-typed values and values out of range are refused.
pub fn validate_setting(key: &str, value: &str) -> Result<String, LeaseError> {
    let spec = SETTINGS.iter().find(|s| s.key == key).ok_or_else(|| {
        let known: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        LeaseError::invalid(
            "setting",
            format!(
                "unknown setting {key:?}; known settings: {}",
                known.join(", ")
            ),
        )
    })?;
    let value = value.trim();
    match spec.kind {
        SettingKind::Boolean => match value {
            "true" | "false" => Ok(value.to_string()),
            _ => Err(LeaseError::invalid(
                key,
                format!("{value:?} is not true or false"),
            )),
        },
        SettingKind::Integer { min, max } => {
            let n: i64 = value.parse().map_err(|_| {
                LeaseError::invalid(key, format!("{value:?} is not a whole number"))
            })?;
            if n < min || n > max {
                return Err(LeaseError::invalid(
                    key,
                    format!("{n} is out of range {min}..={max}"),
                ));
            }
            Ok(n.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let s = Settings::default();
        assert_eq!(s.default_ttl_seconds, 3600);
        assert_eq!(s.max_renewals, -1);
        assert_eq!(s.default_max_renewals(), None);
        assert_eq!(s.acquisition_timeout_ms, 30_000);
        assert_eq!(s.cleanup_interval_seconds, 300);
        assert!(s.auto_expire_enabled && s.blocking_mode_enabled && s.keep_history);
        assert_eq!(s.history_retention_days, 30);
        assert_eq!(s.max_ttl_seconds, 7 * 24 * 3600);
        let pairs = s.to_pairs();
        assert_eq!(pairs.len(), SETTINGS.len());
        assert!(pairs.contains(&("keep_history", "true".to_string())));
    }

    #[test]
    fn refuses_unknown_keys_bad_types_and_ranges() {
        assert!(validate_setting("nope", "1").is_err());
        assert!(validate_setting("keep_history", "yes").is_err());
        assert!(validate_setting("default_ttl_seconds", "0").is_err());
        assert!(validate_setting("default_ttl_seconds", "1.5").is_err());
        assert!(validate_setting("max_renewals", "-2").is_err());
        assert_eq!(validate_setting("max_renewals", " 5 ").unwrap(), "5");
    }
}
