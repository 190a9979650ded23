//! What the client pods saw while they were being enrolled: `ambit app
//! client` prints one line per attempt (`ok ...` or `failed <target>:
//! <why>`) to the pod's log, so the lines written during a run tell whether
//! enrolment cost the app failed or stalled connections.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Attempts that failed, by reason (`Connection refused (os error 111)`...);
/// a read timeout shows as `Resource temporarily unavailable (os error 11)`,
/// the client having waited its 5 s.
pub fn failures(lines: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lines.lines() {
        if let Some(rest) = line.strip_prefix("failed ") {
            let why = rest.split_once(": ").map_or(rest, |(_, why)| why);
            *out.entry(why.trim().to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// Adds `more` into `total`.
pub fn add(total: &mut BTreeMap<String, usize>, more: &BTreeMap<String, usize>) {
    for (why, n) in more {
        *total.entry(why.clone()).or_insert(0) += n;
    }
}

/// The log's length now (0 if it does not exist yet).
pub fn length(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What was written to the log from byte `from` on (only whole lines).
pub fn since(path: &Path, from: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(match text.rfind('\n') {
        Some(end) => text[..=end].to_string(),
        None => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_by_reason() {
        let lines = "ok 10.96.0.10:80 server got \"hello\" from 10.244.0.2:40000\n\
                     failed 10.96.0.10:80: Connection refused (os error 111)\n\
                     failed 10.96.0.10:80: Resource temporarily unavailable (os error 11)\n\
                     failed 10.96.0.10:80: Connection refused (os error 111)\n";
        let f = failures(lines);
        assert_eq!(f["Connection refused (os error 111)"], 2);
        assert_eq!(f["Resource temporarily unavailable (os error 11)"], 1);
        assert_eq!(f.len(), 2);
        let mut total = BTreeMap::new();
        add(&mut total, &f);
        add(&mut total, &f);
        assert_eq!(total["Connection refused (os error 111)"], 4);
    }

    #[test]
    fn only_whole_lines_after_the_offset() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("log");
        std::fs::write(&path, "ok a\nfailed x: y\nfai").unwrap();
        assert_eq!(since(&path, 5).unwrap(), "failed x: y\n");
        assert_eq!(length(&path), 20);
        assert_eq!(length(&temp.path().join("none")), 0);
    }
}
