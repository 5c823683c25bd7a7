//! TLS: the rustls server configuration on the FIPS provider, certificate
//! loading, first-start self-signed certificates and SIGHUP reloads.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read TLS private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS certificate {cert} and key {key} do not form a usable pair: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot create self-signed certificate in {dir}: {reason}")]
    Generate { dir: PathBuf, reason: String },
    #[error("TLS configuration is not FIPS-compliant: {0}")]
    NotFips(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The rustls FIPS provider, restricted to what we offer: the provider's
/// FIPS-approved key-exchange groups with the post-quantum hybrid
/// X25519MLKEM768 first, and AEAD cipher suites only (TLS 1.2 suites are all
/// ECDHE, so forward secret).
pub fn provider() -> CryptoProvider {
    let mut p = rustls::crypto::default_fips_provider();
    p.kx_groups.retain(|g| g.fips());
    p.cipher_suites
        .retain(|s| s.fips() && is_forward_secret_aead(s));
    p
}

/// The TLS policy served, for evidence bundles: versions, suites, groups.
pub fn policy() -> serde_json::Value {
    let p = provider();
    serde_json::json!({
        "versions": ["TLSv1.3", "TLSv1.2"],
        "cipher_suites": p.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect::<Vec<_>>(),
        "key_exchange_groups": p.kx_groups.iter().map(|g| format!("{:?}", g.name())).collect::<Vec<_>>(),
        "fips": p.fips(),
    })
}

fn is_forward_secret_aead(suite: &SupportedCipherSuite) -> bool {
    match suite {
        // TLS 1.3 suites are AEAD and always use (EC)DHE.
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(s) => {
            let name = format!("{:?}", s.common.suite);
            name.starts_with("TLS_ECDHE_") && name.contains("_GCM_")
        }
    }
}

/// Where the system's trust store usually is (Debian, then RHEL).
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The client configuration webhook deliveries use: the same FIPS provider
/// and versions as the server, receivers' certificates checked against
/// `ca_file` (a PEM bundle) or else the system trust store. No client
/// certificate. An unreadable or empty `ca_file` is an error (startup
/// refuses); a missing system store leaves no roots (every HTTPS delivery
/// then fails and says why).
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let files: Vec<PathBuf> = match ca_file {
        Some(p) => vec![p.to_owned()],
        None => SYSTEM_CA_FILES
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .take(1)
            .collect(),
    };
    for path in &files {
        let pem = fs::read(path).map_err(|e| TlsError::Cert {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .collect();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 && ca_file.is_some() {
            return Err(TlsError::Cert {
                path: path.clone(),
                reason: "no usable CA certificate in the file".into(),
            });
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !config.fips() {
        return Err(TlsError::NotFips("webhook client configuration".into()));
    }
    Ok(config)
}

/// Holds the certificate currently served; swapped atomically on reload, so
/// established connections keep going and the next handshake gets the new one.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl CertStore {
    pub fn load(
        provider: Arc<CryptoProvider>,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, TlsError> {
        let ck = load_certified_key(&provider, cert_path, key_path)?;
        Ok(Self {
            current: RwLock::new(Arc::new(ck)),
            provider,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// Re-reads the certificate and key. On error the old pair stays in use.
    pub fn reload(&self) -> Result<String, TlsError> {
        let ck = load_certified_key(&self.provider, &self.cert_path, &self.key_path)?;
        let fp = ck
            .cert
            .first()
            .map(|c| fingerprint(c.as_ref()))
            .unwrap_or_default();
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(ck),
            Err(p) => *p.into_inner() = Arc::new(ck),
        }
        Ok(fp)
    }

    pub fn fingerprint(&self) -> String {
        let ck = self.get();
        ck.cert
            .first()
            .map(|c| fingerprint(c.as_ref()))
            .unwrap_or_default()
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The server configuration: TLS 1.3 and 1.2, FIPS provider, ALPN h2 + http/1.1.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    certs: Arc<CertStore>,
) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ignore_client_order = true;
    // Security invariant: never serve TLS that rustls does not consider FIPS (fail closed).
    if !cfg.fips() {
        return Err(TlsError::NotFips(
            "rustls ServerConfig::fips() is false".to_owned(),
        ));
    }
    Ok(cfg)
}

fn load_certified_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let pem = fs::read(cert_path).map_err(|e| TlsError::Cert {
        path: cert_path.to_owned(),
        reason: e.to_string(),
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert_path.to_owned(),
            reason: format!("not PEM: {e:?}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path.to_owned(),
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    let key_pem = zeroize::Zeroizing::new(fs::read(key_path).map_err(|e| TlsError::Key {
        path: key_path.to_owned(),
        reason: e.to_string(),
    })?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key_path.to_owned(),
        reason: format!("no usable private key: {e:?}"),
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Pair {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        reason: e.to_string(),
    })
}

/// Creates a self-signed ECDSA P-256 certificate at the given paths unless a
/// certificate is already there. Returns the new certificate's fingerprint.
pub fn ensure_self_signed(cert_path: &Path, key_path: &Path) -> Result<Option<String>, TlsError> {
    if cert_path.exists() && key_path.exists() {
        return Ok(None);
    }
    let dir = cert_path.parent().unwrap_or(Path::new("/")).to_owned();
    let gen_err = |reason: String| TlsError::Generate {
        dir: dir.clone(),
        reason,
    };
    fs::create_dir_all(&dir).map_err(|e| gen_err(e.to_string()))?;
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| gen_err(e.to_string()))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(h) = nix::unistd::gethostname() {
        if let Some(h) = h.to_str().filter(|h| !h.is_empty() && *h != "localhost") {
            names.push(h.to_owned());
        }
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| gen_err(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "strongroom self-signed");
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let cert = params
        .self_signed(&key)
        .map_err(|e| gen_err(e.to_string()))?;

    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    write_new(key_path, key_pem.as_bytes(), 0o600).map_err(|e| gen_err(e.to_string()))?;
    write_new(cert_path, cert.pem().as_bytes(), 0o644).map_err(|e| gen_err(e.to_string()))?;
    // The certificate is public (clients pin it); the umask would make it 0600.
    let _ = fs::set_permissions(cert_path, fs::Permissions::from_mode(0o644));
    Ok(Some(fingerprint(cert.der().as_ref())))
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// SHA-256 fingerprint of a DER certificate, as colon-separated uppercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    crate::crypto::sha256(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_is_fips_and_prefers_post_quantum() {
        let p = provider();
        assert!(p.fips());
        assert_eq!(format!("{:?}", p.kx_groups[0].name()), "X25519MLKEM768");
        assert!(
            !p.kx_groups
                .iter()
                .any(|g| format!("{:?}", g.name()) == "X25519")
        );
        assert!(!p.cipher_suites.is_empty());
    }

    #[test]
    fn generated_certificate_loads_and_config_is_fips() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (
            dir.path().join("tls/cert.pem"),
            dir.path().join("tls/key.pem"),
        );
        let fp = ensure_self_signed(&c, &k).unwrap().unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(
            ensure_self_signed(&c, &k).unwrap().is_none(),
            "kept on second start"
        );
        assert_eq!(
            fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let provider = Arc::new(provider());
        let store = Arc::new(CertStore::load(provider.clone(), &c, &k).unwrap());
        assert_eq!(store.fingerprint(), fp);
        let cfg = server_config(provider, store).unwrap();
        assert!(cfg.fips());
    }
}
