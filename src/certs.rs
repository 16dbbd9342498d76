//! Certificate material for HTTPS: PEM files read and checked (the front
//! refuses bad ones before any process starts; the LB reads them again to
//! serve them, and again when they change).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;

use crate::lb::access_log::civil_from_days;
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

/// What is worth a warning about the certificates served (each pair's
/// file and what it is for, the default first): a certificate for no name
/// (clients check subjectAltName only), a pair no client would get (every
/// name it is for goes to an earlier one), and `host` — this machine's
/// name, when it is a full domain name — covered by none.
pub fn name_warnings(served: &[(&Path, &Info)], host: Option<&str>) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, (file, info)) in served.iter().enumerate() {
        if info.names.is_empty() {
            warnings.push(format!(
                "{}: the certificate names no host in its subjectAltName; clients will refuse it",
                file.display()
            ));
            continue;
        }
        let earlier = &served[..i];
        let taken = |name: &String| {
            earlier
                .iter()
                .any(|(_, e)| e.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        };
        if i > 0 && info.names.iter().all(taken) {
            warnings.push(format!(
                "{}: never served; every name it is for ({}) goes to an earlier --cert",
                file.display(),
                info.names.join(", ")
            ));
        }
    }
    if let Some(host) = host.filter(|h| h.contains('.') && !h.ends_with(".local")) {
        if !served.iter().any(|(_, info)| info.covers(host)) {
            warnings.push(format!(
                "no certificate served is for this machine's name {host}; clients that use it will refuse the connection"
            ));
        }
    }
    warnings
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

// ---------------------------------------------------------------------------
// Development certificates (`https:quick`, `https:ca`, `https:smart`)

/// The development CA's name.
pub const CA_NAME: &str = "Rip Server Development CA";
/// How long the CA is valid.
const CA_DAYS: i64 = 730;
/// How long a leaf the CA signs is valid: under the 825 days macOS and iOS
/// accept for a server certificate.
const LEAF_DAYS: i64 = 824;
/// How long a `quick` certificate is valid.
const QUICK_DAYS: i64 = 365;
/// A leaf this close to its end is issued again.
const RENEW_DAYS: i64 = 30;

/// Where the development CA and the certificates it issued live:
/// `$RIP_HOME`, else `~/.rip-server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home(pub PathBuf);

impl Home {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Home, String> {
        match env("RIP_HOME").filter(|h| !h.is_empty()) {
            Some(home) => Ok(Home(
                std::path::absolute(&home).map_err(|e| format!("RIP_HOME={home}: {e}"))?,
            )),
            None => match env("HOME").filter(|h| !h.is_empty()) {
                Some(home) => Ok(Home(Path::new(&home).join(".rip-server"))),
                None => {
                    Err("neither RIP_HOME nor HOME is set: no place for the development CA".into())
                }
            },
        }
    }

    pub fn ca(&self) -> Pair {
        Pair {
            cert: self.0.join("ca/root.crt"),
            key: self.0.join("ca/root.key"),
        }
    }

    /// The certificate issued for `domain`.
    pub fn leaf(&self, domain: &str) -> Pair {
        Pair {
            cert: self.0.join(format!("certs/{domain}.crt")),
            key: self.0.join(format!("certs/{domain}.key")),
        }
    }

    /// Certificates of your own for `https:smart` (`certs/server.crt`).
    pub fn own(&self) -> Pair {
        self.leaf("server")
    }

    /// Creates the CA unless it exists; whether it made one.
    pub fn init_ca(&self) -> Result<bool, String> {
        let ca = self.ca();
        if ca.cert.exists() && ca.key.exists() {
            return Ok(false);
        }
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, CA_NAME);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_DAYS);
        let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cannot make the CA: {e}"))?;
        write_pair(&ca, &cert.pem(), &key.serialize_pem())?;
        Ok(true)
    }

    /// The certificate for `domain` signed by the CA (made first if
    /// missing), issued again when missing, near its end, or older than the
    /// CA.
    pub fn issue(&self, domain: &str) -> Result<Pair, String> {
        self.init_ca()?;
        let leaf = self.leaf(domain);
        if fresh(&leaf, Some(&self.ca())) {
            return Ok(leaf);
        }
        let ca = self.ca();
        let ca_pem = read_text(&ca.cert)?;
        let ca_key = rcgen::KeyPair::from_pem(&read_text(&ca.key)?)
            .map_err(|e| format!("{}: {e}", ca.key.display()))?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)
            .map_err(|e| format!("{}: {e}", ca.cert.display()))?;
        let mut names = vec![domain.to_string(), format!("*.{domain}")];
        if domain != "localhost" {
            names.push("localhost".into());
        }
        names.push("127.0.0.1".into());
        names.push("::1".into());
        let mut params = rcgen::CertificateParams::new(names)
            .map_err(|e| format!("{domain}: not a name for a certificate ({e})"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, domain);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_DAYS);
        let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| format!("cannot sign the certificate: {e}"))?;
        write_pair(&leaf, &cert.pem(), &key.serialize_pem())?;
        Ok(leaf)
    }
}

