//! The agent against a real WebSocket peer standing in for the server: what it does with
//! malformed, unexpected and repeated frames.

use std::{collections::BTreeMap, time::Duration};

use dirigent_agent::AgentConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{Request, Response},
};

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("the agent went quiet");
        match message.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(_) => panic!("the agent closed the link"),
            _ => {}
        }
    }
}

async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// Reads frames, acknowledging events, until one satisfies `done`; answers the events seen.
async fn events_until(socket: &mut Socket, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let frame = next_json(socket).await;
        if frame["type"] == "event" {
            send(socket, json!({"type": "ack", "id": frame["id"]})).await;
        }
        let finished = done(&frame);
        seen.push(frame);
        if finished {
            return seen;
        }
    }
}

#[tokio::test]
#[allow(
    clippy::result_large_err,
    reason = "tungstenite's handshake callback returns its own error type"
)]
async fn garbage_is_ignored_and_commands_apply_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        server_urls: vec![format!("http://{addr}")],
        trust: dirigent_client::Trust::System,
        data_dir: data.path().to_owned(),
        labels: BTreeMap::new(),
        capacity: 4,
        heartbeat: Duration::from_secs(15),
        orphaned: None,
        keeper: vec![
            env!("CARGO_BIN_EXE_dirigent").into(),
            "agent".into(),
            "keeper".into(),
            "--data".into(),
            data.path().into(),
        ],
        sessions: dirigent_agent::sessions::SessionsConfig {
            count: 0,
            width: 1920,
            height: 1080,
            desktop: Vec::new(),
            xvfb: "Xvfb".to_owned(),
            frame_every: None,
        },
        policy: dirigent_agent::activities::Policy::enrolled(),
        journal_max_bytes: u64::MAX,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(dirigent_agent::run(
        config,
        "dga_test".to_owned(),
        None,
        async move {
            let _ = stopped.await;
        },
    ));

    let (tcp, _) = listener.accept().await.unwrap();
    let mut authorization = None;
    let mut socket =
        tokio_tungstenite::accept_hdr_async(tcp, |request: &Request, response: Response| {
            authorization = request
                .headers()
                .get("authorization")
                .map(|value| value.to_str().unwrap().to_owned());
            Ok(response)
        })
        .await
        .unwrap();
    assert_eq!(authorization.as_deref(), Some("Bearer dga_test"));
    let hello = next_json(&mut socket).await;
    assert_eq!(
        (hello["type"].as_str(), hello["capacity"].as_u64()),
        (Some("hello"), Some(4))
    );

    socket.send(Message::Text("not json".into())).await.unwrap();
    socket
        .send(Message::Binary(vec![0xff, 0x00].into()))
        .await
        .unwrap();
    send(&mut socket, json!({"type": "command", "id": "one"})).await;
    send(&mut socket, json!({"type": "ack", "id": 99})).await;
    send(&mut socket, json!({"type": "welcome", "last_event_id": 0})).await;
    let synced = next_json(&mut socket).await;
    assert_eq!(
        synced,
        json!({"type": "synced", "live_runs": [], "sessions": [], "live_activities": [], "last_applied_command": 0})
    );

    let start = json!({"type": "command", "id": 1, "command": {"op": "start", "run_id": "run_a", "robot": "hello",
        "argv": ["sh", "-c", "echo hello from the robot"], "working_dir": null, "env": {},
        "stop_grace_seconds": 5, "max_duration_seconds": null}});
    send(&mut socket, start.clone()).await;
    let seen = events_until(&mut socket, |frame| frame["event"]["kind"] == "exited").await;
    assert_eq!(seen[0], json!({"type": "ack", "id": 1}));
    let kinds: Vec<&str> = seen
        .iter()
        .filter_map(|frame| frame["event"]["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["started", "output", "exited"]);
    assert_eq!(seen[2]["event"]["lines"][0]["text"], "hello from the robot");
    assert_eq!(seen[3]["event"]["exit_code"], 0);
    assert_eq!(seen[3]["event"]["ending"], "natural");

    // The same command again is acknowledged, not applied; an unknown run is no failure.
    send(&mut socket, start).await;
    send(
        &mut socket,
        json!({"type": "command", "id": 2, "command": {"op": "kill", "run_id": "run_unknown"}}),
    )
    .await;
    let acks: Vec<Value> = vec![next_json(&mut socket).await, next_json(&mut socket).await];
    assert_eq!(
        acks,
        [
            json!({"type": "ack", "id": 1}),
            json!({"type": "ack", "id": 2})
        ],
        "no second start"
    );

    stop.send(()).unwrap();
    agent.await.unwrap().unwrap();
}
