//! TLS: PEM certificate chain + key → a rustls `ServerConfig` whose certificate can be swapped
//! while the gateway runs, and the development CA behind `gen-cert`.
//!
//! The resolver holds the current [`CertifiedKey`] in an `ArcSwap`: a reload swaps it, new
//! handshakes get the new pair, open connections keep theirs, and session resumption state is
//! untouched. A pair that fails to load (unreadable, not PEM, key not matching the
//! certificate) is reported and the old one keeps serving.

use std::fmt;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate/key pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("tls.key {path}: {message}")]
    Key { path: String, message: String },
    #[error("tls.key does not belong to tls.cert, or is not a supported key: {0}")]
    Mismatch(String),
    #[error("dev certificate: {0}")]
    Generate(String),
}

/// aws-lc-rs with AES-128-GCM suites first. With `ignore_client_order` the server's order
/// decides; the default puts AES-256-GCM-SHA384 first, whose SHA-384 key schedule made up an
/// eighth of the handshake's CPU time here. AES-128-GCM is as safe for this purpose and the
/// suite every browser prefers anyway.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite::*;
        match s.suite() {
            TLS13_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384 => 1,
            TLS13_CHACHA20_POLY1305_SHA256 => 2,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
            _ => 4,
        }
    });
    Arc::new(p)
}

/// Loads and checks a PEM chain and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key_der, &provider())
        .map_err(|e| TlsError::Mismatch(e.to_string()))
}

/// Serves whichever certificate was loaded last.
pub struct ReloadableCert {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadableCert")
    }
}

impl ReloadableCert {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(ReloadableCert {
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Loads a new pair; on error the old one stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let next = load_certified_key(cert, key)?;
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// DER of the leaf certificate being served.
    pub fn leaf_der(&self) -> Vec<u8> {
        self.current
            .load()
            .cert
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.3 and 1.2 only, ALPN http/1.1, server cipher order, no 0-RTT.
pub fn server_config(cert: Arc<ReloadableCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ignore_client_order = true;
    cfg.max_early_data_size = 0;
    Ok(Arc::new(cfg))
}

/// Files written by [`generate_dev_certs`].
pub struct DevCertPaths {
    pub ca_cert: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
}

/// Writes a development CA (`ca.crt`, `ca.key`) and a server certificate it signed for every
/// host (`server.crt`, `server.key`) into `out`. ECDSA P-256; keys are written mode 0600, also
/// over existing files.
///
/// Developers are told to trust `ca.crt`, so the CA is limited to `hosts` by a critical
/// NameConstraints extension (see [`dev_name_constraints`]) and may sign no other CA: whoever
/// gets `ca.key` still cannot mint a certificate such a machine trusts for another site.
pub fn generate_dev_certs(out: &Path, hosts: &[String]) -> Result<DevCertPaths, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    fs::create_dir_all(out).map_err(|e| TlsError::Generate(format!("{}: {e}", out.display())))?;

    let ca_key = KeyPair::generate().map_err(gen)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.name_constraints = Some(dev_name_constraints(hosts));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wsgate development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(gen)?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().cloned().unwrap_or_else(|| "localhost".into()),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params.signed_by(&server_key, &issuer).map_err(gen)?;

    let paths = DevCertPaths {
        ca_cert: out.join("ca.crt"),
        server_cert: out.join("server.crt"),
        server_key: out.join("server.key"),
    };
    write_file(&paths.ca_cert, ca_cert.pem().as_bytes(), false)?;
    write_file(&out.join("ca.key"), ca_key.serialize_pem().as_bytes(), true)?;
    write_file(&paths.server_cert, server_cert.pem().as_bytes(), false)?;
    write_file(
        &paths.server_key,
        server_key.serialize_pem().as_bytes(),
        true,
    )?;
    Ok(paths)
}

/// What the dev CA may sign: exactly the DNS names (RFC 5280 also lets a DNS constraint cover
/// names below it) and IP addresses of `hosts`. A constraint binds only the name types it
/// lists, so a type without hosts is excluded whole: every IP address (`0.0.0.0/0`, `::/0`),
/// or every DNS name (the empty name matches them all).
fn dev_name_constraints(hosts: &[String]) -> rcgen::NameConstraints {
    use rcgen::{CidrSubnet, GeneralSubtree};
    let permitted: Vec<GeneralSubtree> = hosts
        .iter()
        .map(|host| match host.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                let bits = if ip.is_ipv4() { 32 } else { 128 };
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, bits))
            }
            // A wildcard host is covered by its parent domain's constraint.
            Err(_) => GeneralSubtree::DnsName(host.strip_prefix("*.").unwrap_or(host).into()),
        })
        .collect();
    let mut excluded = Vec::new();
    if !permitted
        .iter()
        .any(|s| matches!(s, GeneralSubtree::IpAddress(_)))
    {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])));
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])));
    }
    if !permitted
        .iter()
        .any(|s| matches!(s, GeneralSubtree::DnsName(_)))
    {
        excluded.push(GeneralSubtree::DnsName(String::new()));
    }
    rcgen::NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

/// Writes `data` to `path`, mode 0600 for a `secret` and 0644 otherwise, whether or not the
/// file existed (the mode is set before any byte is written).
fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let err = |e: std::io::Error| TlsError::Generate(format!("{}: {e}", path.display()));
    let mode = if secret { 0o600 } else { 0o644 };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err)?;
    }
    f.write_all(data).map_err(err)
}

