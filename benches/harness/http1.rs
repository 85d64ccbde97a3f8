//! A minimal HTTP/1.1 client on a tokio `TcpStream`: one `GET` at a time, with or without
//! keep-alive. It understands exactly what the measurements need: a status line, headers up to
//! 64 KiB, and a body framed by `Content-Length`, `Transfer-Encoding: chunked` or end of stream.
//! A client of our own keeps its cost fixed and equal for every target.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Bodies here are a few hundred bytes; anything past this is a broken response.
const MAX_BODY: usize = 16 * 1024 * 1024;
const MAX_TRAILERS: usize = 64;

/// The `Host` every request carries (the sandbox's http backend answers any).
pub const HOST: &str = "web.bench";

pub struct Http1Connection {
    stream: TcpStream,
    /// Bytes read but not yet consumed.
    buf: Vec<u8>,
    /// Set once the server ends the stream: nothing more can be read.
    eof: bool,
}

/// Whether the connection can carry another request.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    KeepOpen,
    Closed,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Http1Connection {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Http1Connection {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            eof: false,
        })
    }

    /// Sends `GET /` and reads the whole response, which must be a 200.
    pub async fn get(&mut self, keep_alive: bool) -> io::Result<After> {
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: bindgate-bench\r\nConnection: {connection}\r\n\r\n"
        );
        self.stream.write_all(request.as_bytes()).await?;

        let head_len = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head exceeds 64 KiB"));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended before the response head",
                ));
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_len])
            .map_err(|_| invalid("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
            return Err(invalid(format!("unexpected status line `{status}`")));
        }
        let mut content_length = None;
        let mut chunked = false;
        let mut server_closes = status.starts_with("HTTP/1.0");
        for line in lines.filter(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                return Err(invalid(format!("malformed header `{line}`")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| invalid(format!("bad content-length `{value}`")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                server_closes = value.eq_ignore_ascii_case("close");
            }
        }
        self.buf.drain(..head_len);

        if chunked {
            self.read_chunked().await?;
        } else if let Some(len) = content_length {
            self.consume(len).await?;
        } else {
            // Delimited by the end of the stream.
            let mut body = self.buf.len();
            while self.fill().await? > 0 {
                body += self.buf.len();
                self.buf.clear();
                if body > MAX_BODY {
                    return Err(invalid("response body exceeds 16 MiB"));
                }
            }
            self.buf.clear();
            return Ok(After::Closed);
        }
        Ok(if server_closes || !keep_alive || self.eof {
            After::Closed
        } else {
            After::KeepOpen
        })
    }

    /// Reads more bytes into `buf`; returns how many (0 at end of stream).
    async fn fill(&mut self) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let n = match self.stream.read(&mut self.buf[start..]).await {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(start);
                return Err(e);
            }
        };
        self.buf.truncate(start + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Drops exactly `len` body bytes.
    async fn consume(&mut self, mut len: usize) -> io::Result<()> {
        loop {
            let take = len.min(self.buf.len());
            self.buf.drain(..take);
            len -= take;
            if len == 0 {
                return Ok(());
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside the response body",
                ));
            }
        }
    }

    /// The bytes of one CRLF-terminated line (without it), consumed.
    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("chunk header exceeds 64 KiB"));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a chunked body",
                ));
            }
        }
    }

    async fn read_chunked(&mut self) -> io::Result<()> {
        let mut body = 0usize;
        loop {
            let size_line = self.line().await?;
            let size = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("bad chunk size `{size_line}`")))?;
            body += size;
            if body > MAX_BODY {
                return Err(invalid("response body exceeds 16 MiB"));
            }
            if size == 0 {
                // Trailers, up to the empty line.
                for _ in 0..MAX_TRAILERS {
                    if self.line().await?.is_empty() {
                        return Ok(());
                    }
                }
                return Err(invalid("more than 64 trailer lines"));
            }
            self.consume(size).await?;
            if !self.line().await?.is_empty() {
                return Err(invalid("chunk not followed by CRLF"));
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
