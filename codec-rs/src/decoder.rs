//! Per-connection decoder: client->server frames in, server->client frames out.

use crate::close::Violation;
use crate::envelope::{split_output, Outcome, Policy, DEVICE, DEVICE_SPLIT_CEILING};
use crate::json::{self, Doc, Field};
use crate::frame::{
    client_frames, header_len, out_header, unmask_in_place, unmask_into, with_pending, DataFrames, Out, OP_BINARY,
    OP_CONT, OP_TEXT,
};

pub use crate::close::{CLOSE_INVALID_PAYLOAD, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA};

#[derive(Debug, Clone)]
pub struct Decoder {
    pub policy: Policy,
    pub max_message_size: usize,
    pub peer_connected: bool,
    closed: bool,
    messages: u64,
    bytes: u64,
    /// raw bytes of an incomplete frame
    pending: Vec<u8>,
    /// unmasked payload of the fragmented text message in progress
    frag: Vec<u8>,
    in_message: bool,
    /// (start, len) in `to_peer` of the payloads of the noted messages forwarded by the last `feed`
    pub notes: Vec<(usize, usize)>,
}

impl Decoder {
    pub fn new(side: u8, max_message_size: usize, services: Vec<String>, request_id_window: usize) -> Self {
        Decoder {
            policy: Policy::new(side, services, request_id_window),
            max_message_size,
            peer_connected: false,
            closed: false,
            messages: 0,
            bytes: 0,
            pending: Vec::new(),
            frag: Vec::new(),
            in_message: false,
            notes: Vec::new(),
        }
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
    pub fn side(&self) -> u8 {
        self.policy.side
    }

    /// The most a frame header may announce: a device may send bigger output, to be split.
    #[inline]
    pub fn frame_limit(&self) -> usize {
        if self.policy.side == DEVICE {
            self.max_message_size.max(DEVICE_SPLIT_CEILING)
        } else {
            self.max_message_size
        }
    }

    /// Bytes held from earlier reads (partial frame + fragments): with `data.len()` this bounds
    /// the size of what one `feed` can append to `to_peer` (+ 10 for one header).
    pub fn buffered(&self) -> usize {
        self.pending.len() + self.frag.len()
    }

    /// A new connection replaces the old one: drop partial state, keep request-id history and counters.
    pub fn reset(&mut self) {
        self.pending = Vec::new();
        self.frag = Vec::new();
        self.in_message = false;
        self.closed = false;
    }

    /// Feed one read's bytes. Complete accepted messages are appended to `to_peer` as server text
    /// frames, replies (pongs, envelope answers) to `to_sender`. Returns the close frame to send
    /// (after which the decoder is closed), or `None`. Afterwards `notes` holds where in `to_peer`
    /// the payloads of the forwarded messages whose `operation_type` is in `policy.noted` are.
    pub fn feed<O: Out>(&mut self, data: &[u8], to_peer: &mut O, to_sender: &mut Vec<u8>) -> Option<Violation> {
        self.notes.clear();
        if self.closed {
            return None;
        }
        let result = with_pending(self, |d| &mut d.pending, data, |d, buf| d.run(buf, to_peer, to_sender));
        if result.is_some() {
            self.closed = true;
            self.pending = Vec::new();
            self.frag = Vec::new();
            self.in_message = false;
        }
        result
    }

    /// `process`, compiled twice: without notes (the hot path, exactly as before notes existed)
    /// and with them; the choice is made once per read.
    fn run<O: Out>(&mut self, buf: &[u8], to_peer: &mut O, to_sender: &mut Vec<u8>) -> (usize, Option<Violation>) {
        if self.policy.noted.is_empty() {
            self.process::<O, false>(buf, to_peer, to_sender)
        } else {
            self.process::<O, true>(buf, to_peer, to_sender)
        }
    }

    /// Parse complete frames from `buf`; returns (bytes consumed, violation).
    fn process<O: Out, const NOTE: bool>(
        &mut self,
        buf: &[u8],
        to_peer: &mut O,
        to_sender: &mut Vec<u8>,
    ) -> (usize, Option<Violation>) {
        client_frames(&mut TextFrames::<O, NOTE> { d: self, to_peer }, buf, to_sender)
    }

    /// Validate the complete message written at `to_peer[body..]` (its frame starts at `start`).
    fn message<O: Out, const NOTE: bool>(
        &mut self,
        to_peer: &mut O,
        start: usize,
        body: usize,
        to_sender: &mut Vec<u8>,
    ) -> Result<(), Violation> {
        let bytes = to_peer.tail_mut(body);
        let n = bytes.len();
        if n > self.max_message_size {
            return self.reencoded::<O, NOTE>(to_peer, start, body, to_sender);
        }
        let outcome = self.policy.check_with::<NOTE>(bytes, self.peer_connected, to_sender);
        match outcome {
            Ok(o) => {
                if NOTE && o == Outcome::ForwardNoted {
                    self.note(body, n);
                } else if o != Outcome::Forward {
                    to_peer.truncate(start);
                }
                self.messages += 1;
                self.bytes += n as u64;
                Ok(())
            }
            Err(v) if v.code == CLOSE_INVALID_PAYLOAD && self.policy.side == DEVICE => {
                self.reencoded::<O, NOTE>(to_peer, start, body, to_sender)
            }
            Err(v) => {
                to_peer.truncate(start);
                Err(v)
            }
        }
    }
}

impl Decoder {
    /// A device message over `max_message_size` (and within the split ceiling), or one that is not
    /// valid UTF-8 (Huawei's SDK cuts its 2048-byte reads inside a character at times: the invalid
    /// bytes are replaced with U+FFFD): checked like any other, then a `command_response` whose
    /// `data` is a string is forwarded re-encoded, as several messages within the limit when
    /// needed; anything else is refused with 1009 (or 1007 when not UTF-8) (docs/codec.md). Out
    /// of line: the common path never gets here.
    #[cold]
    #[inline(never)]
    fn reencoded<O: Out, const NOTE: bool>(
        &mut self,
        to_peer: &mut O,
        start: usize,
        body: usize,
        to_sender: &mut Vec<u8>,
    ) -> Result<(), Violation> {
        let raw = to_peer.tail_mut(body).to_vec();
        to_peer.truncate(start);
        let repaired = std::str::from_utf8(&raw).is_err();
        let refusal = || {
            if repaired {
                Violation::new(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in text message")
            } else {
                Violation::new(CLOSE_TOO_BIG, format!("message exceeds {} bytes", self.max_message_size))
            }
        };
        let payload = String::from_utf8_lossy(&raw);
        let payload = payload.as_bytes();
        let mark = to_sender.len();
        let outcome = match self.policy.check_with::<NOTE>(payload, self.peer_connected, to_sender) {
            Ok(o) => o,
            Err(_) if repaired => return Err(refusal()),
            Err(v) => return Err(v),
        };
        let pieces = match json::parse_with_data(payload) {
            Ok(Doc::Object(env)) => match (&env.operation_type, &env.tunnel_service_type, &env.request_id, &env.data) {
                (Field::Str(op), Field::Str(service), Field::Str(rid), Field::Str(data)) if op == "command_response" => {
                    split_output(service, rid, data, self.max_message_size)
                }
                _ => None,
            },
            _ => None,
        };
        let Some(pieces) = pieces else {
            to_sender.truncate(mark); // a pong or 404 answer of a refused message is not sent
            return Err(refusal());
        };
        if matches!(outcome, Outcome::Forward | Outcome::ForwardNoted) {
            for piece in &pieces {
                out_header(to_peer, OP_TEXT, piece.len());
                let at = to_peer.len();
                to_peer.put(piece);
                if NOTE && outcome == Outcome::ForwardNoted {
                    self.note(at, piece.len());
                }
            }
        }
        self.messages += 1;
        self.bytes += raw.len() as u64;
        Ok(())
    }
}

/// The text-message half of the frame loop (`frame::client_frames`), for one `feed`.
struct TextFrames<'a, O, const NOTE: bool> {
    d: &'a mut Decoder,
    to_peer: &'a mut O,
}

impl<O: Out, const NOTE: bool> DataFrames for TextFrames<'_, O, NOTE> {
    #[inline]
    fn in_message(&mut self) -> &mut bool {
        &mut self.d.in_message
    }

