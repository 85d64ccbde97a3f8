//! The binding upgrade's wire format: `ConnRequest` / `ConnResponse`, each framed as a 2-byte
//! little-endian length followed by that many bytes of protobuf (shared PROTOCOL.md §1).
//!
//! This crate owns framing and the generated message types only; it knows nothing of sockets
//! beyond `AsyncRead`/`AsyncWrite`, and never reads past the end of a frame, so whatever the peer
//! sends after it stays in the stream for the byte pipe. It is the one piece of code bindgate and
//! its sandbox share (bindgate re-exports it as `bindgate::wire`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Types generated from `proto/binding.proto` (package `agent`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

pub use pb::{ConnRequest, ConnResponse, PodIdentity, conn_response::Notice};

/// HTTP/2 (multiplexed) form of the upgrade: a non-2xx answer to `CONNECT host:port` carries the
/// ngrok error code and message, the `ConnResponse` fields, in these response headers.
pub const ERROR_CODE_HEADER: &str = "ngrok-error-code";
pub const ERROR_MESSAGE_HEADER: &str = "ngrok-error-message";

/// The largest body a frame can carry: its length is a `u16`.
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame body of {0} bytes exceeds the 65535-byte limit")]
    TooLarge(usize),
    #[error("stream ended {read} bytes into a frame that announced {expected}")]
    Truncated { read: usize, expected: usize },
    #[error("stream ended before a frame started")]
    Closed,
    #[error("frame is not a valid {message}: {source}")]
    Decode {
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame (length prefix + body).
pub fn encode_frame<M: Message>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let len = msg.encoded_len();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut out = Vec::with_capacity(2 + len);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    msg.encode(&mut out)
        .map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
    Ok(out)
}

/// Decodes one complete frame held in `buf`, returning the message and the bytes after it.
pub fn decode_frame<M: Message + Default>(buf: &[u8]) -> Result<(M, &[u8]), FrameError> {
    if buf.len() < 2 {
        return Err(if buf.is_empty() {
            FrameError::Closed
        } else {
            FrameError::Truncated {
                read: buf.len(),
                expected: 2,
            }
        });
    }
    let len = u16::from_le_bytes([buf[0], buf[1]]) as usize;
    let body = &buf[2..];
    if body.len() < len {
        return Err(FrameError::Truncated {
            read: body.len(),
            expected: len,
        });
    }
    let msg = M::decode(&body[..len]).map_err(|source| FrameError::Decode {
        message: type_name::<M>(),
        source,
    })?;
    Ok((msg, &body[len..]))
}

/// Writes one framed message and flushes.
pub async fn write_frame<W, M>(w: &mut W, msg: &M) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    M: Message,
{
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads exactly one framed message: the length, then exactly that many bytes; nothing beyond.
pub async fn read_frame<R, M>(r: &mut R) -> Result<M, FrameError>
where
    R: AsyncRead + Unpin,
    M: Message + Default,
{
    let mut reader = FrameReader::default();
    std::future::poll_fn(|cx| reader.poll_frame(r, cx)).await
}

/// One frame read step by step, for a stream that cannot be lent to [`read_frame`] for the
/// whole read (one written to meanwhile, say). Reads never go past the frame's end.
#[derive(Debug, Default)]
pub struct FrameReader {
    header: [u8; 2],
    /// Bytes of the header, then of the body, read so far.
    got: usize,
    /// The body, once the header told its length.
    body: Option<Vec<u8>>,
}

impl FrameReader {
    /// Reads on until the frame is complete; cancel-safe (what was read is kept here).
    pub fn poll_frame<R, M>(
        &mut self,
        r: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<Result<M, FrameError>>
    where
        R: AsyncRead + Unpin,
        M: Message + Default,
    {
        loop {
            let (dest, expected) = match &mut self.body {
                None => (&mut self.header[self.got..], 2),
                Some(body) => {
                    let len = body.len();
                    (&mut body[self.got..], len)
                }
            };
            if !dest.is_empty() {
                let mut buf = ReadBuf::new(dest);
                ready!(Pin::new(&mut *r).poll_read(cx, &mut buf))?;
                let n = buf.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(match (&self.body, self.got) {
                        (None, 0) => FrameError::Closed,
                        (_, read) => FrameError::Truncated { read, expected },
                    }));
                }
                self.got += n;
                if self.got < expected {
                    continue;
                }
            }
            match &self.body {
                None => {
                    self.body = Some(vec![0; usize::from(u16::from_le_bytes(self.header))]);
                    self.got = 0;
                }
                Some(body) => return Poll::Ready(decode_body(body)),
            }
        }
    }
}

/// Decodes a frame's body (the bytes after its length).
fn decode_body<M: Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    M::decode(body).map_err(|source| FrameError::Decode {
        message: type_name::<M>(),
        source,
    })
}

