//! The server's end of the agent link against a real socket: malformed, unexpected and
//! repeated frames are refused or ignored, never fatal; acknowledgements make events apply once.

use std::sync::Arc;

use dirigent_server::{auth::secrets, clock::SystemClock};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::support::config;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    addr: std::net::SocketAddr,
    credential: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/agent/v1/connect")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(close) => panic!("closed: {close:?}"),
            _ => {}
        }
    }
}

fn hello() -> String {
    json!({"type": "hello", "host": "pc", "os_user": "robot", "labels": {}, "capacity": 2, "version": "test"}).to_string()
}

#[tokio::test]
async fn bad_frames_are_survived_and_events_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("dirigent.db").display());
    let server = dirigent_server::start(config(url), Arc::new(SystemClock))
        .await
        .unwrap();
    let addr = server.local_addr();
    let credential = secrets::new_token(secrets::AGENT_CREDENTIAL_PREFIX).unwrap();
    server.provision_agent("pc-1", &credential).await.unwrap();

    let refused = connect(addr, "dga_wrong").await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");

    // The first frame must be a hello.
    let mut socket = connect(addr, &credential).await.unwrap();
    socket
        .send(Message::Text(r#"{"type": "ack", "id": 1}"#.into()))
        .await
        .unwrap();
    let ended = socket.next().await;
    assert!(
        matches!(ended, Some(Ok(Message::Close(_))) | None | Some(Err(_))),
        "{ended:?}"
    );

    let mut socket = connect(addr, &credential).await.unwrap();
    socket.send(Message::Text(hello().into())).await.unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "welcome", "last_event_id": 0})
    );
    socket.send(Message::Text("not json".into())).await.unwrap();
    socket
        .send(Message::Binary(vec![0, 159, 146, 150].into()))
        .await
        .unwrap();
    socket
        .send(Message::Text(r#"{"type": "event", "id": "x"}"#.into()))
        .await
        .unwrap();
    let event = json!({"type": "event", "id": 1, "event": {"kind": "paused", "run_id": "run_unknown", "at": "2027-01-01T00:00:00Z"}});
    socket
        .send(Message::Text(event.to_string().into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "ack", "id": 1})
    );
    socket
        .send(Message::Text(event.to_string().into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "ack", "id": 1}),
        "a resent event is acknowledged again"
    );
    socket
        .send(Message::Text(
            json!({"type": "synced", "live_runs": []})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    drop(socket);

    // A new connection learns which events were applied.
    let mut socket = connect(addr, &credential).await.unwrap();
    socket.send(Message::Text(hello().into())).await.unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "welcome", "last_event_id": 1})
    );
    // Output of a run this agent does not hold is ignored, its own records kept; neither
    // ends the link.
    let output = json!({"type": "event", "id": 2, "event": {"kind": "output", "run_id": "run_unknown",
        "lines": [{"seq": 1, "stream": "stdout", "at": "2027-01-01T00:00:00Z", "text": "forged"}]}});
    let own = json!({"type": "event", "id": 3, "event": {"kind": "logs", "records": [
        {"at": "2027-01-01T00:00:00Z", "level": "info", "target": "dirigent_agent", "text": "hello"}]}});
    for frame in [output, own] {
        socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }
    while next_json(&mut socket).await != json!({"type": "ack", "id": 3}) {}
    drop(socket);
    let mut socket = connect(addr, &credential).await.unwrap();
    socket.send(Message::Text(hello().into())).await.unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "welcome", "last_event_id": 3})
    );
    drop(socket);

    let health = tokio::net::TcpStream::connect(addr).await;
    assert!(health.is_ok(), "the server still serves");
    server.shutdown().await.unwrap();
}
