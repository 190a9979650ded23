//! Reading `iperf3 -J` output: the receiver-side rate of the whole test.

use serde::Serialize;
use serde_json::Value;

/// What one `iperf3 -c ... -J` run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IperfResult {
    /// Parallel streams (`-P`).
    pub streams: u32,
    /// Receiver-side rate summed over streams, Gbit/s (`end.sum_received`).
    pub receiver_gbit_s: f64,
    /// Sender-side rate, Gbit/s (`end.sum_sent`).
    pub sender_gbit_s: f64,
    /// TCP retransmissions counted by the sender (`end.sum_sent.retransmits`), if given.
    pub retransmits: Option<u64>,
    /// Seconds the receiver measured over.
    pub seconds: f64,
}

/// iperf3 output that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IperfError {
    #[error("iperf3 output is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("iperf3 reported an error: {0}")]
    Reported(String),
    #[error("iperf3 output has no {0}")]
    Missing(&'static str),
}

/// Parses the JSON `iperf3 -J` prints (client side). iperf3 puts an `error` field in
/// the JSON when a test fails, which is reported as such.
pub fn parse_json(text: &str) -> Result<IperfResult, IperfError> {
    let v: Value = serde_json::from_str(text)?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(IperfError::Reported(e.to_string()));
    }
    let end = v.get("end").ok_or(IperfError::Missing("`end` section"))?;
    let received = end
        .get("sum_received")
        .ok_or(IperfError::Missing("`end.sum_received`"))?;
    let sent = end
        .get("sum_sent")
        .ok_or(IperfError::Missing("`end.sum_sent`"))?;
    let bps = |section: &Value, what| {
        section
            .get("bits_per_second")
            .and_then(Value::as_f64)
            .ok_or(IperfError::Missing(what))
    };
    let streams = v
        .pointer("/start/test_start/num_streams")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(IperfError::Missing("`start.test_start.num_streams`"))?;
    Ok(IperfResult {
        streams,
        receiver_gbit_s: bps(received, "`end.sum_received.bits_per_second`")? / 1e9,
        sender_gbit_s: bps(sent, "`end.sum_sent.bits_per_second`")? / 1e9,
        retransmits: sent.get("retransmits").and_then(Value::as_u64),
        seconds: received
            .get("seconds")
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a real `iperf3 -c 127.0.0.1 -t 1 -P 2 -J` (iperf 3.12).
    const SAMPLE: &str = r#"{
  "start": {
    "connected": [{"socket": 5, "local_host": "127.0.0.1", "local_port": 41234, "remote_host": "127.0.0.1", "remote_port": 5201}],
    "version": "iperf 3.12",
    "test_start": {"protocol": "TCP", "num_streams": 2, "blksize": 131072, "omit": 0, "duration": 1, "bytes": 0, "blocks": 0, "reverse": 0, "tos": 0}
  },
  "intervals": [],
  "end": {
    "streams": [],
    "sum_sent": {"start": 0, "end": 1.000677, "seconds": 1.000677, "bytes": 2918973440, "bits_per_second": 23335989055.40949, "retransmits": 6, "sender": true},
    "sum_received": {"start": 0, "end": 1.00071, "seconds": 1.00071, "bytes": 2918973440, "bits_per_second": 23335219514.14496, "sender": true},
    "cpu_utilization_percent": {"host_total": 99.1, "remote_total": 40.2},
    "sender_tcp_congestion": "cubic",
    "receiver_tcp_congestion": "cubic"
  }
}"#;

    #[test]
    fn receiver_side_rate() {
        let r = parse_json(SAMPLE).unwrap();
        assert_eq!(r.streams, 2);
        assert!((r.receiver_gbit_s - 23.335219514).abs() < 1e-6, "{r:?}");
        assert!((r.sender_gbit_s - 23.335989055).abs() < 1e-6, "{r:?}");
        assert_eq!(r.retransmits, Some(6));
        assert!((r.seconds - 1.00071).abs() < 1e-9);
    }

    #[test]
    fn errors() {
        let failed = r#"{"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}"#;
        match parse_json(failed) {
            Err(IperfError::Reported(e)) => assert!(e.contains("Connection refused")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_json(r#"{"start": {}, "end": {}}"#),
            Err(IperfError::Missing(_))
        ));
        assert!(matches!(
            parse_json("iperf3: error"),
            Err(IperfError::NotJson(_))
        ));
    }
}
