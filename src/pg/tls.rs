//! TLS to PostgreSQL with libpq's meaning of `sslmode`, `sslrootcert`, `sslcert`
//! and `sslkey`, so one URL means the same to strata's own connections (rustls)
//! and to the PostgreSQL programs it runs (libpq, through `PGSSL*`).
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` (default) | when the server offers it | no |
//! | `require` | always | chain only, when a root certificate file exists (as libpq) |
//! | `verify-ca` | always | chain |
//! | `verify-full` | always | chain and host name |
//!
//! Root certificates: `sslrootcert=FILE` (PEM), `sslrootcert=system` (the
//! system's trust store; only with `verify-full`, as libpq 16+ insists), or by
//! default `~/.postgresql/root.crt` when it exists. Client certificates:
//! `sslcert`/`sslkey`, by default `~/.postgresql/postgresql.crt`/`.key` when
//! they exist; a key file others can read is refused, as libpq refuses it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// libpq tries without TLS first; strata treats it as `prefer`.
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode '{other}' is not disable, allow, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    /// The value as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RootCert {
    /// `~/.postgresql/root.crt` when it exists (libpq's default).
    #[default]
    Default,
    File(PathBuf),
    /// The operating system's trust store.
    System,
}

/// The TLS settings of one database URL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: RootCert,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The connection-string keys this module takes out of a URL.
pub const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Keys libpq knows that strata cannot honour; refused rather than ignored.
pub const UNSUPPORTED: [&str; 3] = ["sslcrl", "sslcrldir", "sslpassword"];

impl TlsSettings {
    /// Builds the settings from the `ssl*` parameters of a URL.
    ///
    /// # Errors
    /// An unknown `sslmode`, a named file that does not exist, or a combination
    /// libpq refuses.
    pub fn from_params(params: &[(String, String)]) -> Result<Self, String> {
        let mut out = Self::default();
        let mut mode_given = false;
        for (k, v) in params {
            match k.as_str() {
                "sslmode" => {
                    out.mode = SslMode::parse(v)?;
                    mode_given = true;
                }
                "sslrootcert" if v == "system" => out.root_cert = RootCert::System,
                "sslrootcert" => out.root_cert = RootCert::File(existing(k, v)?),
                "sslcert" => out.cert = Some(existing(k, v)?),
                "sslkey" => out.key = Some(existing(k, v)?),
                _ => {}
            }
        }
        if out.root_cert == RootCert::System {
            // libpq 16+: system roots only make sense with host name checks.
            if !mode_given {
                out.mode = SslMode::VerifyFull;
            } else if out.mode != SslMode::VerifyFull {
                return Err(format!(
                    "sslrootcert=system requires sslmode=verify-full (got {})",
                    out.mode.as_str()
                ));
            }
        }
        if out.mode == SslMode::Disable && (out.cert.is_some() || out.key.is_some()) {
            return Err("sslcert/sslkey given with sslmode=disable".into());
        }
        Ok(out)
    }

    /// Whether a connection must be encrypted.
    pub fn required(&self) -> bool {
        matches!(
            self.mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// libpq environment for a child process, so it connects exactly as strata
    /// does.
    pub fn libpq_env(&self, tool_major: u32) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", self.mode.as_str().to_owned())];
        match &self.root_cert {
            RootCert::Default => {}
            RootCert::File(p) => env.push(("PGSSLROOTCERT", p.display().to_string())),
            RootCert::System if tool_major >= 16 => {
                env.push(("PGSSLROOTCERT", "system".to_owned()));
            }
            // Older libpq does not know `system`: give it the same bundle.
            RootCert::System => {
                if let Some(bundle) = system_bundle() {
                    env.push(("PGSSLROOTCERT", bundle.display().to_string()));
                }
            }
        }
        if let Some(c) = &self.cert {
            env.push(("PGSSLCERT", c.display().to_string()));
        }
        if let Some(k) = &self.key {
            env.push(("PGSSLKEY", k.display().to_string()));
        }
        env
    }

    /// The rustls configuration for these settings.
    ///
    /// # Errors
    /// A certificate or key file cannot be read or is unusable.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let provider = provider();
        let roots = self.roots()?;
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, roots) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(format!(
                    "sslmode={} needs a root certificate: {} does not exist; give sslrootcert=FILE, sslrootcert=system, or a weaker sslmode",
                    self.mode.as_str(),
                    default_dir()
                        .map(|d| d.join("root.crt").display().to_string())
                        .unwrap_or_else(|| "~/.postgresql/root.crt".into())
                ));
            }
            (SslMode::VerifyFull, Some(roots)) => webpki(roots, &provider)?,
            // As libpq: a root file present turns `require` into `verify-ca`.
            (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Arc::new(ChainOnly {
                inner: webpki(roots, &provider)?,
            }),
            (_, _) => Arc::new(Unverified {
                provider: provider.clone(),
            }),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match self.client_identity()? {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}")),
            None => Ok(builder.with_no_client_auth()),
        }
    }

    fn roots(&self) -> Result<Option<Arc<RootCertStore>>, String> {
        let file = match &self.root_cert {
            RootCert::System => return Ok(Some(system_roots()?)),
            RootCert::File(p) => p.clone(),
            RootCert::Default => match default_dir().map(|d| d.join("root.crt")) {
                Some(p) if p.is_file() => p,
                _ => return Ok(None),
            },
        };
        let mut store = RootCertStore::empty();
        let certs = read_certs(&file)?;
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "sslrootcert {}: no usable certificate in it",
                file.display()
            ));
        }
        Ok(Some(Arc::new(store)))
    }

    fn client_identity(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
        let (cert, key) = match (&self.cert, &self.key) {
            (Some(c), k) => (
                c.clone(),
                k.clone().unwrap_or_else(|| c.with_extension("key")),
            ),
            (None, Some(_)) => return Err("sslkey given without sslcert".into()),
            (None, None) => match default_dir() {
                Some(d) if d.join("postgresql.crt").is_file() => {
                    (d.join("postgresql.crt"), d.join("postgresql.key"))
                }
                _ => return Ok(None),
            },
        };
        let certs = read_certs(&cert)?;
        if certs.is_empty() {
            return Err(format!("sslcert {}: no certificate in it", cert.display()));
        }
        check_key_mode(&key)?;
        let key = PrivateKeyDer::from_pem_file(&key)
            .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
        Ok(Some((certs, key)))
    }
}

fn existing(key: &str, value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{key} file {value} does not exist"))
    }
}

fn default_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql"))
}

/// The one provider strata uses (the rest of strata is on ring too).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// libpq's rule: a key file must not be readable by group or others (0640 is
/// allowed when root owns it).
fn check_key_mode(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("sslkey {}: {e}", path.display()))?;
    let mode = meta.mode() & 0o777;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if mode & !allowed != 0 {
        return Err(format!(
            "sslkey {} has mode {mode:04o}; it must be {allowed:04o} or stricter (chmod 600)",
            path.display()
        ));
    }
    Ok(())
}

fn webpki(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| e.to_string())
}

/// The system's CA bundle file, for PostgreSQL programs older than 16.
fn system_bundle() -> Option<PathBuf> {
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                Err("sslrootcert=system: no trusted certificates found on this system".into())
            } else {
                Ok(Arc::new(store))
            }
        })
        .clone()
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is checked before the name, so a name error means the
        // chain was good.
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root file: encrypted, the peer not
/// authenticated (libpq's behaviour). The handshake signatures are still
/// checked, so the session is bound to the certificate the server showed.
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Splits the `ssl*` parameters off a connection string (URL or `key=value`
/// form), returning the rest for tokio-postgres and the pairs taken.
///
/// # Errors
/// A parameter strata cannot honour, or a malformed `key=value` string.
pub fn split_params(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let is_uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let (rest, pairs) = if is_uri {
        split_uri(url)?
    } else {
        split_keyword_value(url)?
    };
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| UNSUPPORTED.contains(&k.as_str()))
    {
        return Err(format!("{k} is not supported by strata"));
    }
    let ours = pairs
        .into_iter()
        .filter(|(k, _)| KEYS.contains(&k.as_str()) || UNSUPPORTED.contains(&k.as_str()))
        .collect();
    Ok((rest, ours))
}

fn split_uri(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for raw in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = raw.split_once('=').unwrap_or((raw, ""));
        let key = percent_encoding::percent_decode_str(k)
            .decode_utf8()
            .map_err(|_| "the URL's query is not UTF-8".to_owned())?;
        if KEYS.contains(&key.as_ref()) || UNSUPPORTED.contains(&key.as_ref()) {
            let value = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| format!("{key}: not UTF-8"))?;
            taken.push((key.into_owned(), value.into_owned()));
        } else {
            kept.push(raw);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

/// `host=db sslmode=require password='a b'`: libpq's keyword/value form.
fn split_keyword_value(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing = after {key}"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut raw = String::new();
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            raw.push('\'');
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of {key}")),
                    Some('\'') => break,
                    Some('\\') => {
                        let c = chars
                            .next()
                            .ok_or_else(|| format!("unterminated quoted value of {key}"))?;
                        raw.push('\\');
                        raw.push(c);
                        value.push(c);
                    }
                    Some(c) => {
                        raw.push(c);
                        value.push(c);
                    }
                }
            }
            raw.push('\'');
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                raw.push(c);
                value.push(c);
            }
        }
        if KEYS.contains(&key.as_str()) || UNSUPPORTED.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            kept.push(format!("{key}={raw}"));
        }
    }
    Ok((kept.join(" "), taken))
}

#[cfg(test)]
mod tests;
