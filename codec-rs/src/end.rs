//! The ends' codec: what the device agent and `relay forward` (WebSocket *clients* of the relay)
//! do per socket read, in one call, for both protocols (docs/codec.md, "The ends' codec").
//!
//! Outgoing: TCP bytes -> client frames (masked, RFC 6455 5.3, a fresh key per frame):
//! Huawei `tcp` service `forward_data` envelopes (base64 chunks, the JSON of relay/ends/huawei_tcp.py)
//! as text frames, AWS V3 DATA messages (relay/aws_messages.py's encoding) as binary frames.
//! Incoming: the relay's (server, unmasked) frames -> the decoded data of the data messages,
//! grouped per connection, and every other message raw, in order, for Python to handle.
//!
//! Plain Rust (the PyO3 classes live in `bindings/ends.rs`); the Python twin is
//! relay/codec/_end_py.py. Rules reused from their homes: `close.rs` (codes), `frame.rs` (close
//! frame rules, masking), `json.rs` (what valid JSON is, orjson's string encoding), `aws.rs`
//! (what a valid tunnel message is).

use crate::aws;
use crate::close::{
    Violation, CLOSE_INVALID_PAYLOAD, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA,
};
use crate::envelope::CLOSE_INVALID_ENVELOPE;
use crate::frame::{close_reply, unmask_in_place, MAX_CONTROL_PAYLOAD, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use crate::json::{self, Doc, Field};

/// Raw bytes per `forward_data` (relay/ends/huawei_tcp.py's CHUNK): 9336 base64 characters, so the
/// envelope stays under the relay's 10240-byte limit with a 128-byte connection id.
pub const CHUNK: usize = 7000;
/// Default limit of one incoming Huawei message (the relay forwards at most its own
/// `max_message_size`, 10240 by default; this leaves room for a relay configured higher).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Mask keys are drawn from a pool of this many bytes, refilled from the OS when used up.
pub const MASK_POOL: usize = 1024;

// ---------------------------------------------------------------- mask keys

/// Where the 4-byte mask keys come from: a pool of random bytes, refilled by the caller's
/// `refill` (the binding calls `os.urandom(MASK_POOL)`, a CSPRNG, as RFC 6455 10.3 asks).
pub struct Masks {
    pool: Vec<u8>,
    pos: usize,
}

impl Default for Masks {
    fn default() -> Self {
        Masks { pool: Vec::new(), pos: 0 }
    }
}

impl Masks {
    /// The next key; `refill` fills the pool when it is used up (it must give `MASK_POOL` bytes;
    /// `false` means it failed: the pool is then left empty and the key is all zeros, and the
    /// caller raises its error).
    #[inline]
    pub fn next(&mut self, refill: &mut dyn FnMut(&mut Vec<u8>) -> bool) -> [u8; 4] {
        if self.pos + 4 > self.pool.len() {
            self.pool.clear();
            self.pos = 0;
            if !refill(&mut self.pool) || self.pool.len() < 4 {
                self.pool.clear();
                return [0; 4];
            }
        }
        let k = [self.pool[self.pos], self.pool[self.pos + 1], self.pool[self.pos + 2], self.pool[self.pos + 3]];
        self.pos += 4;
        k
    }
}

// ---------------------------------------------------------------- client frames

/// Size of a masked client frame header for a payload of `len` bytes (mask key included).
#[inline]
pub fn client_header_len(len: usize) -> usize {
    4 + if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

#[inline]
fn put_client_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: [u8; 4]) {
    let b0 = 0x80 | opcode;
    if len < 126 {
        out.extend_from_slice(&[b0, 0x80 | len as u8]);
    } else if len <= 0xFFFF {
        let l = (len as u16).to_be_bytes();
        out.extend_from_slice(&[b0, 0x80 | 126, l[0], l[1]]);
    } else {
        out.extend_from_slice(&[b0, 0x80 | 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
}

/// Append one masked FIN client frame.
pub fn put_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.reserve(client_header_len(payload.len()) + payload.len());
    put_client_header(out, opcode, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask_in_place(&mut out[start..], mask);
}

// ---------------------------------------------------------------- base64 (standard alphabet, padded)

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// 6-bit value of each character, 0xFF when not in the alphabet.
static B64_VAL: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 64 {
        t[B64[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Two characters per 12 bits: one lookup per half of a 3-byte group.
static B64_PAIRS: [[u8; 2]; 4096] = {
    let mut t = [[0u8; 2]; 4096];
    let mut i = 0;
    while i < 4096 {
        t[i] = [B64[i >> 6], B64[i & 63]];
        i += 1;
    }
    t
};

#[inline]
pub fn b64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Append the padded standard base64 of `src` (what Python's `base64.b64encode` gives).
pub fn b64_encode_into(out: &mut Vec<u8>, src: &[u8]) {
    let start = out.len();
    out.resize(start + b64_len(src.len()), 0);
    let dst = &mut out[start..];
    let (done, mut o) = simd::encode(src, dst);
    let mut groups = src[done..].chunks_exact(3);
    for g in &mut groups {
        let v = (u32::from(g[0]) << 16) | (u32::from(g[1]) << 8) | u32::from(g[2]);
        let a = B64_PAIRS[(v >> 12) as usize];
        let b = B64_PAIRS[(v & 0xFFF) as usize];
        dst[o..o + 4].copy_from_slice(&[a[0], a[1], b[0], b[1]]);
        o += 4;
    }
    match *groups.remainder() {
        [x] => {
            let v = u32::from(x) << 16;
            dst[o..o + 4].copy_from_slice(&[B64[(v >> 18) as usize], B64[((v >> 12) & 63) as usize], b'=', b'=']);
        }
        [x, y] => {
            let v = (u32::from(x) << 16) | (u32::from(y) << 8);
            dst[o..o + 4].copy_from_slice(&[
                B64[(v >> 18) as usize],
                B64[((v >> 12) & 63) as usize],
                B64[((v >> 6) & 63) as usize],
                b'=',
            ]);
        }
        _ => {}
    }
}

/// Append the bytes of `src` if it is *canonical* padded base64 (length a multiple of 4, only
/// alphabet characters, one or two `=` only at the very end, unused bits zero: exactly what
/// `base64.b64encode` writes). Returns false (nothing appended) otherwise.
pub fn b64_decode_into(out: &mut Vec<u8>, src: &[u8]) -> bool {
    if src.len() % 4 != 0 {
        return false;
    }
    if src.is_empty() {
        return true;
    }
    let pad = if src[src.len() - 1] == b'=' { if src[src.len() - 2] == b'=' { 2 } else { 1 } } else { 0 };
    let start = out.len();
    out.resize(start + src.len() / 4 * 3, 0);
    let (body, last) = src.split_at(src.len() - 4);
    let dst = &mut out[start..];
    let mut bad = 0u32;
    let Some((done, mut o)) = simd::decode(body, dst) else {
        out.truncate(start);
        return false;
    };
    for q in body[done..].chunks_exact(4) {
        let a = u32::from(B64_VAL[q[0] as usize]);
        let b = u32::from(B64_VAL[q[1] as usize]);
        let c = u32::from(B64_VAL[q[2] as usize]);
        let d = u32::from(B64_VAL[q[3] as usize]);
        bad |= a | b | c | d;
        let v = (a << 18) | (b << 12) | (c << 6) | d;
        dst[o..o + 3].copy_from_slice(&[(v >> 16) as u8, (v >> 8) as u8, v as u8]);
        o += 3;
    }
    let val = |i: usize| u32::from(B64_VAL[last[i] as usize]);
    let (a, b) = (val(0), val(1));
    let (c, d) = match pad {
        0 => (val(2), val(3)),
        1 => (val(2), 0),
        _ => (0, 0),
    };
    bad |= a | b | c | d;
    let v = (a << 18) | (b << 12) | (c << 6) | d;
    // canonical: the bits the padding leaves unused are zero
    let unused = match pad {
        1 => v & 0xFF,
        2 => v & 0xFFFF,
        _ => 0,
    };
    if bad & 0x80 != 0 || unused != 0 {
        out.truncate(start);
        return false;
    }
    let tail = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
    dst[o..o + 3 - pad].copy_from_slice(&tail[..3 - pad]);
    out.truncate(start + o + 3 - pad);
    true
}

/// Base64 32 characters at a time with AVX2 when the CPU has it (Muła and Lemire's method, as in
/// aklomp/base64); the scalar loops above do the rest. Same results as the scalar code (tested).
mod simd {
    /// Encode whole 24-byte blocks of `src` into `dst` while both have room; (bytes read,
    /// characters written).
    pub fn encode(src: &[u8], dst: &mut [u8]) -> (usize, usize) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present; the function stays inside both slices.
                return unsafe { encode_avx2(src, dst) };
            }
        }
        let _ = (src, dst);
        (0, 0)
    }

    /// Decode whole 32-character blocks of `src` (no padding in them) into `dst` while both have
    /// room; (characters read, bytes written), or None when a character is not in the alphabet.
    pub fn decode(src: &[u8], dst: &mut [u8]) -> Option<(usize, usize)> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present; the function stays inside both slices.
                return unsafe { decode_avx2(src, dst) };
            }
        }
        let _ = (src, dst);
        Some((0, 0))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn encode_avx2(src: &[u8], dst: &mut [u8]) -> (usize, usize) {
        use std::arch::x86_64::*;
        let (mut i, mut o) = (0usize, 0usize);
        let shuf = _mm256_setr_epi8(
            1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10, 1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10,
        );
        let lut = _mm256_setr_epi8(
            65, 71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 0, 0, 65, 71, -4, -4, -4, -4, -4, -4, -4, -4,
            -4, -4, -19, -16, 0, 0,
        );
        // reads src[i..i + 28] (two 16-byte loads, 12 bytes apart), writes dst[o..o + 32]
        while i + 28 <= src.len() && o + 32 <= dst.len() {
            let lo = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            let hi = _mm_loadu_si128(src.as_ptr().add(i + 12) as *const __m128i);
            let v = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi);
            let v = _mm256_shuffle_epi8(v, shuf);
            let t0 = _mm256_and_si256(v, _mm256_set1_epi32(0x0FC0_FC00));
            let t1 = _mm256_mulhi_epu16(t0, _mm256_set1_epi32(0x0400_0040));
            let t2 = _mm256_and_si256(v, _mm256_set1_epi32(0x003F_03F0));
            let t3 = _mm256_mullo_epi16(t2, _mm256_set1_epi32(0x0100_0010));
            let idx6 = _mm256_or_si256(t1, t3);
            let mut ix = _mm256_subs_epu8(idx6, _mm256_set1_epi8(51));
            ix = _mm256_sub_epi8(ix, _mm256_cmpgt_epi8(idx6, _mm256_set1_epi8(25)));
            let chars = _mm256_add_epi8(idx6, _mm256_shuffle_epi8(lut, ix));
            _mm256_storeu_si256(dst.as_mut_ptr().add(o) as *mut __m256i, chars);
            i += 24;
            o += 32;
        }
        (i, o)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn decode_avx2(src: &[u8], dst: &mut [u8]) -> Option<(usize, usize)> {
        use std::arch::x86_64::*;
        let lut_lo = _mm256_setr_epi8(
            0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A, 0x1B, 0x1B, 0x1B, 0x1A, 0x15, 0x11,
            0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A, 0x1B, 0x1B, 0x1B, 0x1A,
        );
        let lut_hi = _mm256_setr_epi8(
            0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,
            0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,
        );
        let lut_roll = _mm256_setr_epi8(
            0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0,
            0, 0, 0,
        );
        let mask_2f = _mm256_set1_epi8(0x2F);
        let pack = _mm256_setr_epi8(
            2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1, 2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1,
        );
        let lanes = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 0, 0);
        let (mut i, mut o) = (0usize, 0usize);
        // reads src[i..i + 32], writes dst[o..o + 32] (24 bytes of it are the block's)
        while i + 32 <= src.len() && o + 32 <= dst.len() {
            let s = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
            let hi_nibbles = _mm256_and_si256(_mm256_srli_epi32::<4>(s), mask_2f);
            let lo_nibbles = _mm256_and_si256(s, mask_2f);
            let hi = _mm256_shuffle_epi8(lut_hi, hi_nibbles);
            let lo = _mm256_shuffle_epi8(lut_lo, lo_nibbles);
            if _mm256_testz_si256(lo, hi) == 0 {
                return None;
            }
            let eq_2f = _mm256_cmpeq_epi8(s, mask_2f);
            let roll = _mm256_shuffle_epi8(lut_roll, _mm256_add_epi8(eq_2f, hi_nibbles));
            let v = _mm256_add_epi8(s, roll);
            let v = _mm256_maddubs_epi16(v, _mm256_set1_epi32(0x0140_0140));
            let v = _mm256_madd_epi16(v, _mm256_set1_epi32(0x0001_1000));
            let v = _mm256_shuffle_epi8(v, pack);
            let v = _mm256_permutevar8x32_epi32(v, lanes);
            _mm256_storeu_si256(dst.as_mut_ptr().add(o) as *mut __m256i, v);
            i += 32;
            o += 24;
        }
        Some((i, o))
    }
}

// ---------------------------------------------------------------- outgoing messages

/// `{"operation_type":"forward_data","tunnel_service_type":"tcp","request_id":ID,"data":"` as
/// orjson.dumps writes relay/ends/huawei_tcp.py's envelope: what every chunk of a connection shares.
pub fn forward_data_prefix(conn_id: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(96 + conn_id.len());
    p.extend_from_slice(b"{\"operation_type\":\"forward_data\",\"tunnel_service_type\":\"tcp\",\"request_id\":");
    json::write_str(&mut p, conn_id);
    p.extend_from_slice(b",\"data\":\"");
    p
}

/// Append `raw` as `forward_data` messages of at most `chunk` raw bytes each, in masked text
/// frames; `prefix` is `forward_data_prefix(conn_id)`.
pub fn put_forward_data(
    out: &mut Vec<u8>,
    prefix: &[u8],
    raw: &[u8],
    chunk: usize,
    refill: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    masks: &mut Masks,
) {
    let chunk = chunk.max(1);
    for piece in raw.chunks(chunk) {
        let len = prefix.len() + b64_len(piece.len()) + 2;
        out.reserve(client_header_len(len) + len);
        let mask = masks.next(refill);
        put_client_header(out, OP_TEXT, len, mask);
        let start = out.len();
        out.extend_from_slice(prefix);
        b64_encode_into(out, piece);
        out.extend_from_slice(b"\"}");
        unmask_in_place(&mut out[start..], mask);
    }
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v > 0x7f {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v > 0x7f {
        v >>= 7;
        n += 1;
    }
    n
}

/// Append `raw` as AWS DATA tunnel messages of at most `max_payload` bytes each (2-byte length +
/// protobuf, fields in number order and defaults omitted, as relay/aws_messages.py's `frame`
/// encodes them), one masked binary frame per message. `service_id` "" and `connection_id` 0 are
/// left out (a V1/V2 peer's table passes them so). `max_payload` is capped so that a message
/// fits its 2-byte length.
pub fn put_aws_data(
    out: &mut Vec<u8>,
    service_id: &[u8],
    stream_id: i32,
    connection_id: u32,
    raw: &[u8],
    max_payload: usize,
    refill: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    masks: &mut Masks,
) {
    // the fields before the payload (type, streamId) and after it (serviceId, connectionId)
    let mut head = vec![0x08, aws::TYPE_DATA as u8];
    if stream_id != 0 {
        head.push(0x10);
        put_varint(&mut head, stream_id as i64 as u64);
    }
    let mut tail = Vec::new();
    if !service_id.is_empty() {
        tail.push(0x2a);
        put_varint(&mut tail, service_id.len() as u64);
        tail.extend_from_slice(service_id);
    }
    if connection_id != 0 {
        tail.push(0x38);
        put_varint(&mut tail, u64::from(connection_id));
    }
    let room = 0xFFFF_usize.saturating_sub(head.len() + tail.len() + 1 + 3);
    let max = max_payload.clamp(1, room.max(1));
    for piece in raw.chunks(max) {
        let body = head.len() + 1 + varint_len(piece.len() as u64) + piece.len() + tail.len();
        let len = 2 + body;
        out.reserve(client_header_len(len) + len);
        let mask = masks.next(refill);
        put_client_header(out, OP_BINARY, len, mask);
        let start = out.len();
        out.extend_from_slice(&(body as u16).to_be_bytes());
        out.extend_from_slice(&head);
        out.push(0x22);
        put_varint(out, piece.len() as u64);
        out.extend_from_slice(piece);
        out.extend_from_slice(&tail);
        unmask_in_place(&mut out[start..], mask);
    }
}

// ---------------------------------------------------------------- incoming: results

/// How a feed ends the connection: the close frame to send (`code`, `reason`) before closing
/// the TCP connection. `by_server`: the relay sent a close frame with this code and reason (the
/// reply echoes the code); otherwise the relay's bytes broke a rule (a violation, as the
/// relay's own decoders report them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndClose {
    pub code: u16,
    pub reason: String,
    pub by_server: bool,
}

impl From<Violation> for EndClose {
    fn from(v: Violation) -> Self {
        EndClose { code: v.code, reason: v.reason, by_server: false }
    }
}

/// One result item: `key` Some for (grouped) decoded data of that connection, None for another
/// message; its bytes are `bytes[start..end]` of the feed's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<K> {
    pub key: Option<K>,
    pub start: usize,
    pub end: usize,
}

/// What one feed gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output<K> {
    pub items: Vec<Item<K>>,
    pub bytes: Vec<u8>,
    /// masked frames to write back (pongs)
    pub to_send: Vec<u8>,
    pub close: Option<EndClose>,
}

