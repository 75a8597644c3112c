//! The wire format of `proto/croupier/gateway/v1/gateway.proto`: a 4-byte big-endian length,
//! then one protobuf `Frame`. Reading checks the length against the limit before reading the
//! body, decodes, and checks the type and flags; payload helpers inflate gzip (bounded) and
//! build the frames the gateway sends. Both the gateway and the client library use it.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use croupier_proto::gateway::v1::{
    Close, CloseReason, Error as ErrorBody, Frame, FrameFlag, FrameType, Login, LoginOk,
};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::FrameError;

/// Flag bit: the payload is gzip-compressed.
pub const FLAG_GZIP: u32 = FrameFlag::Gzip as u32;
/// Flag bit: the payload is JSON.
pub const FLAG_JSON: u32 = FrameFlag::Json as u32;
/// Every flag bit the protocol defines.
pub const KNOWN_FLAGS: u32 = FLAG_GZIP | FLAG_JSON;
/// Bytes of the length prefix.
pub const HEADER_BYTES: usize = 4;
/// The default frame limit (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Appends `frame`, length-prefixed, to `out`.
pub fn encode_into(frame: &Frame, out: &mut BytesMut) {
    let len = frame.encoded_len();
    out.reserve(HEADER_BYTES + len);
    out.put_u32(len as u32);
    // Cannot fail: the buffer was reserved above.
    let _ = frame.encode(out);
}

/// `frame`, length-prefixed.
pub fn encode(frame: &Frame) -> Bytes {
    let mut out = BytesMut::new();
    encode_into(frame, &mut out);
    out.freeze()
}

/// Decodes a frame body (without its length prefix) and checks its type and flags.
pub fn decode(body: Bytes) -> Result<Frame, FrameError> {
    let frame = Frame::decode(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    match FrameType::try_from(frame.r#type) {
        Ok(FrameType::Unspecified) | Err(_) => return Err(FrameError::UnknownType(frame.r#type)),
        Ok(_) => {}
    }
    if frame.flags & !KNOWN_FLAGS != 0 {
        return Err(FrameError::UnknownFlags(frame.flags & !KNOWN_FLAGS));
    }
    Ok(frame)
}

/// Reads one frame. `Ok(None)` is a clean end of stream before a new frame began; a stream that
/// ends inside a frame is an error. The length is checked against `max` before the body is read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, limit: max });
    }
    let mut body = BytesMut::zeroed(len);
    r.read_exact(&mut body).await?;
    decode(body.freeze()).map(Some)
}

/// The payload of `frame` as the application sees it: inflated when gzip is set (at most `max`
/// bytes after inflation).
pub fn payload(frame: &Frame, max: usize) -> Result<Bytes, FrameError> {
    if frame.flags & FLAG_GZIP == 0 {
        return Ok(frame.payload.clone());
    }
    inflate(&frame.payload, max)
}

/// Inflates a gzip payload, refusing one that grows past `max` bytes.
pub fn inflate(data: &[u8], max: usize) -> Result<Bytes, FrameError> {
    let mut out = Vec::new();
    let mut dec = flate2::read::GzDecoder::new(data).take(max as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| FrameError::Gzip(e.to_string()))?;
    if out.len() > max {
        return Err(FrameError::Gzip(format!(
            "it inflates past the limit of {max} bytes"
        )));
    }
    Ok(out.into())
}

/// Compresses a payload with gzip.
pub fn deflate(data: &[u8]) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default().into()
}

/// A LOGIN frame.
pub fn login(token: &str, session_id: &str, ack_seq: u64, client: &str) -> Frame {
    Frame {
        r#type: FrameType::Login as i32,
        login: Some(Login {
            token: token.into(),
            session_id: session_id.into(),
            ack_seq,
            client: client.into(),
        }),
        ..Default::default()
    }
}

/// A LOGIN_OK frame.
pub fn login_ok(ok: LoginOk) -> Frame {
    Frame {
        r#type: FrameType::LoginOk as i32,
        login_ok: Some(ok),
        ..Default::default()
    }
}

/// A frame of `kind` with a route, a seq, flags and a payload (REQUEST, RESPONSE, PUSH).
pub fn message(kind: FrameType, msg_id: u32, seq: u64, flags: u32, payload: Bytes) -> Frame {
    Frame {
        r#type: kind as i32,
        msg_id,
        seq,
        flags,
        payload,
        ..Default::default()
    }
}

/// A frame of `kind` that carries only a seq (ACK, PING, PONG).
pub fn bare(kind: FrameType, seq: u64) -> Frame {
    Frame {
        r#type: kind as i32,
        seq,
        ..Default::default()
    }
}

/// An ERROR frame answering the request `seq` (with its `msg_id`).
pub fn error(msg_id: u32, seq: u64, code: &str, message: impl Into<String>) -> Frame {
    let retryable = matches!(code, "UNAVAILABLE" | "RESOURCE_EXHAUSTED");
    Frame {
        r#type: FrameType::Error as i32,
        msg_id,
        seq,
        error: Some(ErrorBody {
            code: code.into(),
            message: message.into(),
            retryable,
        }),
        ..Default::default()
    }
}

/// A CLOSE frame.
pub fn close(reason: CloseReason, message: impl Into<String>) -> Frame {
    Frame {
        r#type: FrameType::Close as i32,
        close: Some(Close {
            reason: reason as i32,
            message: message.into(),
        }),
        ..Default::default()
    }
}

