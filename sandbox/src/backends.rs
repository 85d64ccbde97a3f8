//! The built-in backends endpoints can target, each a real local TCP listener:
//!
//! - [`EchoBackend`]: echoes bytes back and honours half-close (on EOF it finishes writing what
//!   it read, then shuts down its write side);
//! - [`HttpBackend`]: HTTP/1.1 with keep-alive, answering every request `200 text/plain` with
//!   `hello from the bindgate sandbox\n`, the request line, then every request header (so tests
//!   see the `Host` header arrive unchanged).
//!
//! Both are plain servers; they know nothing of the ingress or of faults.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

/// The first line of every HTTP backend answer.
pub const HTTP_GREETING: &str = "hello from the bindgate sandbox\n";

/// Echoes every byte back on the same connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoBackend;

impl EchoBackend {
    pub async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        let (mut reader, mut writer) = stream.into_split();
        let result = async {
            let echoed = tokio::io::copy(&mut reader, &mut writer).await?;
            // EOF from the peer: everything read is written; now end our side too.
            writer.shutdown().await?;
            Ok::<_, io::Error>(echoed)
        }
        .await;
        match result {
            Ok(bytes) => debug!(%peer, bytes, "echo connection done"),
            Err(e) => debug!(%peer, "echo connection failed: {e}"),
        }
    }
}

/// Answers every HTTP/1.1 request with a greeting and the request's head.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpBackend;

impl HttpBackend {
    pub async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        let service = hyper::service::service_fn(answer);
        let result = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service)
            .await;
        if let Err(e) = result {
            debug!(%peer, "http backend connection failed: {e}");
        }
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut text = String::from(HTTP_GREETING);
    text.push_str(&format!(
        "{} {} {:?}\n",
        request.method(),
        request.uri(),
        request.version()
    ));
    for (name, value) in request.headers() {
        text.push_str(&format!(
            "{}: {}\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    // Drain the body without keeping it, so keep-alive works for any request size.
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let response = Response::builder()
        .status(200)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text)));
    // The builder only fails on invalid parts, and these are constants.
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"")))))
}
