//! Huawei secure-tunnel envelope rules for one complete text message.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::close::{Violation, CLOSE_INVALID_PAYLOAD, CLOSE_NOT_ALLOWED};
use crate::frame::{header_len, write_header, OP_TEXT};
use crate::json::{self, Doc, Field};

pub const SOURCE: u8 = 0;
pub const DEVICE: u8 = 1;

pub const CLOSE_INVALID_ENVELOPE: u16 = 4400;
pub const CLOSE_REQUEST_ID_REUSED: u16 = 4409;

pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// A device's `command_response` over `max_message_size` is split, up to this many bytes (or
/// `max_message_size` when larger): Huawei's device SDK sends each 2048-byte read of terminal
/// output as one message, and escaping (6 bytes per control character) makes it up to ~12.4 KB.
pub const DEVICE_SPLIT_CEILING: usize = 16384;
/// A split needs this much room for `data` in each piece, and at least half the limit: so the
/// pieces never outgrow the message more than about twofold (and one character always fits).
const MIN_SPLIT_ROOM: usize = 64;

/// What to do with an accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// forward the original payload to the peer
    Forward,
    /// forward it, and its `operation_type` is one of the policy's `noted` ones
    ForwardNoted,
    /// a reply frame was appended to `to_sender`
    Answered,
    /// accepted, nothing to send
    Consumed,
}

/// FIFO window of the last `capacity` distinct request ids accepted from a source.
#[derive(Debug, Default, Clone)]
pub struct RequestIds {
    capacity: usize,
    set: HashSet<Box<str>>,
    order: VecDeque<Box<str>>,
}

