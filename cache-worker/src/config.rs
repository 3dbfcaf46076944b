//! Settings and their cascade: defaults < the macro's attribute < environment < builder.

use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// The resolved settings of one running worker. See [`Builder`](crate::Builder) for each one's
/// meaning, default and environment variable.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Settings {
    /// The bucket's name: in logs, dump headers and environment variable names.
    pub bucket: String,
    /// The dump file; `None` keeps the bucket in memory only.
    pub file: Option<PathBuf>,
    /// The interval between full refresh cycles, measured from the end of one to the start of
    /// the next; `None` disables periodic refresh.
    pub refresh: Option<Duration>,
    /// How long one load may take before its waiters get [`FetchError::Timeout`](crate::FetchError::Timeout).
    pub load_timeout: Duration,
    /// How many loads a refresh runs at once.
    pub concurrency: usize,
    /// The version of the value type in dump files; bump it when the value type changes.
    pub schema: u32,
    /// At most one dump is written per this interval after writes.
    pub dump_interval: Duration,
    /// `false` bypasses the bucket: every get/fetch calls the loader and nothing is stored.
    pub cache_enabled: bool,
    /// How long `shutdown` waits for in-flight loads before writing the final dump.
    pub shutdown_timeout: Duration,
    /// How many events a subscriber may fall behind before it is told it lagged.
    pub event_capacity: usize,
    /// The first retry delay of a failed reload; doubled on each further failure.
    pub retry_min: Duration,
    /// The longest retry delay of a failed reload.
    pub retry_max: Duration,
    /// How many changes the version log keeps for [`Worker::changes_since`](crate::Worker::changes_since);
    /// 0 keeps none (every client behind the current version gets the full bucket).
    pub delta_threshold: usize,
    /// How long the version log keeps a change.
    pub delta_ttl: Duration,
    /// The most entries the bucket holds; `None`: no bound.
    pub max_entries: Option<usize>,
    /// How long a key the loader said does not exist is remembered as such; `None`: not at all.
    pub not_found_ttl: Option<Duration>,
}

/// [`Settings::MAX_DURATION`], as the error messages say it.
const MAX_DURATION_TEXT: &str = "3650 days";

