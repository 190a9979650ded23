//! Just enough of the Prometheus / OpenMetrics text format to read ztunnel's counters.

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A line that is not a valid sample.
#[derive(Debug, thiserror::Error)]
#[error("metrics line {line}: {message}: {text:?}")]
pub struct PromError {
    pub line: usize,
    pub message: &'static str,
    pub text: String,
}

/// Parses every sample in `text`; comments (`# HELP`, `# TYPE`, `# EOF`) and blank
/// lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Sample>, PromError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message| PromError {
            line: i + 1,
            message,
            text: raw.to_string(),
        };
        out.push(parse_line(line).map_err(err)?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = value.parse::<f64>().map_err(|_| "value is not a number")?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A metric's labels, in order.
type Labels = Vec<(String, String)>;

/// Parses `key="value",...}` and returns the labels and the text after the `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value"),
            }
        };
        labels.push((key, value));
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// The sum of the samples named `name` whose labels include every `(key, value)` of
/// `filters`.
pub fn sum(samples: &[Sample], name: &str, filters: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| filters.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        // Not `sum()`: that starts at -0.0 and reports an empty sum as "-0".
        .fold(0.0, |acc, v| acc + v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP istio_tcp_connections_opened The total number of TCP connections opened.
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="source",source_workload="client",connection_security_policy="mutual_tls",destination_workload="server"} 1204
istio_tcp_connections_opened_total{reporter="source",connection_security_policy="unknown",destination_workload="odd \"quoted\", {braced}"} 3
istio_tcp_connections_opened_total{reporter="destination",connection_security_policy="mutual_tls"} 7 1700000000000
istio_tcp_sent_bytes_total{reporter="source", connection_security_policy="mutual_tls",} 9.5e3
process_start_time_seconds 1.7e9
up +Inf
# EOF
"#;

    #[test]
    fn parses_and_sums_with_label_filters() {
        let samples = parse(TEXT).unwrap();
        assert_eq!(samples.len(), 6);
        assert_eq!(
            samples[1].label("destination_workload"),
            Some(r#"odd "quoted", {braced}"#)
        );
        let opened = "istio_tcp_connections_opened_total";
        assert_eq!(sum(&samples, opened, &[]), 1214.0);
        assert_eq!(sum(&samples, opened, &[("reporter", "source")]), 1207.0);
        assert_eq!(
            sum(
                &samples,
                opened,
                &[
                    ("reporter", "source"),
                    ("connection_security_policy", "mutual_tls")
                ]
            ),
            1204.0
        );
        assert_eq!(
            sum(
                &samples,
                opened,
                &[("connection_security_policy", "mutual_tls")]
            ),
            1211.0
        );
        let none = sum(&samples, opened, &[("reporter", "gateway")]);
        assert_eq!(none, 0.0);
        assert!(none.is_sign_positive(), "an empty sum prints as 0, not -0");
        assert_eq!(sum(&samples, "istio_tcp_sent_bytes_total", &[]), 9500.0);
        assert_eq!(samples[4].labels, vec![]);
        assert!(samples[5].value.is_infinite());
    }

    #[test]
    fn bad_lines_are_errors_with_line_numbers() {
        let err = parse("ok 1\nbroken{a=\"x\" 1\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(parse("name{a=x} 1").is_err());
        assert!(parse("name{a=\"x\"} one").is_err());
        assert!(parse("lonely").is_err());
    }
}