    #[inline]
    fn check_data(&self, op: u8, len: u64) -> Result<(), Violation> {
        if op == OP_BINARY {
            return Err(Violation::new(CLOSE_UNSUPPORTED_DATA, "binary messages are not supported"));
        }
        let before = if op == OP_CONT { self.d.frag.len() as u64 } else { 0 };
        let limit = self.d.frame_limit();
        if before.saturating_add(len) > limit as u64 {
            return Err(Violation::new(CLOSE_TOO_BIG, format!("message exceeds {limit} bytes")));
        }
        Ok(())
    }

    #[inline]
    fn data(&mut self, op: u8, fin: bool, payload: &[u8], mask: [u8; 4], to_sender: &mut Vec<u8>)
        -> Result<(), Violation> {
        let (d, to_peer) = (&mut *self.d, &mut *self.to_peer);
        if op == OP_TEXT && fin {
            let start = to_peer.len();
            out_header(to_peer, OP_TEXT, payload.len());
            let body = to_peer.len();
            to_peer.put(payload);
            unmask_in_place(to_peer.tail_mut(body), mask);
            return d.message::<O, NOTE>(to_peer, start, body, to_sender);
        }
        if op == OP_TEXT {
            d.frag.clear();
        }
        unmask_into(&mut d.frag, payload, mask);
        if !fin {
            return Ok(());
        }
        // the last continuation: forward the reassembled message
        let start = to_peer.len();
        out_header(to_peer, OP_TEXT, d.frag.len());
        let body = to_peer.len();
        to_peer.put(&d.frag);
        d.frag.clear();
        // A fragment buffer much larger than the limit is given back. saturating: any limit
        // is a valid setting (found by codec-rs/fuzz).
        if d.frag.capacity() > d.max_message_size.max(4096).saturating_mul(4) {
            d.frag = Vec::new();
        }
        d.message::<O, NOTE>(to_peer, start, body, to_sender)
    }
}

