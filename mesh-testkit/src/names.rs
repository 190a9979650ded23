//! Unique names for namespaces and interfaces: a short prefix, the pid and a per-process
//! counter, so parallel tests (threads or processes) never collide.

use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Linux's limit for an interface name (IFNAMSIZ - 1).
pub(crate) const IFNAME_MAX: usize = 15;

/// The next value of the process-wide counter.
pub(crate) fn next() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `amb-<pid>-<n>-<tag>`, with the tag cut to 12 characters of `[A-Za-z0-9_-]`.
pub(crate) fn netns_name(tag: &str) -> String {
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(12)
        .collect();
    let base = format!("amb-{}-{}", std::process::id(), next());
    if tag.is_empty() {
        base
    } else {
        format!("{base}-{tag}")
    }
}

/// Names for the two ends of a veth pair, at most [`IFNAME_MAX`] characters:
/// `am<pid base 36>-<n base 36>a` and `...b`.
pub(crate) fn veth_names() -> (String, String) {
    // pid_max is at most 2^22, five base-36 digits; keep the counter to five as well.
    let stem = format!(
        "am{}-{}",
        base36(u64::from(std::process::id())),
        base36(next() % 36u64.pow(5))
    );
    let a = format!("{stem}a");
    let b = format!("{stem}b");
    debug_assert!(a.len() <= IFNAME_MAX && b.len() <= IFNAME_MAX);
    (a, b)
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(4_194_304).len(), 5);
    }

    #[test]
    fn names_are_unique_and_short() {
        let (a1, b1) = veth_names();
        let (a2, _) = veth_names();
        assert_ne!(a1, a2);
        assert!(a1.len() <= IFNAME_MAX && b1.len() <= IFNAME_MAX);
        let n1 = netns_name("we ird/tag-that-is-long");
        let n2 = netns_name("we ird/tag-that-is-long");
        assert_ne!(n1, n2);
        assert!(n1.ends_with("-we_ird_tag-t"), "{n1}");
        assert!(n1.starts_with(&format!("amb-{}-", std::process::id())));
    }
}