impl Settings {
    /// The most loads a refresh may run at once (`concurrency`).
    pub const MAX_CONCURRENCY: usize = 65_536;
    /// The largest `event_capacity`: every subscriber's queue is allocated at its full size.
    pub const MAX_EVENT_CAPACITY: usize = 1 << 20;
    /// The longest duration any setting accepts: 3650 days.
    pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 24 * 3600);
    /// The largest `delta_threshold`: 2^24 changes.
    pub const MAX_DELTA_THRESHOLD: usize = 1 << 24;
    /// The default `delta_threshold`: 10 000 changes.
    pub const DEFAULT_DELTA_THRESHOLD: usize = 10_000;
    /// The largest `max_entries`: 2^40 entries.
    pub const MAX_ENTRIES: usize = 1 << 40;
    /// The default `delta_ttl`: one hour.
    pub const DEFAULT_DELTA_TTL: Duration = Duration::from_secs(3600);

    pub(crate) fn defaults(bucket: String) -> Self {
        Settings {
            bucket,
            file: None,
            refresh: Some(Duration::from_secs(900)),
            load_timeout: Duration::from_secs(30),
            concurrency: 16,
            schema: 0,
            dump_interval: Duration::from_secs(5),
            cache_enabled: true,
            shutdown_timeout: Duration::from_secs(10),
            event_capacity: 1024,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            delta_threshold: Settings::DEFAULT_DELTA_THRESHOLD,
            delta_ttl: Settings::DEFAULT_DELTA_TTL,
            max_entries: None,
            not_found_ttl: None,
        }
    }

    /// The delay before retry number `attempt` (1-based) of a failed reload.
    pub(crate) fn retry_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.retry_min.saturating_mul(factor).min(self.retry_max)
    }

    /// Checks every setting against its range: no setting may make the start, or anything
    /// later, fail inside tokio.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |setting, reason: String| {
            Err(Error::InvalidConfig {
                bucket: self.bucket.clone(),
                setting,
                reason,
            })
        };
        if self.bucket.is_empty() {
            return invalid("bucket", "must not be empty".to_owned());
        }
        for (setting, value, max) in [
            ("concurrency", self.concurrency, Settings::MAX_CONCURRENCY),
            (
                "event_capacity",
                self.event_capacity,
                Settings::MAX_EVENT_CAPACITY,
            ),
        ] {
            if !(1..=max).contains(&value) {
                return invalid(setting, format!("must be from 1 to {max}, not {value}"));
            }
        }
        if let Some(max) = self.max_entries
            && !(1..=Settings::MAX_ENTRIES).contains(&max)
        {
            return invalid(
                "max_entries",
                format!("must be from 1 to {}, not {max}", Settings::MAX_ENTRIES),
            );
        }
        if self.not_found_ttl.is_some_and(|d| d.is_zero()) {
            return invalid(
                "not_found_ttl",
                "must be longer than zero (leave it unset to remember nothing)".to_owned(),
            );
        }
        if self.delta_threshold > Settings::MAX_DELTA_THRESHOLD {
            return invalid(
                "delta_threshold",
                format!(
                    "must be from 0 to {}, not {}",
                    Settings::MAX_DELTA_THRESHOLD,
                    self.delta_threshold
                ),
            );
        }
        let durations = [
            ("refresh", self.refresh.unwrap_or_default()),
            ("load_timeout", self.load_timeout),
            ("dump_interval", self.dump_interval),
            ("shutdown_timeout", self.shutdown_timeout),
            ("retry_min", self.retry_min),
            ("retry_max", self.retry_max),
            ("delta_ttl", self.delta_ttl),
            ("not_found_ttl", self.not_found_ttl.unwrap_or_default()),
        ];
        for (setting, value) in durations {
            if value > Settings::MAX_DURATION {
                return invalid(
                    setting,
                    format!("must be at most {MAX_DURATION_TEXT}, not {value:?}"),
                );
            }
        }
        if self.load_timeout.is_zero() {
            return invalid("load_timeout", "must be longer than zero".to_owned());
        }
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return invalid(
                "retry_min",
                format!(
                    "must be longer than zero and at most retry_max ({:?}), not {:?}",
                    self.retry_max, self.retry_min
                ),
            );
        }
        Ok(())
    }

    /// The environment variable for `setting` of this bucket: `CACHE_WORKER_<BUCKET>_<SETTING>`.
    pub fn env_var(bucket: &str, setting: &str) -> String {
        let bucket: String = bucket
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("CACHE_WORKER_{bucket}_{}", setting.to_ascii_uppercase())
    }
}

/// One layer of the cascade: each field is `Some` where this layer sets it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Layer {
    pub(crate) bucket: Option<String>,
    pub(crate) file: Option<Option<PathBuf>>,
    pub(crate) refresh: Option<Option<Duration>>,
    pub(crate) load_timeout: Option<Duration>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) schema: Option<u32>,
    pub(crate) dump_interval: Option<Duration>,
    pub(crate) cache_enabled: Option<bool>,
    pub(crate) shutdown_timeout: Option<Duration>,
    pub(crate) event_capacity: Option<usize>,
    pub(crate) retry_min: Option<Duration>,
    pub(crate) retry_max: Option<Duration>,
    pub(crate) delta_threshold: Option<usize>,
    pub(crate) delta_ttl: Option<Duration>,
    pub(crate) max_entries: Option<Option<usize>>,
    pub(crate) not_found_ttl: Option<Option<Duration>>,
}

