//! A small blocking HTTPS/1.1 client on rustls, independent of the server's
//! HTTP stack, that exposes what TLS negotiated.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

pub struct Client {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub fn roots(cert_pem: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

impl Client {
    pub fn new(addr: SocketAddr, cert_pem: &Path) -> Self {
        let provider = Arc::new(rustls::crypto::default_fips_provider());
        Self::with_provider(addr, cert_pem, provider)
    }

    pub fn with_provider(
        addr: SocketAddr,
        cert_pem: &Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Self {
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(cert_pem))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            addr,
            config: Arc::new(config),
        }
    }

    pub fn connect(&self) -> Result<Conn, std::io::Error> {
        self.handshake(TcpStream::connect(self.addr)?)
    }

    /// A connection from a chosen loopback source address (127.0.0.0/8).
    pub fn connect_from(&self, src: std::net::Ipv4Addr) -> Result<Conn, std::io::Error> {
        self.handshake(tcp_from(src, self.addr)?)
    }

    fn handshake(&self, tcp: TcpStream) -> Result<Conn, std::io::Error> {
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let conn = ClientConnection::new(
            self.config.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Conn { stream })
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], None)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        self.connect()
            .unwrap()
            .request(method, path, headers, body)
            .unwrap()
    }
}

/// A TCP connection from `src` to `dst`.
pub fn tcp_from(src: std::net::Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::other)?;
    use std::os::fd::AsRawFd;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0)),
    )
    .map_err(std::io::Error::other)?;
    let SocketAddr::V4(dst) = dst else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(dst)).map_err(std::io::Error::other)?;
    Ok(TcpStream::from(fd))
}

pub struct Conn {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
}

impl Conn {
    pub fn protocol(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.conn.protocol_version()
    }

    pub fn kx_group(&self) -> Option<rustls::NamedGroup> {
        self.stream
            .conn
            .negotiated_key_exchange_group()
            .map(|g| g.name())
    }

    pub fn peer_cert(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// Writes raw bytes (a hand-made request) on the TLS stream.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes a hand-made request and reads the answer, even when the server
    /// answers (and closes) before the whole request was written.
    pub fn exchange_raw(&mut self, bytes: &[u8]) -> std::io::Result<Response> {
        match self.send_raw(bytes) {
            Ok(()) => read_response(&mut self.stream, false),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                read_response(&mut ReadOnly(&mut self.stream), false).map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads one response.
    pub fn read_response(&mut self) -> std::io::Result<Response> {
        read_response(&mut self.stream, false)
    }

    /// Whether the server has closed this connection, waiting at most `wait`.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.stream.sock.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        let r = self.stream.read(&mut b);
        self.stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        match r {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    /// One HTTP/1.1 request on this (keep-alive) connection.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        match self
            .stream
            .write_all(&bytes)
            .and_then(|()| self.stream.flush())
        {
            Ok(()) => read_response(&mut self.stream, method == "HEAD"),
            // The server may answer (e.g. 413) and close before the whole
            // body is sent: read what it said without writing any more.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                read_response(&mut ReadOnly(&mut self.stream), method == "HEAD").map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }
}

/// Reads decrypted data from a TLS stream without ever writing to it.
struct ReadOnly<'a>(&'a mut StreamOwned<ClientConnection, TcpStream>);

impl Read for ReadOnly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.conn.reader().read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.0.conn.read_tls(&mut self.0.sock)? == 0 {
                        return Ok(0);
                    }
                    self.0
                        .conn
                        .process_new_packets()
                        .map_err(std::io::Error::other)?;
                }
                other => return other,
            }
        }
    }
}

fn read_response(r: &mut dyn Read, head: bool) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if r.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if !head && status != 204 && status != 304 {
        if let Some(len) = find("content-length") {
            let len: usize = len.parse().unwrap();
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            body = read_chunked(r)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_line(r: &mut dyn Read) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        r.read_exact(&mut byte)?;
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_chunked(r: &mut dyn Read) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(r)?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .map_err(std::io::Error::other)?;
        if size == 0 {
            // trailers until an empty line
            while !read_line(r)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        read_line(r)?;
    }
}
