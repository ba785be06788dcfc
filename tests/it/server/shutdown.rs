//! Operation: graceful shutdown answers waiters and ends event streams; leases survive a
//! restart; background cleanup runs inside the server.

use std::time::Duration;

use serde_json::json;

use super::routes::post_json;
use super::{waiters, Options, TestServer, STEP};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_waiters_ends_streams_and_keeps_every_lease() {
    let mut server = TestServer::start().await;
    let held = server.acquire(&server.alice, &["src/a.rs"], 600_000).await;
    let held_id = held[0]["id"].as_str().unwrap().to_string();
    let mut stream = server.events("", &[]).await;
    let waiter = {
        let (url, token) = (server.url(), server.bob.clone());
        tokio::spawn(async move {
            post_json(
                &url,
                &token,
                json!({ "paths": ["src/a.rs"], "wait_ms": 600_000 }),
            )
            .await
        })
    };
    waiters(&server, "src/a.rs", 1).await;
    let old_addr = server.addr;

    let stopping = server.begin_stop();
    let (status, body) = tokio::time::timeout(STEP, waiter)
        .await
        .expect("the waiter is answered")
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
    // The event stream ends instead of holding the shutdown up.
    while let Some(event) = stream.next().await {
        assert!(
            event.comment.is_some(),
            "no event after shutdown: {event:?}"
        );
    }
    tokio::time::timeout(STEP, stopping)
        .await
        .expect("the server stops in time")
        .unwrap()
        .expect("a clean stop");
    assert!(
        tokio::net::TcpStream::connect(old_addr).await.is_err(),
        "no longer listening"
    );

    // A new server on the same database has the acknowledged lease and no stale waiter.
    server.launch(Options::default()).await;
    let lease = server
        .get(&format!("/v1/leases/{held_id}"), &server.alice)
        .await
        .expect(200, "");
    assert_eq!(lease.json, held[0]);
    let status = server
        .get("/v1/status?path=src/a.rs", &server.alice)
        .await
        .expect(200, "");
    assert_eq!(status.json["waiters"], json!([]));
    let history = server
        .get("/v1/history?agent=bob", &server.alice)
        .await
        .expect(200, "");
    assert_eq!(history.json["events"][0]["event_type"], "wait_failed");
    // Renewing and releasing work across the restart.
    server
        .post(
            &format!("/v1/leases/{held_id}/renew"),
            &server.alice,
            json!({}),
        )
        .await
        .expect(200, "");
    server
        .send(
            "DELETE",
            &format!("/v1/leases/{held_id}"),
            &server.alice,
            None,
        )
        .await
        .expect(200, "");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_cleanup_runs_inside_the_server() {
    let server = TestServer::start_with(Options {
        background: true,
        ..Options::default()
    })
    .await;
    server.acquire(&server.alice, &["a"], 1_000).await;
    // The background task sleeps on the manual clock until the next round; move the clock one
    // cleanup interval at a time until a round has run (the task may not be asleep yet at the
    // first move).
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        server.clock.advance(Duration::from_secs(300));
        let history = server
            .get("/v1/history", &server.alice)
            .await
            .expect(200, "");
        if history.json["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "expired")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "background cleanup never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