/// A self-signed certificate for localhost (`https:quick`), written as
/// `pair` unless a fresh one is there.
pub fn quick(pair: &Pair) -> Result<(), String> {
    if fresh(pair, None) {
        return Ok(());
    }
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, QUICK_DAYS);
    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    write_pair(pair, &cert.pem(), &key.serialize_pem())
}

/// From yesterday (clocks differ) for `days`.
fn validity(params: &mut rcgen::CertificateParams, days: i64) {
    let ymd = |secs: i64| {
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        rcgen::date_time_ymd(y as i32, m as u8, d as u8)
    };
    let now = now();
    params.not_before = ymd(now - 86_400);
    params.not_after = ymd(now + days * 86_400);
}

/// Whether `pair` loads, is not near its end and (if `ca` is given) is
/// not older than the CA's certificate.
fn fresh(pair: &Pair, ca: Option<&Pair>) -> bool {
    let Ok(loaded) = load(pair) else {
        return false;
    };
    if loaded.info.not_after - now() < RENEW_DAYS * 86_400 {
        return false;
    }
    match ca {
        None => true,
        Some(ca) => {
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            matches!((modified(&pair.cert), modified(&ca.cert)), (Some(leaf), Some(root)) if leaf >= root)
        }
    }
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))
}

/// Writes a certificate and its key, each mode 0600 in a directory of mode
/// 0700, each replaced whole (a reader never sees half a file).
fn write_pair(pair: &Pair, cert: &str, key: &str) -> Result<(), String> {
    crate::paths::write_private(&pair.key, key.as_bytes())?;
    crate::paths::write_private(&pair.cert, cert.as_bytes())
}

