//! The manager's side of the agent API: a pinned HTTPS client and the adoption conversation.
//! keelctl builds on this.

use crate::ca::{CaError, ClientCert, ManagerCa, Validity};
use crate::fingerprint::Fingerprint;
use crate::tls::{pin_mismatch, pinned_client_config, PinMismatch, TlsError};
use keel_api::adoption as api;
use keel_http::{self as http, HttpError, Limits, Response};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde::{de::DeserializeOwned, Serialize};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why a call to a host failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Cannot connect to {0}: {1}
    #[error("Cannot connect to {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error(transparent)]
    Pin(PinMismatch),
    /// TLS with {0} failed: {1}
    #[error("TLS with {0} failed: {1}")]
    Tls(SocketAddr, rustls::Error),
    /// Exchange with {0} failed: {1}
    #[error("Exchange with {0} failed: {1}")]
    Http(SocketAddr, HttpError),
    /// The host answered {status}: {message}
    #[error("The host answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The host's answer is not the expected JSON: {0}
    #[error("The host's answer is not the expected JSON: {0}")]
    Decode(serde_json::Error),
    /// Cannot encode the request: {0}
    #[error("Cannot encode the request: {0}")]
    Encode(serde_json::Error),
    #[error(transparent)]
    Config(#[from] TlsError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// How long a request may wait to connect, and for each read or write, unless
/// [`HostClient::with_timeout`] says otherwise (keelctl allows more: a VM operation is answered
/// within keel-vmm's control timeout, `vms::VMM_CALL_TIMEOUT`, plus a loaded host's margin).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection recipe for one host.
#[derive(Debug, Clone)]
pub struct HostClient {
    addr: SocketAddr,
    pin: Fingerprint,
    config: Arc<ClientConfig>,
    timeout: Duration,
    /// The name the server's certificate must hold (`None`: the address; only verifiers that
    /// check names look at it).
    server_name: Option<ServerName<'static>>,
}

impl HostClient {
    /// Talks to the host at `addr` whose key fingerprint is `pin`, presenting `client_cert`.
    pub fn new(
        addr: SocketAddr,
        pin: Fingerprint,
        client_cert: Option<&ClientCert>,
    ) -> Result<Self, ClientError> {
        let auth = client_cert.map(ClientCert::tls_auth).transpose()?;
        let config = pinned_client_config(pin, auth)?;
        Ok(Self::with_config(addr, pin, config))
    }

    /// As `new`, with a TLS configuration of the caller's (for example one verifying the host
    /// certificate against the manager CA instead of the pin).
    pub fn with_config(addr: SocketAddr, pin: Fingerprint, config: Arc<ClientConfig>) -> Self {
        Self {
            addr,
            pin,
            config,
            timeout: DEFAULT_TIMEOUT,
            server_name: None,
        }
    }

    /// Waits `timeout` to connect and for each read and write instead of [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Expects the server's certificate to be for `name` rather than for its address.
    pub fn with_server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = Some(name);
        self
    }

    /// Sends one request and returns whatever the host answered.
    pub fn request<B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(ClientError::Encode)?;
        self.exchange(|stream| {
            let host = self.addr.to_string();
            http::write_request(stream, method, path, &host, body.as_deref())
        })
    }

    /// Connects, lets `send` write the request, reads the response.
    pub fn exchange(
        &self,
        send: impl FnOnce(&mut StreamOwned<ClientConnection, TcpStream>) -> io::Result<()>,
    ) -> Result<Response, ClientError> {
        let addr = self.addr;
        let mut stream = self.connect()?;
        send(&mut stream).map_err(|e| self.io_error(e))?;
        http::read_response(&mut stream, &Limits::default()).map_err(|e| match e {
            HttpError::Io(e) => self.io_error(e),
            e => ClientError::Http(addr, e),
        })
    }

    fn connect(&self) -> Result<StreamOwned<ClientConnection, TcpStream>, ClientError> {
        let addr = self.addr;
        let tcp = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|e| ClientError::Connect(addr, e))?;
        tcp.set_read_timeout(Some(self.timeout))
            .and_then(|()| tcp.set_write_timeout(Some(self.timeout)))
            .map_err(|e| ClientError::Connect(addr, e))?;
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let conn = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| ClientError::Tls(addr, e))?;
        Ok(StreamOwned::new(conn, tcp))
    }

    /// Only the TLS handshake, no request: what the server's certificate says is all it learns.
    pub fn handshake(&self) -> Result<(), ClientError> {
        let mut stream = self.connect()?;
        let io = stream.conn.complete_io(&mut stream.sock);
        io.map(drop).map_err(|e| self.io_error(e))
    }

    /// The host's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Turns rustls errors carried in I/O errors back into TLS errors, the pin mismatch first.
    fn io_error(&self, e: io::Error) -> ClientError {
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned();
        match tls {
            Some(tls) => match pin_mismatch(&tls) {
                Some(mismatch) => ClientError::Pin(mismatch),
                None => ClientError::Tls(self.addr, tls),
            },
            None => ClientError::Http(self.addr, HttpError::Io(e)),
        }
    }

    /// Sends one request and decodes a 200, 201 or 202 answer as `T`; any other status is an
    /// error carrying the host's message.
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let response = self.request(method, path, body)?;
        self.decode(response)
    }

    /// A 200, 201 or 202 (accepted: the operation goes on) answer decoded as `T`; any other
    /// status is an error carrying the host's message.
    pub fn decode<T: DeserializeOwned>(&self, response: Response) -> Result<T, ClientError> {
        if !matches!(response.status, 200..=202) {
            let message = response
                .json_body::<http::ErrorBody>()
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&response.body).into_owned());
            return Err(ClientError::Status {
                status: response.status,
                message,
            });
        }
        response.json_body().map_err(ClientError::Decode)
    }

    /// `GET path`, copying the body to `out` as it arrives until the host ends it (a console
    /// stream); an error status is returned as an error with the host's message.
    pub fn stream_get(&self, path: &str, out: &mut dyn io::Write) -> Result<(), ClientError> {
        let addr = self.addr;
        let mut stream = self.connect()?;
        // A stream is quiet for as long as the guest is: no read timeout.
        let _ = stream.sock.set_read_timeout(None);
        let host = addr.to_string();
        http::write_request(&mut stream, "GET", path, &host, None).map_err(|e| self.io_error(e))?;
        let limits = Limits::default();
        let (head, mut body) =
            http::read_response_head(&mut stream, &limits).map_err(|e| match e {
                HttpError::Io(e) => self.io_error(e),
                e => ClientError::Http(addr, e),
            })?;
        if head.status != 200 {
            let body = body.read_all(64 * 1024).unwrap_or_default();
            let message = serde_json::from_slice::<http::ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Status {
                status: head.status,
                message,
            });
        }
        let write_err = |e| ClientError::Http(addr, HttpError::Io(e));
        let mut buf = [0u8; 4096];
        loop {
            match io::Read::read(&mut body, &mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    out.write_all(&buf[..n]).map_err(write_err)?;
                    out.flush().map_err(write_err)?;
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Result<api::HealthResponse, ClientError> {
        self.call::<(), _>("GET", api::HEALTH, None)
    }

    /// Adopts the host: sends the token and the CA, checks the CSR is for the pinned key, signs
    /// it for `days` days and completes.
    pub fn adopt(
        &self,
        token: &str,
        ca: &ManagerCa,
        days: u32,
    ) -> Result<api::CompleteResponse, ClientError> {
        let begin = api::AdoptRequest {
            token: token.to_string(),
            manager_ca_pem: ca.cert_pem(),
        };
        let answer: api::AdoptResponse = self.call("POST", api::ADOPT, Some(&begin))?;
        let validity = Validity::days_from(SystemTime::now(), days);
        let certificate_pem = ca.sign_host_csr(&answer.csr_pem, self.pin, validity)?;
        let complete = api::CompleteRequest {
            session_id: answer.session_id,
            certificate_pem,
            chain_pem: Vec::new(),
        };
        self.call("POST", api::ADOPT_COMPLETE, Some(&complete))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Failure paths that need no agent; the conversation itself is tested in keel-init's
    //! `agent::e2e_tests`.

    use super::*;
    use crate::fingerprint::FingerprintExt;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn refused_connection_names_the_address() {
        // Bind then drop, so the port is very likely closed.
        let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let client = HostClient::new(addr, Fingerprint::of_spki(b""), None).unwrap();
        let err = client.health().unwrap_err();
        assert!(matches!(err, ClientError::Connect(..)), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn a_non_tls_server_is_a_tls_error() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            let _ = io::Write::write_all(&mut tcp, b"HTTP/1.1 200 OK\r\n\r\nplain");
        });
        let client = HostClient::new(addr, Fingerprint::of_spki(b""), None).unwrap();
        let err = client.health().unwrap_err();
        server.join().unwrap();
        assert!(matches!(err, ClientError::Tls(..)), "{err}");
    }
}