impl Decoder {
    /// Out of line: only decoders with notes get here.
    #[cold]
    #[inline(never)]
    fn note(&mut self, body: usize, n: usize) {
        self.notes.push((body, n));
    }
}

/// Upper bound of what one `feed(data)` appends to `to_peer`, unless it splits a device's
/// oversized output (each piece repeats the envelope): the output buffers grow then. The
/// allocation hint of every read.
pub fn to_peer_bound(d: &Decoder, data_len: usize) -> usize {
    data_len + d.buffered() + header_len(usize::MAX)
}

/// Upper bound of what one `feed(data)` appends to `to_peer`, re-encoded device messages
/// included. A message of n bytes re-encodes to D <= 3 n bytes of data (orjson's escapes are the
/// shortest; an invalid byte becomes U+FFFD, 3 bytes), split into k <= D/(room-5) + 1 pieces of
/// at most max + 10 bytes; room >= max/2 and room >= 64 make that under 2.4 D + max + 10, and a
/// split means max < D + envelope <= 4 n: under 12 n in all.
pub fn to_peer_max(d: &Decoder, data_len: usize) -> usize {
    if d.side() == DEVICE {
        (data_len + d.buffered()).saturating_mul(12) + header_len(usize::MAX)
    } else {
        to_peer_bound(d, data_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{DEVICE, SOURCE};
    use crate::frame::test_util::client_frame;
    use crate::frame::{encode_text, OP_CLOSE, OP_PING};

    fn env(op: &str, rid: &str) -> Vec<u8> {
        format!(r#"{{"operation_type":"{op}","tunnel_service_type":"ssh","request_id":"{rid}","data":"x"}}"#).into_bytes()
    }

    fn dec(side: u8) -> Decoder {
        let mut d = Decoder::new(side, 10240, vec!["ssh".into()], 1024);
        d.peer_connected = true;
        d
    }

    fn feed(d: &mut Decoder, data: &[u8]) -> (Vec<u8>, Vec<u8>, Option<(u16, String)>) {
        let (mut p, mut s) = (Vec::new(), Vec::new());
        let c = d.feed(data, &mut p, &mut s);
        (p, s, c.map(|v| (v.code, v.reason)))
    }

    #[test]
    fn forwards_pipelined_messages() {
        let mut d = dec(SOURCE);
        let mut data = client_frame(true, OP_TEXT, &env("connect", "1"));
        data.extend(client_frame(true, OP_TEXT, &env("command", "2")));
        let (p, s, c) = feed(&mut d, &data);
        let mut want = encode_text(&env("connect", "1"));
        want.extend(encode_text(&env("command", "2")));
        assert_eq!((p, s, c), (want, vec![], None));
        assert_eq!((d.messages(), d.bytes()), (2, (env("connect", "1").len() + env("command", "2").len()) as u64));
    }

    #[test]
    fn split_at_every_byte() {
        let msg = env("command_response", &"r".repeat(100));
        let mut data = client_frame(false, OP_TEXT, &msg[..50]);
        data.extend(client_frame(true, OP_PING, b"hi"));
        data.extend(client_frame(true, OP_CONT, &msg[50..]));
        for cut in 0..=data.len() {
            let mut d = dec(DEVICE);
            let (p1, s1, c1) = feed(&mut d, &data[..cut]);
            let (p2, s2, c2) = feed(&mut d, &data[cut..]);
            assert_eq!((c1, c2), (None, None));
            assert_eq!([p1, p2].concat(), encode_text(&msg), "cut {cut}");
            assert_eq!([s1, s2].concat(), b"\x8a\x02hi".to_vec());
        }
    }

    #[test]
    fn size_limit_from_header() {
        let mut d = dec(SOURCE);
        let mut body = env("command", "1");
        body.resize(10240, b' ');
        assert_eq!(feed(&mut d, &client_frame(true, OP_TEXT, &body)).2, None);
        body.push(b' ');
        let f = client_frame(true, OP_TEXT, &body);
        // header alone is enough
        assert_eq!(feed(&mut d, &f[..8]).2, Some((1009, "message exceeds 10240 bytes".into())));
        assert!(d.closed());
        assert_eq!(feed(&mut d, &f), (vec![], vec![], None));
    }

    #[test]
    fn any_size_limit_reassembles_fragments() {
        for max in [usize::MAX / 2, usize::MAX] {
            let mut d = Decoder::new(SOURCE, max, vec!["ssh".into()], 1024);
            d.peer_connected = true;
            let msg = env("command", "1");
            let mut data = client_frame(false, OP_TEXT, &msg[..10]);
            data.extend(client_frame(true, OP_CONT, &msg[10..]));
            assert_eq!(feed(&mut d, &data), (encode_text(&msg), vec![], None));
        }
    }

    #[test]
    fn violations() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x00], 1002),
            (client_frame(true, 0x1 | 0x40, b"{}"), 1002),
            (client_frame(true, 0x3, b""), 1002),
            (vec![0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4], 1002),
            (client_frame(false, OP_PING, b""), 1002),
            (client_frame(true, OP_PING, &[0; 126]), 1002),
            (client_frame(true, OP_CONT, b"x"), 1002),
            (client_frame(true, OP_BINARY, b"x"), 1003),
            (client_frame(true, OP_TEXT, b"\xff"), 1007),
            (client_frame(true, OP_TEXT, b"[]"), 4400),
            (client_frame(true, OP_CLOSE, b""), 1000),
            (client_frame(true, OP_CLOSE, b"\x03"), 1002),
            (client_frame(true, OP_CLOSE, b"\x03\xed"), 1002),
            (client_frame(true, OP_CLOSE, b"\x0f\xa0\xff"), 1007),
            (client_frame(true, OP_CLOSE, b"\x0f\xa0bye"), 4000),
        ];
        for (data, code) in cases {
            let mut d = dec(SOURCE);
            let (p, _, c) = feed(&mut d, &data);
            assert!(p.is_empty());
            assert_eq!(c.map(|c| c.0), Some(code), "{data:?}");
        }
        let mut d = dec(SOURCE);
        let mut data = client_frame(false, OP_TEXT, b"{");
        data.extend(client_frame(true, OP_TEXT, b"{}"));
        assert_eq!(feed(&mut d, &data).2.unwrap().1, "expected a continuation frame");
    }

    #[test]
    fn accepted_before_violation_is_kept() {
        let mut d = dec(SOURCE);
        let mut data = client_frame(true, OP_TEXT, &env("connect", "1"));
        data.extend(client_frame(true, OP_PING, b"p"));
        data.extend(client_frame(true, OP_TEXT, &env("connect", "1")));
        data.extend(client_frame(true, OP_TEXT, &env("command", "3")));
        let (p, s, c) = feed(&mut d, &data);
        assert_eq!(p, encode_text(&env("connect", "1")));
        assert_eq!(s, b"\x8a\x01p");
        assert_eq!(c, Some((4409, "request_id reused".into())));
    }

    #[test]
    fn reset_keeps_request_ids() {
        let mut d = dec(SOURCE);
        let f = client_frame(true, OP_TEXT, &env("connect", "1"));
        feed(&mut d, &f[..5]);
        d.reset();
        assert_eq!(feed(&mut d, &f).2, None);
        assert_eq!(feed(&mut d, &client_frame(true, OP_CLOSE, b"")).2, Some((1000, String::new())));
        d.reset();
        assert!(!d.closed());
        assert_eq!(feed(&mut d, &f).2.unwrap().0, 4409);
    }

    #[test]
    fn notes_point_at_forwarded_payloads() {
        let mut d = dec(SOURCE);
        d.policy.noted = ["connect".into(), "command".into()].into_iter().collect();
        let cmd = format!(r#"{{"operation_type":"command","tunnel_service_type":"ssh","request_id":"c","data":"{}"}}"#, "d".repeat(200)).into_bytes();
        let mut data = client_frame(true, OP_TEXT, &env("connect", "1"));
        data.extend(client_frame(true, OP_TEXT, &env("ping", "2")));
        data.extend(client_frame(true, OP_TEXT, &env("disconnect", "3")));
        data.extend(client_frame(false, OP_TEXT, &cmd[..10]));
        data.extend(client_frame(true, OP_CONT, &cmd[10..]));
        data.extend(client_frame(true, OP_TEXT, &env("connect", "1"))); // 4409: never noted
        let (p, _, c) = feed(&mut d, &data);
        assert_eq!(c.unwrap().0, 4409);
        let notes: Vec<&[u8]> = d.notes.iter().map(|&(s, n)| &p[s..s + n]).collect();
        assert_eq!(notes, vec![&env("connect", "1")[..], &cmd[..]]);
        d.reset();
        d.peer_connected = false;
        feed(&mut d, &client_frame(true, OP_TEXT, &env("connect", "9")));
        assert!(d.notes.is_empty());
    }

    #[test]
    fn bound_holds() {
        let mut d = dec(DEVICE);
        let msg = env("command_response", &"x".repeat(120));
        let mut data = client_frame(false, OP_TEXT, &msg[..10]);
        data.extend(client_frame(true, OP_CONT, &msg[10..]));
        let first = &data[..30];
        feed(&mut d, first);
        let bound = to_peer_bound(&d, data.len() - 30);
        let (p, _, _) = feed(&mut d, &data[30..]);
        assert!(p.len() <= bound);
    }

    fn sdk_output(rid: &str, data: &str) -> Vec<u8> {
        let mut m = format!(r#"{{"operation_type":"command_response","tunnel_service_type":"ssh","request_id":"{rid}","data":"#)
            .into_bytes();
        crate::json::write_str(&mut m, data);
        m.push(b'}');
        m
    }

    /// The text of each server text frame in `out`.
    fn texts(out: &[u8]) -> Vec<Vec<u8>> {
        let mut found = Vec::new();
        let mut i = 0;
        while i < out.len() {
            let (len, h) = match out[i + 1] {
                126 => (u16::from_be_bytes([out[i + 2], out[i + 3]]) as usize, 4),
                n => (n as usize, 2),
            };
            found.push(out[i + h..i + h + len].to_vec());
            i += h + len;
        }
        found
    }

    #[test]
    fn a_devices_oversized_output_is_split_within_the_limit() {
        let data = "\u{1}".repeat(2048) + "end";
        let msg = sdk_output("r7", &data);
        assert!(msg.len() > 12000);
        let mut d = dec(DEVICE);
        let f = client_frame(true, OP_TEXT, &msg);
        let (hint, max) = (to_peer_bound(&d, f.len()), to_peer_max(&d, f.len()));
        let (p, s, c) = feed(&mut d, &f);
        assert_eq!((s, c), (vec![], None));
        assert!(p.len() > hint && p.len() <= max, "{} {hint} {max}", p.len());
        let pieces = texts(&p);
        assert_eq!(pieces.len(), 2);
        let mut joined = String::new();
        for piece in &pieces {
            assert!(piece.len() <= 10240);
            let text = std::str::from_utf8(piece).unwrap();
            assert!(text.starts_with(r#"{"operation_type":"command_response","tunnel_service_type":"ssh","request_id":"r7","data":""#));
            let json_data = &text[text.find(r#""data":"#).unwrap() + 7..text.len() - 1];
            joined.push_str(json_data);
        }
        let mut want = Vec::new();
        crate::json::write_str(&mut want, &data);
        // the pieces' data, written back to back, is the original data's (each piece ends its quote)
        assert_eq!(joined.replace("\"\"", "").into_bytes(), want);
        assert_eq!((d.messages(), d.bytes()), (1, msg.len() as u64));
    }

    #[test]
    fn only_a_devices_command_response_is_split() {
        let mut big = sdk_output("r", &"\u{1}".repeat(2048));
        let mut d = dec(SOURCE);
        let f = client_frame(true, OP_TEXT, &big);
        assert_eq!(feed(&mut d, &f[..8]).2.unwrap(), (1009, "message exceeds 10240 bytes".into()));
        let other = String::from_utf8(big.clone()).unwrap().replace("command_response", "connect_response");
        let mut d = dec(DEVICE);
        assert_eq!(feed(&mut d, &client_frame(true, OP_TEXT, other.as_bytes())).2.unwrap().0, 1009);
        big.resize(DEVICE_SPLIT_CEILING + 1, b' ');
        let mut d = dec(DEVICE);
        let f = client_frame(true, OP_TEXT, &big);
        assert_eq!(feed(&mut d, &f[..8]).2.unwrap(), (1009, "message exceeds 16384 bytes".into()));
    }
}