/// SHA-256 of a certificate, hex pairs joined by ':'.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_for(names: &[&str]) -> Info {
        Info {
            subject: String::new(),
            issuer: String::new(),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_before: 0,
            not_after: 0,
            serial: String::new(),
            is_ca: false,
        }
    }

    #[test]
    fn names_worth_a_warning_are_warned_about_and_no_others() {
        let (a, b, c) = (Path::new("a.pem"), Path::new("b.pem"), Path::new("c.pem"));
        let site = info_for(&["example.com", "*.example.com"]);
        let api = info_for(&["api.example.com"]);
        let nameless = info_for(&[]);
        // Each pair has a name of its own, the host is covered: nothing.
        assert!(name_warnings(&[(a, &site), (b, &api)], Some("web1.example.com")).is_empty());
        assert!(name_warnings(&[(a, &site)], Some("Example.COM")).is_empty());
        // A host name that is not a domain name, or none: not checked.
        assert!(name_warnings(&[(a, &site)], Some("web1")).is_empty());
        assert!(name_warnings(&[(a, &site)], Some("laptop.local")).is_empty());
        assert!(name_warnings(&[(a, &site)], None).is_empty());
        let only = |w: Vec<String>| {
            assert_eq!(w.len(), 1, "{w:?}");
            w[0].clone()
        };
        assert!(
            only(name_warnings(&[(a, &site)], Some("web1.other.org"))).contains("web1.other.org")
        );
        assert!(only(name_warnings(&[(c, &nameless)], None))
            .starts_with("c.pem: the certificate names no host"));
        // A later pair whose names all go to an earlier one; an exact name
        // beats an earlier wildcard, so that one is served.
        let again = info_for(&["EXAMPLE.com"]);
        assert!(only(name_warnings(&[(a, &site), (b, &again)], None))
            .starts_with("b.pem: never served"));
        assert!(name_warnings(
            &[(a, &site), (b, &api), (c, &info_for(&["x.example.com"]))],
            None
        )
        .is_empty());
        // The first pair is the default: it is served to every other name.
        assert!(name_warnings(&[(a, &api), (b, &site)], None).is_empty());
    }
    use rustls::client::danger::ServerCertVerifier;

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
    fn the_development_ca_signs_a_leaf_with_the_names_and_limits_it_should_have() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home(dir.path().to_path_buf());
        assert!(home.init_ca().unwrap(), "made");
        assert!(!home.init_ca().unwrap(), "kept");
        let ca = load(&home.ca()).unwrap().info;
        assert_eq!(ca.subject, format!("CN={CA_NAME}"));
        assert!(ca.is_ca);
        let ca_der = read_chain(&home.ca().cert).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca_der[0]).unwrap();
        let bc = parsed.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca && bc.path_len_constraint == Some(0), "{bc:?}");
        let days = (ca.not_after - now()) / 86_400;
        assert!((728..=730).contains(&days), "CA valid {days} more days");

        let pair = home.issue("rip.test").unwrap();
        assert_eq!(pair, home.leaf("rip.test"));
        let leaf = load(&pair).unwrap().info;
        assert_eq!(leaf.issuer, ca.subject);
        assert!(!leaf.is_ca);
        assert_eq!(
            leaf.names,
            ["rip.test", "*.rip.test", "localhost", "127.0.0.1", "::1"]
        );
        let days = (leaf.not_after - now()) / 86_400;
        assert!(days < 825, "leaf valid {days} more days");
        let leaf_der = read_chain(&pair.cert).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf_der[0]).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth, "{eku:?}");
        // rustls' own verifier accepts it for the name, signed by the CA.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(read_chain(&home.ca().cert).unwrap().remove(0))
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let end = read_chain(&pair.cert).unwrap().remove(0);
        let name = rustls_pki_types::ServerName::try_from("api.rip.test").unwrap();
        verifier
            .verify_server_cert(&end, &[], &name, &[], rustls_pki_types::UnixTime::now())
            .unwrap();
        // Kept while fresh, files private.
        let again = home.issue("rip.test").unwrap();
        assert_eq!(load(&again).unwrap().info.serial, leaf.serial);
        use std::os::unix::fs::PermissionsExt;
        for path in [&pair.cert, &pair.key, &home.ca().key] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }

    #[test]
    fn a_quick_certificate_is_for_localhost_for_a_year() {
        let dir = tempfile::tempdir().unwrap();
        let pair = Pair {
            cert: dir.path().join("q.crt"),
            key: dir.path().join("q.key"),
        };
        quick(&pair).unwrap();
        let info = load(&pair).unwrap().info;
        assert_eq!(info.names, ["localhost", "127.0.0.1", "::1"]);
        assert_eq!(info.subject, info.issuer);
        let days = (info.not_after - now()) / 86_400;
        assert!((363..=365).contains(&days), "{days}");
    }

    #[test]
    fn dates_read_as_calendar_dates() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_796_140_800), "2026-12-01 16:00 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00 UTC");
    }
}
