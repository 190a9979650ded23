//! Path normalization, so that a policy on "/admin" cannot be bypassed by
//! "//admin", "/./admin", "/x/../admin" or "/%61dmin", and routing sees the
//! same path authorization does.

/// Why a path cannot be normalized (answer 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path contains an encoded '/' or '\\' (%2F, %5C)")]
    EncodedSlash,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path contains a control character or space")]
    Control,
    #[error("path contains an invalid percent escape")]
    BadEscape,
    #[error("path climbs above the root with '..'")]
    AboveRoot,
}

/// Normalizes a request path (a query after '?' is kept verbatim):
/// percent-escapes of unreserved characters (letters, digits, `-._~`) are
/// decoded and the other escapes upper-cased; runs of '/' are merged; `.`
/// segments are removed and `..` segments remove the segment before them.
/// Rejects an encoded slash or backslash, NUL (raw or encoded), control
/// characters, bad escapes and `..` above the root.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(path)?;
    let trailing_slash = decoded.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    let mut last_was_dot = false;
    for seg in decoded.split('/') {
        last_was_dot = false;
        match seg {
            "" => {}
            "." => last_was_dot = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                last_was_dot = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + query.map_or(0, |q| q.len() + 1));
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    // "/a/" and "/a/." and "/a/b/.." name a directory: keep the slash.
    if out.is_empty() || ((trailing_slash || last_was_dot) && !out.ends_with('/')) {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0 => return Err(PathError::Nul),
            b'%' => {
                let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(PathError::BadEscape);
                };
                let (Some(hv), Some(lv)) = (hex(h), hex(l)) else {
                    return Err(PathError::BadEscape);
                };
                let c = hv << 4 | lv;
                match c {
                    0 => return Err(PathError::Nul),
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                        out.push(c as char)
                    }
                    _ => {
                        out.push('%');
                        out.push(h.to_ascii_uppercase() as char);
                        out.push(l.to_ascii_uppercase() as char);
                    }
                }
                i += 3;
                continue;
            }
            b if b < 0x20 || b == 0x7f || b == b' ' => return Err(PathError::Control),
            _ => {}
        }
        // Copy one UTF-8 character (the input is a &str, so boundaries hold).
        let len = utf8_len(b);
        out.push_str(&path[i..i + len]);
        i += len;
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// The value of one hex digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
