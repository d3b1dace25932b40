//! TLS for the gateway: the rustls server configuration (ring provider,
//! TLS 1.3, TLS 1.2 only if allowed) from a configured certificate and key,
//! or from a self-signed ECDSA P-256 development certificate generated into
//! the data directory on first start (P-256 because RSA signing costs about
//! five times more per handshake here).
//!
//! Each connection's session is a [`TlsConn`] (`conn.rs`), the one place
//! that drives rustls's caller-buffered API. The TLS 1.3 suites' keys let
//! their expanded form go while a connection idles (`idle_keys.rs`).

mod conn;
mod idle_keys;

pub use conn::{TlsConn, TlsConnError, TlsEvent};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
    /// rustls refused the certificate, key or versions.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The development certificate could not be generated.
    #[error("generating the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where the certificate and key live, and whether they were just made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// True if this call generated a development certificate.
    pub generated: bool,
}

/// The development certificate in `data_dir`, generated (for `localhost`
/// and 127.0.0.1) if it is not there yet. Never for production: clients
/// must be told to trust it explicitly.
pub fn dev_certificate(data_dir: &Path) -> Result<CertFiles, TlsError> {
    let cert = data_dir.join("dev-cert.pem");
    let key = data_dir.join("dev-key.pem");
    if cert.exists() && key.exists() {
        return Ok(CertFiles {
            cert,
            key,
            generated: false,
        });
    }
    std::fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let generated = rcgen::generate_simple_self_signed(names)?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes())
        .map_err(io_error(&key))?;
    std::fs::write(&cert, generated.cert.pem()).map_err(io_error(&cert))?;
    Ok(CertFiles {
        cert,
        key,
        generated: true,
    })
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |error| TlsError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The server configuration for `files`.
pub fn server_config(files: &CertFiles, allow_tls12: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Pem {
        path: files.key.clone(),
        what: e.to_string(),
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let provider = Arc::new(idle_keys::provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |what: String| TlsError::Pem {
        path: path.to_path_buf(),
        what,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if chain.is_empty() {
        return Err(pem("no certificate in it".into()));
    }
    Ok(chain)
}

/// Writes a secret readable by its owner only; never overwrites.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
