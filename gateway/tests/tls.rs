//! The gateway's TLS configuration, proven by real handshakes between
//! rustls clients and servers in memory (rustls is itself sans-IO): the
//! development certificate is generated once and reused, clients that trust
//! it connect over TLS 1.3, TLS 1.2 only when allowed, bad files are named.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use gateway::tls::{CertFiles, TlsError, certificates, dev_certificate, server_config};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn client(
    files: &CertFiles,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    for cert in certificates(&files.cert).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap()
}

/// Moves whatever `from` has to say into `to`; returns whether anything moved.
fn transfer<A, B, DA, DB>(from: &mut A, to: &mut B) -> Result<bool, rustls::Error>
where
    A: std::ops::DerefMut<Target = rustls::ConnectionCommon<DA>>,
    B: std::ops::DerefMut<Target = rustls::ConnectionCommon<DB>>,
{
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).unwrap();
    }
    if bytes.is_empty() {
        return Ok(false);
    }
    to.read_tls(&mut bytes.as_slice()).unwrap();
    to.process_new_packets()?;
    Ok(true)
}

/// Moves TLS bytes both ways until neither side has anything to say.
fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), rustls::Error> {
    while transfer(client, server)? | transfer(server, client)? {}
    Ok(())
}

#[test]
fn the_dev_certificate_is_generated_once_and_clients_that_trust_it_connect() {
    let dir = temp("dev");
    let first = dev_certificate(&dir).unwrap();
    assert!(first.generated);
    let mode = std::fs::metadata(&first.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    let second = dev_certificate(&dir).unwrap();
    assert!(!second.generated, "reused on the next start");
    assert_eq!(
        std::fs::read(&first.cert).unwrap(),
        std::fs::read(&second.cert).unwrap()
    );

    let config = server_config(&second, false).unwrap();
    let mut server = ServerConnection::new(config).unwrap();
    let mut client = client(&second, &[&rustls::version::TLS13]);
    handshake(&mut client, &mut server).unwrap();
    assert!(!client.is_handshaking() && !server.is_handshaking());
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let suite = server.negotiated_cipher_suite().unwrap();
    assert!(
        format!("{:?}", suite.suite()).contains("TLS13"),
        "{suite:?}"
    );

    use std::io::{Read, Write};
    client.writer().write_all(b"frames go here").unwrap();
    handshake(&mut client, &mut server).unwrap();
    let mut got = [0u8; 14];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"frames go here");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tls_1_2_only_when_allowed() {
    let dir = temp("tls12");
    let files = dev_certificate(&dir).unwrap();
    let old_client = || client(&files, &[&rustls::version::TLS12]);

    let mut server = ServerConnection::new(server_config(&files, false).unwrap()).unwrap();
    assert!(
        handshake(&mut old_client(), &mut server).is_err(),
        "refused by default"
    );

    let mut server = ServerConnection::new(server_config(&files, true).unwrap()).unwrap();
    handshake(&mut old_client(), &mut server).unwrap();
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unusable_files_are_named_in_the_error() {
    let dir = temp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let files = CertFiles {
        cert: cert.clone(),
        key: dir.join("missing.pem"),
        generated: false,
    };
    match server_config(&files, false) {
        Err(TlsError::Pem { path, .. }) => assert_eq!(path, cert),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