/// A GOAWAY frame.
pub fn goaway(message: impl Into<String>) -> Frame {
    Frame {
        r#type: FrameType::Goaway as i32,
        close: Some(Close {
            reason: CloseReason::Shutdown as i32,
            message: message.into(),
        }),
        ..Default::default()
    }
}

/// The type of a frame already checked by [`decode`].
pub fn kind(frame: &Frame) -> FrameType {
    FrameType::try_from(frame.r#type).unwrap_or(FrameType::Unspecified)
}

/// Checks that request seqs rise on a connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqCheck {
    last: u64,
}

impl SeqCheck {
    /// Accepts `seq` when it is above every seq accepted before (and above 0).
    pub fn accept(&mut self, seq: u64) -> Result<(), FrameError> {
        if seq <= self.last {
            return Err(FrameError::OutOfOrder {
                seq,
                previous: self.last,
            });
        }
        self.last = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(bytes: &[u8], max: usize) -> Vec<Result<Option<Frame>, FrameError>> {
        let mut r = bytes;
        let mut out = Vec::new();
        loop {
            let f = read_frame(&mut r, max).await;
            let stop = !matches!(f, Ok(Some(_)));
            out.push(f);
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn frames_round_trip_in_order() {
        let mut buf = BytesMut::new();
        let req = message(
            FrameType::Request,
            7,
            1,
            FLAG_JSON,
            Bytes::from("{\"a\":1}"),
        );
        encode_into(&login("tok", "s1", 4, "test"), &mut buf);
        encode_into(&req, &mut buf);
        encode_into(&bare(FrameType::Ping, 9), &mut buf);
        let got = read_all(&buf, 1024).await;
        assert_eq!(got.len(), 4, "three frames then a clean end");
        let l = got[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(kind(l), FrameType::Login);
        assert_eq!(l.login.as_ref().unwrap().ack_seq, 4);
        assert_eq!(got[1].as_ref().unwrap().as_ref().unwrap(), &req);
        assert_eq!(
            got[2].as_ref().unwrap().as_ref().unwrap().seq,
            9,
            "ping seq"
        );
        assert!(matches!(got[3], Ok(None)));
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_reading_the_body() {
        let mut bytes = (2_000_000u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"short");
        let got = read_all(&bytes, DEFAULT_MAX_FRAME_BYTES).await;
        match &got[0] {
            Err(e @ FrameError::TooLarge { len, limit }) => {
                assert_eq!((*len, *limit), (2_000_000, DEFAULT_MAX_FRAME_BYTES));
                assert_eq!(e.close_reason(), CloseReason::FrameTooLarge);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn malformed_frames_are_errors() {
        // Zero length.
        let got = read_all(&[0, 0, 0, 0], 1024).await;
        assert!(matches!(got[0], Err(FrameError::Empty)));
        // Garbage body (an invalid wire type).
        let got = read_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff], 1024).await;
        assert!(matches!(got[0], Err(FrameError::Decode(_))), "{got:?}");
        // Cut in the middle of the body.
        let full = encode(&bare(FrameType::Ping, 1));
        let got = read_all(&full[..full.len() - 1], 1024).await;
        assert!(matches!(got[0], Err(FrameError::Io(_))), "{got:?}");
        // Cut in the middle of the header.
        let got = read_all(&[0, 0], 1024).await;
        assert!(matches!(got[0], Err(FrameError::Io(_))), "{got:?}");
        // No type, an unknown type, unknown flags.
        let untyped = Frame {
            msg_id: 1,
            ..Default::default()
        };
        let got = read_all(&encode(&untyped), 1024).await;
        assert!(matches!(got[0], Err(FrameError::UnknownType(0))), "{got:?}");
        let f = Frame {
            r#type: 99,
            ..Default::default()
        };
        assert!(matches!(
            read_all(&encode(&f), 1024).await[0],
            Err(FrameError::UnknownType(99))
        ));
        let f = message(FrameType::Request, 1, 1, 0x10, Bytes::new());
        assert!(matches!(
            read_all(&encode(&f), 1024).await[0],
            Err(FrameError::UnknownFlags(0x10))
        ));
    }

    #[test]
    fn out_of_order_request_seqs_are_refused() {
        let mut c = SeqCheck::default();
        assert!(c.accept(0).is_err(), "seq starts at 1");
        c.accept(1).unwrap();
        c.accept(2).unwrap();
        c.accept(10).unwrap();
        let e = c.accept(10).unwrap_err();
        assert!(matches!(
            e,
            FrameError::OutOfOrder {
                seq: 10,
                previous: 10
            }
        ));
        assert!(c.accept(3).is_err());
        c.accept(11).unwrap();
    }

    #[test]
    fn gzip_payloads_inflate_within_the_limit() {
        let data = vec![b'x'; 10_000];
        let z = deflate(&data);
        assert!(z.len() < 200, "compresses: {}", z.len());
        let f = message(FrameType::Request, 1, 1, FLAG_GZIP | FLAG_JSON, z.clone());
        assert_eq!(payload(&f, 10_000).unwrap(), Bytes::from(data));
        // A bomb: inflates past the limit.
        let e = payload(&f, 9_999).unwrap_err();
        assert!(e.to_string().contains("past the limit"), "{e}");
        // Not gzip at all.
        let f = message(FrameType::Request, 1, 1, FLAG_GZIP, Bytes::from("plain"));
        assert!(matches!(payload(&f, 100), Err(FrameError::Gzip(_))));
        // Without the flag the payload is as sent.
        let f = message(FrameType::Request, 1, 1, 0, Bytes::from("plain"));
        assert_eq!(payload(&f, 100).unwrap(), Bytes::from("plain"));
    }
}