impl RequestIds {
    pub fn new(capacity: usize) -> Self {
        RequestIds { capacity, set: HashSet::new(), order: VecDeque::new() }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    pub fn insert(&mut self, id: &str) {
        if self.capacity == 0 || self.set.contains(id) {
            return;
        }
        let b: Box<str> = id.into();
        self.set.insert(b.clone());
        self.order.push_back(b);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// The ids in the window, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(|id| &**id)
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Per-side envelope policy plus the request-id history.
#[derive(Debug, Clone)]
pub struct Policy {
    pub side: u8,
    pub services: Vec<String>,
    pub request_ids: RequestIds,
    /// `operation_type`s whose forwarded messages are reported as `Outcome::ForwardNoted`
    /// (a handful: a linear scan beats hashing here). Shared: every tunnel notes the same few,
    /// and an idle tunnel must cost little memory.
    pub noted: std::sync::Arc<[Box<str>]>,
    /// Request ids of sessions that are over (a device side's: the requests of earlier source
    /// connections). A message carrying one is dropped while the peer is connected: what the
    /// device still sends for a replaced source must not reach its successor. Boxed: most
    /// decoders never have any, and an idle tunnel must cost little memory.
    pub retired: Option<Box<HashSet<Box<str>, BuildHasherDefault<Fnv1a>>>>,
}

/// FNV-1a: the retired set is asked about every device message while it exists, so a fast
/// hash beats SipHash here. Its keys are at most `request_id_window` ids chosen by the
/// tunnel's own source: colliding ids could only slow down that source's own tunnel.
#[derive(Default)]
pub struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

fn side_name(side: u8) -> &'static str {
    if side == SOURCE {
        "source"
    } else {
        "device"
    }
}

/// The `ssh` service's operations (Huawei's), then TCP forwarding's (docs/forwarding.md).
fn allowed(side: u8, op: &str) -> bool {
    if matches!(op, "disconnect" | "ping" | "forward_data" | "forward_ack" | "forward_close") {
        return true;
    }
    if side == SOURCE {
        matches!(op, "connect" | "command" | "forward_open")
    } else {
        matches!(op, "connect_response" | "command_response" | "forward_open_response")
    }
}

/// Requests that start something: their request_id must be new in the tunnel.
fn needs_fresh_id(op: &str) -> bool {
    matches!(op, "connect" | "command" | "forward_open")
}

/// `{"operation_type":OP,"tunnel_service_type":S,"request_id":R,"data":` (orjson.dumps layout):
/// the head every message the relay writes itself shares; the caller writes the data and `}`.
fn envelope_head(body: &mut Vec<u8>, op: &str, service: &str, rid: &str) {
    body.extend_from_slice(b"{\"operation_type\":");
    json::write_str(body, op);
    body.extend_from_slice(b",\"tunnel_service_type\":");
    json::write_str(body, service);
    body.extend_from_slice(b",\"request_id\":");
    json::write_str(body, rid);
    body.extend_from_slice(b",\"data\":");
}

/// Append a text frame whose payload is
/// `{"operation_type":OP,"tunnel_service_type":S,"request_id":R,"data":DATA}` (orjson.dumps layout).
fn write_reply(out: &mut Vec<u8>, op: &str, service: &str, rid: &str, data: &[&str]) {
    let mut body = Vec::with_capacity(96 + service.len() + rid.len());
    envelope_head(&mut body, op, service, rid);
    if data.is_empty() {
        body.extend_from_slice(b"null");
    } else {
        body.push(b'{');
        for (k, pair) in data.chunks(2).enumerate() {
            if k > 0 {
                body.push(b',');
            }
            json::write_str(&mut body, pair[0]);
            body.push(b':');
            json::write_str(&mut body, pair.get(1).copied().unwrap_or(""));
        }
        body.push(b'}');
    }
    body.push(b'}');
    out.reserve(header_len(body.len()) + body.len());
    write_header(out, OP_TEXT, body.len());
    out.extend_from_slice(&body);
}

/// `{"operation_type":"command_response","tunnel_service_type":S,"request_id":R,"data":D}`, as
/// orjson.dumps writes it.
fn command_response(service: &str, rid: &str, data: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(96 + service.len() + rid.len() + data.len());
    envelope_head(&mut body, "command_response", service, rid);
    json::write_str(&mut body, data);
    body.push(b'}');
    body
}

/// Bytes `c` takes inside a JSON string written by `json::write_str`.
#[inline]
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// `data` as `command_response` messages of at most `limit` bytes each: every piece is the longest
/// prefix of what is left that fits (cut between characters); `None` when the room the limit
/// leaves for `data` is under half the limit or under 64 bytes.
pub fn split_output(service: &str, rid: &str, data: &str, limit: usize) -> Option<Vec<Vec<u8>>> {
    let budget = limit.checked_sub(command_response(service, rid, "").len())?;
    if budget < MIN_SPLIT_ROOM || budget.saturating_mul(2) < limit {
        return None;
    }
    let mut pieces = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, c) in data.char_indices() {
        let n = escaped_len(c);
        if used + n > budget {
            pieces.push(command_response(service, rid, &data[start..i]));
            (start, used) = (i, 0);
        }
        used += n;
    }
    if start < data.len() || pieces.is_empty() {
        pieces.push(command_response(service, rid, &data[start..]));
    }
    Some(pieces)
}

impl Policy {
    pub fn new(side: u8, services: Vec<String>, request_id_window: usize) -> Self {
        Policy {
            side,
            services,
            request_ids: RequestIds::new(request_id_window),
            noted: std::sync::Arc::from(Vec::new()),
            retired: None,
        }
    }

    /// Replace the retired request ids (an empty set retires none).
    pub fn retire<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        let set: HashSet<Box<str>, BuildHasherDefault<Fnv1a>> = ids.into_iter().map(Box::from).collect();
        self.retired = if set.is_empty() { None } else { Some(Box::new(set)) };
    }

    /// Check one complete text message (UTF-8 first, then JSON, then the envelope).
    /// Replies go to `to_sender`.
    pub fn check(&mut self, text: &[u8], peer_connected: bool, to_sender: &mut Vec<u8>) -> Result<Outcome, Violation> {
        self.check_with::<true>(text, peer_connected, to_sender)
    }

