//! `--metrics ADDR`: the address (loopback unless one is given), bound
//! before anything is loaded so that a bad one fails first, and the HTTP
//! server that answers `GET /metrics` on the session's own runtime.

use std::{
    convert::Infallible,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{encoding, registry::Registry};
use tokio::sync::Semaphore;

/// Connections served at once; more are closed as they come. A scraper
/// needs one (Prometheus keeps it open between scrapes).
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request headers within this is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `--metrics`: PORT alone (loopback), `localhost:PORT`, or IP:PORT
/// (`[::1]:PORT` for IPv6).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let wanted = "give PORT (on 127.0.0.1), localhost:PORT or IP:PORT \
                  (e.g. 127.0.0.1:9464, [::1]:9464, 0.0.0.0:9464 for every interface)";
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
            .map_err(|_| format!("`{port}` is not a port (0 to 65535): {wanted}"));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("`{s}` is not an address: {wanted}"))
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("--metrics {addr}: the address is in use (another tcptrace, or another exporter?)")]
    InUse { addr: SocketAddr },
    #[error(
        "--metrics {addr}: port {port} is privileged (below {first}): it needs root or \
         CAP_NET_BIND_SERVICE; pick a port of {first} or above (e.g. 9464)"
    )]
    Privileged {
        addr: SocketAddr,
        port: u16,
        first: u16,
    },
    #[error("--metrics {addr}: no interface of this host has that address")]
    NotAvailable { addr: SocketAddr },
    #[error("--metrics {addr}: cannot listen: {source}")]
    Other {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A bound metrics address, not yet served.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `addr` (port 0: one the kernel picks; [`MetricsListener::addr`]
    /// says which).
    pub fn bind(addr: SocketAddr) -> Result<MetricsListener, BindError> {
        let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => BindError::InUse { addr },
            io::ErrorKind::AddrNotAvailable => BindError::NotAvailable { addr },
            io::ErrorKind::PermissionDenied if addr.port() < unprivileged_port_start() => {
                BindError::Privileged {
                    addr,
                    port: addr.port(),
                    first: unprivileged_port_start(),
                }
            }
            _ => BindError::Other { addr, source: e },
        })?;
        let addr = listener
            .local_addr()
            .map_err(|source| BindError::Other { addr, source })?;
        Ok(MetricsListener { listener, addr })
    }

    /// Is it reachable from other hosts? (Worth a warning: process names
    /// and services are in the labels.)
    pub fn beyond_loopback(&self) -> bool {
        !self.addr.ip().is_loopback()
    }

    /// Serves `registry` on the current (tokio) runtime until it ends.
    pub fn serve(self, registry: Arc<Registry>) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, most likely: wait, not spin.
                        log::debug!("metrics: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    continue; // dropped: closed
                };
                let registry = registry.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let response = respond(&registry, &req);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        log::debug!("metrics: connection: {e}");
                    }
                    drop(permit);
                });
            }
        });
        Ok(())
    }
}

/// The first port an unprivileged process may bind (1024 unless the
/// sysctl says otherwise).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// `/metrics` in OpenMetrics when the scraper asks for it (Prometheus
/// does), else in the Prometheus text format 0.0.4 (curl, promtool).
fn respond<B>(registry: &Registry, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let openmetrics = req.headers().get_all(ACCEPT).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.contains("application/openmetrics-text"))
            });
            let mut body = String::with_capacity(32 * 1024);
            let encoded = if openmetrics {
                encoding::text::encode(&mut body, registry)
            } else {
                encoding::prometheus_text::encode(&mut body, registry)
            };
            if encoded.is_err() {
                return reply(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
            }
            let mut r = Response::new(Full::new(Bytes::from(body)));
            let kind = if openmetrics {
                OPENMETRICS
            } else {
                PROMETHEUS_TEXT
            };
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
            r
        }
        (_, "/metrics") => {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        (&Method::GET | &Method::HEAD, "/") => {
            reply(StatusCode::OK, "tcptrace: metrics at /metrics\n")
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback_and_bad_ones_say_what_to_give() {
        assert_eq!(
            parse_addr("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_addr("localhost:9000").unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            parse_addr("[::1]:9464").unwrap(),
            "[::1]:9464".parse().unwrap()
        );
        assert_eq!(
            parse_addr("0.0.0.0:9464").unwrap(),
            "0.0.0.0:9464".parse().unwrap()
        );
        for bad in [
            "",
            "nonsense",
            "127.0.0.1",
            "127.0.0.1:70000",
            "localhost:x",
            "host:1",
        ] {
            let err = parse_addr(bad).unwrap_err();
            assert!(err.contains("127.0.0.1:9464"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_address_in_use_is_named_as_such() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = MetricsListener::bind(taken.local_addr().unwrap()).unwrap_err();
        assert!(matches!(err, BindError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        let free = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(free.addr.port(), 0);
        assert!(!free.beyond_loopback());
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let registry = Registry::with_prefix("tcptrace");
        let get = |accept: Option<&str>, path: &str| {
            let mut req = Request::builder().uri(path);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            respond(&registry, &req.body(()).unwrap())
        };
        let om = get(
            Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
            "/metrics",
        );
        assert_eq!(om.headers()[CONTENT_TYPE], OPENMETRICS);
        let text = get(None, "/metrics");
        assert_eq!(text.status(), StatusCode::OK);
        assert_eq!(text.headers()[CONTENT_TYPE], PROMETHEUS_TEXT);
        assert_eq!(get(None, "/other").status(), StatusCode::NOT_FOUND);
        let post = respond(&registry, &Request::post("/metrics").body(()).unwrap());
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
