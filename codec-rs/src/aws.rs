//! AWS IoT Secure Tunneling (protocol V1-V3) relay decoder: client->server WebSocket binary
//! frames in; the checked tunnel messages out, unchanged, re-framed as server binary frames.
//!
//! The WebSocket payload bytes form a stream of tunnel messages, each a 2-byte big-endian length
//! and a protobuf `Message` (see relay/aws_messages.py for the schema). The rules and close codes
//! are in docs/codec.md; the Python twin is relay/codec/_py/aws.py.

use crate::close::Violation;
use crate::envelope::SOURCE;
use crate::frame::{client_frames, unmask_into, with_pending, write_header, DataFrames, Out, OP_BINARY, OP_TEXT};

/// Largest WebSocket frame payload accepted, and largest one written: the limit of the
/// `aws.iot.securetunneling-3.0` protocol (2 x (64 KiB + 2)), which the AWS local proxy uses as
/// its frame size.
pub const FRAME_CAP: usize = 131_076;
/// The most payload a tunnel message may carry (63 KiB), the default `max_payload`.
pub const MAX_PAYLOAD: usize = 64_512;

pub const TYPE_UNKNOWN: i32 = 0;
pub const TYPE_DATA: i32 = 1;
pub const TYPE_STREAM_START: i32 = 2;
pub const TYPE_STREAM_RESET: i32 = 3;
pub const TYPE_SESSION_RESET: i32 = 4;
pub const TYPE_SERVICE_IDS: i32 = 5;
pub const TYPE_CONNECTION_START: i32 = 6;
pub const TYPE_CONNECTION_RESET: i32 = 7;

pub use crate::close::{
    CLOSE_INVALID_PAYLOAD, CLOSE_NORMAL, CLOSE_NOT_ALLOWED, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA,
};
pub const CLOSE_INVALID_MESSAGE: u16 = 4400;

pub const TEXT_REFUSED: &str = "text messages are not supported: this endpoint speaks the binary AWS tunnel protocol";

// ---------------------------------------------------------------- protobuf

/// Why a tunnel message does not parse (the text is the one of relay.aws_messages.decode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    TruncatedVarint,
    VarintTooLong,
    FieldNumber(u64),
    WireType(u8),
    WrongWireType(u8, u64),
    Truncated(u64),
    Utf8(u64),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::TruncatedVarint => write!(f, "truncated varint"),
            ParseError::VarintTooLong => write!(f, "varint exceeds 64 bits"),
            ParseError::FieldNumber(n) => write!(f, "invalid field number {n}"),
            ParseError::WireType(w) => write!(f, "invalid wire type {w}"),
            ParseError::WrongWireType(w, n) => write!(f, "wrong wire type {w} for field {n}"),
            ParseError::Truncated(n) => write!(f, "truncated field {n}"),
            ParseError::Utf8(n) => write!(f, "field {n} is not valid UTF-8"),
        }
    }
}

/// The fields of a tunnel message the relay looks at (singular fields: the last one wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub typ: i32,
    pub stream_id: i32,
    pub ignorable: bool,
    pub payload_len: usize,
    pub service_id: &'a [u8],
    pub connection_id: u32,
}

#[inline]
fn read_varint(b: &[u8], pos: &mut usize) -> Result<u64, ParseError> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&byte) = b.get(*pos + i) else {
            return Err(ParseError::TruncatedVarint);
        };
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i == 9 && byte > 1 {
                return Err(ParseError::VarintTooLong);
            }
            *pos += i + 1;
            return Ok(value);
        }
    }
    Err(ParseError::VarintTooLong)
}

const MAX_FIELD: u64 = (1 << 29) - 1;

