//! What Tidemark reads of a device's X.509 client certificate: the subject's common name (the
//! broker takes it as the device's user name) and the validity period. Only enough DER to find
//! those; the broker checks the signature against its CA when the device connects.

use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("expected one PEM block \"-----BEGIN CERTIFICATE-----\"")]
    NotPem,
    #[error("the PEM block is not valid base64")]
    BadBase64,
    #[error("the certificate is not valid DER: {0}")]
    BadDer(&'static str),
    #[error("the certificate's subject has no common name (CN)")]
    NoCommonName,
}

/// A parsed client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The certificate as DER, for its fingerprint.
    pub der: Vec<u8>,
    pub common_name: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Reads one PEM-encoded certificate.
pub fn parse_pem(pem: &str) -> Result<ClientCertificate, CertificateError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = pem.trim();
    let body = text
        .strip_prefix(BEGIN)
        .and_then(|rest| rest.strip_suffix(END))
        .ok_or(CertificateError::NotPem)?;
    if body.contains("-----") {
        return Err(CertificateError::NotPem);
    }
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| CertificateError::BadBase64)?;
    parse_der(der)
}

/// Reads a DER-encoded certificate.
pub fn parse_der(der: Vec<u8>) -> Result<ClientCertificate, CertificateError> {
    let (certificate, rest) = element(&der, 0x30)?;
    if !rest.is_empty() {
        return Err(CertificateError::BadDer("bytes after the certificate"));
    }
    let (tbs, _) = element(certificate, 0x30)?;
    let mut fields = tbs;
    if fields.first() == Some(&0xA0) {
        fields = element(fields, 0xA0)?.1; // version
    }
    fields = element(fields, 0x02)?.1; // serial number
    fields = element(fields, 0x30)?.1; // signature algorithm
    fields = element(fields, 0x30)?.1; // issuer
    let (validity, after_validity) = element(fields, 0x30)?;
    let (subject, _) = element(after_validity, 0x30)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    let common_name = common_name(subject)?;
    Ok(ClientCertificate {
        der,
        common_name,
        not_before,
        not_after,
    })
}

/// The content of the element at the start of `input`, which must have `tag`, and what follows.
fn element(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), CertificateError> {
    let (&found, rest) = input
        .split_first()
        .ok_or(CertificateError::BadDer("truncated"))?;
    if found != tag {
        return Err(CertificateError::BadDer("unexpected element"));
    }
    let (&first, mut rest) = rest
        .split_first()
        .ok_or(CertificateError::BadDer("truncated"))?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let bytes = usize::from(first & 0x7F);
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return Err(CertificateError::BadDer("bad length"));
        }
        let (length, after) = rest.split_at(bytes);
        rest = after;
        length
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    if rest.len() < length {
        return Err(CertificateError::BadDer("truncated"));
    }
    Ok(rest.split_at(length))
}

fn time(input: &[u8]) -> Result<(DateTime<Utc>, &[u8]), CertificateError> {
    let bad = CertificateError::BadDer("bad time");
    let (digits, year) = match input.first() {
        Some(0x17) => {
            let (content, rest) = element(input, 0x17)?;
            let text = std::str::from_utf8(content).map_err(|_| bad.clone())?;
            let yy: i32 = text
                .get(0..2)
                .and_then(|s| s.parse().ok())
                .ok_or(bad.clone())?;
            let year = if yy < 50 { 2000 + yy } else { 1900 + yy };
            ((text.get(2..).ok_or(bad.clone())?, rest), year)
        }
        Some(0x18) => {
            let (content, rest) = element(input, 0x18)?;
            let text = std::str::from_utf8(content).map_err(|_| bad.clone())?;
            let year: i32 = text
                .get(0..4)
                .and_then(|s| s.parse().ok())
                .ok_or(bad.clone())?;
            ((text.get(4..).ok_or(bad.clone())?, rest), year)
        }
        _ => return Err(bad),
    };
    let (text, rest) = digits;
    // MMDDHHMMSSZ
    if text.len() != 11 || !text.ends_with('Z') {
        return Err(bad);
    }
    let field = |range: std::ops::Range<usize>| -> Result<u32, CertificateError> {
        text.get(range)
            .and_then(|s| s.parse().ok())
            .ok_or(CertificateError::BadDer("bad time"))
    };
    let (month, day) = (field(0..2)?, field(2..4)?);
    let (hour, minute, second) = (field(4..6)?, field(6..8)?, field(8..10)?);
    let at = NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|d| d.and_hms_opt(hour, minute, second))
        .ok_or(bad)?;
    Ok((at.and_utc(), rest))
}

