//! Which servers a client trusts over TLS: the system's roots, plus an extra CA file, or
//! exactly one pinned server certificate. One rustls configuration serves the HTTP client
//! and the agent's WebSocket.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

/// The servers to trust.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// Certificates the system trusts.
    #[default]
    System,
    /// Those, and certificates issued by the CAs in this PEM file.
    ExtraCa(PathBuf),
    /// Only the server presenting the first certificate of this PEM file, whatever host name
    /// it was reached by: how the built-in local agent trusts its own orchestrator.
    Pinned(PathBuf),
}

/// The certificates of a PEM file, or a message naming the file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The crypto every TLS connection of Dirigent uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Trust {
    /// The rustls client configuration for this trust.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let provider = crypto_provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?
            .dangerous();
        let verifier: Arc<dyn ServerCertVerifier> = match self {
            Trust::System => Arc::new(
                rustls_platform_verifier::Verifier::new(provider).map_err(|err| err.to_string())?,
            ),
            Trust::ExtraCa(path) => Arc::new(
                rustls_platform_verifier::Verifier::new_with_extra_roots(
                    read_certificates(path)?,
                    provider,
                )
                .map_err(|err| err.to_string())?,
            ),
            Trust::Pinned(path) => {
                let pinned = read_certificates(path)?.swap_remove(0);
                Arc::new(PinnedCertificate {
                    pinned,
                    algorithms: provider.signature_verification_algorithms,
                })
            }
        };
        Ok(builder
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }
}

/// Accepts exactly one certificate, and checks the server holds its key.
#[derive(Debug)]
struct PinnedCertificate {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
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
