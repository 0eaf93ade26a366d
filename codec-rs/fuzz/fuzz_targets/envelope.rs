//! The envelope layer on one complete text message: `json::parse`, `json::write_str` and
//! `Policy::check`. Invariants:
//! * nothing panics (nor trips a debug assertion or an integer overflow);
//! * `json::parse` accepting means valid UTF-8 (the decoder skips a separate UTF-8 pass on it);
//! * `write_str` of any string parses back to the same string (replies quote client strings);
//! * `check` answers 1007 exactly for invalid UTF-8, otherwise only the envelope codes, with a
//!   sendable reason; it forwards only JSON objects; its replies are one text frame holding a
//!   pong or disconnect for the same request_id;
//! * a request id accepted for connect/command/forward_open from the source is refused the
//!   second time (4409) while it is in the window.
#![no_main]

use _codec_rs::envelope::{Outcome, Policy, SOURCE};
use _codec_rs::frame::OP_TEXT;
use _codec_rs::json::{self, Doc, Envelope, Field};
use codec_rs_fuzz::{server_frames, write_seeds_from_env, Input};
use libfuzzer_sys::fuzz_target;

fn envelope(text: &[u8]) -> Option<Envelope<'_>> {
    match json::parse(text) {
        Ok(Doc::Object(env)) => Some(env),
        _ => None,
    }
}

fn str_field<'a>(f: &'a Field<'_>) -> Option<&'a str> {
    match f {
        Field::Str(s) => Some(s),
        _ => None,
    }
}

fuzz_target!(init: write_seeds_from_env(seeds), |data: &[u8]| {
    // config: side, peer connected, request-id window (0-3); then the message
    let mut input = Input(data);
    let flags = input.byte();
    let text = input.0;

    let utf8 = std::str::from_utf8(text).is_ok();
    assert!(json::parse(text).is_err() || utf8, "JSON accepted invalid UTF-8");

    let s = String::from_utf8_lossy(text);
    let mut doc = b"{\"request_id\":".to_vec();
    json::write_str(&mut doc, &s);
    doc.push(b'}');
    let env = envelope(&doc).expect("write_str output does not parse");
    assert_eq!(str_field(&env.request_id), Some(&*s), "write_str does not round-trip");

    let mut policy = Policy::new(flags & 1, vec!["ssh".into()], usize::from(flags >> 2 & 3));
    let peer = flags & 2 != 0;
    let mut to_sender = Vec::new();
    let outcome = policy.check(text, peer, &mut to_sender);
    let (op, rid) = match envelope(text) {
        Some(env) => (str_field(&env.operation_type).map(str::to_owned), str_field(&env.request_id).map(str::to_owned)),
        None => (None, None),
    };
    match &outcome {
        Err(v) => {
            assert!(to_sender.is_empty());
            assert_eq!(v.code == 1007, !utf8, "1007 iff invalid UTF-8: {v:?}");
            assert!(matches!(v.code, 1007 | 4400 | 4403 | 4409) && v.reason.len() <= 123, "{v:?}");
        }
        Ok(o) => {
            assert!(op.is_some() && rid.is_some(), "accepted without operation_type or request_id");
            let frames = server_frames(&to_sender);
            if *o == Outcome::Answered {
                assert_eq!(frames.len(), 1);
                let (fop, _, reply) = frames[0];
                let reply = envelope(reply).expect("reply is not a JSON object");
                assert_eq!(fop, OP_TEXT);
                assert!(matches!(str_field(&reply.operation_type), Some("pong" | "disconnect")));
                assert_eq!(str_field(&reply.request_id), rid.as_deref());
            } else {
                assert!(frames.is_empty());
                assert!(*o != Outcome::Forward || peer, "forwarded to an absent peer");
            }
        }
    }
    let fresh = matches!(op.as_deref(), Some("connect" | "command" | "forward_open"));
    if outcome.is_ok() && fresh && flags & 1 == SOURCE && flags >> 2 & 3 != 0 {
        let again = policy.check(text, peer, &mut Vec::new());
        assert_eq!(again.map_err(|v| v.code), Err(4409), "request_id accepted twice");
    }
});

fn seeds() -> Vec<Vec<u8>> {
    let env = |op: &str, rid: &str| {
        format!(r#"{{"operation_type":"{op}","tunnel_service_type":"ssh","request_id":"{rid}","data":null}}"#)
    };
    let mut seeds: Vec<Vec<u8>> = [
        (0b0110, env("connect", "1")),
        (0b0110, env("command", "r\\u0031\\ud83d\\ude00")),
        (0b0100, env("ping", "q\\\"1")),
        (0b0001, env("command_response", "7")),
        (0b0000, env("forward_open", "f")),
        (0b0010, r#"{"a":[1,-2.5e-3,true,false,null,{"b":"\n\t"}],"request_id":1}"#.to_owned()),
        (0b0010, r#"[1e400, "\udc00"]"#.to_owned()),
    ]
    .into_iter()
    .map(|(flags, text)| [vec![flags], text.into_bytes()].concat())
    .collect();
    seeds.push(b"\x02{\"operation_type\":\"\xff\"}".to_vec());
    seeds
}