fn common_name(mut subject: &[u8]) -> Result<String, CertificateError> {
    const CN: [u8; 3] = [0x55, 0x04, 0x03];
    let mut found = None;
    while !subject.is_empty() {
        let (set, rest) = element(subject, 0x31)?;
        subject = rest;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (attribute, rest) = element(attributes, 0x30)?;
            attributes = rest;
            let (oid, value) = element(attribute, 0x06)?;
            if oid != CN {
                continue;
            }
            let tag = *value.first().ok_or(CertificateError::BadDer("truncated"))?;
            if !matches!(tag, 0x0C | 0x13 | 0x16) {
                return Err(CertificateError::BadDer("a common name that is not text"));
            }
            let (text, _) = element(value, tag)?;
            let text = std::str::from_utf8(text)
                .map_err(|_| CertificateError::BadDer("a common name that is not UTF-8"))?;
            // Mosquitto takes the last common name when there are several; so does Tidemark.
            found = Some(text.to_owned());
        }
    }
    found.ok_or(CertificateError::NoCommonName)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with: openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes
    //   -subj "/O=Tidemark test/CN=gauge-7" -days 3650; `openssl x509 -noout -dates` printed the
    //   validity asserted below.
    const GAUGE_7: &str = "-----BEGIN CERTIFICATE-----
MIIBqTCCAU+gAwIBAgIUGlS/qGFx7Oeh0IP5elr3R1UQRiAwCgYIKoZIzj0EAwIw
KjEWMBQGA1UECgwNVGlkZW1hcmsgdGVzdDEQMA4GA1UEAwwHZ2F1Z2UtNzAeFw0y
NjEyMDQxMDI1MjhaFw0zNjEyMDExMDI1MjhaMCoxFjAUBgNVBAoMDVRpZGVtYXJr
IHRlc3QxEDAOBgNVBAMMB2dhdWdlLTcwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AARquHaH3qh7TPbf86+fuQgDPV79mIt64gWmhze0RnZMtla0U4K9RuubaHBHEJlC
JFuJ5aE9wjvM85Y9N5AvPYngo1MwUTAdBgNVHQ4EFgQUzQeaUuYqn/jtTwkzlQOP
YTmPSkYwHwYDVR0jBBgwFoAUzQeaUuYqn/jtTwkzlQOPYTmPSkYwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAw30UofRhYrfWRHaigVoArrrireq5
8rJkuKsw7nmAZJcCIFgAA8bwhB8mRHpMztlJuZWHYOyLm7qce1sKYrsnNUL2
-----END CERTIFICATE-----";

    #[test]
    fn the_common_name_and_validity_are_read() {
        let certificate = parse_pem(GAUGE_7).unwrap();
        assert_eq!(certificate.common_name, "gauge-7");
        assert_eq!(
            certificate.not_before.to_rfc3339(),
            "2026-12-04T10:25:28+00:00"
        );
        assert_eq!(
            certificate.not_after.to_rfc3339(),
            "2036-12-01T10:25:28+00:00"
        );
    }

    #[test]
    fn anything_else_is_refused_without_a_panic() {
        assert_eq!(parse_pem("hello"), Err(CertificateError::NotPem));
        assert_eq!(
            parse_pem("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"),
            Err(CertificateError::BadBase64)
        );
        let der = parse_pem(GAUGE_7).unwrap().der;
        for cut in 0..der.len() {
            assert!(parse_der(der[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xFF;
            let _ = parse_der(flipped.clone());
            flipped[i] ^= 0xFF;
        }
    }
}