/// Parse one protobuf `Message` (no length prefix) with the rules of relay.aws_messages.decode.
pub fn parse(b: &[u8]) -> Result<Fields<'_>, ParseError> {
    let mut f = Fields::default();
    let mut pos = 0usize;
    while pos < b.len() {
        let tag = read_varint(b, &mut pos)?;
        let (number, wire) = (tag >> 3, (tag & 7) as u8);
        if number == 0 || number > MAX_FIELD {
            return Err(ParseError::FieldNumber(number));
        }
        if !matches!(wire, 0 | 1 | 2 | 5) {
            return Err(ParseError::WireType(wire));
        }
        let expected = match number {
            1 | 2 | 3 | 7 => Some(0),
            4..=6 => Some(2),
            _ => None,
        };
        if expected.is_some_and(|e| e != wire) {
            return Err(ParseError::WrongWireType(wire, number));
        }
        match wire {
            0 => {
                let v = read_varint(b, &mut pos)?;
                match number {
                    1 => f.typ = v as u32 as i32,
                    2 => f.stream_id = v as u32 as i32,
                    3 => f.ignorable = v != 0,
                    7 => f.connection_id = v as u32,
                    _ => {}
                }
            }
            2 => {
                let len = read_varint(b, &mut pos)?;
                if len > (b.len() - pos) as u64 {
                    return Err(ParseError::Truncated(number));
                }
                let chunk = &b[pos..pos + len as usize];
                pos += len as usize;
                match number {
                    4 => f.payload_len = chunk.len(),
                    5 | 6 => {
                        if std::str::from_utf8(chunk).is_err() {
                            return Err(ParseError::Utf8(number));
                        }
                        if number == 5 {
                            f.service_id = chunk;
                        }
                    }
                    _ => {}
                }
            }
            _ => {
                let size = if wire == 1 { 8 } else { 4 };
                if size > b.len() - pos {
                    return Err(ParseError::Truncated(number));
                }
                pos += size;
            }
        }
    }
    Ok(f)
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v > 0x7f {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Append the framed (2-byte length) STREAM_RESET answering `f`, as relay.aws_messages.frame
/// encodes it. Returns false (nothing appended) if it would not fit the 2-byte length.
pub fn put_stream_reset(out: &mut Vec<u8>, f: &Fields<'_>) -> bool {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0x08, TYPE_STREAM_RESET as u8]);
    if f.stream_id != 0 {
        out.push(0x10);
        put_varint(out, f.stream_id as i64 as u64);
    }
    if !f.service_id.is_empty() {
        out.push(0x2a);
        put_varint(out, f.service_id.len() as u64);
        out.extend_from_slice(f.service_id);
    }
    if f.connection_id != 0 {
        out.push(0x38);
        put_varint(out, u64::from(f.connection_id));
    }
    let n = out.len() - start - 2;
    if n > 0xffff {
        out.truncate(start);
        return false;
    }
    out[start..start + 2].copy_from_slice(&(n as u16).to_be_bytes());
    true
}

fn type_name(t: i32) -> &'static str {
    match t {
        TYPE_DATA => "DATA",
        TYPE_STREAM_START => "STREAM_START",
        TYPE_STREAM_RESET => "STREAM_RESET",
        TYPE_SESSION_RESET => "SESSION_RESET",
        TYPE_SERVICE_IDS => "SERVICE_IDS",
        TYPE_CONNECTION_START => "CONNECTION_START",
        TYPE_CONNECTION_RESET => "CONNECTION_RESET",
        _ => "UNKNOWN",
    }
}

// ---------------------------------------------------------------- the decoder

/// Greedy packing of whole tunnel messages (`spans` into `src`) into binary frames of at most
/// FRAME_CAP payload bytes each; `emit(header_or_bytes)` receives the output pieces in order.
fn pack(src: &[u8], spans: &[(usize, usize)], mut emit: impl FnMut(&[u8])) {
    let mut i = 0;
    while i < spans.len() {
        let mut total = 0usize;
        let mut j = i;
        while j < spans.len() && total + spans[j].1 <= FRAME_CAP {
            total += spans[j].1;
            j += 1;
        }
        let mut h = Vec::with_capacity(10);
        write_header(&mut h, OP_BINARY, total);
        emit(&h);
        for &(s, n) in &spans[i..j] {
            emit(&src[s..s + n]);
        }
        i = j;
    }
}

