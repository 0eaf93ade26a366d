//! RFC 6455 frame helpers: server->client frame encoding and client payload unmasking.

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Longest close reason that fits a control frame (125 - 2 bytes of code).
pub const MAX_CLOSE_REASON: usize = 123;
/// Largest control frame payload.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

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

/// Longest prefix of `s` that is at most `max` bytes and ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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

    #[test]
    fn truncation() {
        assert_eq!(truncate_utf8("abc", 2), "ab");
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("aé", 3), "aé");
    }
}
