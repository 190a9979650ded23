//! base64url without padding (RFC 7515 section 2), strict: JWS segments
//! and JWK members must use exactly this form, so padding, characters of
//! the standard alphabet and non-zero unused bits are refused rather than
//! tolerated (a lenient decoder makes two spellings of one signature).

/// Why a segment is not base64url.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum B64Error {
    #[error("invalid base64url character at {0}")]
    Char(usize),
    #[error("base64url length cannot be decoded")]
    Length,
    #[error("base64url has non-zero trailing bits")]
    TrailingBits,
}

fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Decodes `s`; see the module docs for what is refused.
pub fn decode(s: &str) -> Result<Vec<u8>, B64Error> {
    let bytes = s.as_bytes();
    // One leftover character carries only 6 bits: never a whole byte.
    if bytes.len() % 4 == 1 {
        return Err(B64Error::Length);
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for (i, &c) in bytes.iter().enumerate() {
        let v = value(c).ok_or(B64Error::Char(i))?;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if acc != 0 {
        return Err(B64Error::TrailingBits);
    }
    Ok(out)
}

/// Encodes `data` (used for tests and fuzzing, where tokens are made).
pub fn encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..40 {
            let e = encode(&data[..n]);
            assert!(!e.contains('='));
            assert_eq!(decode(&e).unwrap(), &data[..n], "length {n}");
        }
        assert_eq!(encode(b"\xfb\xff"), "-_8");
    }

    #[test]
    fn refuses_padding_standard_alphabet_and_loose_bits() {
        assert_eq!(decode("YQ=="), Err(B64Error::Char(2)));
        assert_eq!(decode("a+b/"), Err(B64Error::Char(1)));
        assert_eq!(decode("abcde"), Err(B64Error::Length));
        // "YR" would decode to "a" with a stray bit set.
        assert_eq!(decode("YR"), Err(B64Error::TrailingBits));
        assert_eq!(decode("YQ").unwrap(), b"a");
        assert_eq!(decode("").unwrap(), b"");
    }
}
