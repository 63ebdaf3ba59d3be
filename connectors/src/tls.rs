//! TLS to the databases, with libpq's five modes (MySQL's are the same five under other
//! names): whether to encrypt, and how much of the server's certificate to check.
//!
//! - `disable`: plain.
//! - `prefer`: encrypt if the server offers it, certificate unchecked; plain otherwise.
//! - `require`: encrypt or fail; the certificate is unchecked unless a CA file is given, which
//!   makes it `verify-ca` (as libpq and the MySQL client do).
//! - `verify-ca`: the certificate must chain to a trusted CA (the CA file, else the system's
//!   roots); its name is not checked.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host connected to.
//!
//! A client certificate and key (PEM) are sent when the server asks for one. Encrypted keys are
//! not supported. One rustls stack (ring) serves every connector: the PostgreSQL replication
//! client and sink through [`client_config`], MySQL through `mysql_async`'s own options.

use std::sync::Arc;

use hstream_runtime::ConnectorError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// Whether to encrypt and what to check, after the mode's rules were applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Plain,
    /// Encrypt when the server offers it (prefer).
    Opportunistic,
    /// Encrypt or fail, with this much checking.
    Required(Check),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// The five modes, in libpq's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Level {
    /// The policy of this mode, given whether a CA file was named.
    pub fn policy(self, has_ca: bool) -> Policy {
        match self {
            Level::Disable => Policy::Plain,
            Level::Prefer => Policy::Opportunistic,
            Level::Require if has_ca => Policy::Required(Check::Chain),
            Level::Require => Policy::Required(Check::Nothing),
            Level::VerifyCa => Policy::Required(Check::Chain),
            Level::VerifyFull => Policy::Required(Check::ChainAndName),
        }
    }
}

/// The files of a TLS setup and the option names users gave them, for messages.
pub struct Files<'a> {
    pub ca: Option<&'a str>,
    pub ca_option: &'static str,
    pub cert: Option<&'a str>,
    pub cert_option: &'static str,
    pub key: Option<&'a str>,
    pub key_option: &'static str,
}

impl Files<'_> {
    /// No files (messages name no option).
    pub fn none() -> Files<'static> {
        Files {
            ca: None,
            ca_option: "",
            cert: None,
            cert_option: "",
            key: None,
            key_option: "",
        }
    }

    /// A certificate and a key come together; every named file is non-empty.
    pub fn validate(&self) -> Result<(), ConnectorError> {
        for (v, o) in [
            (self.ca, self.ca_option),
            (self.cert, self.cert_option),
            (self.key, self.key_option),
        ] {
            if v == Some("") {
                return Err(ConnectorError::config(format!("{o}: must not be empty")));
            }
        }
        match (self.cert, self.key) {
            (Some(_), None) => Err(ConnectorError::config(format!(
                "{}: a client certificate ({}) needs its key",
                self.key_option, self.cert_option
            ))),
            (None, Some(_)) => Err(ConnectorError::config(format!(
                "{}: a client key ({}) needs its certificate",
                self.cert_option, self.key_option
            ))),
            _ => Ok(()),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration checking as `check` says, trusting `files.ca` (else the
/// system's roots) and presenting the client certificate if given. Every failure names the
/// option at fault.
pub fn client_config(check: Check, files: &Files<'_>) -> Result<Arc<rustls::ClientConfig>, ConnectorError> {
    files.validate()?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectorError::internal("TLS setup").with_source(e))?;
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Unchecked(provider())),
        Check::Chain | Check::ChainAndName => {
            let roots = Arc::new(roots(files)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| ConnectorError::config(format!("{}: {e}", files.ca_option)))?;
            if check == Check::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let config = match (files.cert, files.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ConnectorError::config(format!("{}: cannot read {cert}: {e}", files.cert_option)))?;
            if chain.is_empty() {
                return Err(ConnectorError::config(format!(
                    "{}: no certificate in {cert}",
                    files.cert_option
                )));
            }
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ConnectorError::config(format!("{}: cannot read {key}: {e}", files.key_option)))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                ConnectorError::config(format!("{}: does not fit {}: {e}", files.key_option, files.cert_option))
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn roots(files: &Files<'_>) -> Result<rustls::RootCertStore, ConnectorError> {
    let mut roots = rustls::RootCertStore::empty();
    match files.ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ConnectorError::config(format!("{}: cannot read {path}: {e}", files.ca_option)))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ConnectorError::config(format!("{}: {path}: {e}", files.ca_option)))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err(ConnectorError::config(format!(
            "{}: no CA certificate to check the server's with (name a CA file)",
            files.ca_option
        )));
    }
    Ok(roots)
}