    /// `check`; with `NOTE` false the `noted` set is not consulted (never `ForwardNoted`), so the
    /// decoder's path without notes compiles to the code it had before notes existed.
    #[inline]
    pub fn check_with<const NOTE: bool>(
        &mut self,
        text: &[u8],
        peer_connected: bool,
        to_sender: &mut Vec<u8>,
    ) -> Result<Outcome, Violation> {
        let env = match json::parse(text) {
            // the parser validates UTF-8 on the way; on failure tell the two apart (1007 wins)
            Err(_) if std::str::from_utf8(text).is_err() => {
                return Err(Violation::new(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in text message"))
            }
            Err(_) => return Err(Violation::new(CLOSE_INVALID_ENVELOPE, "invalid JSON")),
            Ok(Doc::NotObject) => return Err(Violation::new(CLOSE_INVALID_ENVELOPE, "message must be a JSON object")),
            Ok(Doc::Object(env)) => env,
        };
        let op = match &env.operation_type {
            Field::Str(s) => s.as_ref(),
            _ => return Err(Violation::new(CLOSE_INVALID_ENVELOPE, "operation_type must be a string")),
        };
        let service = match &env.tunnel_service_type {
            Field::Str(s) => s.as_ref(),
            _ => return Err(Violation::new(CLOSE_INVALID_ENVELOPE, "tunnel_service_type must be a string")),
        };
        if !self.services.iter().any(|s| s == service) {
            return Err(Violation::new(
                CLOSE_INVALID_ENVELOPE,
                format!("tunnel_service_type '{service}' is not supported"),
            ));
        }
        let rid = match &env.request_id {
            Field::Str(s) => s.as_ref(),
            _ => return Err(Violation::new(CLOSE_INVALID_ENVELOPE, "request_id must be a string")),
        };
        if rid.is_empty() || rid.len() > MAX_REQUEST_ID_BYTES {
            return Err(Violation::new(CLOSE_INVALID_ENVELOPE, "request_id must be 1 to 128 bytes"));
        }
        if !allowed(self.side, op) {
            return Err(Violation::new(
                CLOSE_NOT_ALLOWED,
                format!("operation_type '{op}' is not allowed from the {} side", side_name(self.side)),
            ));
        }
        if self.side == SOURCE && needs_fresh_id(op) {
            if self.request_ids.contains(rid) {
                return Err(Violation::new(CLOSE_REQUEST_ID_REUSED, "request_id reused"));
            }
            self.request_ids.insert(rid);
        }
        if op == "ping" {
            write_reply(to_sender, "pong", service, rid, &[]);
            return Ok(Outcome::Answered);
        }
        if peer_connected {
            if let Some(retired) = &self.retired {
                if retired.contains(rid) {
                    return Ok(Outcome::Consumed);
                }
            }
            if NOTE && self.noted.iter().any(|n| **n == *op) {
                return Ok(Outcome::ForwardNoted);
            }
            return Ok(Outcome::Forward);
        }
        if op == "disconnect" {
            return Ok(Outcome::Consumed);
        }
        let msg = if self.side == SOURCE { "device is not connected" } else { "source is not connected" };
        write_reply(to_sender, "disconnect", service, rid, &["status_code", "404", "status_msg", msg]);
        Ok(Outcome::Answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(side: u8) -> Policy {
        Policy::new(side, vec!["ssh".into()], 3)
    }

    fn env(op: &str, rid: &str) -> Vec<u8> {
        format!(r#"{{"operation_type":"{op}","tunnel_service_type":"ssh","request_id":"{rid}","data":null}}"#).into_bytes()
    }

    #[test]
    fn forward_and_reject() {
        let mut p = policy(SOURCE);
        let mut out = Vec::new();
        assert_eq!(p.check(&env("connect", "1"), true, &mut out), Ok(Outcome::Forward));
        assert_eq!(p.check(&env("connect", "1"), true, &mut out).unwrap_err().code, 4409);
        assert_eq!(p.check(&env("disconnect", "1"), true, &mut out), Ok(Outcome::Forward));
        let v = p.check(&env("connect_response", "2"), true, &mut out).unwrap_err();
        assert_eq!((v.code, v.reason.as_str()), (4403, "operation_type 'connect_response' is not allowed from the source side"));
        assert!(out.is_empty());
        let v = p.check(b"[]", true, &mut out).unwrap_err();
        assert_eq!((v.code, v.reason.as_str()), (4400, "message must be a JSON object"));
        let v = p.check(b"{", true, &mut out).unwrap_err();
        assert_eq!((v.code, v.reason.as_str()), (4400, "invalid JSON"));
        let v = p
            .check(br#"{"operation_type":"connect","tunnel_service_type":"rdp","request_id":"x"}"#, true, &mut out)
            .unwrap_err();
        assert_eq!(v.reason, "tunnel_service_type 'rdp' is not supported");
        let long = "r".repeat(129);
        assert_eq!(p.check(&env("command", &long), true, &mut out).unwrap_err().reason, "request_id must be 1 to 128 bytes");
        assert_eq!(p.check(&env("command", ""), true, &mut out).unwrap_err().reason, "request_id must be 1 to 128 bytes");
    }

    #[test]
    fn retired_ids_are_dropped_while_the_peer_is_connected() {
        let mut p = policy(DEVICE);
        let mut out = Vec::new();
        p.retire(["c1", "k1"]);
        assert_eq!(p.check(&env("command_response", "c1"), true, &mut out), Ok(Outcome::Consumed));
        assert_eq!(p.check(&env("disconnect", "k1"), true, &mut out), Ok(Outcome::Consumed));
        assert_eq!(p.check(&env("command_response", "c2"), true, &mut out), Ok(Outcome::Forward));
        assert!(out.is_empty());
        // without a peer the usual answer
        assert_eq!(p.check(&env("command_response", "c1"), false, &mut out), Ok(Outcome::Answered));
        p.retire(std::iter::empty());
        assert!(p.retired.is_none());
        assert_eq!(p.check(&env("command_response", "c1"), true, &mut out), Ok(Outcome::Forward));
    }

    #[test]
    fn window_is_fifo() {
        let mut p = policy(SOURCE);
        let mut out = Vec::new();
        for r in ["a", "b", "c", "d"] {
            assert_eq!(p.check(&env("command", r), true, &mut out), Ok(Outcome::Forward));
        }
        // "a" fell out of the 3-wide window
        assert_eq!(p.check(&env("command", "a"), true, &mut out), Ok(Outcome::Forward));
        assert_eq!(p.check(&env("command", "c"), true, &mut out).unwrap_err().code, 4409);
        // device side is never checked
        let mut d = policy(DEVICE);
        for _ in 0..3 {
            assert_eq!(d.check(&env("command_response", "a"), true, &mut out), Ok(Outcome::Forward));
        }
    }

    #[test]
    fn replies() {
        let mut p = policy(SOURCE);
        let mut out = Vec::new();
        assert_eq!(p.check(&env("ping", "q\\\"1"), true, &mut out), Ok(Outcome::Answered));
        let body = br#"{"operation_type":"pong","tunnel_service_type":"ssh","request_id":"q\"1","data":null}"#;
        assert_eq!(out[0], 0x81);
        assert_eq!(&out[2..], &body[..]);
        out.clear();
        assert_eq!(p.check(&env("command", "7"), false, &mut out), Ok(Outcome::Answered));
        let body = br#"{"operation_type":"disconnect","tunnel_service_type":"ssh","request_id":"7","data":{"status_code":"404","status_msg":"device is not connected"}}"#;
        assert_eq!(&out[..4], &[0x81, 126, 0, body.len() as u8]);
        assert_eq!(&out[4..], &body[..]);
        out.clear();
        assert_eq!(p.check(&env("disconnect", "7"), false, &mut out), Ok(Outcome::Consumed));
        assert!(out.is_empty());
    }

    #[test]
    fn noted_only_when_forwarded() {
        let mut p = policy(SOURCE);
        p.noted = ["connect".into(), "ping".into()].into_iter().collect();
        let mut out = Vec::new();
        assert_eq!(p.check(&env("connect", "1"), true, &mut out), Ok(Outcome::ForwardNoted));
        assert_eq!(p.check(&env("command", "2"), true, &mut out), Ok(Outcome::Forward));
        assert_eq!(p.check(&env("connect", "3"), false, &mut out), Ok(Outcome::Answered));
        assert_eq!(p.check(&env("ping", "4"), true, &mut out), Ok(Outcome::Answered));
    }

    #[test]
    fn reason_truncated() {
        let mut p = policy(DEVICE);
        let op = "é".repeat(100);
        let v = p.check(&env(&op, "1"), true, &mut Vec::new()).unwrap_err();
        assert_eq!(v.code, 4403);
        assert!(v.reason.len() <= 123);
    }
}
