//! Human durations in config: `500ms`, `10s`, `5m`, `1h`, `30d` (and combinations like `1m30s`).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with units in config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub std::time::Duration);

impl HumanDuration {
    pub const fn from_secs(s: u64) -> Self {
        HumanDuration(std::time::Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Self {
        HumanDuration(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

const UNITS: &[(&str, u128)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `500ms`, `10s`, `1m30s`; a bare number has no unit and is refused.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let s = text.trim();
    let err = || {
        format!(
            "invalid duration `{text}`: expected a number with a unit (ms, s, m, h, d), like `500ms` or `10s`"
        )
    };
    if s.is_empty() {
        return Err(err());
    }
    let mut total_ms: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err());
        }
        let value: u128 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let (_, scale) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(err)?;
        total_ms = total_ms
            .checked_add(value.checked_mul(*scale).ok_or_else(err)?)
            .ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    let ms = u64::try_from(total_ms).map_err(|_| err())?;
    Ok(std::time::Duration::from_millis(ms))
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, scale) in UNITS.iter().rev() {
            if ms != 0 && ms % scale == 0 {
                return write!(f, "{}{unit}", ms / scale);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d))+$",
            "description": "A duration with units: `500ms`, `10s`, `5m`, `1h`, `30d`, `1m30s`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    }

    #[test]
    fn refuses_bare_numbers_and_unknown_units() {
        for bad in ["", "10", "s", "10x", "1.5s", "-1s", "10 s"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn displays_in_largest_exact_unit() {
        assert_eq!(HumanDuration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(HumanDuration::from_secs(120).to_string(), "2m");
        assert_eq!(HumanDuration::from_secs(0).to_string(), "0ms");
    }
}
