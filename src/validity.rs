//! When a certificate (PEM) starts and stops being valid, read from its DER: the two times of
//! the `validity` field of the to-be-signed part (RFC 5280 4.1.2.5). Nothing else of the
//! certificate is read, nor trusted: this is the agent's own certificate, to know when to
//! renew it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Reads the first certificate of `pem`.
    pub fn of_pem(pem: &str) -> Result<Validity, String> {
        let block = pem::parse(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
        if block.tag() != "CERTIFICATE" {
            return Err(format!("a PEM {:?} block, not a certificate", block.tag()));
        }
        Validity::of_der(block.contents())
    }

    pub fn of_der(der: &[u8]) -> Result<Validity, String> {
        let bad = |what: &str| format!("not an X.509 certificate: {what}");
        let (cert, _) = tlv(der, SEQUENCE).ok_or_else(|| bad("no outer SEQUENCE"))?;
        let (mut tbs, _) = tlv(cert, SEQUENCE).ok_or_else(|| bad("no tbsCertificate"))?;
        // version [0] EXPLICIT, optional.
        if tbs.first() == Some(&0xa0) {
            tbs = tlv(tbs, 0xa0).ok_or_else(|| bad("a broken version"))?.1;
        }
        let (_, rest) = tlv(tbs, INTEGER).ok_or_else(|| bad("no serial number"))?;
        let (_, rest) = tlv(rest, SEQUENCE).ok_or_else(|| bad("no signature algorithm"))?;
        let (_, rest) = tlv(rest, SEQUENCE).ok_or_else(|| bad("no issuer"))?;
        let (validity, _) = tlv(rest, SEQUENCE).ok_or_else(|| bad("no validity"))?;
        let (not_before, rest) = time(validity).ok_or_else(|| bad("a bad notBefore"))?;
        let (not_after, _) = time(rest).ok_or_else(|| bad("a bad notAfter"))?;
        if not_after <= not_before {
            return Err(bad("notAfter is not after notBefore"));
        }
        Ok(Validity {
            not_before,
            not_after,
        })
    }

    /// The whole lifetime.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// When it is due for renewal: two thirds of its lifetime after its start (a one-year
    /// certificate about four months before it ends; one of nine minutes three before).
    pub fn renew_at(&self) -> SystemTime {
        self.not_before + self.lifetime() * 2 / 3
    }

    pub fn expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// A time as the agent says times (RFC 3339, UTC, seconds).
pub fn rfc3339(t: SystemTime) -> String {
    crate::state::rfc3339(
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    )
}

const INTEGER: u8 = 0x02;
const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One DER element of `tag` at the start of `input`: its contents and what follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        n => {
            let count = usize::from(n & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let (bytes, rest) = rest.split_at(count);
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, rest)
        }
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A UTCTime or GeneralizedTime (`Z` only, as RFC 5280 requires), and what follows it.
fn time(input: &[u8]) -> Option<(SystemTime, &[u8])> {
    let (text, rest, year) = if let Some((text, rest)) = tlv(input, UTC_TIME) {
        // YYMMDDHHMMSSZ; 50-99 are 19xx (RFC 5280).
        if text.len() != 13 {
            return None;
        }
        let yy = digits(&text[0..2])?;
        let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
        (&text[2..], rest, year)
    } else {
        let (text, rest) = tlv(input, GENERALIZED_TIME)?;
        // YYYYMMDDHHMMSSZ.
        if text.len() != 15 {
            return None;
        }
        (&text[4..], rest, digits(&text[0..4])?)
    };
    if text.last() != Some(&b'Z') {
        return None;
    }
    let (month, day) = (digits(&text[0..2])?, digits(&text[2..4])?);
    let (hour, minute, second) = (
        digits(&text[4..6])?,
        digits(&text[6..8])?,
        digits(&text[8..10])?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let secs = u64::try_from(secs).ok()?;
    Some((UNIX_EPOCH + Duration::from_secs(secs), rest))
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u32, month: u32, day: u32) -> Option<i64> {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: i64, not_after: i64) -> String {
        use rcgen::{CertificateParams, KeyPair};
        let mut params = CertificateParams::new(vec!["gw01.example".into()]).unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // 2026-12-03 09:00:00 (UTCTime) to 2051-01-01 00:00:00 (GeneralizedTime: from 2050).
        let v = Validity::of_pem(&cert(1_796_288_400, 2_556_144_000)).unwrap();
        assert_eq!(v.not_before, at(1_796_288_400));
        assert_eq!(v.not_after, at(2_556_144_000));
        // Leap days, the end of a month, the turn of a century.
        for t in [951_782_400, 951_868_799, 1_709_164_800, 4_107_542_399] {
            let v = Validity::of_pem(&cert(t, t + 60)).unwrap();
            assert_eq!((v.not_before, v.not_after), (at(t), at(t + 60)), "{t}");
        }
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let v = Validity::of_pem(&cert(1_800_000_000, 1_800_000_900)).unwrap();
        assert_eq!(v.lifetime(), Duration::from_secs(900));
        assert_eq!(v.renew_at(), at(1_800_000_600));
        assert!(!v.expired_at(at(1_800_000_899)));
        assert!(v.expired_at(at(1_800_000_900)));
    }

    #[test]
    fn what_is_not_a_certificate_is_an_error_not_a_panic() {
        assert!(Validity::of_pem("").is_err());
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(
            Validity::of_pem(&key)
                .unwrap_err()
                .contains("not a certificate")
        );
        let good = pem::parse(cert(1_800_000_000, 1_800_000_900)).unwrap();
        let der = good.contents();
        for cut in 0..der.len() {
            assert!(Validity::of_der(&der[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = der.to_vec();
        for i in 0..flipped.len().min(200) {
            flipped[i] ^= 0xff;
            let _ = Validity::of_der(&flipped);
            flipped[i] ^= 0xff;
        }
    }
}
