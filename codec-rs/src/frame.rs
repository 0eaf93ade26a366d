//! RFC 6455 frame helpers: server->client frame encoding, client payload unmasking, and the
//! client-frame loop (header checks, control frames, fragmentation) shared by both decoders.

use crate::close::{truncate_utf8, Violation, CLOSE_INVALID_PAYLOAD, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, MAX_CLOSE_REASON};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest control frame payload.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// An append-only output buffer that can be rolled back (for rejected or answered messages).
pub trait Out {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn truncate(&mut self, len: usize);
    fn put(&mut self, bytes: &[u8]);
    /// The bytes written from `from` on.
    fn tail_mut(&mut self, from: usize) -> &mut [u8];
}

impl Out for Vec<u8> {
    #[inline]
    fn len(&self) -> usize {
        Vec::len(self)
    }
    #[inline]
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len)
    }
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes)
    }
    #[inline]
    fn tail_mut(&mut self, from: usize) -> &mut [u8] {
        &mut self[from..]
    }
}

/// An unmasked FIN server frame header, written to an `Out`.
#[inline]
pub fn out_header<O: Out>(out: &mut O, opcode: u8, len: usize) {
    let b0 = 0x80 | opcode;
    if len < 126 {
        out.put(&[b0, len as u8]);
    } else if len <= 0xFFFF {
        let l = (len as u16).to_be_bytes();
        out.put(&[b0, 126, l[0], l[1]]);
    } else {
        let l = (len as u64).to_be_bytes();
        out.put(&[b0, 127, l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]);
    }
}

/// Size of an unmasked server frame header for a payload of `len` bytes.
#[inline]
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

/// Append an unmasked FIN frame header with `opcode` for a payload of `len` bytes.
#[inline]
pub fn write_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    let b0 = 0x80 | opcode;
    if len < 126 {
        out.extend_from_slice(&[b0, len as u8]);
    } else if len <= 0xFFFF {
        let l = (len as u16).to_be_bytes();
        out.extend_from_slice(&[b0, 126, l[0], l[1]]);
    } else {
        out.push(b0);
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Append one complete unmasked FIN frame.
#[inline]
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.reserve(header_len(payload.len()) + payload.len());
    write_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// One unmasked FIN text frame.
pub fn encode_text(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    write_frame(&mut out, OP_TEXT, payload);
    out
}

/// Close frame payload: 2-byte code + reason truncated to 123 bytes on a UTF-8 boundary.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let reason = truncate_utf8(reason, MAX_CLOSE_REASON);
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(reason.as_bytes());
    p
}

/// An unmasked close frame.
pub fn encode_close(code: u16, reason: &str) -> Vec<u8> {
    let p = close_payload(code, reason);
    let mut out = Vec::with_capacity(2 + p.len());
    write_frame(&mut out, OP_CLOSE, &p);
    out
}

/// An unmasked ping frame; `None` if the payload exceeds 125 bytes.
pub fn encode_ping(payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return None;
    }
    let mut out = Vec::with_capacity(2 + payload.len());
    write_frame(&mut out, OP_PING, payload);
    Some(out)
}

/// Append `src` XOR-ed with the 4-byte `mask` (starting at mask offset 0) to `out`.
#[inline]
pub fn unmask_into(out: &mut Vec<u8>, src: &[u8], mask: [u8; 4]) {
    let start = out.len();
    out.reserve(src.len());
    out.extend_from_slice(src);
    unmask_in_place(&mut out[start..], mask);
}

