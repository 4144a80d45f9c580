//! TLS for the HTTP API, with rustls and its ring provider (no OpenSSL, no aws-lc-rs): the
//! server's certificate and key from PEM files (config.json's `tls_cert` and `tls_key`),
//! and what an API client trusts (a CA file, or exactly the relay's own certificate).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a certificate or key file cannot be used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: no certificate in it (a PEM `-----BEGIN CERTIFICATE-----` block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{}: no private key in it (a PEM `-----BEGIN PRIVATE KEY-----`, \
         `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)", path.display()
    )]
    NoKey { path: PathBuf },
    #[error("{}: cannot be used: {reason}", path.display())]
    Unusable { path: PathBuf, reason: String },
    #[error("{} is not the private key of the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.into(),
        reason: e.to_string(),
    }
}

/// Every certificate in the PEM file at `path`, in order (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_slice(&read(path)?) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoKey { path: path.into() }),
        Err(e) => Err(pem_error(path, e)),
    }
}

/// The API's server side: the chain in `cert` (leaf first), the key in `key`; TLS 1.2 and
/// 1.3, HTTP/1.1 by ALPN. Refuses a key that is not the leaf certificate's.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let key_der = private_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
                cert: cert.into(),
                key: key.into(),
            },
            // The certificate parses only here (the key was loaded before it is compared).
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                TlsError::Unusable {
                    path: cert.into(),
                    reason: e.to_string(),
                }
            }
            e => TlsError::Unusable {
                path: key.into(),
                reason: e.to_string(),
            },
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client that trusts the certificates in the PEM file `ca` (a CA's, or a self-signed
/// server certificate) and nothing else, as curl's `--cacert` does; host names are checked.
pub fn trusting(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca)? {
        roots.add(c).map_err(|e| TlsError::Unusable {
            path: ca.into(),
            reason: e.to_string(),
        })?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client that accepts exactly the server certificate that `cert` starts with (the
/// relay's own `tls_cert`), whatever names it carries and whoever issued it: for a caller
/// that has read the relay's config and dials its local address, which a certificate made
/// for the relay's public name does not list. The handshake still proves the server holds
/// that certificate's key.
pub fn pinned(cert: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let leaf = certificates(cert)?.swap_remove(0);
    let provider = provider();
    let verifier = Pinned {
        leaf,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn tls_server_config_takes_a_matching_pair() {
        let f = Files::new();
        let (cert, key) = self_signed();
        let cfg = server_config(&f.write("c.pem", &cert), &f.write("k.pem", &key)).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // A key file that also holds the certificate (as some tools write them) is fine.
        let both = f.write("both.pem", &format!("{cert}{key}"));
        server_config(&both, &both).unwrap();
    }

    #[test]
    fn tls_server_config_refusals_name_the_file_and_the_reason() {
        let f = Files::new();
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let cert_p = f.write("cert.pem", &cert);
        let key_p = f.write("key.pem", &key);
        let err = |c: &Path, k: &Path| server_config(c, k).unwrap_err().to_string();

        let missing = f.dir.path().join("nope.pem");
        let e = err(&missing, &key_p);
        assert!(e.contains("nope.pem") && e.contains("cannot read"), "{e}");
        let garbage = f.write("garbage.pem", "this is not PEM at all\n");
        let e = err(&garbage, &key_p);
        assert!(
            e.contains("garbage.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = err(&cert_p, &garbage);
        assert!(
            e.contains("garbage.pem") && e.contains("no private key"),
            "{e}"
        );
        let e = err(&cert_p, &cert_p);
        assert!(
            e.contains("cert.pem") && e.contains("no private key"),
            "{e}"
        );
        let bad_b64 = f.write(
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let e = err(&bad_b64, &key_p);
        assert!(e.contains("bad.pem") && e.contains("not valid PEM"), "{e}");
        let not_der = f.write(
            "notder.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let e = err(&not_der, &key_p);
        assert!(
            e.contains("notder.pem") && e.contains("cannot be used"),
            "{e}"
        );
        let other = f.write("other-key.pem", &other_key);
        let e = err(&cert_p, &other);
        assert!(
            e.contains("other-key.pem")
                && e.contains("cert.pem")
                && e.contains("not the private key"),
            "{e}"
        );
    }

    #[test]
    fn tls_client_configs_load_their_certificates() {
        let f = Files::new();
        let (cert, key) = self_signed();
        let cert_p = f.write("cert.pem", &cert);
        trusting(&cert_p).unwrap();
        pinned(&cert_p).unwrap();
        let key_p = f.write("key.pem", &key);
        let e = trusting(&key_p).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
    }
}