impl Layer {
    pub(crate) fn apply(&self, s: &mut Settings) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        set(&mut s.bucket, &self.bucket);
        set(&mut s.file, &self.file);
        set(&mut s.refresh, &self.refresh);
        set(&mut s.load_timeout, &self.load_timeout);
        set(&mut s.concurrency, &self.concurrency);
        set(&mut s.schema, &self.schema);
        set(&mut s.dump_interval, &self.dump_interval);
        set(&mut s.cache_enabled, &self.cache_enabled);
        set(&mut s.shutdown_timeout, &self.shutdown_timeout);
        set(&mut s.event_capacity, &self.event_capacity);
        set(&mut s.retry_min, &self.retry_min);
        set(&mut s.retry_max, &self.retry_max);
        set(&mut s.delta_threshold, &self.delta_threshold);
        set(&mut s.delta_ttl, &self.delta_ttl);
        set(&mut s.max_entries, &self.max_entries);
        set(&mut s.not_found_ttl, &self.not_found_ttl);
    }

    /// Whether this layer sets `setting` (named as in the environment: `REFRESH`, `FILE`, ...).
    fn sets(&self, setting: &str) -> bool {
        match setting {
            "FILE" => self.file.is_some(),
            "REFRESH" => self.refresh.is_some(),
            "LOAD_TIMEOUT" => self.load_timeout.is_some(),
            "CONCURRENCY" => self.concurrency.is_some(),
            "SCHEMA" => self.schema.is_some(),
            "DUMP_INTERVAL" => self.dump_interval.is_some(),
            "CACHE_ENABLED" => self.cache_enabled.is_some(),
            "SHUTDOWN_TIMEOUT" => self.shutdown_timeout.is_some(),
            "EVENT_CAPACITY" => self.event_capacity.is_some(),
            "RETRY_MIN" => self.retry_min.is_some(),
            "RETRY_MAX" => self.retry_max.is_some(),
            "DELTA_THRESHOLD" => self.delta_threshold.is_some(),
            "DELTA_TTL" => self.delta_ttl.is_some(),
            "MAX_ENTRIES" => self.max_entries.is_some(),
            "NOT_FOUND_TTL" => self.not_found_ttl.is_some(),
            _ => false,
        }
    }

    /// Reads `CACHE_WORKER_<BUCKET>_*` through `lookup` (the process environment in production),
    /// leaving out the settings that `above`, the layer that wins over the environment, sets:
    /// a bad variable for a setting the code overrides does not stop the start.
    pub(crate) fn from_env(
        bucket: &str,
        above: &Layer,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Layer, Error> {
        let get = |setting: &str| {
            if above.sets(setting) {
                return None;
            }
            let variable = Settings::env_var(bucket, setting);
            lookup(&variable).map(|value| (variable, value))
        };
        let invalid = |variable: String, value: String, reason: &str| Error::InvalidSetting {
            variable,
            value,
            reason: reason.to_owned(),
        };
        let duration = |setting: &str| -> Result<Option<Duration>, Error> {
            get(setting)
                .map(|(variable, value)| match humantime::parse_duration(value.trim()) {
                    Ok(d) if d <= Settings::MAX_DURATION => Ok(d),
                    Ok(_) => Err(invalid(
                        variable,
                        value.clone(),
                        &format!("expected a duration of at most {MAX_DURATION_TEXT}"),
                    )),
                    Err(e) => Err(invalid(variable, value.clone(), &format!("{e}; expected a duration such as \"90s\", \"15m\", \"1h\" or \"1h30m\""))),
                })
                .transpose()
        };
        let number = |setting: &str, min: usize, max: usize| -> Result<Option<usize>, Error> {
            get(setting)
                .map(|(variable, value)| match value.trim().parse::<usize>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(n),
                    _ => Err(invalid(
                        variable,
                        value.clone(),
                        &format!("expected a whole number from {min} to {max}"),
                    )),
                })
                .transpose()
        };
        let mut layer = Layer::default();
        if let Some((_, value)) = get("FILE") {
            let value = value.trim();
            layer.file = Some(match value {
                "" | "none" | "off" => None,
                path => Some(PathBuf::from(path)),
            });
        }
        if let Some((variable, value)) = get("REFRESH") {
            layer.refresh = Some(match value.trim() {
                "none" | "off" | "0" => None,
                text => match humantime::parse_duration(text) {
                    Ok(d) if d.is_zero() => None,
                    Ok(d) if d <= Settings::MAX_DURATION => Some(d),
                    Ok(_) => {
                        return Err(invalid(
                            variable,
                            value.clone(),
                            &format!(
                                "expected a duration of at most {MAX_DURATION_TEXT}, or \"off\""
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(invalid(
                            variable,
                            value.clone(),
                            &format!(
                                "{e}; expected a duration such as \"90s\", \"15m\", \"1h\", or \"off\""
                            ),
                        ));
                    }
                },
            });
        }
        layer.load_timeout = duration("LOAD_TIMEOUT")?;
        layer.dump_interval = duration("DUMP_INTERVAL")?;
        layer.shutdown_timeout = duration("SHUTDOWN_TIMEOUT")?;
        layer.retry_min = duration("RETRY_MIN")?;
        layer.retry_max = duration("RETRY_MAX")?;
        layer.concurrency = number("CONCURRENCY", 1, Settings::MAX_CONCURRENCY)?;
        layer.event_capacity = number("EVENT_CAPACITY", 1, Settings::MAX_EVENT_CAPACITY)?;
        layer.delta_threshold = number("DELTA_THRESHOLD", 0, Settings::MAX_DELTA_THRESHOLD)?;
        layer.delta_ttl = duration("DELTA_TTL")?;
        if let Some((variable, value)) = get("MAX_ENTRIES") {
            layer.max_entries = Some(match value.trim() {
                "none" | "off" => None,
                text => match text.parse::<usize>() {
                    Ok(n) if (1..=Settings::MAX_ENTRIES).contains(&n) => Some(n),
                    _ => {
                        return Err(invalid(
                            variable,
                            value.clone(),
                            &format!(
                                "expected a whole number from 1 to {}, or \"none\"",
                                Settings::MAX_ENTRIES
                            ),
                        ));
                    }
                },
            });
        }
        if let Some((variable, value)) = get("NOT_FOUND_TTL") {
            layer.not_found_ttl = Some(match value.trim() {
                "none" | "off" => None,
                text => match humantime::parse_duration(text) {
                    Ok(d) if !d.is_zero() && d <= Settings::MAX_DURATION => Some(d),
                    Ok(_) => {
                        return Err(invalid(
                            variable,
                            value.clone(),
                            &format!(
                                "expected a duration longer than zero and at most {MAX_DURATION_TEXT}, or \"off\""
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(invalid(
                            variable,
                            value.clone(),
                            &format!(
                                "{e}; expected a duration such as \"30s\" or \"5m\", or \"off\""
                            ),
                        ));
                    }
                },
            });
        }
        if let Some((variable, value)) = get("SCHEMA") {
            layer.schema = Some(value.trim().parse::<u32>().map_err(|_| {
                invalid(
                    variable,
                    value.clone(),
                    "expected a whole number up to 4294967295",
                )
            })?);
        }
        if let Some((variable, value)) = get("CACHE_ENABLED") {
            layer.cache_enabled = Some(match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(invalid(variable, value, "expected true or false")),
            });
        }
        Ok(layer)
    }
}

/// The compile-time layer that `#[cache_worker(...)]` generates. Not for direct use.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Attributes {
    pub bucket: &'static str,
    pub file: Option<&'static str>,
    pub refresh: Option<Duration>,
    pub load_timeout: Option<Duration>,
    pub concurrency: Option<usize>,
    pub schema: Option<u32>,
    pub dump_interval: Option<Duration>,
    pub cache_enabled: Option<bool>,
    pub delta_threshold: Option<usize>,
    pub delta_ttl: Option<Duration>,
    pub max_entries: Option<usize>,
    pub not_found_ttl: Option<Duration>,
}

impl Attributes {
    pub(crate) fn layer(&self) -> Layer {
        Layer {
            bucket: Some(self.bucket.to_owned()),
            file: self.file.map(|f| Some(PathBuf::from(f))),
            refresh: self.refresh.map(|d| (!d.is_zero()).then_some(d)),
            load_timeout: self.load_timeout,
            concurrency: self.concurrency,
            schema: self.schema,
            dump_interval: self.dump_interval,
            cache_enabled: self.cache_enabled,
            delta_threshold: self.delta_threshold,
            delta_ttl: self.delta_ttl,
            max_entries: self.max_entries.map(Some),
            not_found_ttl: self.not_found_ttl.map(Some),
            ..Layer::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn env_names_follow_the_bucket() {
        assert_eq!(
            Settings::env_var("my-sessions", "refresh"),
            "CACHE_WORKER_MY_SESSIONS_REFRESH"
        );
    }

    #[test]
    fn env_layer_parses_every_setting() {
        let layer = Layer::from_env(
            "s",
            &Layer::default(),
            env(&[
                ("CACHE_WORKER_S_FILE", "/tmp/x.dump"),
                ("CACHE_WORKER_S_REFRESH", "1h30m"),
                ("CACHE_WORKER_S_LOAD_TIMEOUT", "5s"),
                ("CACHE_WORKER_S_CONCURRENCY", "4"),
                ("CACHE_WORKER_S_SCHEMA", "7"),
                ("CACHE_WORKER_S_DUMP_INTERVAL", "2s"),
                ("CACHE_WORKER_S_CACHE_ENABLED", "false"),
                ("CACHE_WORKER_S_SHUTDOWN_TIMEOUT", "3s"),
                ("CACHE_WORKER_S_EVENT_CAPACITY", "9"),
                ("CACHE_WORKER_S_RETRY_MIN", "100ms"),
                ("CACHE_WORKER_S_RETRY_MAX", "1m"),
                ("CACHE_WORKER_S_DELTA_THRESHOLD", "0"),
                ("CACHE_WORKER_S_DELTA_TTL", "10m"),
                ("CACHE_WORKER_S_MAX_ENTRIES", "10000"),
                ("CACHE_WORKER_S_NOT_FOUND_TTL", "30s"),
            ]),
        )
        .expect("valid");
        let mut s = Settings::defaults("s".into());
        layer.apply(&mut s);
        assert_eq!(s.file, Some(PathBuf::from("/tmp/x.dump")));
        assert_eq!(s.refresh, Some(Duration::from_secs(5400)));
        assert_eq!(s.load_timeout, Duration::from_secs(5));
        assert_eq!(s.concurrency, 4);
        assert_eq!(s.schema, 7);
        assert_eq!(s.dump_interval, Duration::from_secs(2));
        assert!(!s.cache_enabled);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(3));
        assert_eq!(s.event_capacity, 9);
        assert_eq!(s.retry_min, Duration::from_millis(100));
        assert_eq!(s.retry_max, Duration::from_secs(60));
        assert_eq!(s.delta_threshold, 0);
        assert_eq!(s.delta_ttl, Duration::from_secs(600));
        assert_eq!(s.max_entries, Some(10_000));
        assert_eq!(s.not_found_ttl, Some(Duration::from_secs(30)));
    }

    #[test]
    fn max_entries_and_not_found_ttl_can_be_turned_off_or_refused() {
        let layer = Layer::from_env(
            "s",
            &Layer::default(),
            env(&[
                ("CACHE_WORKER_S_MAX_ENTRIES", "none"),
                ("CACHE_WORKER_S_NOT_FOUND_TTL", "off"),
            ]),
        )
        .expect("valid");
        assert_eq!(layer.max_entries, Some(None));
        assert_eq!(layer.not_found_ttl, Some(None));
        for (variable, bad) in [
            ("CACHE_WORKER_S_MAX_ENTRIES", "0"),
            ("CACHE_WORKER_S_MAX_ENTRIES", "ten thousand"),
            ("CACHE_WORKER_S_NOT_FOUND_TTL", "0s"),
            ("CACHE_WORKER_S_NOT_FOUND_TTL", "a while"),
        ] {
            let err =
                Layer::from_env("s", &Layer::default(), env(&[(variable, bad)])).expect_err(bad);
            let msg = err.to_string();
            assert!(msg.contains(variable) && msg.contains(bad), "{msg}");
        }
    }

    #[test]
    fn refresh_off_disables() {
        for off in ["off", "0", "none", "0s"] {
            let layer = Layer::from_env(
                "s",
                &Layer::default(),
                env(&[("CACHE_WORKER_S_REFRESH", off)]),
            )
            .expect("valid");
            assert_eq!(layer.refresh, Some(None), "{off}");
        }
    }

    #[test]
    fn invalid_env_names_variable_and_value() {
        let err = Layer::from_env(
            "s",
            &Layer::default(),
            env(&[("CACHE_WORKER_S_REFRESH", "1 hour please")]),
        )
        .expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("CACHE_WORKER_S_REFRESH"), "{msg}");
        assert!(msg.contains("1 hour please"), "{msg}");
        let err = Layer::from_env(
            "s",
            &Layer::default(),
            env(&[("CACHE_WORKER_S_CONCURRENCY", "many")]),
        )
        .expect_err("invalid");
        assert!(err.to_string().contains("CACHE_WORKER_S_CONCURRENCY"));
    }

    #[test]
    fn a_setting_the_layer_above_sets_is_not_read() {
        let above = Layer {
            refresh: Some(None),
            ..Layer::default()
        };
        let layer = Layer::from_env(
            "s",
            &above,
            env(&[
                ("CACHE_WORKER_S_REFRESH", "1 hour please"),
                ("CACHE_WORKER_S_CONCURRENCY", "4"),
            ]),
        )
        .expect("the bad REFRESH is overridden");
        assert_eq!(layer.refresh, None);
        assert_eq!(layer.concurrency, Some(4));
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let mut s = Settings::defaults("s".into());
        s.retry_min = Duration::from_secs(1);
        s.retry_max = Duration::from_secs(10);
        let delays: Vec<u64> = (1..=6).map(|a| s.retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
    }
}