impl<K> Default for Output<K> {
    fn default() -> Self {
        Output { items: Vec::new(), bytes: Vec::new(), to_send: Vec::new(), close: None }
    }
}

impl<K: PartialEq> Output<K> {
    /// Data for `key`, appended by `write` (false: nothing was appended, and the output is as
    /// before). Joined with the previous item when that is data of the same connection.
    fn data(&mut self, key: K, write: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
        let start = self.bytes.len();
        if !write(&mut self.bytes) {
            self.bytes.truncate(start);
            return false;
        }
        let end = self.bytes.len();
        if let Some(last) = self.items.last_mut() {
            if last.key.as_ref() == Some(&key) && last.end == start {
                last.end = end;
                return true;
            }
        }
        self.items.push(Item { key: Some(key), start, end });
        true
    }

    fn message(&mut self, raw: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(raw);
        self.items.push(Item { key: None, start, end: self.bytes.len() });
    }
}

// ---------------------------------------------------------------- incoming: server frames

/// What a protocol does with the data frames of the server's stream.
trait Protocol {
    type Key: PartialEq;
    /// A data frame's header checks (opcode refused, size), `so_far`: bytes of the message
    /// before this frame.
    fn check(&self, op: u8, len: u64, so_far: usize) -> Result<(), Violation>;
    /// A complete data frame's payload (`op`: the message's opcode, `fin`: its last frame).
    fn frame(&mut self, op: u8, fin: bool, payload: &[u8], out: &mut Output<Self::Key>) -> Result<(), Violation>;
    /// Drop partial message state (after a close, or `reset`).
    fn clear(&mut self);
}

