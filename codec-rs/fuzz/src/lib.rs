//! What the fuzz targets share: reading the fuzzer's input, checking the server frames a
//! decoder wrote, and the seeds each target writes when `CODEC_FUZZ_SEEDS` names a directory.
//!
//! Input of the decoder targets:
//!   [flags: 1 byte, bit 7 = RECORDS] [size limit: u64 LE] [n = reads - 1, mod 8]
//!   [n read sizes, 1 byte each] [stream...]
//! The stream is fed once whole and once cut into those reads (the rest is the last read).
//! It is the client's raw bytes, or with RECORDS, frame records (see `frames_from_records`)
//! encoded into well-formed masked client frames: raw bytes exercise the header checks,
//! records let the fuzzer reach what the frames carry (fragmentation, the envelope, tunnel
//! messages) without keeping lengths consistent.

use _codec_rs::frame::{OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use _codec_rs::frame::test_util::{client_frame, masked_frame};

/// The fuzzer's bytes, consumed from the front; missing bytes read as 0.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// A size limit: 8 bytes, little-endian, as the decoders compare it (a u64), so that
    /// libFuzzer's comparison tracing can set it next to a size the decoder compared it with;
    /// at most 16 MiB (the decoders' bounds arithmetic assumes a sane limit).
    pub fn limit(&mut self) -> usize {
        let b: [u8; 8] = std::array::from_fn(|_| self.byte());
        u64::from_le_bytes(b).min(1 << 24) as usize
    }

    /// The read sizes, then the stream (built from frame records if `records`).
    pub fn stream(mut self, records: bool) -> (Vec<usize>, Vec<u8>) {
        let n = self.byte() % 8;
        let sizes = (0..n).map(|_| usize::from(self.byte())).collect();
        let stream = if records { frames_from_records(self.0) } else { self.0.to_vec() };
        (sizes, stream)
    }
}

/// `stream` cut into reads of the given sizes; the rest is the last read.
pub fn split<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut rest = stream;
    let mut reads = Vec::with_capacity(sizes.len() + 1);
    for &size in sizes {
        let (read, more) = rest.split_at(size.min(rest.len()));
        reads.push(read);
        rest = more;
    }
    reads.push(rest);
    reads
}

/// Separates frame records: 0xF5 never occurs in UTF-8 text, so JSON payloads cannot hold it.
pub const SEP: &[u8] = b"\xf5\xf5";

/// Records `[b0][payload...]`, separated by `SEP`, each encoded as a masked client frame with
/// first byte `b0` (FIN, RSV bits and opcode as given) and that payload. No length to keep in
/// step with the payload, so inserting or erasing bytes keeps the frames well-formed. The mask
/// is 0: the payload bytes are the fuzzer's own, so comparisons against them guide it (raw
/// streams cover the masks).
pub fn frames_from_records(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut rest = data;
    while let Some((&b0, tail)) = rest.split_first() {
        let end = tail.windows(SEP.len()).position(|w| w == SEP).unwrap_or(tail.len());
        out.extend(masked_frame(b0, &tail[..end], [0; 4]));
        rest = tail.get(end + SEP.len()..).unwrap_or_default();
    }
    out
}

/// The frames a decoder wrote (server -> client): (opcode, offset of the payload, payload).
/// Panics unless `buf` is exactly a sequence of well-formed server frames: FIN set, no
/// reserved bits, unmasked, a known non-continuation opcode, the shortest length encoding.
pub fn server_frames(buf: &[u8]) -> Vec<(u8, usize, &[u8])> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        assert!(rest.len() >= 2, "truncated server frame header");
        let (b0, b1) = (rest[0], rest[1]);
        assert_eq!(b0 & 0xf0, 0x80, "server frame without FIN or with reserved bits: {b0:#x}");
        let op = b0 & 0x0f;
        assert!(matches!(op, OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) && op != OP_CONT, "opcode {op}");
        assert_eq!(b1 & 0x80, 0, "server frames must not be masked");
        let (hlen, len) = match b1 & 0x7f {
            126 => {
                assert!(rest.len() >= 4, "truncated 16-bit length");
                let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
                assert!(len >= 126, "16-bit length {len} should use the short form");
                (4, len)
            }
            127 => {
                assert!(rest.len() >= 10, "truncated 64-bit length");
                let len = u64::from_be_bytes(rest[2..10].try_into().unwrap());
                assert!(len > 0xffff, "64-bit length {len} should use a shorter form");
                (10, usize::try_from(len).unwrap())
            }
            n => (2, usize::from(n)),
        };
        assert!(rest.len() - hlen >= len, "server frame payload runs past the output");
        if op >= OP_CLOSE {
            assert!(len <= 125, "control frame payload of {len} bytes");
        }
        frames.push((op, pos + hlen, &rest[hlen..hlen + len]));
        pos += hlen + len;
    }
    frames
}

/// The tunnel messages (2-byte big-endian length + body) that exactly make up `payload`.
pub fn tunnel_messages(payload: &[u8]) -> Vec<&[u8]> {
    let mut msgs = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        assert!(rest.len() >= 2, "a frame ends inside a tunnel message's length");
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        assert!(n > 0 && rest.len() >= 2 + n, "a frame ends inside a tunnel message");
        msgs.push(&rest[..2 + n]);
        rest = &rest[2 + n..];
    }
    msgs
}

/// The flag (in the first config byte of both decoder targets) that makes the stream records.
pub const RECORDS: u8 = 0x80;

/// The config bytes of both decoder targets: flags, then the size limit.
pub fn config(flags: u8, limit: usize) -> Vec<u8> {
    [&[flags][..], &(limit as u64).to_le_bytes()].concat()
}

/// Frames for a seed: (FIN, opcode, payload).
pub type Frames<'a> = &'a [(bool, u8, &'a [u8])];

/// The two decoder-target seeds of `frames` (with the given config and read sizes): the
/// frames as raw client bytes, and as records.
pub fn seeds_of(flags: u8, limit: usize, reads: &[u8], frames: Frames<'_>) -> [Vec<u8>; 2] {
    let raw: Vec<u8> = frames.iter().flat_map(|&(fin, op, p)| client_frame(fin, op, p)).collect();
    let records: Vec<Vec<u8>> =
        frames.iter().map(|&(fin, op, p)| [&[u8::from(fin) << 7 | op][..], p].concat()).collect();
    let reads = [&[reads.len() as u8][..], reads].concat();
    [
        [config(flags, limit), reads.clone(), raw].concat(),
        [config(flags | RECORDS, limit), reads, records.join(SEP)].concat(),
    ]
}

/// When `CODEC_FUZZ_SEEDS` names a directory, write `seeds()` into it (run from the targets'
/// `init`, before libFuzzer reads its corpus directories, so that directory can be the corpus).
pub fn write_seeds_from_env(seeds: fn() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("CODEC_FUZZ_SEEDS") else { return };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    for (i, s) in seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), s).expect("write a seed");
    }
}
