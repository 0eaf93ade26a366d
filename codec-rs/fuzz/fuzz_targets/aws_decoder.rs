//! The AWS Secure Tunneling `AwsDecoder` on arbitrary client bytes, and `aws::parse` on them
//! as one raw protobuf message. Invariants:
//! * neither panics (nor trips a debug assertion or an integer overflow);
//! * how the bytes are cut into reads does not matter: fed whole or in fuzzer-chosen reads,
//!   the same tunnel messages go to the peer, and the same pongs and STREAM_RESETs (in the same
//!   order) to the sender, with the same close and counters; only how the messages are packed
//!   into frames may differ;
//! * once it has returned a close it stays closed and emits nothing;
//! * what it writes is well-formed server frames within `to_peer_bound`: binary frames of at most
//!   FRAME_CAP bytes made of whole tunnel messages, each of which passes the rules it enforces
//!   (known relayable type, payload <= max_payload, one of the tunnel's services);
//! * a message `parse` accepts re-parses the same doubled (last field wins), and the
//!   STREAM_RESET built from it parses back to the same stream, service and connection.
#![no_main]

use _codec_rs::aws::{self, AwsDecoder, FRAME_CAP, MAX_PAYLOAD, TYPE_CONNECTION_START, TYPE_STREAM_RESET};
use _codec_rs::aws::{TYPE_DATA, TYPE_SESSION_RESET, TYPE_SERVICE_IDS, TYPE_STREAM_START};
use _codec_rs::close::Violation;
use _codec_rs::envelope::{DEVICE, SOURCE};
use _codec_rs::frame::{OP_BINARY, OP_PING, OP_PONG};
use codec_rs_fuzz::{config, seeds_of, server_frames, split, tunnel_messages, write_seeds_from_env, Input, RECORDS};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Default, PartialEq)]
struct Run {
    to_peer: Vec<Vec<u8>>,
    /// `None` for a STREAM_RESET (its bytes are in the message), `Some(payload)` for a pong
    to_sender: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    close: Option<Violation>,
    messages: u64,
    bytes: u64,
}

fn run(mut d: AwsDecoder, reads: &[&[u8]]) -> Run {
    let mut r = Run::default();
    for &read in reads {
        let was_closed = d.closed();
        let bound = d.to_peer_bound(read.len());
        let (mut to_peer, mut to_sender) = (Vec::new(), Vec::new());
        let close = d.feed(read, &mut to_peer, &mut to_sender);
        if was_closed {
            assert!(close.is_none() && to_peer.is_empty() && to_sender.is_empty());
            assert!(d.closed(), "a closed decoder reopened");
            continue;
        }
        assert_eq!(close.is_some(), d.closed(), "closed iff a close was returned");
        assert!(to_peer.len() <= bound, "to_peer {} > bound {bound}", to_peer.len());
        assert!(d.peer_connected || to_peer.is_empty(), "forwarded to an absent peer");
        for (op, _, payload) in server_frames(&to_peer) {
            assert_eq!(op, OP_BINARY);
            assert!(!payload.is_empty() && payload.len() <= FRAME_CAP, "frame of {} bytes", payload.len());
            for m in tunnel_messages(payload) {
                let f = aws::parse(&m[2..]).expect("forwarded a message that does not parse");
                assert!(f.payload_len <= d.max_payload);
                assert!(matches!(f.typ, 1..=7) && f.typ != TYPE_SESSION_RESET && f.typ != TYPE_SERVICE_IDS);
                assert!(d.side == SOURCE || (f.typ != TYPE_STREAM_START && f.typ != TYPE_CONNECTION_START));
                let known = d.services.iter().any(|s| **s == *f.service_id);
                assert!(d.services.is_empty() || f.service_id.is_empty() || known, "forwarded another service");
                r.to_peer.push(m.to_vec());
            }
        }
        for (op, _, payload) in server_frames(&to_sender) {
            if op == OP_PONG {
                r.to_sender.push((Some(payload.to_vec()), Vec::new()));
                continue;
            }
            assert_eq!(op, OP_BINARY);
            assert!(!d.peer_connected, "STREAM_RESET sent while the peer is connected");
            for m in tunnel_messages(payload) {
                assert_eq!(aws::parse(&m[2..]).expect("reply does not parse").typ, TYPE_STREAM_RESET);
                r.to_sender.push((None, m.to_vec()));
            }
        }
        if let Some(v) = &close {
            assert!(matches!(v.code, 1000..=1003 | 1007..=1011 | 3000..=4999), "close code {}", v.code);
            assert!(v.reason.len() <= 123);
        }
        r.close = r.close.or(close);
    }
    (r.messages, r.bytes) = (d.messages(), d.bytes());
    r
}

