//! Lowercase hex, as the protocol writes key fingerprints and the agent writes pins and
//! machine IDs: the one encoder and decoder of the agent, the simulator and the tests.

/// `bytes` as lowercase hex digits, two a byte.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Exactly `2 * N` hex digits (either case) as `N` bytes; `None` for anything else.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn digit(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let bytes = [0x00, 0x0f, 0x7a, 0xff];
        assert_eq!(encode(&bytes), "000f7aff");
        assert_eq!(decode::<4>("000f7aff"), Some(bytes));
        assert_eq!(decode::<4>("000F7AFF"), Some(bytes));
    }

    #[test]
    fn rejects_what_is_not_exactly_hex() {
        assert_eq!(decode::<2>("abc"), None);
        assert_eq!(decode::<2>("abcdef"), None);
        assert_eq!(decode::<2>("abcg"), None);
        assert_eq!(decode::<2>("+bcd"), None);
        assert_eq!(decode::<1>("é"), None);
    }
}