/// XOR `buf` in place with the 4-byte `mask` (starting at mask offset 0).
#[inline]
pub fn unmask_in_place(buf: &mut [u8], mask: [u8; 4]) {
    let m32 = u32::from_ne_bytes(mask);
    let m64 = (u64::from(m32) << 32) | u64::from(m32);
    let mut chunks = buf.chunks_exact_mut(32);
    for c in &mut chunks {
        // four independent u64 lanes per step; the compiler vectorises this
        for lane in c.chunks_exact_mut(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(lane);
            let v = u64::from_ne_bytes(w) ^ m64;
            lane.copy_from_slice(&v.to_ne_bytes());
        }
    }
    // chunks of 32 keep the mask phase at 0, so the tail starts at mask offset 0 too
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// The close frame the server echoes for a client close frame payload.
pub fn close_reply(p: &[u8]) -> Violation {
    match p.len() {
        0 => Violation::new(CLOSE_NORMAL, ""),
        1 => Violation::new(CLOSE_PROTOCOL_ERROR, "close frame payload of 1 byte"),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            if !valid_close_code(code) {
                Violation::new(CLOSE_PROTOCOL_ERROR, format!("invalid close code {code}"))
            } else if std::str::from_utf8(&p[2..]).is_err() {
                Violation::new(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in close reason")
            } else {
                Violation::new(code, "")
            }
        }
    }
}

/// The protocol half of the client-frame loop: what a decoder does with data frames
/// (text, binary, continuation). Implemented on a concrete type, so `client_frames` is
/// monomorphised per decoder (no dynamic dispatch per frame).
pub trait DataFrames {
    /// The "inside a fragmented message" flag; `client_frames` checks and updates it.
    fn in_message(&mut self) -> &mut bool;
    /// The protocol's own header checks of a data frame (refused opcode, size limit), made
    /// after the fragmentation checks and before the payload has arrived.
    fn check_data(&self, op: u8, len: u64) -> Result<(), Violation>;
    /// Called before a pong is written to `to_sender` (to keep earlier replies in order).
    #[inline]
    fn before_pong(&mut self, _to_sender: &mut Vec<u8>) {}
    /// A complete data frame whose checks passed; `payload` is still masked with `mask`.
    /// `in_message` already says whether more fragments follow (`!fin`).
    fn data(&mut self, op: u8, fin: bool, payload: &[u8], mask: [u8; 4], to_sender: &mut Vec<u8>)
        -> Result<(), Violation>;
}

/// Parse the complete client frames in `buf`: the header checks in the documented order
/// (docs/codec.md), pongs for pings, the close reply, and the data frames to `d`.
/// Returns (bytes consumed, violation); an incomplete frame is left unconsumed.
#[inline]
pub fn client_frames<D: DataFrames>(d: &mut D, buf: &[u8], to_sender: &mut Vec<u8>) -> (usize, Option<Violation>) {
    let mut pos = 0usize;
    loop {
        let rest = &buf[pos..];
        if rest.len() < 2 {
            return (pos, None);
        }
        let (b0, b1) = (rest[0], rest[1]);
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let hlen = 2 + ext + if masked { 4 } else { 0 };
        if rest.len() < hlen {
            return (pos, None);
        }
        // ---- header checks, in the documented order
        if !masked {
            return (pos, Some(Violation::new(CLOSE_PROTOCOL_ERROR, "client frames must be masked")));
        }
        if b0 & 0x70 != 0 {
            return (pos, Some(Violation::new(CLOSE_PROTOCOL_ERROR, "reserved bits must be zero")));
        }
        let op = b0 & 0x0f;
        if !matches!(op, OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
            return (pos, Some(Violation::new(CLOSE_PROTOCOL_ERROR, format!("unknown opcode {op}"))));
        }
        let fin = b0 & 0x80 != 0;
        let len: u64 = match ext {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([rest[2], rest[3]])),
            _ => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&rest[2..10]);
                u64::from_be_bytes(l)
            }
        };
        if len >> 63 != 0 {
            return (pos, Some(Violation::new(CLOSE_PROTOCOL_ERROR, "frame length has the most significant bit set")));
        }
        if op >= OP_CLOSE {
            if !fin {
                return (pos, Some(Violation::new(CLOSE_PROTOCOL_ERROR, "control frames must not be fragmented")));
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return (pos, Some(Violation::new(CLOSE_PROTOCOL_ERROR, "control frame payload exceeds 125 bytes")));
            }
        } else {
            let in_message = *d.in_message();
            if op == OP_CONT && !in_message {
                return (pos, Some(Violation::new(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")));
            }
            if op != OP_CONT && in_message {
                return (pos, Some(Violation::new(CLOSE_PROTOCOL_ERROR, "expected a continuation frame")));
            }
            if let Err(v) = d.check_data(op, len) {
                return (pos, Some(v));
            }
        }
        // ---- wait for the whole payload
        if ((rest.len() - hlen) as u64) < len {
            return (pos, None);
        }
        let len = len as usize; // bounded by check_data or 125 here
        let mask = [rest[hlen - 4], rest[hlen - 3], rest[hlen - 2], rest[hlen - 1]];
        let payload = &rest[hlen..hlen + len];
        pos += hlen + len;
        match op {
            OP_PING => {
                d.before_pong(to_sender);
                write_header(to_sender, OP_PONG, len);
                unmask_into(to_sender, payload, mask);
            }
            OP_PONG => {}
            OP_CLOSE => {
                let mut p = Vec::with_capacity(len);
                unmask_into(&mut p, payload, mask);
                return (pos, Some(close_reply(&p)));
            }
            _ => {
                // a data frame: a message is in progress until a FIN frame ends it
                *d.in_message() = !fin;
                if let Err(v) = d.data(op, fin, payload, mask, to_sender) {
                    return (pos, Some(v));
                }
            }
        }
    }
}

/// Run `process` (which returns bytes consumed, violation) over the bytes of an incomplete
/// frame held from earlier reads (in `pending(s)`) followed by `data`, and hold what it left
/// unconsumed (nothing after a violation). Without held bytes `data` is processed in place.
#[inline]
pub fn with_pending<S>(
    s: &mut S,
    pending: impl Fn(&mut S) -> &mut Vec<u8>,
    data: &[u8],
    process: impl FnOnce(&mut S, &[u8]) -> (usize, Option<Violation>),
) -> Option<Violation> {
    if pending(s).is_empty() {
        let (used, res) = process(s, data);
        if res.is_none() && used < data.len() {
            pending(s).extend_from_slice(&data[used..]);
        }
        res
    } else {
        let mut buf = std::mem::take(pending(s));
        buf.extend_from_slice(data);
        let (used, res) = process(s, &buf);
        buf.drain(..used);
        *pending(s) = buf;
        res
    }
}

/// Client frames for the decoders' tests (and the fuzz targets, with the `test-util` feature).
#[cfg(any(test, feature = "test-util"))]
pub mod test_util {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame.
    pub fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        masked_frame((if fin { 0x80 } else { 0 }) | op, payload, MASK)
    }

    /// A client frame with first byte `b0` (FIN, RSV bits, opcode), masked with `mask`.
    pub fn masked_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![b0];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_unmask(src: &[u8], mask: [u8; 4]) -> Vec<u8> {
        src.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect()
    }

    #[test]
    fn unmask_matches_naive_for_all_small_lengths() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for n in 0..200usize {
            let src: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let mut out = vec![9u8];
            unmask_into(&mut out, &src, mask);
            assert_eq!(&out[1..], &naive_unmask(&src, mask)[..], "n={n}");
        }
    }

    #[test]
    fn header_sizes() {
        assert_eq!(encode_text(b"hi"), b"\x81\x02hi");
        let p = vec![b'a'; 126];
        let f = encode_text(&p);
        assert_eq!(&f[..4], &[0x81, 126, 0, 126]);
        assert_eq!(f.len(), 130);
        let p = vec![b'a'; 65535];
        assert_eq!(&encode_text(&p)[..4], &[0x81, 126, 0xff, 0xff]);
        let p = vec![b'a'; 65536];
        let f = encode_text(&p);
        assert_eq!(&f[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(f.len(), 65546);
    }

    #[test]
    fn close_and_ping() {
        assert_eq!(encode_close(1000, ""), b"\x88\x02\x03\xe8");
        assert_eq!(encode_close(4400, "bad"), b"\x88\x05\x11\x30bad");
        let long = "é".repeat(100); // 200 bytes
        let f = encode_close(1000, &long);
        assert_eq!(f[1] as usize, 2 + 122);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
        assert_eq!(encode_ping(b"hb").unwrap(), b"\x89\x02hb");
        assert!(encode_ping(&[0u8; 125]).is_some());
        assert!(encode_ping(&[0u8; 126]).is_none());
    }
}