/// The frame layer both ends' decoders share: server frames must not be masked; otherwise the
/// rules of frame.rs's client loop (docs/codec.md, "Frame rules"), pings answered with a
/// masked pong, close frames checked as the relay checks a client's.
#[derive(Default)]
struct Frames {
    pending: Vec<u8>,
    in_message: bool,
    message_op: u8,
    so_far: usize,
    closed: bool,
    messages: u64,
}

impl Frames {
    fn feed<P: Protocol>(
        &mut self,
        p: &mut P,
        data: &[u8],
        refill: &mut dyn FnMut(&mut Vec<u8>) -> bool,
        masks: &mut Masks,
    ) -> Output<P::Key> {
        let mut out = Output::default();
        if self.closed || data.is_empty() {
            return out;
        }
        // complete the frame held from earlier reads with the front of `data` (only the bytes it
        // needs), then read the rest of `data` in place: reads rarely end on a frame boundary
        let mut buf = std::mem::take(&mut self.pending);
        let mut data = data;
        while !buf.is_empty() && !data.is_empty() && out.close.is_none() {
            let want = match frame_size(&buf) {
                Some(total) => usize::try_from(total).unwrap_or(usize::MAX).saturating_sub(buf.len()),
                None => 14usize.saturating_sub(buf.len()),
            };
            let k = want.clamp(1, data.len());
            buf.extend_from_slice(&data[..k]);
            data = &data[k..];
            let used = self.frames(p, &buf, &mut out, refill, masks);
            buf.drain(..used);
        }
        if buf.is_empty() && !data.is_empty() && out.close.is_none() {
            let used = self.frames(p, data, &mut out, refill, masks);
            if out.close.is_none() {
                buf.extend_from_slice(&data[used..]);
            }
        }
        if out.close.is_some() {
            self.closed = true;
            self.in_message = false;
            p.clear();
            buf.clear();
        }
        self.pending = buf;
        out
    }