/// The name rustls checks the certificate against (a DNS name or an IP address).
pub fn server_name(host: &str, host_option: &'static str) -> Result<ServerName<'static>, ConnectorError> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| ConnectorError::config(format!("{host_option}: {host:?} is not a host name TLS can check")))
}

/// Whether an error (or one of its causes) is a refused certificate, so that it is reported as
/// the TLS options' fault rather than an outage to retry.
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // io::Error's own source() skips the error it wraps: look inside it.
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if let Some(r) = wrapped
            .and_then(|w| w.downcast_ref::<rustls::Error>())
            .or_else(|| err.downcast_ref::<rustls::Error>())
        {
            return matches!(
                r,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(
                        rustls::AlertDescription::BadCertificate
                            | rustls::AlertDescription::UnknownCA
                            | rustls::AlertDescription::CertificateRequired
                            | rustls::AlertDescription::CertificateUnknown
                            | rustls::AlertDescription::AccessDenied
                    )
            );
        }
        cur = wrapped.or_else(|| err.source());
    }
    false
}

/// tokio-postgres's TLS hook on a rustls configuration of ours (the PostgreSQL sink).
/// tokio-postgres makes the SSLRequest and decides, by its `sslmode`, what a server without TLS
/// means; this only makes the handshake.
#[derive(Clone)]
pub struct PgRustls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PgRustls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgRustls;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, _domain: &str) -> Result<PgRustls, std::io::Error> {
        Ok(self.clone())
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for PgRustls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.server_name, stream)
                .await?;
            Ok(PgTlsStream(s))
        })
    }
}

/// An encrypted tokio-postgres connection.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

/// Checks the chain and leaves the name alone (verify-ca).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Takes any certificate (prefer, require): the connection is encrypted against a passive
/// listener, not authenticated. The handshake's signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_policies_as_libpq_does() {
        assert_eq!(Level::Disable.policy(true), Policy::Plain);
        assert_eq!(Level::Prefer.policy(true), Policy::Opportunistic);
        assert_eq!(Level::Require.policy(false), Policy::Required(Check::Nothing));
        assert_eq!(Level::Require.policy(true), Policy::Required(Check::Chain));
        assert_eq!(Level::VerifyCa.policy(false), Policy::Required(Check::Chain));
        assert_eq!(Level::VerifyFull.policy(false), Policy::Required(Check::ChainAndName));
    }

    fn files<'a>(ca: Option<&'a str>, cert: Option<&'a str>, key: Option<&'a str>) -> Files<'a> {
        Files {
            ca,
            ca_option: "sslRootCert",
            cert,
            cert_option: "sslCert",
            key,
            key_option: "sslKey",
        }
    }

    #[test]
    fn errors_name_the_option() {
        let e = files(None, Some("/c.pem"), None).validate().unwrap_err();
        assert!(e.to_string().contains("sslKey"), "{e}");
        let e = files(None, None, Some("/k.pem")).validate().unwrap_err();
        assert!(e.to_string().contains("sslCert"), "{e}");
        let e = client_config(Check::Chain, &files(Some("/nonexistent/ca.pem"), None, None)).unwrap_err();
        assert!(e.to_string().contains("sslRootCert"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = client_config(Check::ChainAndName, &files(empty.to_str(), None, None)).unwrap_err();
        assert!(e.to_string().contains("sslRootCert"), "{e}");
        assert!(client_config(Check::Nothing, &files(None, None, None)).is_ok());
    }
}