/// Default hosts for development certificates.
pub fn default_dev_hosts() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;

    #[test]
    fn generated_pair_loads_and_mismatch_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = generate_dev_certs(&dir.path().join("a"), &default_dev_hosts()).expect("gen a");
        let b = generate_dev_certs(&dir.path().join("b"), &default_dev_hosts()).expect("gen b");
        assert!(load_certified_key(&a.server_cert, &a.server_key).is_ok());
        let err = load_certified_key(&a.server_cert, &b.server_key).expect_err("mismatch");
        assert!(matches!(err, TlsError::Mismatch(_)), "{err}");
        let err = load_certified_key(&a.server_cert, &a.ca_cert).expect_err("not a key");
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
    }

    #[test]
    fn reload_keeps_old_pair_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = generate_dev_certs(&dir.path().join("a"), &default_dev_hosts()).expect("gen");
        let cert =
            ReloadableCert::new(load_certified_key(&a.server_cert, &a.server_key).expect("load"));
        let before = cert.leaf_der();
        assert!(cert
            .reload(&a.server_cert, Path::new("/nonexistent"))
            .is_err());
        assert_eq!(cert.leaf_der(), before);
    }

    /// A rustls client's verdict on `leaf` presented as `name`, trusting only the CA in `ca`.
    fn client_verdict(ca: &Path, leaf: &CertificateDer<'_>, name: &str) -> Result<(), String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).expect("ca.crt"))
            .expect("a usable root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("verifier");
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).expect("name");
        verifier
            .verify_server_cert(leaf, &[], &name, &[], rustls_pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }

    /// A server certificate for `names` signed with the dev CA in `dir`, made from its two PEM
    /// files the way whoever copied `ca.key` would.
    fn forge(dir: &Path, names: &[&str]) -> CertificateDer<'static> {
        use rcgen::{CertificateParams, Issuer, KeyPair};
        let ca_key = KeyPair::from_pem(&fs::read_to_string(dir.join("ca.key")).expect("ca.key"))
            .expect("ca key");
        let ca_pem = fs::read_to_string(dir.join("ca.crt")).expect("ca.crt");
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("key");
        params
            .signed_by(&key, &issuer)
            .expect("signed")
            .der()
            .clone()
    }

    fn server_leaf(paths: &DevCertPaths) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&paths.server_cert).expect("server.crt")
    }

    fn assert_refused(verdict: Result<(), String>, what: &str) {
        let err = verdict.expect_err(what);
        assert!(err.contains("NameConstraintViolation"), "{what}: {err}");
    }

    #[test]
    fn dev_ca_vouches_only_for_its_hosts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = generate_dev_certs(dir.path(), &default_dev_hosts()).expect("gen");
        for name in ["localhost", "127.0.0.1", "::1"] {
            client_verdict(&paths.ca_cert, &server_leaf(&paths), name)
                .unwrap_or_else(|e| panic!("the real certificate for {name}: {e}"));
        }
        // The forging itself works: a certificate for a permitted name verifies.
        client_verdict(
            &paths.ca_cert,
            &forge(dir.path(), &["localhost"]),
            "localhost",
        )
        .expect("a forged certificate for a permitted name");
        for (names, presented) in [
            (&["bank.example"][..], "bank.example"),
            (&["localhost", "bank.example"][..], "bank.example"),
            (&["localhost", "bank.example"][..], "localhost"),
            (&["127.0.0.2"][..], "127.0.0.2"),
            (&["192.0.2.7"][..], "192.0.2.7"),
            (&["2001:db8::1"][..], "2001:db8::1"),
        ] {
            assert_refused(
                client_verdict(&paths.ca_cert, &forge(dir.path(), names), presented),
                &format!("forged {names:?} presented as {presented}"),
            );
        }
    }

    #[test]
    fn dev_ca_without_ip_hosts_signs_no_ip_and_without_dns_hosts_no_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dns = dir.path().join("dns");
        let paths = generate_dev_certs(&dns, &["chat.test".into()]).expect("gen");
        client_verdict(&paths.ca_cert, &server_leaf(&paths), "chat.test").expect("real cert");
        assert_refused(
            client_verdict(&paths.ca_cert, &forge(&dns, &["10.1.2.3"]), "10.1.2.3"),
            "an IP address from a DNS-only CA",
        );
        let ip = dir.path().join("ip");
        let paths = generate_dev_certs(&ip, &["10.1.2.3".into()]).expect("gen");
        client_verdict(&paths.ca_cert, &server_leaf(&paths), "10.1.2.3").expect("real cert");
        assert_refused(
            client_verdict(&paths.ca_cert, &forge(&ip, &["example.org"]), "example.org"),
            "a DNS name from an IP-only CA",
        );
    }

    #[test]
    fn dev_ca_name_constraints_are_critical() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = generate_dev_certs(dir.path(), &default_dev_hosts()).expect("gen");
        let der = CertificateDer::from_pem_file(&paths.ca_cert).expect("ca.crt");
        let (_, ca) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let ext = ca
            .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_NAME_CONSTRAINTS)
            .expect("one extension")
            .expect("NameConstraints present");
        assert!(ext.critical, "NameConstraints must be critical");
    }
}
