//! The Huawei-protocol `Decoder` on arbitrary client bytes. Invariants:
//! * it never panics (nor trips a debug assertion or an integer overflow);
//! * how the bytes are cut into reads does not matter: fed whole or in fuzzer-chosen reads,
//!   the same bytes go to the peer and to the sender, with the same close and counters
//!   (the relay cannot choose how TCP splits a client's bytes);
//! * noting messages (`policy.noted`, a separately compiled path) changes no output;
//! * once it has returned a close it stays closed and emits nothing;
//! * what it writes is well-formed server frames: text frames of at most `max_message_size`
//!   bytes holding a JSON object each, pongs and envelope replies, within `to_peer_max` (a
//!   device's split output included);
//!   notes point at forwarded payloads whose operation_type is noted; the close is sendable.
#![no_main]

use _codec_rs::decoder::{to_peer_max, Decoder};
use _codec_rs::close::Violation;
use _codec_rs::envelope::{DEVICE, SOURCE};
use _codec_rs::frame::{OP_PING, OP_PONG, OP_TEXT};
use _codec_rs::json::{self, Doc, Field};
use codec_rs_fuzz::{seeds_of, server_frames, split, write_seeds_from_env, Input, RECORDS};
use libfuzzer_sys::fuzz_target;

const NOTED: [&str; 2] = ["connect", "command"];

#[derive(Debug, Default, PartialEq)]
struct Run {
    to_peer: Vec<u8>,
    to_sender: Vec<u8>,
    close: Option<Violation>,
    messages: u64,
    bytes: u64,
}

fn operation_type(payload: &[u8]) -> Option<String> {
    match json::parse(payload) {
        Ok(Doc::Object(env)) => match env.operation_type {
            Field::Str(s) => Some(s.into_owned()),
            _ => None,
        },
        _ => None,
    }
}

fn run(mut d: Decoder, reads: &[&[u8]]) -> Run {
    let mut r = Run::default();
    for &read in reads {
        let was_closed = d.closed();
        let bound = to_peer_max(&d, read.len());
        let (mut to_peer, mut to_sender) = (Vec::new(), Vec::new());
        let close = d.feed(read, &mut to_peer, &mut to_sender);
        if was_closed {
            assert!(close.is_none() && to_peer.is_empty() && to_sender.is_empty() && d.notes.is_empty());
            assert!(d.closed(), "a closed decoder reopened");
            continue;
        }
        assert_eq!(close.is_some(), d.closed(), "closed iff a close was returned");
        assert!(to_peer.len() <= bound, "to_peer {} > bound {bound}", to_peer.len());
        let frames = server_frames(&to_peer);
        for &(op, _, payload) in &frames {
            assert_eq!(op, OP_TEXT);
            assert!(payload.len() <= d.max_message_size, "relayed {} > max {}", payload.len(), d.max_message_size);
            assert!(matches!(json::parse(payload), Ok(Doc::Object(_))), "relayed a non-object");
        }
        for &(start, len) in &d.notes {
            assert!(frames.iter().any(|&(_, at, p)| at == start && p.len() == len), "note off a payload");
            let op = operation_type(&to_peer[start..start + len]).expect("noted payload without operation_type");
            assert!(NOTED.contains(&op.as_str()), "noted {op}");
        }
        for (op, _, payload) in server_frames(&to_sender) {
            assert!(op == OP_PONG || op == OP_TEXT, "sent opcode {op}");
            if op == OP_TEXT {
                let reply = operation_type(payload).expect("reply without operation_type");
                assert!(reply == "pong" || reply == "disconnect", "reply {reply}");
            }
        }
        if let Some(v) = &close {
            assert!(matches!(v.code, 1000..=1003 | 1007..=1011 | 3000..=4999), "close code {}", v.code);
            assert!(v.reason.len() <= 123);
        }
        r.to_peer.extend(to_peer);
        r.to_sender.extend(to_sender);
        r.close = r.close.or(close);
    }
    (r.messages, r.bytes) = (d.messages(), d.bytes());
    r
}

fuzz_target!(init: write_seeds_from_env(seeds), |data: &[u8]| {
    // config: flags (side, peer connected, noted, request-id window: 2 bits, -, -, records),
    // max_message_size
    let mut input = Input(data);
    let flags = input.byte();
    let max = input.limit();
    let (sizes, stream) = input.stream(flags & RECORDS != 0);
    let reads = split(&stream, &sizes);
    let decoder = |noted: bool| {
        let mut d = Decoder::new(flags & 1, max, vec!["ssh".into()], usize::from(flags >> 3 & 3));
        d.peer_connected = flags & 2 != 0;
        if noted {
            d.policy.noted = NOTED.iter().map(|&s| s.into()).collect();
        }
        d
    };
    let noted = flags & 4 != 0;
    let in_reads = run(decoder(noted), &reads);
    assert_eq!(run(decoder(noted), &[&stream]), in_reads, "fed whole vs in reads {sizes:?}");
    assert_eq!(run(decoder(!noted), &reads), in_reads, "noting changed the output");
});

fn env(op: &str, rid: &str) -> Vec<u8> {
    format!(r#"{{"operation_type":"{op}","tunnel_service_type":"ssh","request_id":"{rid}","data":"x"}}"#).into_bytes()
}

fn text(p: &[u8]) -> (bool, u8, &[u8]) {
    (true, OP_TEXT, p)
}

fn seeds() -> Vec<Vec<u8>> {
    let (connect, command, ping) = (env("connect", "1"), env("command", "2"), env("ping", "3"));
    let (disconnect, forward) = (env("disconnect", "d"), env("forward_data", "f"));
    let cmd = env("command_response", &"r".repeat(60));
    let utf8 = br#"{"a":[1,2.5e3,"\ud83d\ude00",null]}"#;
    let source = [text(&connect), text(&command), text(&ping), text(&connect)];
    let fragmented = [(false, OP_TEXT, &cmd[..40]), (true, OP_PING, b"hi"), (true, 0x0, &cmd[40..])];
    let (src, dev, peer, noted, window) = (SOURCE, DEVICE, 2, 4, 8);
    [
        seeds_of(src | peer | noted | window, 10240, &[], &source),
        seeds_of(src | window, 10240, &[10, 37], &source),
        seeds_of(dev | peer, 10240, &[30, 3], &fragmented),
        seeds_of(dev, 10240, &[], &[text(&disconnect), text(&forward)]),
        seeds_of(src | peer, 64, &[], &[text(&command)]),
        seeds_of(src | peer, 10240, &[], &[(true, 0x8, b"\x0f\xa0bye")]),
        seeds_of(src | peer, 10240, &[], &[text(utf8)]),
    ]
    .concat()
}
