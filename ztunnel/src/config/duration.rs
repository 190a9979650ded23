//! Durations written as `500ms`, `5s`, `10m`, `24h` (or a bare number of seconds).

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

pub use mesh_core::duration::parse;

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => parse(&s.to_string())
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
            Raw::Text(t) => parse(&t)
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}ms", self.0.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse("5 days").unwrap_err().contains("unknown unit"));
        assert!(parse("fast").unwrap_err().contains("not a duration"));
        // Found by fuzzing: these used to panic in Duration::from_secs_f64.
        for huge in [
            "8888888888888882h",
            "955555555555555555555555555555555555555555555680ms",
            "99999999999",
        ] {
            assert!(parse(huge).unwrap_err().contains("out of range"), "{huge}");
        }
    }
}
