//! The metrics listener: `GET /metrics` in the Prometheus text format, on
//! its own address (loopback by default), never on the API port. Off
//! loopback it serves TLS and requires a bearer token.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

/// What the metrics listener needs.
pub struct MetricsServer {
    /// TLS, when the listener is not on loopback.
    pub tls: Option<TlsAcceptor>,
    /// The bearer token scrapers must send, when set.
    pub token: Option<Zeroizing<String>>,
    /// Brings the scrape-time gauges up to date (firms, checkpoint age, ...).
    pub refresh: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsServer")
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

fn answer(server: &MetricsServer, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: GET /metrics\n".into(),
        );
    }
    if req.method() != hyper::Method::GET {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return r;
    }
    if let Some(token) = &server.token {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::bearer)
            .unwrap_or("");
        // Security invariant: the scrape token is compared in constant time.
        if !crate::crypto::keyring::ct_eq(sent.as_bytes(), token.as_bytes()) {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "bearer token required\n".into(),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"strongroom-metrics\""),
            );
            return r;
        }
    }
    (server.refresh)();
    reply(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        crate::telemetry::metrics::metrics().encode(),
    )
}

/// Serves `/metrics` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    server: MetricsServer,
    mut shutdown: watch::Receiver<bool>,
) {
    let server = Arc::new(server);
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let server = server.clone();
        tokio::spawn(async move {
            let svc = {
                let server = server.clone();
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let r = answer(&server, &req);
                    async move { Ok::<_, Infallible>(r) }
                })
            };
            let mut h1 = http1::Builder::new();
            h1.timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            let served = match &server.tls {
                Some(acceptor) => {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => h1.serve_connection(TokioIo::new(tls), svc).await,
                        _ => return,
                    }
                }
                None => h1.serve_connection(TokioIo::new(tcp), svc).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}
