//! Durations written as `500ms`, `5s`, `10m`, `24h` (or a bare number of
//! seconds), as every Ambit binary reads them in config files and flags.

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 10m or 24h"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "duration {s:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    // Anything longer than ten years is a typo, and huge values would overflow.
    const MAX_SECS: f64 = 10.0 * 365.0 * 86400.0;
    if !secs.is_finite() || !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!(
            "duration {s:?} is out of range (at most ten years)"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bounds() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse("5d").unwrap_err().contains("unknown unit"));
        assert!(parse("99999999999h").unwrap_err().contains("out of range"));
        assert!(parse("x").is_err());
    }
}
