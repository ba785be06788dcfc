//! Human durations on the command line (`30s`, `10m`, `1h30m`, `250ms`) and the optional value
//! of `--wait`.

use super::error::{CliError, CliResult};

/// Parses a human duration into milliseconds. Refused: bare numbers (which unit?), negative or
/// malformed values, zero unless `allow_zero`, and anything too large to count in milliseconds.
/// `what` names the option in the error.
pub fn parse_duration_ms(what: &str, text: &str, allow_zero: bool) -> CliResult<u64> {
    let text = text.trim();
    let hint = "write a duration with a unit, such as 30s, 10m, 1h30m or 250ms";
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return Err(CliError::usage(what, format!("{text:?} has no unit")).with_help(hint));
    }
    let duration = humantime::parse_duration(text).map_err(|e| {
        CliError::usage(what, format!("{text:?} is not a duration ({e})")).with_help(hint)
    })?;
    let ms = u64::try_from(duration.as_millis())
        .ok()
        .filter(|ms| *ms <= i64::MAX as u64)
        .ok_or_else(|| CliError::usage(what, format!("{text:?} is too long")))?;
    if ms == 0 && !allow_zero {
        return Err(CliError::usage(
            what,
            format!("{text:?} is not positive; the shortest is 1ms"),
        ));
    }
    Ok(ms)
}

/// How long `--wait` waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// No `--wait`: refuse at once when a path is held.
    No,
    /// `--wait` without a value: the `acquisition_timeout_ms` setting.
    Default,
    /// `--wait DURATION`, in milliseconds.
    For(u64),
}

impl Wait {
    /// Reads the value clap gave `--wait` (`""` when the flag had none). clap takes the word
    /// after `--wait` as its value even when it was meant as a path, so a value that does not
    /// start with a digit is given back to `paths` (first, where it was typed) and the wait is
    /// the default; one starting with a digit must be a valid duration.
    pub fn from_arg(value: Option<String>, paths: &mut Vec<String>) -> CliResult<Wait> {
        let Some(value) = value else {
            return Ok(Wait::No);
        };
        if value.is_empty() {
            return Ok(Wait::Default);
        }
        if value.starts_with(|c: char| c.is_ascii_digit()) {
            return Ok(Wait::For(parse_duration_ms("wait", &value, true)?));
        }
        paths.insert(0, value);
        Ok(Wait::Default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        assert_eq!(parse_duration_ms("ttl", "30s", false).unwrap(), 30_000);
        assert_eq!(parse_duration_ms("ttl", "10m", false).unwrap(), 600_000);
        assert_eq!(parse_duration_ms("ttl", "1h30m", false).unwrap(), 5_400_000);
        assert_eq!(parse_duration_ms("ttl", "250ms", false).unwrap(), 250);
        assert_eq!(parse_duration_ms("wait", "0s", true).unwrap(), 0);
        for bad in [
            "0s",
            "1ns",
            "-5s",
            "30",
            "",
            "soon",
            "99999999999999999999s",
        ] {
            let error = parse_duration_ms("ttl", bad, false).unwrap_err();
            assert_eq!(error.exit, 2, "{bad:?}");
        }
    }

    #[test]
    fn a_wait_value_that_is_a_path_goes_back_to_the_paths() {
        let mut paths = vec!["b".to_string()];
        assert_eq!(
            Wait::from_arg(Some("a".into()), &mut paths).unwrap(),
            Wait::Default
        );
        assert_eq!(paths, ["a", "b"]);
        assert_eq!(
            Wait::from_arg(Some("2s".into()), &mut paths).unwrap(),
            Wait::For(2000)
        );
        assert!(Wait::from_arg(Some("2x".into()), &mut paths).is_err());
        assert_eq!(Wait::from_arg(None, &mut paths).unwrap(), Wait::No);
    }
}