    fn frames<P: Protocol>(
        &mut self,
        p: &mut P,
        buf: &[u8],
        out: &mut Output<P::Key>,
        refill: &mut dyn FnMut(&mut Vec<u8>) -> bool,
        masks: &mut Masks,
    ) -> usize {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            if rest.len() < 2 {
                return pos;
            }
            let (b0, b1) = (rest[0], rest[1]);
            let len7 = b1 & 0x7f;
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let masked = b1 & 0x80 != 0;
            let hlen = 2 + ext + if masked { 4 } else { 0 };
            if rest.len() < hlen {
                return pos;
            }
            macro_rules! fail {
                ($v:expr) => {{
                    out.close = Some(EndClose::from($v));
                    return pos;
                }};
            }
            if masked {
                fail!(Violation::new(CLOSE_PROTOCOL_ERROR, "server frames must not be masked"));
            }
            if b0 & 0x70 != 0 {
                fail!(Violation::new(CLOSE_PROTOCOL_ERROR, "reserved bits must be zero"));
            }
            let op = b0 & 0x0f;
            if !matches!(op, OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
                fail!(Violation::new(CLOSE_PROTOCOL_ERROR, format!("unknown opcode {op}")));
            }
            let fin = b0 & 0x80 != 0;
            let len: u64 = match ext {
                0 => u64::from(len7),
                2 => u64::from(u16::from_be_bytes([rest[2], rest[3]])),
                _ => u64::from_be_bytes([rest[2], rest[3], rest[4], rest[5], rest[6], rest[7], rest[8], rest[9]]),
            };
            if len >> 63 != 0 {
                fail!(Violation::new(CLOSE_PROTOCOL_ERROR, "frame length has the most significant bit set"));
            }
            if op >= OP_CLOSE {
                if !fin {
                    fail!(Violation::new(CLOSE_PROTOCOL_ERROR, "control frames must not be fragmented"));
                }
                if len > MAX_CONTROL_PAYLOAD as u64 {
                    fail!(Violation::new(CLOSE_PROTOCOL_ERROR, "control frame payload exceeds 125 bytes"));
                }
            } else {
                if op == OP_CONT && !self.in_message {
                    fail!(Violation::new(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame"));
                }
                if op != OP_CONT && self.in_message {
                    fail!(Violation::new(CLOSE_PROTOCOL_ERROR, "expected a continuation frame"));
                }
                let message_op = if op == OP_CONT { self.message_op } else { op };
                let so_far = if op == OP_CONT { self.so_far } else { 0 };
                if let Err(v) = p.check(message_op, len, so_far) {
                    fail!(v);
                }
            }
            if ((rest.len() - hlen) as u64) < len {
                return pos;
            }
            let len = len as usize; // bounded by the checks above
            let payload = &rest[hlen..hlen + len];
            pos += hlen + len;
            match op {
                OP_PING => {
                    let mask = masks.next(refill);
                    put_client_frame(&mut out.to_send, OP_PONG, payload, mask);
                }
                OP_PONG => {}
                OP_CLOSE => {
                    out.close = Some(server_close(payload));
                    return pos;
                }
                _ => {
                    if op != OP_CONT {
                        self.message_op = op;
                        self.so_far = 0;
                    }
                    self.so_far += len;
                    self.in_message = !fin;
                    if fin {
                        self.messages += 1;
                    }
                    if let Err(v) = p.frame(self.message_op, fin, payload, out) {
                        fail!(v);
                    }
                }
            }
        }
    }
}

/// Header + payload size of the frame `buf` starts with, once its header is there.
fn frame_size(buf: &[u8]) -> Option<u64> {
    let b1 = *buf.get(1)?;
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let hlen = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
    let head = buf.get(..hlen)?;
    let len = match ext {
        0 => u64::from(b1 & 0x7f),
        2 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        _ => u64::from_be_bytes([head[2], head[3], head[4], head[5], head[6], head[7], head[8], head[9]]),
    };
    Some((hlen as u64).saturating_add(len))
}

/// The close a server close frame asks for: its code and reason when valid (an empty payload is
/// 1000), else the violation frame.rs's `close_reply` names.
fn server_close(p: &[u8]) -> EndClose {
    if p.is_empty() {
        return EndClose { code: CLOSE_NORMAL, reason: String::new(), by_server: true };
    }
    let v = close_reply(p);
    if p.len() >= 2 && v.reason.is_empty() && v.code == u16::from_be_bytes([p[0], p[1]]) {
        let reason = String::from_utf8_lossy(&p[2..]).into_owned(); // close_reply checked it is UTF-8
        return EndClose { code: v.code, reason, by_server: true };
    }
    v.into()
}

// ---------------------------------------------------------------- Huawei (`tcp` service)

struct Huawei {
    max_message: usize,
    chunk: usize,
    fragments: Vec<u8>,
}

/// The message texts of the relay's rules (docs/codec.md, "Envelope rules"), checked on what
/// the relay sends the ends.
fn huawei_message(msg: &[u8], chunk: usize, out: &mut Output<String>) -> Result<(), Violation> {
    // what the ends write (orjson's layout) is taken without the JSON parser: when the data
    // decodes as base64 the message is valid JSON with these fields, by construction
    if let Some((id, data)) = exact_forward_data(msg) {
        if forward_data(id, data, chunk, out) {
            return Ok(());
        }
    }
    let env = match json::parse_with_data(msg) {
        Ok(Doc::Object(env)) => env,
        Ok(Doc::NotObject) => return Err(Violation::new(CLOSE_INVALID_ENVELOPE, "message must be a JSON object")),
        Err(_) => {
            if std::str::from_utf8(msg).is_err() {
                return Err(Violation::new(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in text message"));
            }
            return Err(Violation::new(CLOSE_INVALID_ENVELOPE, "invalid JSON"));
        }
    };
    // the fast path: a forward_data of the tcp service with a non-empty canonical base64 string
    // of at most `chunk` bytes; anything else goes to Python raw (relay/ends/huawei_tcp.py's rules answer it)
    if let (Field::Str(op), Field::Str(service), Field::Str(rid), Field::Str(data)) =
        (&env.operation_type, &env.tunnel_service_type, &env.request_id, &env.data)
    {
        if op == "forward_data" && service == "tcp" && forward_data(rid, data.as_bytes(), chunk, out) {
            return Ok(());
        }
    }
    out.message(msg);
    Ok(())
}

/// Data of connection `id` if `data` is non-empty canonical base64 of at most `chunk` bytes
/// (else false, and `out` is unchanged).
fn forward_data(id: &str, data: &[u8], chunk: usize, out: &mut Output<String>) -> bool {
    if data.is_empty() || data.len() > b64_len(chunk) {
        return false;
    }
    out.data(id.to_owned(), |bytes| {
        let start = bytes.len();
        b64_decode_into(bytes, data) && bytes.len() - start <= chunk
    })
}

const FORWARD_DATA_HEAD: &[u8] = b"{\"operation_type\":\"forward_data\",\"tunnel_service_type\":\"tcp\",\"request_id\":\"";

/// (request_id, data) of a message in exactly the layout `forward_data_prefix` writes, with an id
/// that needs no unescaping; the data is not checked here.
fn exact_forward_data(msg: &[u8]) -> Option<(&str, &[u8])> {
    let rest = msg.strip_prefix(FORWARD_DATA_HEAD)?;
    let q = rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    if rest[q] != b'"' {
        return None;
    }
    let id = std::str::from_utf8(&rest[..q]).ok()?;
    let data = rest[q + 1..].strip_prefix(b",\"data\":\"")?.strip_suffix(b"\"}")?;
    Some((id, data))
}

impl Protocol for Huawei {
    type Key = String;

    fn check(&self, op: u8, len: u64, so_far: usize) -> Result<(), Violation> {
        if op == OP_BINARY {
            return Err(Violation::new(CLOSE_UNSUPPORTED_DATA, "binary messages are not supported"));
        }
        if len > (self.max_message - so_far.min(self.max_message)) as u64 {
            return Err(Violation::new(CLOSE_TOO_BIG, format!("message exceeds {} bytes", self.max_message)));
        }
        Ok(())
    }

    fn frame(&mut self, _op: u8, fin: bool, payload: &[u8], out: &mut Output<String>) -> Result<(), Violation> {
        if fin && self.fragments.is_empty() {
            return huawei_message(payload, self.chunk, out);
        }
        self.fragments.extend_from_slice(payload);
        if !fin {
            return Ok(());
        }
        let msg = std::mem::take(&mut self.fragments);
        let res = huawei_message(&msg, self.chunk, out);
        self.fragments = msg;
        self.fragments.clear();
        res
    }

    fn clear(&mut self) {
        self.fragments = Vec::new();
    }
}

/// The Huawei-protocol end's incoming side: one `feed` per read of the WebSocket.
pub struct EndDecoder {
    frames: Frames,
    proto: Huawei,
}

impl EndDecoder {
    pub fn new(max_message: usize, chunk: usize) -> Self {
        EndDecoder { frames: Frames::default(), proto: Huawei { max_message, chunk: chunk.max(1), fragments: Vec::new() } }
    }

    /// The data messages' decoded bytes, grouped per connection (key: the connection id), and
    /// the other messages raw, in order; pongs to send; the close, if this read ends the
    /// connection. Nothing is returned after a close until `reset`.
    pub fn feed(&mut self, data: &[u8], refill: &mut dyn FnMut(&mut Vec<u8>) -> bool, masks: &mut Masks) -> Output<String> {
        self.frames.feed(&mut self.proto, data, refill, masks)
    }

    pub fn closed(&self) -> bool {
        self.frames.closed
    }

    /// Complete data messages received.
    pub fn messages(&self) -> u64 {
        self.frames.messages
    }

    /// A new connection: drop the partial frame and message and the closed state.
    pub fn reset(&mut self) {
        let messages = self.frames.messages;
        self.frames = Frames { messages, ..Frames::default() };
        self.proto.clear();
    }
}

// ---------------------------------------------------------------- AWS (V1-V3)

/// (serviceId, streamId, connectionId) of a DATA message (absent fields: "", 0, 0).
pub type AwsKey = (Vec<u8>, i32, u32);

struct Aws {
    max_payload: usize,
    stream: Vec<u8>,
}

/// The bytes of the last `payload` field (4) of a message `aws::parse` accepted.
fn payload_of(b: &[u8]) -> &[u8] {
    fn varint(b: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut i = 0;
        while let Some(&byte) = b.get(*pos) {
            *pos += 1;
            v |= u64::from(byte & 0x7f) << (7 * i).min(63);
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut found: &[u8] = &[];
    let mut pos = 0;
    while pos < b.len() {
        let tag = varint(b, &mut pos);
        match tag & 7 {
            0 => {
                varint(b, &mut pos);
            }
            2 => {
                let len = varint(b, &mut pos) as usize;
                let end = (pos + len).min(b.len());
                if tag >> 3 == 4 {
                    found = &b[pos..end];
                }
                pos = end;
            }
            1 => pos += 8,
            _ => pos += 4,
        }
    }
    found
}

impl Aws {
    /// The complete tunnel messages of the stream buffer: DATA's payload grouped, others raw
    /// (the protobuf body, no length prefix), with the relay's rules 1-3 (docs/codec.md,
    /// "Tunnel-message rules"); what the other rules say is the ends' business (relay/ends/aws_streams.py).
    fn messages(&mut self, out: &mut Output<AwsKey>) -> Result<(), Violation> {
        let mut pos = 0;
        let res = loop {
            let rest = &self.stream[pos..];
            if rest.len() < 2 {
                break Ok(());
            }
            let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            if n == 0 {
                break Err(Violation::new(aws::CLOSE_INVALID_MESSAGE, "empty tunnel message"));
            }
            if rest.len() < 2 + n {
                break Ok(());
            }
            let body = &rest[2..2 + n];
            let f = match aws::parse(body) {
                Ok(f) => f,
                Err(e) => break Err(Violation::new(aws::CLOSE_INVALID_MESSAGE, format!("invalid tunnel message: {e}"))),
            };
            if f.payload_len > self.max_payload {
                break Err(Violation::new(CLOSE_TOO_BIG, format!("payload exceeds {} bytes", self.max_payload)));
            }
            pos += 2 + n;
            if f.typ == aws::TYPE_DATA {
                if f.payload_len > 0 {
                    let payload = payload_of(body);
                    out.data((f.service_id.to_vec(), f.stream_id, f.connection_id), |bytes| {
                        bytes.extend_from_slice(payload);
                        true
                    });
                }
            } else {
                out.message(body);
            }
        };
        self.stream.drain(..pos);
        res
    }
}

impl Protocol for Aws {
    type Key = AwsKey;

    fn check(&self, op: u8, len: u64, _so_far: usize) -> Result<(), Violation> {
        if op == OP_TEXT {
            return Err(Violation::new(CLOSE_UNSUPPORTED_DATA, aws::TEXT_REFUSED));
        }
        if len > aws::FRAME_CAP as u64 {
            return Err(Violation::new(CLOSE_TOO_BIG, format!("frame exceeds {} bytes", aws::FRAME_CAP)));
        }
        Ok(())
    }

    fn frame(&mut self, _op: u8, _fin: bool, payload: &[u8], out: &mut Output<AwsKey>) -> Result<(), Violation> {
        self.stream.extend_from_slice(payload);
        self.messages(out)
    }

    fn clear(&mut self) {
        self.stream = Vec::new();
    }
}

/// The AWS-protocol end's incoming side: one `feed` per read of the WebSocket.
pub struct AwsEndDecoder {
    frames: Frames,
    proto: Aws,
}

impl AwsEndDecoder {
    pub fn new(max_payload: usize) -> Self {
        AwsEndDecoder { frames: Frames::default(), proto: Aws { max_payload, stream: Vec::new() } }
    }

    /// DATA payloads grouped per (serviceId, streamId, connectionId), the other tunnel messages
    /// raw (protobuf body without the length prefix), in order; pongs; the close, if any.
    pub fn feed(&mut self, data: &[u8], refill: &mut dyn FnMut(&mut Vec<u8>) -> bool, masks: &mut Masks) -> Output<AwsKey> {
        self.frames.feed(&mut self.proto, data, refill, masks)
    }

    pub fn closed(&self) -> bool {
        self.frames.closed
    }

    /// Complete binary messages (WebSocket messages, not tunnel messages) received.
    pub fn messages(&self) -> u64 {
        self.frames.messages
    }

    pub fn reset(&mut self) {
        let messages = self.frames.messages;
        self.frames = Frames { messages, ..Frames::default() };
        self.proto.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter_refill() -> impl FnMut(&mut Vec<u8>) -> bool {
        let mut n = 0u8;
        move |pool: &mut Vec<u8>| {
            for _ in 0..MASK_POOL {
                pool.push(n);
                n = n.wrapping_add(37);
            }
            true
        }
    }

    /// What the relay does with a client frame: check the mask bit, unmask.
    fn unmask_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            assert!(b[1] & 0x80 != 0, "client frames are masked");
            let (len, h) = match b[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
                l => (usize::from(l), 2),
            };
            let mask: [u8; 4] = b[h..h + 4].try_into().unwrap();
            let mut p = b[h + 4..h + 4 + len].to_vec();
            unmask_in_place(&mut p, mask);
            out.push((b[0], p));
            b = &b[h + 4 + len..];
        }
        out
    }

    fn server_frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        crate::frame::write_header(&mut f, op, payload.len());
        if !fin {
            f[0] &= 0x7f;
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn base64_round_trip_and_canonical_only() {
        for n in 0..40usize {
            let src: Vec<u8> = (0..n).map(|i| (i * 73 + 11) as u8).collect();
            let mut enc = Vec::new();
            b64_encode_into(&mut enc, &src);
            assert_eq!(enc.len(), b64_len(n));
            let mut dec = vec![7u8];
            assert!(b64_decode_into(&mut dec, &enc), "n={n}");
            assert_eq!(&dec[1..], &src[..]);
        }
        let mut enc = Vec::new();
        b64_encode_into(&mut enc, b"ABC\xff");
        assert_eq!(enc, b"QUJD/w==");
        for bad in [&b"QR=="[..], b"QUJ=", b"QUJD=", b"Q===", b"=QQ=", b"QU D", b"QUI", b"QQ==QQ==", b"QUJ\x80"] {
            let mut out = vec![1u8];
            assert!(!b64_decode_into(&mut out, bad), "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(out, vec![1u8]);
        }
    }

    /// The scalar definition: 6 bits per alphabet character.
    fn naive_decode(src: &[u8]) -> Option<Vec<u8>> {
        let body: Vec<u8> = src.iter().copied().take_while(|&c| c != b'=').collect();
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in body {
            let v = B64_VAL[c as usize];
            if v == 0xFF {
                return None;
            }
            bits = (bits << 6) | u32::from(v);
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        Some(out)
    }

    #[test]
    fn base64_blocks_agree_with_the_scalar_definition() {
        // long enough for the AVX2 blocks, at every alignment; every byte value at every place
        for n in [24usize, 47, 48, 49, 96, 200, 1000, 7000] {
            let src: Vec<u8> = (0..n).map(|i| (i * 131 + 7) as u8).collect();
            let mut enc = Vec::new();
            b64_encode_into(&mut enc, &src);
            let naive_enc: Vec<u8> = {
                let mut e = Vec::new();
                for g in src.chunks(3) {
                    let v = g.iter().enumerate().fold(0u32, |a, (k, &b)| a | u32::from(b) << (16 - 8 * k));
                    for k in 0..4 {
                        e.push(if k <= g.len() { B64[((v >> (18 - 6 * k)) & 63) as usize] } else { b'=' });
                    }
                }
                e
            };
            assert_eq!(enc, naive_enc, "n={n}");
            let mut dec = Vec::new();
            assert!(b64_decode_into(&mut dec, &enc));
            assert_eq!(dec, src);
        }
        let mut enc = Vec::new();
        b64_encode_into(&mut enc, &(0..72u8).collect::<Vec<_>>());
        for pos in 0..enc.len() - 4 {
            for c in 0..=255u8 {
                let mut s = enc.clone();
                s[pos] = c;
                let mut dec = Vec::new();
                let ok = b64_decode_into(&mut dec, &s);
                assert_eq!(ok, B64_VAL[c as usize] != 0xFF, "pos {pos} byte {c}");
                if ok {
                    assert_eq!(Some(dec), naive_decode(&s), "pos {pos} byte {c}");
                }
            }
        }
    }

    #[test]
    fn forward_data_is_the_envelope_of_forward_py_in_masked_frames() {
        let mut out = Vec::new();
        let raw: Vec<u8> = (0..(CHUNK * 2 + 5)).map(|i| i as u8).collect();
        let (mut refill, mut masks) = (counter_refill(), Masks::default());
        put_forward_data(&mut out, &forward_data_prefix("f-\"1"), &raw, CHUNK, &mut refill, &mut masks);
        let frames = unmask_frames(&out);
        assert_eq!(frames.len(), 3);
        let mut back = Vec::new();
        for (b0, p) in &frames {
            assert_eq!(*b0, 0x81);
            let text = std::str::from_utf8(p).unwrap();
            assert!(text.starts_with(
                "{\"operation_type\":\"forward_data\",\"tunnel_service_type\":\"tcp\",\"request_id\":\"f-\\\"1\",\"data\":\""
            ));
            assert!(p.len() < 10240);
            let b64 = &text[text.find(",\"data\":\"").unwrap() + 9..text.len() - 2];
            assert!(b64_decode_into(&mut back, b64.as_bytes()));
        }
        assert_eq!(back, raw);
    }

    #[test]
    fn masks_differ_per_frame_and_come_from_the_pool() {
        let mut out = Vec::new();
        let (mut refill, mut masks) = (counter_refill(), Masks::default());
        let raw = vec![0u8; 10 * 3];
        put_forward_data(&mut out, &forward_data_prefix("c"), &raw, 3, &mut refill, &mut masks);
        let mut keys = Vec::new();
        let mut b = &out[..];
        while !b.is_empty() {
            let len = usize::from(b[1] & 0x7f);
            keys.push(b[2..6].to_vec());
            b = &b[6 + len..];
        }
        assert_eq!(keys.len(), 10);
        keys.dedup();
        assert_eq!(keys.len(), 10);
        let mut failing = |_: &mut Vec<u8>| false;
        assert_eq!(Masks::default().next(&mut failing), [0; 4]);
    }

    #[test]
    fn aws_data_matches_aws_messages_frame() {
        // aws_messages.frame(ProxyMessage(DATA, stream_id=5, payload=b"hi", service_id="SSH", connection_id=2))
        let want = b"\x00\x0f\x08\x01\x10\x05\x22\x02hi\x2a\x03SSH\x38\x02";
        let mut out = Vec::new();
        let (mut refill, mut masks) = (counter_refill(), Masks::default());
        put_aws_data(&mut out, b"SSH", 5, 2, b"hi", 64512, &mut refill, &mut masks);
        assert_eq!(unmask_frames(&out), vec![(0x82, want.to_vec())]);
        // negative stream id: ten bytes, defaults omitted
        let mut out = Vec::new();
        put_aws_data(&mut out, b"", -1, 0, b"x", 64512, &mut refill, &mut masks);
        let want = b"\x00\x10\x08\x01\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x22\x01x";
        assert_eq!(unmask_frames(&out), vec![(0x82, want.to_vec())]);
        // split at max_payload
        let mut out = Vec::new();
        put_aws_data(&mut out, b"S", 1, 1, &[9u8; 64512 * 2 + 1], 64512, &mut refill, &mut masks);
        let frames = unmask_frames(&out);
        assert_eq!(frames.len(), 3);
        assert!(frames.iter().all(|(_, p)| p.len() - 2 == usize::from(u16::from_be_bytes([p[0], p[1]]))));
    }

    fn envelope(op: &str, rid: &str, data: &str) -> Vec<u8> {
        format!("{{\"operation_type\":\"{op}\",\"tunnel_service_type\":\"tcp\",\"request_id\":\"{rid}\",\"data\":{data}}}")
            .into_bytes()
    }

    #[test]
    fn huawei_feed_groups_data_and_keeps_order() {
        let mut stream = Vec::new();
        stream.extend(server_frame(OP_TEXT, true, &envelope("forward_data", "a", "\"QUJD\"")));
        stream.extend(server_frame(OP_TEXT, true, &envelope("forward_data", "a", "\"REVG\"")));
        stream.extend(server_frame(OP_PING, true, b"hb"));
        stream.extend(server_frame(OP_TEXT, true, &envelope("forward_ack", "a", "{\"bytes\":3}")));
        stream.extend(server_frame(OP_TEXT, false, &envelope("forward_data", "b", "\"R0g=\"")[..10]));
        stream.extend(server_frame(OP_CONT, true, &envelope("forward_data", "b", "\"R0g=\"")[10..]));
        stream.extend(server_frame(OP_TEXT, true, &envelope("forward_data", "b", "\"R0h=\""))); // not canonical
        let (mut refill, mut masks) = (counter_refill(), Masks::default());
        for cut in 0..stream.len() {
            let mut d = EndDecoder::new(MAX_MESSAGE, CHUNK);
            let mut outs = vec![d.feed(&stream[..cut], &mut refill, &mut masks)];
            outs.push(d.feed(&stream[cut..], &mut refill, &mut masks));
            let mut got: Vec<(Option<String>, Vec<u8>)> = Vec::new();
            let mut pongs = Vec::new();
            for o in &outs {
                assert_eq!(o.close, None);
                pongs.extend(unmask_frames(&o.to_send));
                for it in &o.items {
                    let b = o.bytes[it.start..it.end].to_vec();
                    match got.last_mut() {
                        Some((Some(k), prev)) if it.key.as_ref() == Some(k) => prev.extend(b),
                        _ => got.push((it.key.clone(), b)),
                    }
                }
            }
            assert_eq!(pongs, vec![(0x8a, b"hb".to_vec())]);
            assert_eq!(got.len(), 4, "cut {cut}");
            assert_eq!(got[0], (Some("a".into()), b"ABCDEF".to_vec()));
            assert_eq!(got[1], (None, envelope("forward_ack", "a", "{\"bytes\":3}")));
            assert_eq!(got[2], (Some("b".into()), b"GH".to_vec()));
            assert_eq!(got[3], (None, envelope("forward_data", "b", "\"R0h=\"")));
        }
    }

    fn close_of(stream: &[u8]) -> Option<EndClose> {
        let (mut refill, mut masks) = (counter_refill(), Masks::default());
        let mut d = EndDecoder::new(100, CHUNK);
        let out = d.feed(stream, &mut refill, &mut masks);
        assert_eq!(d.closed(), out.close.is_some());
        out.close
    }

    #[test]
    fn huawei_closes() {
        let v = |code: u16, reason: &str| Some(EndClose { code, reason: reason.into(), by_server: false });
        let mut masked = server_frame(OP_TEXT, true, b"{}");
        masked[1] |= 0x80;
        masked.extend_from_slice(&[0; 4]);
        assert_eq!(close_of(&masked), v(1002, "server frames must not be masked"));
        assert_eq!(close_of(&server_frame(OP_BINARY, true, b"x")), v(1003, "binary messages are not supported"));
        assert_eq!(close_of(&server_frame(OP_TEXT, true, &[b'a'; 101])[..4]), v(1009, "message exceeds 100 bytes"));
        assert_eq!(close_of(&server_frame(OP_TEXT, true, b"{")), v(4400, "invalid JSON"));
        assert_eq!(close_of(&server_frame(OP_TEXT, true, b"\"\xff\"")), v(1007, "invalid UTF-8 in text message"));
        assert_eq!(close_of(&server_frame(OP_TEXT, true, b"[]")), v(4400, "message must be a JSON object"));
        assert_eq!(close_of(&server_frame(OP_CONT, true, b"x")), v(1002, "unexpected continuation frame"));
        assert_eq!(
            close_of(&server_frame(OP_CLOSE, true, b"\x0f\xa0bye")),
            Some(EndClose { code: 4000, reason: "bye".into(), by_server: true })
        );
        assert_eq!(close_of(&server_frame(OP_CLOSE, true, b"")), Some(EndClose { code: 1000, reason: "".into(), by_server: true }));
        assert_eq!(close_of(&server_frame(OP_CLOSE, true, b"\x03\xed")), v(1002, "invalid close code 1005"));
    }

    #[test]
    fn aws_feed() {
        use crate::aws::test_util::msg;
        let mut stream = Vec::new();
        let mut payload = Vec::new();
        payload.extend(msg(1, 1, b"abc", "SSH", 1));
        payload.extend(msg(1, 1, b"def", "SSH", 1));
        payload.extend(msg(3, 1, b"", "SSH", 0));
        payload.extend(msg(1, 1, b"gh", "SSH", 2));
        stream.extend(server_frame(OP_BINARY, false, &payload[..7]));
        stream.extend(server_frame(OP_CONT, true, &payload[7..]));
        let (mut refill, mut masks) = (counter_refill(), Masks::default());
        for cut in 0..stream.len() {
            let mut d = AwsEndDecoder::new(64512);
            let a = d.feed(&stream[..cut], &mut refill, &mut masks);
            let b = d.feed(&stream[cut..], &mut refill, &mut masks);
            let items: Vec<_> = [a, b]
                .iter()
                .flat_map(|o| o.items.iter().map(|i| (i.key.clone(), o.bytes[i.start..i.end].to_vec())).collect::<Vec<_>>())
                .collect();
            let ssh = b"SSH".to_vec();
            let first = items[0].1.len();
            assert!(first == 3 || first == 6, "cut {cut}");
            let joined: Vec<u8> = items.iter().take_while(|i| i.0 == Some((ssh.clone(), 1, 1))).flat_map(|i| i.1.clone()).collect();
            assert_eq!(joined, b"abcdef");
            let rest: Vec<_> = items.iter().skip_while(|i| i.0 == Some((ssh.clone(), 1, 1))).cloned().collect();
            assert_eq!(rest, vec![(None, msg(3, 1, b"", "SSH", 0)[2..].to_vec()), (Some((ssh.clone(), 1, 2)), b"gh".to_vec())]);
        }
        let mut d = AwsEndDecoder::new(2);
        let out = d.feed(&server_frame(OP_BINARY, true, &msg(1, 1, b"abc", "", 0)), &mut refill, &mut masks);
        assert_eq!(out.close, Some(EndClose { code: 1009, reason: "payload exceeds 2 bytes".into(), by_server: false }));
        let mut d = AwsEndDecoder::new(2);
        let out = d.feed(&server_frame(OP_BINARY, true, b"\x00\x00"), &mut refill, &mut masks);
        assert_eq!(out.close.unwrap().reason, "empty tunnel message");
        let mut d = AwsEndDecoder::new(2);
        let out = d.feed(&server_frame(OP_TEXT, true, b"x"), &mut refill, &mut masks);
        assert_eq!(out.close.unwrap().code, 1003);
    }
}
