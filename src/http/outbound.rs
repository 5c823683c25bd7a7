//! The webhook worker's HTTP client: one HTTP/1.1 request per connection,
//! to the address the worker resolved and checked (never resolved again
//! here), over TLS on the FIPS provider unless the operator allowed plain
//! HTTP for that destination. Redirects are never followed: the status is
//! returned as it is.

use std::sync::Arc;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::webhooks::worker::{Outbound, Sent, Transport};

/// Largest response body read (and dropped) before the connection closes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// HTTPS (or allowed HTTP) for webhook deliveries.
#[derive(Clone)]
pub struct WebhookClient {
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookClient")
    }
}

impl WebhookClient {
    pub fn new(config: rustls::ClientConfig) -> Self {
        Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn post(&self, o: Outbound) -> Result<u16, String> {
        let tcp = tokio::net::TcpStream::connect(o.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", o.addr))?;
        let _ = tcp.set_nodelay(true);
        if !o.tls {
            return exchange(tcp, o).await;
        }
        let name = ServerName::try_from(o.server_name.clone())
            .map_err(|_| format!("bad TLS server name {}", o.server_name))?;
        let stream = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        exchange(stream, o).await
    }
}

async fn exchange<S>(stream: S, o: Outbound) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut req = Request::post(o.path.as_str()).header("host", o.authority.as_str());
    for (k, v) in &o.headers {
        req = req.header(*k, v.as_str());
    }
    let req = req
        .header("connection", "close")
        .body(Full::new(Bytes::from(o.body)))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http: {e}"));
    let out = match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            // Read a bounded amount of the body so the receiver is not cut
            // off mid-write; its content is not used.
            let mut body = r.into_body();
            let mut read = 0usize;
            while read < MAX_RESPONSE_BYTES {
                match body.frame().await {
                    Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
            Ok(status)
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}

impl Transport for WebhookClient {
    fn send(&self, request: Outbound) -> Sent<'_> {
        Box::pin(self.post(request))
    }
}
