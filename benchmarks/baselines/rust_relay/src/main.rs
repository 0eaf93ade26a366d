//! Baseline: a native relay on tokio-tungstenite, one thread, serde_json validation, the
//! messages of one wake-up written with one flush. No authentication: only the relaying is
//! compared (like benchmarks/baselines/picows_relay.py).
//!
//!     rust-relay-baseline PORT

use std::{cell::RefCell, collections::HashMap, rc::Rc};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    Message,
};

type Peers = Rc<RefCell<HashMap<(String, String), mpsc::UnboundedSender<Message>>>>;

fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).expect("usage: rust-relay-baseline PORT");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let peers: Peers = Rc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn_local(serve(stream, peers.clone()));
        }
    });
}

async fn serve(stream: TcpStream, peers: Peers) {
    let mut path = String::new();
    let accepted = tokio_tungstenite::accept_hdr_async(stream, |request: &Request, response: Response| {
        path = request.uri().path().to_string();
        Ok(response)
    })
    .await;
    let Ok(ws) = accepted else { return };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() != 5 || !matches!(parts[4], "source-connect" | "device-connect") {
        return;
    }
    let tunnel = parts[3].to_string();
    let (side, peer_side) = if parts[4] == "source-connect" { ("source", "device") } else { ("device", "source") };
    let key = (tunnel.clone(), side.to_string());
    let peer_key = (tunnel, peer_side.to_string());
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    peers.borrow_mut().insert(key.clone(), tx);
    let (mut sink, mut source) = ws.split();
    let writer = tokio::task::spawn_local(async move {
        while let Some(message) = rx.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            while let Ok(message) = rx.try_recv() {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = source.next().await {
        match message {
            Message::Text(text) => {
                if text.len() > 10240 {
                    break;
                }
                let valid = matches!(serde_json::from_str::<serde_json::Value>(&text),
                                     Ok(serde_json::Value::Object(map)) if map.contains_key("operation_type"));
                if !valid {
                    break;
                }
                if let Some(peer) = peers.borrow().get(&peer_key) {
                    let _ = peer.send(Message::Text(text));
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    peers.borrow_mut().remove(&key);
    writer.abort();
}