fn type_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

impl ConnResponse {
    /// The failure this response reports, if any, as `[code] message`.
    pub fn failure(&self) -> Option<String> {
        if self.error_code.is_empty() && self.error_message.is_empty() {
            return None;
        }
        Some(format!("[{}] {}", self.error_code, self.error_message))
    }

    /// A failed response with an ngrok-style code.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ConnResponse {
            error_code: code.to_string(),
            error_message: message.into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    // Test vectors from PROTOCOL.md §1.
    #[test]
    fn conn_request_with_empty_identity_matches_vector() {
        let req = ConnRequest {
            host: "svc.ns".into(),
            port: 80,
            pod_identity: Some(PodIdentity::default()),
        };
        assert_eq!(
            hex(&encode_frame(&req).unwrap()),
            "0c 00 0a 06 73 76 63 2e 6e 73 10 50 1a 00"
        );
    }

    #[test]
    fn conn_request_without_identity_matches_vector() {
        let req = ConnRequest {
            host: "svc.ns".into(),
            port: 80,
            pod_identity: None,
        };
        assert_eq!(
            hex(&encode_frame(&req).unwrap()),
            "0a 00 0a 06 73 76 63 2e 6e 73 10 50"
        );
    }

    #[test]
    fn conn_response_matches_vector_and_round_trips() {
        let resp = ConnResponse {
            endpoint_id: "ep_abc".into(),
            proto: "http".into(),
            ..Default::default()
        };
        let frame = encode_frame(&resp).unwrap();
        assert_eq!(
            hex(&frame),
            "0e 00 0a 06 65 70 5f 61 62 63 12 04 68 74 74 70"
        );
        let (back, rest): (ConnResponse, _) = decode_frame(&frame).unwrap();
        assert_eq!(back, resp);
        assert!(rest.is_empty());
        assert_eq!(back.failure(), None);
    }

    #[test]
    fn failure_formats_code_and_message() {
        let resp = ConnResponse::error("ERR_NGROK_3200", "endpoint offline");
        assert_eq!(
            resp.failure().as_deref(),
            Some("[ERR_NGROK_3200] endpoint offline")
        );
    }

    #[test]
    fn oversized_message_is_refused_not_truncated() {
        let req = ConnRequest {
            host: "x".repeat(70_000),
            port: 1,
            pod_identity: None,
        };
        assert!(matches!(encode_frame(&req), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn decode_reports_truncation_and_garbage() {
        assert!(matches!(
            decode_frame::<ConnRequest>(&[0x10, 0x00, 0x0a]),
            Err(FrameError::Truncated {
                read: 1,
                expected: 16
            })
        ));
        assert!(matches!(
            decode_frame::<ConnRequest>(&[0x03, 0x00, 0xff, 0xff, 0xff]),
            Err(FrameError::Decode { .. })
        ));
    }

    #[tokio::test]
    async fn read_frame_leaves_following_bytes_in_the_stream() {
        let resp = ConnResponse {
            endpoint_id: "ep_1".into(),
            ..Default::default()
        };
        let mut wire = encode_frame(&resp).unwrap();
        wire.extend_from_slice(b"payload");
        let mut reader = wire.as_slice();
        let got: ConnResponse = read_frame(&mut reader).await.unwrap();
        assert_eq!(got.endpoint_id, "ep_1");
        assert_eq!(reader, b"payload");
    }

    #[tokio::test]
    async fn read_frame_on_closed_and_short_streams() {
        let mut empty: &[u8] = &[];
        assert!(matches!(
            read_frame::<_, ConnRequest>(&mut empty).await,
            Err(FrameError::Closed)
        ));
        let mut short: &[u8] = &[0x05, 0x00, 0x0a];
        assert!(matches!(
            read_frame::<_, ConnRequest>(&mut short).await,
            Err(FrameError::Truncated {
                read: 1,
                expected: 5
            })
        ));
    }

    /// A deterministic sweep of random and prefix-mutated frames, on stable (the fuzzer's
    /// corpus and crash inputs are replayed by `tests/fuzz_replay.rs`).
    #[test]
    fn hostile_bytes_never_panic() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        let good = encode_frame(&ConnRequest {
            host: "svc.ns".into(),
            port: 80,
            pod_identity: Some(PodIdentity::default()),
        })
        .unwrap();
        for cut in 0..good.len() {
            inputs.push(good[..cut].to_vec());
        }
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let mut v = good.clone();
            v.truncate(len.min(v.len()));
            v.extend((0..len).map(|i| (state >> (i % 56)) as u8));
            inputs.push(v);
        }
        for input in &inputs {
            let _ = decode_frame::<ConnRequest>(input);
            let _ = decode_frame::<ConnResponse>(input);
        }
    }
}
