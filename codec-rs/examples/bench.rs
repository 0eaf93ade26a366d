//! Quick timing of the codec stages on a message file: `cargo run --release --example bench -- FILE`.
use std::time::Instant;

use _codec_rs::decoder::Decoder;
use _codec_rs::json;

fn time<F: FnMut()>(name: &str, bytes: usize, mut f: F) {
    let iters = 20_000;
    for _ in 0..100 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let per = t.elapsed().as_secs_f64() / iters as f64;
    println!("{name:>12}: {:8.0} ns  {:6.2} GB/s", per * 1e9, bytes as f64 / per / 1e9);
}

fn main() {
    let path = std::env::args().nth(1).expect("message file");
    let msg = std::fs::read(path).expect("read");
    let n = msg.len();
    time("from_utf8", n, || {
        std::hint::black_box(std::str::from_utf8(std::hint::black_box(&msg)).is_ok());
    });
    time("json", n, || {
        std::hint::black_box(json::parse(std::hint::black_box(&msg)).is_ok());
    });
    time("json {}", 2, || {
        std::hint::black_box(json::parse(std::hint::black_box(b"{}")).is_ok());
    });
    time("json [1]", 3, || {
        std::hint::black_box(json::parse(std::hint::black_box(b"[1]")).is_ok());
    });
    for doc in [&b"{\"a\":\"b\"}"[..], b"{\"operation_type\":\"x\"}", b"{\"a\":\"b\",\"c\":\"d\",\"e\":\"f\",\"g\":\"h\"}", b"[\"a\",\"b\",\"c\",\"d\",\"e\"]"] {
        time(&String::from_utf8_lossy(doc), doc.len(), || {
            std::hint::black_box(json::parse(std::hint::black_box(doc)).is_ok());
        });
    }
    let mask = [0x5a, 0x13, 0xc4, 0x7e];
    let mut frame = vec![0x81u8, 0x80 | 126];
    frame.extend_from_slice(&(n as u16).to_be_bytes());
    frame.extend_from_slice(&mask);
    frame.extend(msg.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let frames: Vec<u8> = (0..16).flat_map(|_| frame.clone()).collect();
    let mut d = Decoder::new(1, 10240, vec!["ssh".into()], 1024);
    d.peer_connected = true;
    let mut out = Vec::with_capacity(frames.len());
    let mut snd = Vec::new();
    time("feed x16", frames.len(), || {
        out.clear();
        assert!(d.feed(std::hint::black_box(&frames), &mut out, &mut snd).is_none());
    });
}
