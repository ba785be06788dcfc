//! `GET /v1/events`: Server-Sent Events, in commit order, filtered by path, with heartbeats and
//! replay after a reconnect.

use std::time::Duration;

use serde_json::json;

use super::{Options, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_sees_acquired_renewed_released_and_expired_in_order() {
    let server = TestServer::start().await;
    let mut stream = server.events("", &[]).await;

    let a = server.acquire(&server.alice, &["src/a.rs"], 60_000).await;
    let a_id = a[0]["id"].as_str().unwrap().to_string();
    server
        .post(
            &format!("/v1/leases/{a_id}/renew"),
            &server.alice,
            json!({}),
        )
        .await
        .expect(200, "");
    server
        .send("DELETE", &format!("/v1/leases/{a_id}"), &server.alice, None)
        .await
        .expect(200, "");
    let b = server.acquire(&server.bob, &["src/b.rs"], 1_000).await;
    server.clock.advance(Duration::from_millis(1_000));
    server
        .send("POST", "/v1/cleanup", &server.admin, None)
        .await
        .expect(200, "");
    server
        .post(
            "/v1/agents/carol/force-release",
            &server.admin,
            json!({ "reason": "none held" }),
        )
        .await
        .expect(200, "");
    let c = server.acquire(&server.carol, &["src/c.rs"], 60_000).await;
    server
        .post(
            "/v1/agents/carol/force-release",
            &server.admin,
            json!({ "reason": "stuck" }),
        )
        .await
        .expect(200, "");

    let expected = [
        ("acquired", &a[0]),
        ("renewed", &a[0]),
        ("released", &a[0]),
        ("acquired", &b[0]),
        ("expired", &b[0]),
        ("acquired", &c[0]),
        ("force_released", &c[0]),
    ];
    let mut last_id = 0;
    for (kind, lease) in expected {
        let event = stream.next_event().await.expect("an event");
        assert_eq!(event.event.as_deref(), Some(kind), "{event:?}");
        assert_eq!(event.data["event_type"], kind);
        assert_eq!(event.data["lease_id"], lease["id"]);
        assert_eq!(event.data["file_path"], lease["file_path"]);
        let id: i64 = event.id.as_deref().unwrap().parse().unwrap();
        assert_eq!(event.data["id"], id);
        assert!(id > last_id, "ids grow: {id} after {last_id}");
        last_id = id;
    }
    // The stream carries exactly what the history holds.
    let history = server
        .get("/v1/history", &server.alice)
        .await
        .expect(200, "");
    assert_eq!(history.json["events"].as_array().unwrap().len(), 7);
    assert_eq!(history.json["events"][6]["id"], last_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_filter_takes_overlapping_paths_and_idle_streams_get_heartbeats() {
    let server = TestServer::start_with(Options {
        heartbeat: Duration::from_millis(50),
        ..Options::default()
    })
    .await;
    let mut src = server.events("?path=src/", &[]).await;
    let mut file = server.events("?path=src/a.rs&agent=bob", &[]).await;

    server.acquire(&server.alice, &["docs/x.md"], 60_000).await;
    let a = server.acquire(&server.alice, &["src/a.rs"], 60_000).await;
    server.acquire(&server.bob, &["srcx/y.rs"], 60_000).await;
    let a_id = a[0]["id"].as_str().unwrap();
    server
        .send("DELETE", &format!("/v1/leases/{a_id}"), &server.alice, None)
        .await
        .expect(200, "");
    server.acquire(&server.bob, &["src/"], 60_000).await;

    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = src.next_event().await.unwrap();
        seen.push(format!(
            "{} {} {}",
            event.data["event_type"], event.data["agent_id"], event.data["file_path"]
        ));
    }
    assert_eq!(
        seen,
        [
            r#""acquired" "alice" "src/a.rs""#,
            r#""released" "alice" "src/a.rs""#,
            r#""acquired" "bob" "src/""#
        ]
    );

    // The file filter with agent=bob: only bob's lease on the folder above the file.
    let only = file.next_event().await.unwrap();
    assert_eq!(
        (
            only.data["file_path"].clone(),
            only.data["agent_id"].clone()
        ),
        (json!("src/"), json!("bob"))
    );

    // Nothing else happens under src/: what comes next is a heartbeat comment.
    let next = src.next().await.unwrap();
    assert_eq!(next.comment.as_deref(), Some("heartbeat"), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_with_last_event_id_gets_what_it_missed_first() {
    let server = TestServer::start().await;
    server.acquire(&server.alice, &["a"], 60_000).await;
    server.acquire(&server.alice, &["b"], 60_000).await;
    server.acquire(&server.alice, &["c"], 60_000).await;
    let history = server
        .get("/v1/history", &server.alice)
        .await
        .expect(200, "");
    let first = history.json["events"][0]["id"].as_i64().unwrap();

    let mut stream = server
        .events("", &[("last-event-id", &first.to_string())])
        .await;
    server.acquire(&server.alice, &["d"], 60_000).await;
    let mut paths = Vec::new();
    for _ in 0..3 {
        let event = stream.next_event().await.unwrap();
        paths.push(event.data["file_path"].as_str().unwrap().to_string());
    }
    assert_eq!(paths, ["b", "c", "d"]);
}