/// The size of `pack`'s output.
fn packed_len(spans: &[(usize, usize)]) -> usize {
    let mut out = 0;
    let mut i = 0;
    while i < spans.len() {
        let mut total = 0usize;
        while i < spans.len() && total + spans[i].1 <= FRAME_CAP {
            total += spans[i].1;
            i += 1;
        }
        out += crate::frame::header_len(total) + total;
    }
    out
}

#[derive(Debug, Clone)]
pub struct AwsDecoder {
    pub side: u8,
    pub services: Vec<Box<[u8]>>,
    pub max_payload: usize,
    pub peer_connected: bool,
    closed: bool,
    messages: u64,
    bytes: u64,
    /// raw bytes of an incomplete WebSocket frame
    pending: Vec<u8>,
    /// inside a fragmented binary message
    in_message: bool,
    /// unmasked tunnel-message bytes: this read's, after those of an incomplete message
    stream: Vec<u8>,
    /// start in `stream` of the first message not yet parsed
    scan: usize,
    /// (start, len) in `stream` of the messages of this read to forward
    spans: Vec<(usize, usize)>,
    /// framed STREAM_RESET answers not yet written to `to_sender`, and their (start, len)
    replies: Vec<u8>,
    reply_spans: Vec<(usize, usize)>,
    /// whether to record `streams` (the relay's bindings set it when given an `on_stream`)
    pub track_streams: bool,
    /// the stream-management messages forwarded by the last `feed`, and the STREAM_RESETs it
    /// answered, in order, when tracked
    pub streams: Vec<StreamEvent>,
    /// per service id, the stream the relay last told this end is over (an answer, or
    /// `reset_sent`): its other messages are dropped without another answer while the peer is away
    answered: Vec<(Box<[u8]>, i32)>,
}

/// At most this many services remembered in `answered` (a tunnel has 1-3).
const ANSWERED_CAP: usize = 8;

/// A forwarded STREAM_START, STREAM_RESET, CONNECTION_START or CONNECTION_RESET: what the
/// relay needs to know which streams are open on a tunnel (docs/aws.md, "What the relay sends").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    pub typ: i32,
    pub service_id: Box<str>,
    pub stream_id: i32,
    pub connection_id: u32,
    /// false: a forwarded message; true: the STREAM_RESET the decoder answered (peer away)
    pub answered: bool,
}

impl AwsDecoder {
    pub fn new(side: u8, services: Vec<String>, max_payload: usize) -> Self {
        AwsDecoder {
            side,
            services: services.into_iter().map(|s| s.into_bytes().into_boxed_slice()).collect(),
            max_payload,
            peer_connected: false,
            closed: false,
            messages: 0,
            bytes: 0,
            pending: Vec::new(),
            in_message: false,
            stream: Vec::new(),
            scan: 0,
            spans: Vec::new(),
            replies: Vec::new(),
            reply_spans: Vec::new(),
            track_streams: false,
            streams: Vec::new(),
            answered: Vec::new(),
        }
    }

    /// The relay told this end that its stream `stream_id` of `service_id` is over: while the
    /// peer is away, its further messages of that stream are dropped, not answered again.
    pub fn reset_sent(&mut self, service_id: &[u8], stream_id: i32) {
        remember(&mut self.answered, service_id, stream_id);
    }

    fn was_answered(&self, service_id: &[u8], stream_id: i32) -> bool {
        self.answered.iter().any(|(s, id)| **s == *service_id && *id == stream_id)
    }

