//! Gateway API duration strings (`1h`, `500ms`, `1m30s`: one to four
//! number-unit pairs, units h, m, s, ms, up to five digits each).

use prost_types::Duration;

/// The duration `text` says, or why it is not one.
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("\"{text}\" is not a duration (one to four parts such as 1h, 30m, 10s, 250ms)");
    let mut rest = text;
    let mut millis: u64 = 0;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(invalid());
        };
        rest = &rest[len..];
        millis += value * unit;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(invalid());
    }
    Ok(Duration {
        seconds: (millis / 1000) as i64,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: &Duration) -> i64 {
        d.seconds * 1000 + i64::from(d.nanos) / 1_000_000
    }

    #[test]
    fn gateway_api_durations() {
        let cases = [
            ("0s", Some(0)),
            ("250ms", Some(250)),
            ("10s", Some(10_000)),
            ("1m30s", Some(90_000)),
            ("1h", Some(3_600_000)),
            ("1h1m1s1ms", Some(3_661_001)),
            ("", None),
            ("10", None),
            ("1.5s", None),
            ("-1s", None),
            ("123456s", None),
            ("1h1m1s1ms1ms", None),
            ("1d", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).ok().as_ref().map(ms), want, "{text}");
        }
    }
}