/// `parse` on raw bytes, and what an accepted message must satisfy.
fn check_parse(raw: &[u8]) {
    let Ok(f) = aws::parse(raw) else { return };
    assert!(f.payload_len <= raw.len() && std::str::from_utf8(f.service_id).is_ok());
    let twice = [raw, raw].concat();
    let again = aws::parse(&twice).expect("a message repeated does not parse");
    assert_eq!(again, f, "repeated singular fields: the last one must win");
    let mut reply = Vec::new();
    if aws::put_stream_reset(&mut reply, &f) {
        assert_eq!(usize::from(u16::from_be_bytes([reply[0], reply[1]])), reply.len() - 2);
        let g = aws::parse(&reply[2..]).expect("a STREAM_RESET does not parse");
        assert_eq!(g.typ, TYPE_STREAM_RESET);
        assert_eq!((g.stream_id, g.service_id, g.connection_id), (f.stream_id, f.service_id, f.connection_id));
        assert_eq!((g.payload_len, g.ignorable), (0, false));
    }
}

fuzz_target!(init: write_seeds_from_env(seeds), |data: &[u8]| {
    // config: flags (side, peer connected, services: 2 bits for none, SSH, SSH+HTTP or HTTP,
    // -, -, -, records), max_payload
    let mut input = Input(data);
    let flags = input.byte();
    let max = input.limit();
    let services: [&[&str]; 4] = [&[], &["SSH"], &["SSH", "HTTP"], &["HTTP"]];
    let services = services[usize::from(flags >> 2 & 3)];
    let (sizes, stream) = input.stream(flags & RECORDS != 0);
    let reads = split(&stream, &sizes);
    if flags & RECORDS == 0 {
        check_parse(&stream);
    }
    let decoder = || {
        let mut d = AwsDecoder::new(flags & 1, services.iter().map(|&s| s.into()).collect(), max);
        d.peer_connected = flags & 2 != 0;
        d
    };
    let in_reads = run(decoder(), &reads);
    assert_eq!(run(decoder(), &[&stream]), in_reads, "fed whole vs in reads {sizes:?}");
});

/// A framed tunnel message (the codec's own test builder): type, stream id, payload (under
/// 128 bytes here), service id, connection id.
fn msg(t: i32, stream: u8, payload: &[u8], sid: &str, conn: u8) -> Vec<u8> {
    aws::test_util::msg(t as u8, stream, payload, sid, conn)
}

fn bin(m: &[u8]) -> (bool, u8, &[u8]) {
    (true, OP_BINARY, m)
}

fn seeds() -> Vec<Vec<u8>> {
    let session = [
        msg(TYPE_STREAM_START, 1, b"", "SSH", 1),
        msg(TYPE_DATA, 1, b"hello", "SSH", 1),
        msg(TYPE_CONNECTION_START, 1, b"", "SSH", 2),
        msg(7, 1, b"", "SSH", 2),
        msg(TYPE_STREAM_RESET, 1, b"", "SSH", 0),
    ]
    .concat();
    let data = msg(TYPE_DATA, 3, &[7; 100], "HTTP", 1);
    let ignorable = [vec![0, 4, 0x08, 0x09, 0x18, 0x01], msg(TYPE_DATA, 1, b"x", "", 0)].concat();
    let fragmented = [(false, OP_BINARY, &data[..50]), (true, OP_PING, b"hi"), (true, 0x0, &data[50..])];
    let (src, dev, peer, ssh_http) = (SOURCE, DEVICE, 2, 8);
    let mut seeds = [
        seeds_of(src | peer | ssh_http, MAX_PAYLOAD, &[], &[bin(&session)]),
        seeds_of(src | ssh_http, MAX_PAYLOAD, &[9, 20], &[bin(&session)]),
        seeds_of(dev | peer | ssh_http, MAX_PAYLOAD, &[40, 6], &fragmented),
        seeds_of(dev, MAX_PAYLOAD, &[], &[bin(&data), (true, OP_PING, b"p"), bin(&data)]),
        seeds_of(src | peer, 40, &[], &[bin(&ignorable)]),
        seeds_of(src | peer, MAX_PAYLOAD, &[], &[(true, 0x8, b"\x03\xe8")]),
    ]
    .concat();
    // one raw protobuf message, for `parse` alone (not a valid frame)
    seeds.push([&config(0, 0)[..], &[0], &msg(TYPE_DATA, 5, b"payload", "SSH", 9)[2..]].concat());
    seeds
}