    pub fn closed(&self) -> bool {
        self.closed
    }
    pub fn messages(&self) -> u64 {
        self.messages
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A new connection replaces the old one: drop partial state, keep the counters.
    pub fn reset(&mut self) {
        self.pending = Vec::new();
        self.in_message = false;
        self.stream = Vec::new();
        self.scan = 0;
        self.closed = false;
        self.answered.clear();
    }

    /// Upper bound of what one `feed(data)` appends to `to_peer`: the forwarded bytes come from
    /// `data` and the buffered bytes; each frame but the last carries more than
    /// FRAME_CAP - 65537 bytes, and a header is at most 10 bytes.
    pub fn to_peer_bound(&self, data_len: usize) -> usize {
        let n = data_len + self.pending.len() + self.stream.len();
        n + 10 * (n / (FRAME_CAP - 65_537) + 2)
    }

    /// Feed one read's bytes: accepted tunnel messages go to `to_peer` (server binary frames),
    /// pongs and STREAM_RESET answers to `to_sender`. Returns the close to send, or `None`.
    pub fn feed<O: Out>(&mut self, data: &[u8], to_peer: &mut O, to_sender: &mut Vec<u8>) -> Option<Violation> {
        self.streams.clear();
        if self.closed || data.is_empty() {
            return None;
        }
        let result = with_pending(self, |d| &mut d.pending, data, |d, buf| d.process(buf, to_sender));
        // forwarded messages, packed into frames
        if !self.spans.is_empty() {
            let stream = &self.stream;
            pack(stream, &self.spans, |piece| to_peer.put(piece));
            self.spans.clear();
        }
        self.flush_replies(to_sender);
        if result.is_some() {
            self.closed = true;
            self.pending = Vec::new();
            self.in_message = false;
            self.stream = Vec::new();
            self.scan = 0;
        } else if self.scan > 0 {
            self.stream.drain(..self.scan);
            self.scan = 0;
            if self.stream.capacity() > 4 * FRAME_CAP && self.stream.len() < FRAME_CAP {
                self.stream.shrink_to(FRAME_CAP);
            }
        }
        result
    }

    fn flush_replies(&mut self, to_sender: &mut Vec<u8>) {
        if self.reply_spans.is_empty() {
            return;
        }
        to_sender.reserve(packed_len(&self.reply_spans));
        pack(&self.replies, &self.reply_spans, |piece| to_sender.extend_from_slice(piece));
        self.replies.clear();
        self.reply_spans.clear();
    }

    /// Parse complete frames from `buf`; returns (bytes consumed, violation).
    fn process(&mut self, buf: &[u8], to_sender: &mut Vec<u8>) -> (usize, Option<Violation>) {
        client_frames(self, buf, to_sender)
    }

    /// Check every complete tunnel message in `stream[scan..]`.
    #[inline] // one caller: inlined into the frame loop, as before it was shared
    fn messages_in_stream(&mut self) -> Result<(), Violation> {
        loop {
            let rest = &self.stream[self.scan..];
            if rest.len() < 2 {
                return Ok(());
            }
            let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            if n == 0 {
                return Err(Violation::new(CLOSE_INVALID_MESSAGE, "empty tunnel message"));
            }
            if rest.len() < 2 + n {
                return Ok(());
            }
            let start = self.scan;
            self.scan += 2 + n;
            let f = match parse(&self.stream[start + 2..start + 2 + n]) {
                Ok(f) => f,
                Err(e) => return Err(Violation::new(CLOSE_INVALID_MESSAGE, format!("invalid tunnel message: {e}"))),
            };
            if f.payload_len > self.max_payload {
                return Err(Violation::new(CLOSE_TOO_BIG, format!("payload exceeds {} bytes", self.max_payload)));
            }
            let t = f.typ;
            if !(TYPE_DATA..=TYPE_CONNECTION_RESET).contains(&t) {
                if !f.ignorable {
                    return Err(Violation::new(CLOSE_INVALID_MESSAGE, format!("unknown message type {t}")));
                }
            } else {
                if t == TYPE_SERVICE_IDS || t == TYPE_SESSION_RESET {
                    return Err(Violation::new(CLOSE_NOT_ALLOWED, format!("{} is only sent by the relay", type_name(t))));
                }
                if (t == TYPE_STREAM_START || t == TYPE_CONNECTION_START) && self.side != SOURCE {
                    return Err(Violation::new(CLOSE_NOT_ALLOWED, format!("{} is only sent by the source", type_name(t))));
                }
                if !self.services.is_empty()
                    && !f.service_id.is_empty()
                    && !self.services.iter().any(|s| **s == *f.service_id)
                {
                    let sid = String::from_utf8_lossy(f.service_id); // valid UTF-8: checked by parse
                    return Err(Violation::new(
                        CLOSE_INVALID_MESSAGE,
                        format!("serviceId '{sid}' is not one of the tunnel's services"),
                    ));
                }
                if self.peer_connected {
                    self.spans.push((start, 2 + n));
                    if self.track_streams && t != TYPE_DATA {
                        note_stream(&mut self.streams, &f);
                    }
                } else if matches!(t, TYPE_DATA | TYPE_STREAM_START | TYPE_CONNECTION_START)
                    && !self.was_answered(f.service_id, f.stream_id)
                {
                    // one answer per stream: the sender ends the whole stream on it
                    let at = self.replies.len();
                    if put_stream_reset(&mut self.replies, &f) {
                        self.reply_spans.push((at, self.replies.len() - at));
                        remember(&mut self.answered, f.service_id, f.stream_id);
                        if self.track_streams {
                            note_answer(&mut self.streams, &f);
                        }
                    }
                }
            }
            self.messages += 1;
            self.bytes += f.payload_len as u64;
        }
    }
}

/// Out of line: only stream-management messages (a few per TCP connection) get here.
#[cold]
fn note_stream(streams: &mut Vec<StreamEvent>, f: &Fields<'_>) {
    if matches!(f.typ, TYPE_STREAM_START | TYPE_STREAM_RESET | TYPE_CONNECTION_START | TYPE_CONNECTION_RESET) {
        // valid UTF-8: checked by parse
        let service_id = String::from_utf8_lossy(f.service_id).into_owned().into_boxed_str();
        streams.push(StreamEvent {
            typ: f.typ,
            service_id,
            stream_id: f.stream_id,
            connection_id: f.connection_id,
            answered: false,
        });
    }
}

fn remember(answered: &mut Vec<(Box<[u8]>, i32)>, service_id: &[u8], stream_id: i32) {
    if let Some(entry) = answered.iter_mut().find(|(s, _)| **s == *service_id) {
        entry.1 = stream_id;
        return;
    }
    if answered.len() >= ANSWERED_CAP {
        answered.remove(0);
    }
    answered.push((service_id.into(), stream_id));
}

#[cold]
fn note_answer(streams: &mut Vec<StreamEvent>, f: &Fields<'_>) {
    let service_id = String::from_utf8_lossy(f.service_id).into_owned().into_boxed_str();
    streams.push(StreamEvent {
        typ: TYPE_STREAM_RESET,
        service_id,
        stream_id: f.stream_id,
        connection_id: f.connection_id,
        answered: true,
    });
}

/// The binary-message half of the frame loop (`frame::client_frames`): the data frames' payloads
/// form one stream of tunnel messages, whatever the fragmentation.
impl DataFrames for AwsDecoder {
    #[inline]
    fn in_message(&mut self) -> &mut bool {
        &mut self.in_message
    }

