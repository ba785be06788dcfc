//! Blocked acquisitions held open over HTTP: served in arrival order the moment the path is
//! free, and taken out of the queue when their client hangs up.

use serde_json::json;

use super::routes::post_json;
use super::{raw_post, raw_request, waiters, TestServer, STEP};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_blocked_waiters_are_served_in_arrival_order() {
    let server = TestServer::start().await;
    let held = server.acquire(&server.alice, &["src/a.rs"], 60_000).await;
    let held_id = held[0]["id"].as_str().unwrap().to_string();

    let bob = {
        let (url, token) = (server.url(), server.bob.clone());
        tokio::spawn(async move {
            post_json(
                &url,
                &token,
                json!({ "paths": ["src/a.rs"], "wait_ms": 60_000 }),
            )
            .await
        })
    };
    waiters(&server, "src/a.rs", 1).await;
    let carol = {
        let (url, token) = (server.url(), server.carol.clone());
        tokio::spawn(async move {
            post_json(
                &url,
                &token,
                json!({ "paths": ["src/"], "wait_ms": 60_000 }),
            )
            .await
        })
    };
    waiters(&server, "src/a.rs", 2).await;
    let status = server
        .get("/v1/status?path=src/a.rs", &server.alice)
        .await
        .expect(200, "");
    let queue: Vec<&str> = status.json["waiters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(queue, ["bob", "carol"]);

    // The clock never moves: only the release can wake bob.
    server
        .send(
            "DELETE",
            &format!("/v1/leases/{held_id}"),
            &server.alice,
            None,
        )
        .await
        .expect(200, "");
    let (status, body) = tokio::time::timeout(STEP, bob)
        .await
        .expect("bob is answered")
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["leases"][0]["agent_id"], "bob");
    let bob_id = body["leases"][0]["id"].as_str().unwrap().to_string();
    assert!(!carol.is_finished(), "carol waits for bob");
    let now = server
        .get("/v1/status?path=src/a.rs", &server.alice)
        .await
        .expect(200, "");
    assert_eq!(now.json["holders"][0]["agent_id"], "bob");
    assert_eq!(now.json["waiters"][0]["agent_id"], "carol");

    server
        .send("DELETE", &format!("/v1/leases/{bob_id}"), &server.bob, None)
        .await
        .expect(200, "");
    let (status, body) = tokio::time::timeout(STEP, carol)
        .await
        .expect("carol is answered")
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["leases"][0]["agent_id"], "carol");
    assert_eq!(body["leases"][0]["file_path"], "src/");
    let fencing = |v: &serde_json::Value| v["fencing_token"].as_u64().unwrap();
    assert!(fencing(&body["leases"][0]) > fencing(&held[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_client_disconnects_leaves_the_queue() {
    let server = TestServer::start().await;
    let held = server.acquire(&server.alice, &["src/a.rs"], 60_000).await;
    let held_id = held[0]["id"].as_str().unwrap().to_string();

    let connection = raw_request(
        server.addr,
        &raw_post(
            "/v1/leases",
            &server.bob,
            &json!({ "paths": ["src/a.rs"], "wait_ms": 600_000 }),
        ),
    )
    .await;
    waiters(&server, "src/a.rs", 1).await;
    drop(connection);
    waiters(&server, "src/a.rs", 0).await;

    let history = server
        .get("/v1/history?agent=bob", &server.alice)
        .await
        .expect(200, "");
    let events = history.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event_type"], "wait_failed");
    assert_eq!(events[0]["status_after"], "failed");

    // Nobody phantom stands in the queue: once free, the path goes to the next asker at once.
    server
        .send(
            "DELETE",
            &format!("/v1/leases/{held_id}"),
            &server.alice,
            None,
        )
        .await
        .expect(200, "");
    let granted = server.acquire(&server.carol, &["src/a.rs"], 60_000).await;
    assert_eq!(granted[0]["agent_id"], "carol");
    let bobs = server
        .get("/v1/leases?agent=bob", &server.alice)
        .await
        .expect(200, "");
    assert_eq!(bobs.json["leases"], json!([]));
}
