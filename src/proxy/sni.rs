//! Reading the server name (SNI) from a TLS ClientHello, without terminating TLS.
//!
//! A small parser of exactly what routing needs: handshake records (a ClientHello may be split
//! across several), the ClientHello's fixed fields, and the `server_name` extension. Everything
//! it reads comes from an unauthenticated peer: every length is checked before use, sizes are
//! bounded, and no input panics (see the sweep in the tests).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest ClientHello accepted (handshake message body). Real ones are 200 B to 2 KiB;
/// post-quantum key shares and large session tickets stay far below this.
pub const MAX_CLIENT_HELLO: usize = 32 * 1024;
/// The most bytes buffered while waiting for a whole ClientHello (records add 5 bytes each).
pub const MAX_BUFFERED: usize = MAX_CLIENT_HELLO + 8 * 1024;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// TLSPlaintext.length is at most 2^14.
const MAX_RECORD: usize = 16 * 1024;

/// What the bytes so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a plausible ClientHello: read more.
    Incomplete,
    /// A whole ClientHello; `server_name` is normalized (lowercase, no trailing dot), `None`
    /// when the client sent no SNI.
    Hello { server_name: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a TLS handshake (first byte {0:#04x})")]
    NotHandshake(u8),
    #[error("not a TLS record (version {0:#06x})")]
    RecordVersion(u16),
    #[error("the first handshake message is type {0}, not a ClientHello")]
    NotClientHello(u8),
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Parses the start of a TLS connection: the records carrying its ClientHello.
pub fn parse(buf: &[u8]) -> Result<Parsed, HelloError> {
    // The handshake bytes, reassembled from as many records as it takes.
    let mut handshake: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        let Some(header) = rest.get(..5) else {
            return Ok(Parsed::Incomplete);
        };
        let content_type = header[0];
        let version = u16::from_be_bytes([header[1], header[2]]);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if content_type != CONTENT_HANDSHAKE {
            return Err(if handshake.is_empty() {
                HelloError::NotHandshake(content_type)
            } else {
                HelloError::Malformed("a non-handshake record interrupts the ClientHello")
            });
        }
        if version >> 8 != 3 {
            return Err(HelloError::RecordVersion(version));
        }
        if len == 0 {
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if len > MAX_RECORD {
            return Err(HelloError::Malformed("record longer than 2^14 bytes"));
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Ok(Parsed::Incomplete);
        };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + len..];

        let Some(&msg_type) = handshake.first() else {
            continue;
        };
        if msg_type != HANDSHAKE_CLIENT_HELLO {
            return Err(HelloError::NotClientHello(msg_type));
        }
        let Some(len_bytes) = handshake.get(1..4) else {
            continue;
        };
        let body_len = (usize::from(len_bytes[0]) << 16)
            | (usize::from(len_bytes[1]) << 8)
            | usize::from(len_bytes[2]);
        if body_len > MAX_CLIENT_HELLO {
            return Err(HelloError::TooLarge);
        }
        if let Some(body) = handshake.get(4..4 + body_len) {
            return client_hello_server_name(body).map(|server_name| Parsed::Hello { server_name });
        }
    }
}

/// A cursor over peer bytes whose every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if n > self.bytes.len() {
            return Err(HelloError::Malformed(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }
    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The `host_name` of a ClientHello body's `server_name` extension (RFC 8446 §4.1.2, RFC 6066 §3).
fn client_hello_server_name(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader { bytes: body };
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    if r.vec8("session_id")?.len() > 32 {
        return Err(HelloError::Malformed("session_id longer than 32 bytes"));
    }
    r.vec16("cipher_suites")?;
    r.vec8("compression_methods")?;
    if r.is_empty() {
        return Ok(None); // TLS 1.2 and older may omit extensions altogether
    }
    let mut extensions = Reader {
        bytes: r.vec16("extensions")?,
    };
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let mut server_name = None;
    let mut seen = false;
    while !extensions.is_empty() {
        let kind = extensions.u16("extension type")?;
        let data = extensions.vec16("extension data")?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        if seen {
            return Err(HelloError::Malformed("two server_name extensions"));
        }
        seen = true;
        let mut ext = Reader { bytes: data };
        let mut list = Reader {
            bytes: ext.vec16("server_name list")?,
        };
        if !ext.is_empty() {
            return Err(HelloError::Malformed("bytes after the server_name list"));
        }
        while !list.is_empty() {
            let name_type = list.u8("server_name type")?;
            let name = list.vec16("server_name")?;
            if name_type == NAME_TYPE_HOST_NAME && server_name.is_none() {
                server_name = Some(host_name(name)?);
            }
        }
    }
    Ok(server_name)
}

/// A `host_name` as routes compare it; anything but a DNS name is refused.
fn host_name(raw: &[u8]) -> Result<String, HelloError> {
    let valid = !raw.is_empty()
        && raw.len() <= 255
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        return Err(HelloError::Malformed("server_name is not a DNS name"));
    }
    let text = raw.strip_suffix(b".").unwrap_or(raw);
    Ok(String::from_utf8_lossy(text).to_ascii_lowercase())
}

/// Why no ClientHello could be read from a connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadHelloError {
    #[error("{0}")]
    Hello(#[from] HelloError),
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("the client closed the connection after {0} bytes, before a whole ClientHello")]
    Closed(usize),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads from `client` until the bytes hold a whole ClientHello, within `wait`. Returns every
/// byte read (to be replayed upstream) and the server name.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    client: &mut R,
    wait: Duration,
) -> Result<(Vec<u8>, Option<String>), ReadHelloError> {
    let mut buf = Vec::with_capacity(2048);
    let read = async {
        loop {
            if let Parsed::Hello { server_name } = parse(&buf)? {
                return Ok(server_name);
            }
            let room = MAX_BUFFERED.saturating_sub(buf.len());
            if room == 0 {
                return Err(HelloError::TooLarge.into());
            }
            let n = (&mut *client).take(room as u64).read_buf(&mut buf).await?;
            if n == 0 {
                return Err(ReadHelloError::Closed(buf.len()));
            }
        }
    };
    match tokio::time::timeout(wait, read).await {
        Ok(Ok(server_name)) => Ok((buf, server_name)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ReadHelloError::Timeout(wait)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// The first flight of a real rustls client for `name` (TLS 1.3 and 1.2 offered).
    fn rustls_client_hello(name: ServerName<'static>) -> Vec<u8> {
        crate::identity::install_crypto_provider();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    fn dns(name: &str) -> ServerName<'static> {
        ServerName::try_from(name.to_owned()).unwrap()
    }

    fn hello(name: Option<&str>) -> Result<Parsed, HelloError> {
        Ok(Parsed::Hello {
            server_name: name.map(str::to_owned),
        })
    }

    #[test]
    fn reads_sni_from_real_rustls_client_hellos() {
        for name in ["a.example.com", "orders.default", "x", "Mixed.Case.Test"] {
            let bytes = rustls_client_hello(dns(name));
            assert_eq!(bytes[0], CONTENT_HANDSHAKE);
            let want = name.to_ascii_lowercase();
            assert_eq!(parse(&bytes), hello(Some(&want)), "{name}");
        }
    }

    #[test]
    fn a_client_hello_to_an_ip_address_has_no_sni() {
        // rustls sends no server_name for an IP address, as RFC 6066 requires.
        let bytes =
            rustls_client_hello(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        assert_eq!(parse(&bytes), hello(None));
    }

    #[test]
    fn every_prefix_of_a_client_hello_is_incomplete() {
        let bytes = rustls_client_hello(dns("a.example.com"));
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
    }

    /// Re-frames a single-record ClientHello into records of `size` bytes of handshake each.
    fn fragment(single: &[u8], size: usize) -> Vec<u8> {
        let handshake = &single[5..];
        let mut out = Vec::new();
        for chunk in handshake.chunks(size) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn a_client_hello_split_across_records_is_reassembled() {
        let single = rustls_client_hello(dns("split.example.com"));
        for size in [1, 2, 3, 4, 5, 7, 64, 100] {
            let bytes = fragment(&single, size);
            assert_eq!(
                parse(&bytes),
                hello(Some("split.example.com")),
                "size {size}"
            );
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse(&bytes[..cut]),
                    Ok(Parsed::Incomplete),
                    "size {size} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn bytes_after_the_client_hello_are_ignored() {
        let mut bytes = rustls_client_hello(dns("a.b"));
        bytes.extend_from_slice(&[20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 2, 9, 9]);
        assert_eq!(parse(&bytes), hello(Some("a.b")));
    }

    /// A minimal ClientHello built by hand, for the cases rustls never produces.
    fn handmade(extensions: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session_id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        if let Some(ext) = extensions {
            body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            body.extend_from_slice(ext);
        }
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni_extension(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        let mut ext = EXTENSION_SERVER_NAME.to_be_bytes().to_vec();
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(&data);
        ext
    }

    #[test]
    fn handmade_client_hellos() {
        assert_eq!(parse(&handmade(None)), hello(None), "no extensions at all");
        assert_eq!(parse(&handmade(Some(&[]))), hello(None), "empty extensions");
        let other_then_sni = [
            &[0, 10, 0, 2, 0, 29][..],
            &sni_extension(&[(7, b"ignored"), (0, b"Web.Test.")]),
        ]
        .concat();
        assert_eq!(
            parse(&handmade(Some(&other_then_sni))),
            hello(Some("web.test"))
        );
        let twice = [sni_extension(&[(0, b"a.b")]), sni_extension(&[(0, b"c.d")])].concat();
        assert_eq!(
            parse(&handmade(Some(&twice))),
            Err(HelloError::Malformed("two server_name extensions"))
        );
        for bad in [&b""[..], b"a b", b"a\0b", b"caf\xc3\xa9"] {
            assert_eq!(
                parse(&handmade(Some(&sni_extension(&[(0, bad)])))),
                Err(HelloError::Malformed("server_name is not a DNS name")),
                "{bad:?}"
            );
        }
        let mut trailing = handmade(Some(&sni_extension(&[(0, b"a.b")])));
        // Claim one more byte in both length fields and add it: junk after the extensions.
        trailing[4] += 1;
        trailing[8] += 1;
        trailing.push(0);
        assert_eq!(
            parse(&trailing),
            Err(HelloError::Malformed("bytes after the extensions"))
        );
    }

    #[test]
    fn what_is_not_a_client_hello_is_refused() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HelloError::NotHandshake(b'G'))
        );
        assert_eq!(
            parse(&[22, 9, 9, 0, 1, 1]),
            Err(HelloError::RecordVersion(0x0909))
        );
        assert_eq!(
            parse(&[22, 3, 1, 0, 0]),
            Err(HelloError::Malformed("empty handshake record"))
        );
        assert_eq!(
            parse(&[22, 3, 1, 0x40, 0x01]),
            Err(HelloError::Malformed("record longer than 2^14 bytes"))
        );
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(HelloError::NotClientHello(2))
        );
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 1, 1, 0, 0]),
            Err(HelloError::TooLarge)
        );
        let mut interrupted = fragment(&rustls_client_hello(dns("a.b")), 10);
        interrupted.truncate(15);
        interrupted.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert_eq!(
            parse(&interrupted),
            Err(HelloError::Malformed(
                "a non-handshake record interrupts the ClientHello"
            ))
        );
    }

    /// On stable, a deterministic sweep of truncations, bit flips and random bytes must never
    /// panic (the fuzzer's corpus and crash inputs are replayed by `tests/fuzz_replay.rs`).
    #[test]
    fn hostile_bytes_never_panic() {
        let good = rustls_client_hello(dns("fuzz.example.com"));
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for cut in 0..good.len() {
            inputs.push(good[..cut].to_vec());
        }
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut v = good.clone();
            // Flip a few bytes anywhere, lengths included.
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % v.len();
                v[i] = next() as u8;
            }
            v.truncate((next() as usize) % (good.len() + 1));
            inputs.push(v);
            let len = (next() % 300) as usize;
            let mut random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = random.first_mut() {
                *first = CONTENT_HANDSHAKE; // get past the first check most of the time
            }
            if random.len() > 2 {
                random[1] = 3;
            }
            inputs.push(random);
        }
        for input in &inputs {
            let _ = parse(input);
        }
    }

    #[tokio::test]
    async fn read_client_hello_keeps_every_byte_for_the_replay() {
        let bytes = rustls_client_hello(dns("replay.test"));
        let (mut client, mut proxy) = tokio::io::duplex(64);
        let sent = bytes.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(7) {
                client.write_all(chunk).await.unwrap();
            }
            client
        });
        let (buf, name) = read_client_hello(&mut proxy, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("replay.test"));
        assert_eq!(buf, bytes);
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let (mut client, mut proxy) = tokio::io::duplex(64);
        client.write_all(&[22, 3, 1]).await.unwrap();
        let r = read_client_hello(&mut proxy, Duration::from_secs(10)).await;
        assert!(matches!(r, Err(ReadHelloError::Timeout(d)) if d == Duration::from_secs(10)));
    }

    #[tokio::test]
    async fn a_client_closing_early_is_reported() {
        let (mut client, mut proxy) = tokio::io::duplex(64);
        client.write_all(&[22, 3, 1]).await.unwrap();
        drop(client);
        let r = read_client_hello(&mut proxy, Duration::from_secs(10)).await;
        assert!(matches!(r, Err(ReadHelloError::Closed(3))), "{r:?}");
    }

    #[tokio::test]
    async fn an_endless_client_hello_is_cut_off() {
        let (mut client, mut proxy) = tokio::io::duplex(64 * 1024);
        // Records of 1 byte of handshake each: valid framing that never completes the message.
        let mut flood = vec![
            CONTENT_HANDSHAKE,
            3,
            1,
            0,
            4,
            HANDSHAKE_CLIENT_HELLO,
            0,
            0x7f,
            0,
        ];
        for _ in 0..(MAX_BUFFERED / 6 + 1) {
            flood.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1, 0, 1, 0]);
        }
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&flood).await;
            client
        });
        let r = read_client_hello(&mut proxy, Duration::from_secs(10)).await;
        assert!(
            matches!(r, Err(ReadHelloError::Hello(HelloError::TooLarge))),
            "{r:?}"
        );
        drop(writer.await.unwrap());
    }
}