    #[inline]
    fn check_data(&self, op: u8, len: u64) -> Result<(), Violation> {
        if op == OP_TEXT {
            return Err(Violation::new(CLOSE_UNSUPPORTED_DATA, TEXT_REFUSED));
        }
        if len > FRAME_CAP as u64 {
            return Err(Violation::new(CLOSE_TOO_BIG, format!("frame exceeds {FRAME_CAP} bytes")));
        }
        Ok(())
    }

    /// Queued STREAM_RESET answers go out before the pong.
    #[inline]
    fn before_pong(&mut self, to_sender: &mut Vec<u8>) {
        self.flush_replies(to_sender);
    }

    #[inline]
    fn data(&mut self, _op: u8, _fin: bool, payload: &[u8], mask: [u8; 4], _to_sender: &mut Vec<u8>)
        -> Result<(), Violation> {
        unmask_into(&mut self.stream, payload, mask);
        self.messages_in_stream()
    }
}

/// One unmasked FIN binary frame.
pub fn encode_binary(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + payload.len());
    write_header(&mut out, OP_BINARY, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Tunnel messages for the decoder's tests (and the fuzz targets, with the `test-util` feature).
#[cfg(any(test, feature = "test-util"))]
pub mod test_util {
    use super::put_varint;

    /// A framed message: type, stream id, payload, service id, connection id.
    pub fn msg(t: u8, stream: u8, payload: &[u8], sid: &str, conn: u8) -> Vec<u8> {
        let mut m = vec![0x08, t];
        if stream != 0 {
            m.extend_from_slice(&[0x10, stream]);
        }
        if !payload.is_empty() {
            m.push(0x22);
            put_varint(&mut m, payload.len() as u64);
            m.extend_from_slice(payload);
        }
        if !sid.is_empty() {
            m.extend_from_slice(&[0x2a, sid.len() as u8]);
            m.extend_from_slice(sid.as_bytes());
        }
        if conn != 0 {
            m.extend_from_slice(&[0x38, conn]);
        }
        let mut out = (m.len() as u16).to_be_bytes().to_vec();
        out.extend(m);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::msg;
    use super::*;
    use crate::envelope::DEVICE;
    use crate::frame::test_util::client_frame;
    use crate::frame::{OP_CONT, OP_PING};


    fn dec(side: u8, peer: bool) -> AwsDecoder {
        let mut d = AwsDecoder::new(side, vec!["SSH".into(), "HTTP".into()], MAX_PAYLOAD);
        d.peer_connected = peer;
        d
    }

    fn feed(d: &mut AwsDecoder, data: &[u8]) -> (Vec<u8>, Vec<u8>, Option<(u16, String)>) {
        let (mut p, mut s) = (Vec::new(), Vec::new());
        let c = d.feed(data, &mut p, &mut s);
        (p, s, c.map(|v| (v.code, v.reason)))
    }

    #[test]
    fn parse_fields_and_errors() {
        let m = msg(2, 7, b"", "SSH", 3);
        let f = parse(&m[2..]).unwrap();
        assert_eq!((f.typ, f.stream_id, f.service_id, f.connection_id), (2, 7, &b"SSH"[..], 3));
        let neg = [0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(parse(&neg).unwrap().stream_id, -1);
        let cases: Vec<(&[u8], &str)> = vec![
            (b"\x08", "truncated varint"),
            (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02", "varint exceeds 64 bits"),
            (b"\x00", "invalid field number 0"),
            (b"\x0b", "invalid wire type 3"),
            (b"\x0a\x00", "wrong wire type 2 for field 1"),
            (b"\x22\x05ab", "truncated field 4"),
            (b"\x45\x00", "truncated field 8"),
            (b"\x2a\x01\xff", "field 5 is not valid UTF-8"),
        ];
        for (b, want) in cases {
            assert_eq!(parse(b).unwrap_err().to_string(), want);
        }
        assert_eq!(parse(b"\x08\x01\x42\x01z\x41\0\0\0\0\0\0\0\0").unwrap().typ, 1);
    }

    #[test]
    fn forwards_unchanged_in_one_frame() {
        let mut d = dec(SOURCE, true);
        let a = msg(2, 1, b"", "SSH", 1);
        let b = msg(1, 1, b"hello", "SSH", 1);
        let mut stream = a.clone();
        stream.extend(&b);
        let (p, s, c) = feed(&mut d, &client_frame(true, OP_BINARY, &stream));
        assert_eq!((p, s, c), (encode_binary(&stream), vec![], None));
        assert_eq!((d.messages(), d.bytes()), (2, 5));
    }

    #[test]
    fn split_at_every_byte() {
        let a = msg(1, 1, &[7u8; 300], "SSH", 1);
        let mut data = client_frame(false, OP_BINARY, &a[..100]);
        data.extend(client_frame(true, OP_PING, b"hi"));
        data.extend(client_frame(true, OP_CONT, &a[100..]));
        for cut in 0..=data.len() {
            let mut d = dec(DEVICE, true);
            let (p1, s1, c1) = feed(&mut d, &data[..cut]);
            let (p2, s2, c2) = feed(&mut d, &data[cut..]);
            assert_eq!((c1, c2), (None, None));
            assert_eq!([p1, p2].concat(), encode_binary(&a), "cut {cut}");
            assert_eq!([s1, s2].concat(), b"\x8a\x02hi".to_vec());
        }
    }

    #[test]
    fn packing_respects_the_frame_cap() {
        let big = msg(1, 1, &[1u8; 60_000], "", 0);
        let stream: Vec<u8> = (0..5).flat_map(|_| big.clone()).collect();
        let mut data = Vec::new();
        for chunk in stream.chunks(FRAME_CAP) {
            data.extend(client_frame(true, OP_BINARY, chunk));
        }
        let mut d = dec(SOURCE, true);
        let (p, _, c) = feed(&mut d, &data);
        assert_eq!(c, None);
        let two: Vec<u8> = [big.clone(), big.clone()].concat();
        let want = [encode_binary(&two), encode_binary(&two), encode_binary(&big)].concat();
        assert_eq!(p, want);
        assert!(p.len() <= d.to_peer_bound(0) + data.len());
    }

    #[test]
    fn rules() {
        let cases: Vec<(u8, Vec<u8>, u16, &str)> = vec![
            (SOURCE, client_frame(true, OP_TEXT, b"{}"), 1003, TEXT_REFUSED),
            (SOURCE, client_frame(true, OP_BINARY, &[0, 0]), 4400, "empty tunnel message"),
            (SOURCE, client_frame(true, OP_BINARY, &[0, 1, 0x0b]), 4400, "invalid tunnel message: invalid wire type 3"),
            (SOURCE, client_frame(true, OP_BINARY, &msg(0, 1, b"", "", 0)), 4400, "unknown message type 0"),
            (SOURCE, client_frame(true, OP_BINARY, &msg(9, 1, b"", "", 0)), 4400, "unknown message type 9"),
            (SOURCE, client_frame(true, OP_BINARY, &msg(4, 0, b"", "", 0)), 4403, "SESSION_RESET is only sent by the relay"),
            (DEVICE, client_frame(true, OP_BINARY, &msg(5, 0, b"", "", 0)), 4403, "SERVICE_IDS is only sent by the relay"),
            (DEVICE, client_frame(true, OP_BINARY, &msg(2, 1, b"", "", 0)), 4403, "STREAM_START is only sent by the source"),
            (DEVICE, client_frame(true, OP_BINARY, &msg(6, 1, b"", "", 0)), 4403, "CONNECTION_START is only sent by the source"),
            (SOURCE, client_frame(true, OP_BINARY, &msg(1, 1, b"", "RDP", 0)), 4400, "serviceId 'RDP' is not one of the tunnel's services"),
            (SOURCE, client_frame(true, OP_BINARY, &msg(1, 1, &[0; 64_513], "", 0)), 1009, "payload exceeds 64512 bytes"),
        ];
        for (side, data, code, reason) in cases {
            let mut d = dec(side, true);
            let (p, _, c) = feed(&mut d, &data);
            assert!(p.is_empty());
            assert_eq!(c, Some((code, reason.to_owned())));
            assert!(d.closed());
        }
        let mut d = dec(SOURCE, true);
        let ok = msg(1, 1, &[0; 64_512], "", 0);
        assert_eq!(feed(&mut d, &client_frame(true, OP_BINARY, &ok)).2, None);
        // the frame limit, from the header alone
        let mut d = dec(SOURCE, true);
        let f = client_frame(true, OP_BINARY, &vec![0; FRAME_CAP + 1]);
        assert_eq!(feed(&mut d, &f[..14]).2, Some((1009, "frame exceeds 131076 bytes".into())));
    }

    #[test]
    fn ignorable_unknown_types_are_dropped() {
        let mut d = dec(SOURCE, true);
        let mut unknown = vec![0, 4, 0x08, 0x09, 0x18, 0x01];
        unknown.extend(msg(1, 1, b"x", "", 0));
        let (p, _, c) = feed(&mut d, &client_frame(true, OP_BINARY, &unknown));
        assert_eq!((p, c), (encode_binary(&msg(1, 1, b"x", "", 0)), None));
    }

    #[test]
    fn peer_absent() {
        let mut d = dec(SOURCE, false);
        let mut stream = msg(2, 5, b"", "SSH", 1);
        stream.extend(msg(1, 5, b"data", "SSH", 1));
        stream.extend(msg(3, 5, b"", "SSH", 0));
        stream.extend(msg(7, 5, b"", "SSH", 2));
        let (p, s, c) = feed(&mut d, &client_frame(true, OP_BINARY, &stream));
        let reset = msg(3, 5, b"", "SSH", 1);
        // one answer per stream: the sender ends the whole stream on it
        assert_eq!((p, s, c), (vec![], encode_binary(&reset), None));
        assert_eq!(d.messages(), 4);
        let again = client_frame(true, OP_BINARY, &msg(1, 5, b"more", "SSH", 1));
        assert_eq!(feed(&mut d, &again), (vec![], vec![], None));
        let other = client_frame(true, OP_BINARY, &msg(1, 6, b"x", "SSH", 1));
        assert_eq!(feed(&mut d, &other).1, encode_binary(&msg(3, 6, b"", "SSH", 1)));
        d.reset_sent(b"HTTP", 2); // told by the relay itself
        assert_eq!(feed(&mut d, &client_frame(true, OP_BINARY, &msg(1, 2, b"x", "HTTP", 1))).1, vec![]);
        d.reset(); // a new connection of this side: its stream ids start again
        assert_eq!(feed(&mut d, &again).1, encode_binary(&reset));
    }

    #[test]
    fn forwarded_stream_messages_are_recorded_when_tracked() {
        let mut stream = msg(2, 5, b"", "SSH", 1);
        stream.extend(msg(1, 5, b"data", "SSH", 1));
        stream.extend(msg(6, 5, b"", "SSH", 2));
        stream.extend(msg(7, 5, b"", "SSH", 2));
        stream.extend(msg(3, 5, b"", "", 0));
        let data = client_frame(true, OP_BINARY, &stream);
        let ev = |typ, sid: &str, stream_id, connection_id| StreamEvent {
            typ,
            service_id: sid.into(),
            stream_id,
            connection_id,
            answered: false,
        };
        let mut d = dec(SOURCE, true);
        feed(&mut d, &data);
        assert!(d.streams.is_empty()); // not tracked
        d.track_streams = true;
        feed(&mut d, &data);
        assert_eq!(d.streams, vec![ev(2, "SSH", 5, 1), ev(6, "SSH", 5, 2), ev(7, "SSH", 5, 2), ev(3, "", 5, 0)]);
        feed(&mut d, &client_frame(true, OP_BINARY, &msg(1, 5, b"x", "SSH", 1)));
        assert!(d.streams.is_empty()); // one feed's worth only
        d.peer_connected = false; // answered, not forwarded: the answer is recorded
        feed(&mut d, &data);
        assert_eq!(d.streams, vec![StreamEvent { answered: true, ..ev(3, "SSH", 5, 1) }]);
    }

    #[test]
    fn before_violation_is_kept() {
        let mut d = dec(SOURCE, true);
        let good = msg(1, 1, b"a", "", 0);
        let mut stream = good.clone();
        stream.extend(msg(4, 0, b"", "", 0));
        stream.extend(msg(1, 1, b"b", "", 0));
        let (p, _, c) = feed(&mut d, &client_frame(true, OP_BINARY, &stream));
        assert_eq!(p, encode_binary(&good));
        assert_eq!(c.unwrap().0, 4403);
        assert_eq!(feed(&mut d, &client_frame(true, OP_BINARY, &good)), (vec![], vec![], None));
    }

    #[test]
    fn stream_reset_encoding() {
        let mut out = Vec::new();
        let f = Fields { typ: 1, stream_id: -1, service_id: b"S", connection_id: 300, ..Default::default() };
        assert!(put_stream_reset(&mut out, &f));
        let mut want = vec![0, 19, 0x08, 0x03, 0x10];
        want.extend([0xff; 9]);
        want.extend([0x01, 0x2a, 0x01, b'S', 0x38, 0xac, 0x02]);
        assert_eq!(out, want);
        let long = vec![b'a'; 65_530];
        let f = Fields { stream_id: -1, service_id: &long, ..Default::default() };
        assert!(!put_stream_reset(&mut out, &f));
        assert_eq!(out.len(), want.len());
    }
}
