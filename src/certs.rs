//! Certificate material for HTTPS: PEM files read and checked (the front
//! refuses bad ones before any process starts; the LB reads them again to
//! serve them, and again when they change).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto every TLS part of the server uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A pair read, checked and ready to serve.
#[derive(Debug)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: Info,
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses it is for (its subjectAltName).
    pub names: Vec<String>,
    /// Validity, in seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// Hex, colon-separated.
    pub serial: String,
    pub is_ca: bool,
}

impl Info {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Info, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not a readable X.509 certificate ({e})"))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        names.push(dns.to_string())
                    }
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_of(bytes) {
                            names.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Info {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            serial: cert.raw_serial_as_string(),
            is_ca: cert.is_ca(),
        })
    }

    /// Whether it is for `name` (a DNS name or an IP address): exactly, or
    /// by a wildcard covering one label; case-insensitive.
    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, name))
    }
}

fn ip_of(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// `pattern` (a certificate's name, maybe `*.example.com`) matches `name`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    if let Some(suffix) = pattern.strip_prefix("*.") {
        match name.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
            None => false,
        }
    } else {
        pattern.eq_ignore_ascii_case(name)
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A date for a message, `2026-12-01 16:00 UTC`.
pub fn date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Reads the certificate chain in `path` (leaf first).
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let show = path.display();
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if chain.is_empty() {
        return Err(format!(
            "{show}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(chain)
}

/// Reads the private key in `path`.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{}: no private key in it (expected PEM: -----BEGIN PRIVATE KEY-----)",
            path.display()
        ),
        e => pem_error(path, e),
    })
}

fn pem_error(path: &Path, e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("{}: cannot read it: {e}", path.display()),
        e => format!("{}: not a valid PEM file ({e})", path.display()),
    }
}

/// Reads and checks a pair: both readable, the key the certificate's, the
/// certificate valid now.
pub fn load(pair: &Pair) -> Result<Loaded, String> {
    let chain = read_chain(&pair.cert)?;
    let info = Info::parse(&chain[0]).map_err(|e| format!("{}: {e}", pair.cert.display()))?;
    let key = read_key(&pair.key)?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{}: the key does not match the certificate in {}",
            pair.key.display(),
            pair.cert.display()
        ),
        e => format!("{}: cannot use this key: {e}", pair.key.display()),
    })?;
    let now = now();
    if info.not_after < now {
        return Err(format!(
            "{}: the certificate expired on {}",
            pair.cert.display(),
            date(info.not_after)
        ));
    }
    if info.not_before > now {
        return Err(format!(
            "{}: the certificate is not valid before {}",
            pair.cert.display(),
            date(info.not_before)
        ));
    }
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_one_label_and_case_does_not_matter() {
        assert!(name_matches("example.com", "EXAMPLE.com"));
        assert!(name_matches("*.example.com", "www.example.com"));
        assert!(name_matches("*.example.com", "WWW.Example.COM."));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("example.com", "www.example.com"));
    }

    /// A self-signed certificate for `names`, valid from `from` to `to`
    /// (years), written to `dir`; the pair.
    fn made(dir: &Path, names: &[&str], from: i32, to: i32) -> Pair {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pair = Pair {
            cert: dir.join(format!("{from}-{to}.pem")),
            key: dir.join(format!("{from}-{to}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }

    #[test]
    fn a_pair_loads_with_what_its_certificate_says() {
        let dir = tempfile::tempdir().unwrap();
        let pair = made(
            dir.path(),
            &["localhost", "*.dev.example", "127.0.0.1"],
            2020,
            2090,
        );
        let loaded = load(&pair).unwrap();
        assert_eq!(
            loaded.info.names,
            ["localhost", "*.dev.example", "127.0.0.1"]
        );
        assert!(loaded.info.covers("LOCALHOST") && loaded.info.covers("api.dev.example"));
        assert!(!loaded.info.covers("dev.example"));
        assert!(!loaded.info.is_ca);
        assert_eq!(date(loaded.info.not_after), "2090-01-01 00:00 UTC");
        assert!(!loaded.info.serial.is_empty());
    }

    #[test]
    fn an_expired_a_future_or_a_mismatched_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old = made(dir.path(), &["localhost"], 2019, 2020);
        let err = load(&old).unwrap_err();
        assert!(err.contains("expired on 2020-01-01 00:00 UTC"), "{err}");
        let future = made(dir.path(), &["localhost"], 2080, 2090);
        let err = load(&future).unwrap_err();
        assert!(err.contains("not valid before 2080-01-01"), "{err}");
        let good = made(dir.path(), &["localhost"], 2020, 2090);
        let crossed = Pair {
            cert: good.cert.clone(),
            key: old.key.clone(),
        };
        let err = load(&crossed).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn dates_read_as_calendar_dates() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_796_140_800), "2026-12-01 16:00 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00 UTC");
    }
}
