//! Every route with its success answers and its error codes.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use super::{waiters, TestServer};
use crate::harness::T0_MS;

fn ts(ms: i64) -> String {
    leasehold::Timestamp(ms).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_list_get_renew_release_round_trip() {
    let server = TestServer::start().await;
    let reply = server
        .post(
            "/v1/leases",
            &server.alice,
            json!({ "paths": ["src/a.rs", "docs/"], "ttl_ms": 60_000, "reason": "refactor" }),
        )
        .await
        .expect(201, "");
    let leases = reply.json["leases"].as_array().unwrap();
    assert_eq!(reply.json["waited_ms"], 0);
    assert_eq!(leases.len(), 2);
    assert_eq!(leases[0]["file_path"], "src/a.rs");
    assert_eq!(leases[1]["file_path"], "docs/");
    assert_eq!(leases[0]["agent_id"], "alice");
    assert_eq!(leases[0]["mode"], "exclusive");
    assert_eq!(leases[0]["status"], "active");
    assert_eq!(leases[0]["reason"], "refactor");
    assert_eq!(leases[0]["expires_at"], ts(T0_MS + 60_000));
    let id = leases[0]["id"].as_str().unwrap().to_string();

    let list = server.get("/v1/leases", &server.bob).await.expect(200, "");
    assert_eq!(list.json["leases"].as_array().unwrap().len(), 2);
    let mine = server
        .get("/v1/leases?agent=alice&path=src/", &server.bob)
        .await
        .expect(200, "");
    assert_eq!(mine.json["leases"].as_array().unwrap().len(), 1);
    assert_eq!(mine.json["leases"][0]["id"], id.as_str());
    let none = server
        .get("/v1/leases?agent=bob", &server.bob)
        .await
        .expect(200, "");
    assert_eq!(none.json["leases"], json!([]));
    let limited = server
        .get("/v1/leases?limit=1&agent=&path=", &server.bob)
        .await
        .expect(200, "");
    assert_eq!(limited.json["leases"].as_array().unwrap().len(), 1);

    let one = server
        .get(&format!("/v1/leases/{id}"), &server.bob)
        .await
        .expect(200, "");
    assert_eq!(one.json, leases[0]);

    let status = server
        .get("/v1/status?path=src/a.rs", &server.bob)
        .await
        .expect(200, "");
    assert_eq!(status.json["path"], "src/a.rs");
    assert_eq!(status.json["locked"], true);
    assert_eq!(status.json["holders"][0]["id"], id.as_str());
    assert_eq!(status.json["waiters"], json!([]));
    let free = server
        .get("/v1/status?path=lib/x.rs", &server.bob)
        .await
        .expect(200, "");
    assert_eq!(
        (free.json["locked"].clone(), free.json["holders"].clone()),
        (json!(false), json!([]))
    );

    server.clock.advance(Duration::from_secs(10));
    let renewed = server
        .post(
            &format!("/v1/leases/{id}/renew"),
            &server.alice,
            json!({ "ttl_ms": 120_000 }),
        )
        .await
        .expect(200, "");
    assert_eq!(renewed.json["renewal_count"], 1);
    assert_eq!(renewed.json["ttl_ms"], 120_000);
    assert_eq!(renewed.json["expires_at"], ts(T0_MS + 10_000 + 120_000));
    // An empty body renews with the lease's own TTL.
    let again = server
        .send(
            "POST",
            &format!("/v1/leases/{id}/renew"),
            &server.alice,
            None,
        )
        .await
        .expect(200, "");
    assert_eq!(again.json["renewal_count"], 2);
    assert_eq!(again.json["expires_at"], ts(T0_MS + 10_000 + 120_000));

    let released = server
        .send("DELETE", &format!("/v1/leases/{id}"), &server.alice, None)
        .await
        .expect(200, "");
    assert_eq!(released.json["status"], "released");
    assert_eq!(released.json["id"], id.as_str());

    let active = server.get("/v1/leases", &server.bob).await.expect(200, "");
    assert_eq!(active.json["leases"].as_array().unwrap().len(), 1);
    let all = server
        .get("/v1/leases?status=all", &server.bob)
        .await
        .expect(200, "");
    assert_eq!(all.json["leases"].as_array().unwrap().len(), 2);

    let history = server
        .get("/v1/history?path=src/a.rs", &server.bob)
        .await
        .expect(200, "");
    let kinds: Vec<&str> = history.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["acquired", "renewed", "renewed", "released"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_timeouts_and_deadlocks_are_409_with_their_details() {
    let server = TestServer::start().await;
    let held = server.acquire(&server.alice, &["src/a.rs"], 60_000).await;

    let conflict = server
        .post("/v1/leases", &server.bob, json!({ "paths": ["src/"] }))
        .await
        .expect(409, "conflict");
    let holders = conflict.json["error"]["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0]["agent_id"], "alice");
    assert_eq!(holders[0]["file_path"], "src/a.rs");
    assert_eq!(holders[0]["lease_id"], held[0]["id"]);
    assert_eq!(holders[0]["status"], "active");
    assert!(
        conflict.message().contains("alice"),
        "{}",
        conflict.message()
    );

    // A wait that runs out: the clock moves, the request is answered at its deadline.
    let waiting = {
        let (url, token) = (server.url(), server.bob.clone());
        tokio::spawn(async move {
            post_json(
                &url,
                &token,
                json!({ "paths": ["src/a.rs"], "wait_ms": 5_000 }),
            )
            .await
        })
    };
    waiters(&server, "src/a.rs", 1).await;
    server.clock.advance(Duration::from_millis(5_000));
    let (status, body) = waiting.await.unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("wait_timeout")),
        "{body}"
    );
    assert_eq!(body["error"]["waited_ms"], 5_000);
    assert_eq!(body["error"]["holders"][0]["agent_id"], "alice");
    waiters(&server, "src/a.rs", 0).await;

    // alice waits for bob's path while bob asks to wait for alice's: a cycle.
    server.acquire(&server.bob, &["lib/b.rs"], 60_000).await;
    let alice_waits = {
        let (url, token) = (server.url(), server.alice.clone());
        tokio::spawn(async move {
            post_json(
                &url,
                &token,
                json!({ "paths": ["lib/b.rs"], "wait_ms": 60_000 }),
            )
            .await
        })
    };
    waiters(&server, "lib/b.rs", 1).await;
    let deadlock = server
        .post(
            "/v1/leases",
            &server.bob,
            json!({ "paths": ["src/a.rs"], "wait_ms": 60_000 }),
        )
        .await
        .expect(409, "deadlock");
    let cycle = deadlock.json["error"]["cycle"].as_array().unwrap();
    assert_eq!(cycle.len(), 2);
    assert_eq!(
        cycle[0],
        json!({ "waiter": "bob", "file_path": "src/a.rs", "holder": "alice" })
    );
    assert_eq!(
        cycle[1],
        json!({ "waiter": "alice", "file_path": "lib/b.rs", "holder": "bob" })
    );

    // bob gives up lib/b.rs: alice's waiting request is answered with the lease.
    let bobs = server.get("/v1/leases?agent=bob", &server.bob).await;
    let bob_id = bobs.json["leases"][0]["id"].as_str().unwrap().to_string();
    server
        .send("DELETE", &format!("/v1/leases/{bob_id}"), &server.bob, None)
        .await
        .expect(200, "");
    let (status, body) = alice_waits.await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["leases"][0]["file_path"], "lib/b.rs");
    assert_eq!(body["leases"][0]["agent_id"], "alice");
}

/// POSTs JSON to `/v1/leases` on a fresh connection (for requests that run in another task).
pub async fn post_json(url: &str, token: &str, body: Value) -> (u16, Value) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::post(format!("{url}/v1/leases"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let response = client.request(request).await.expect("an answer");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_and_release_errors() {
    let server = TestServer::start().await;
    let missing = uuid::Uuid::new_v4();
    let reply = server
        .post(
            &format!("/v1/leases/{missing}/renew"),
            &server.alice,
            json!({}),
        )
        .await
        .expect(404, "not_found");
    assert_eq!(reply.json["error"]["lease_id"], missing.to_string());
    server
        .send(
            "DELETE",
            &format!("/v1/leases/{missing}"),
            &server.alice,
            None,
        )
        .await
        .expect(404, "not_found");
    server
        .get(&format!("/v1/leases/{missing}"), &server.alice)
        .await
        .expect(404, "not_found");
    let bad = server
        .get("/v1/leases/not-a-uuid", &server.alice)
        .await
        .expect(400, "invalid_input");
    assert_eq!(bad.json["error"]["what"], "lease_id");
    server
        .post("/v1/leases/not-a-uuid/renew", &server.alice, json!({}))
        .await
        .expect(400, "invalid_input");

    // A renewal limit of one: the second renewal is refused.
    let reply = server
        .post(
            "/v1/leases",
            &server.alice,
            json!({ "paths": ["a"], "ttl_ms": 1_000, "max_renewals": 1 }),
        )
        .await
        .expect(201, "");
    let id = reply.json["leases"][0]["id"].as_str().unwrap().to_string();
    server
        .post(&format!("/v1/leases/{id}/renew"), &server.alice, json!({}))
        .await
        .expect(200, "");
    let limit = server
        .post(&format!("/v1/leases/{id}/renew"), &server.alice, json!({}))
        .await
        .expect(409, "renewal_limit");
    assert_eq!(limit.json["error"]["max_renewals"], 1);

    // Expired: renewing is refused as lost, and so is releasing.
    server.clock.advance(Duration::from_millis(1_001));
    let lost = server
        .post(&format!("/v1/leases/{id}/renew"), &server.alice, json!({}))
        .await
        .expect(409, "lease_lost");
    assert_eq!(lost.json["error"]["status"], "expired");
    server
        .send("DELETE", &format!("/v1/leases/{id}"), &server.alice, None)
        .await
        .expect(409, "lease_lost");

    // Released twice: lost the second time.
    let id = server.acquire(&server.alice, &["b"], 60_000).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .send("DELETE", &format!("/v1/leases/{id}"), &server.alice, None)
        .await
        .expect(200, "");
    let twice = server
        .send("DELETE", &format!("/v1/leases/{id}"), &server.alice, None)
        .await
        .expect(409, "lease_lost");
    assert_eq!(twice.json["error"]["status"], "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_force_release_clean_up_purge_and_configure() {
    let server = TestServer::start().await;
    server.acquire(&server.alice, &["a", "b"], 60_000).await;
    server.acquire(&server.bob, &["c"], 1_000).await;

    let forced = server
        .post(
            "/v1/agents/alice/force-release",
            &server.admin,
            json!({ "reason": "agent crashed" }),
        )
        .await
        .expect(200, "");
    assert_eq!(forced.json, json!({ "released": 2 }));
    let again = server
        .post(
            "/v1/agents/alice/force-release",
            &server.admin,
            json!({ "reason": "again" }),
        )
        .await
        .expect(200, "");
    assert_eq!(again.json, json!({ "released": 0 }));
    server
        .post(
            "/v1/agents/alice/force-release",
            &server.admin,
            json!({ "reason": " " }),
        )
        .await
        .expect(400, "invalid_input");
    server
        .post("/v1/agents/alice/force-release", &server.admin, json!({}))
        .await
        .expect(400, "invalid_input");
    let history = server
        .get("/v1/history?agent=alice", &server.bob)
        .await
        .expect(200, "");
    let forced_events: Vec<&Value> = history.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "force_released")
        .collect();
    assert_eq!(forced_events.len(), 2);
    assert_eq!(forced_events[0]["reason"], "agent crashed");

    let nothing = server
        .send("POST", "/v1/cleanup", &server.admin, None)
        .await
        .expect(200, "");
    assert_eq!(nothing.json, json!({ "expired": 0 }));
    server.clock.advance(Duration::from_millis(1_000));
    let cleaned = server
        .send("POST", "/v1/cleanup", &server.admin, None)
        .await
        .expect(200, "");
    assert_eq!(cleaned.json, json!({ "expired": 1 }));

    let config = server.get("/v1/config", &server.bob).await.expect(200, "");
    assert_eq!(config.json["default_ttl_seconds"], 3600);
    assert_eq!(config.json["keep_history"], true);
    let changed = server
        .send(
            "PUT",
            "/v1/config/default_ttl_seconds",
            &server.admin,
            Some(json!({ "value": 120 })),
        )
        .await
        .expect(200, "");
    assert_eq!(changed.json["default_ttl_seconds"], 120);
    server
        .send(
            "PUT",
            "/v1/config/keep_history",
            &server.admin,
            Some(json!({ "value": false })),
        )
        .await
        .expect(200, "");
    let text = server
        .send(
            "PUT",
            "/v1/config/max_renewals",
            &server.admin,
            Some(json!({ "value": "5" })),
        )
        .await
        .expect(200, "");
    assert_eq!(text.json["max_renewals"], 5);
    assert_eq!(text.json["keep_history"], false);
    let read = server
        .get("/v1/config", &server.alice)
        .await
        .expect(200, "");
    assert_eq!(read.json, text.json);
    // The new default TTL applies to the next acquisition.
    let lease = server
        .post("/v1/leases", &server.alice, json!({ "paths": ["z"] }))
        .await
        .expect(201, "");
    assert_eq!(lease.json["leases"][0]["ttl_ms"], 120_000);

    // Nothing is old enough to purge yet; after the retention period everything is.
    let purged = server
        .send("POST", "/v1/history/purge", &server.admin, None)
        .await
        .expect(200, "");
    assert_eq!(purged.json, json!({ "purged": 0 }));
    server.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let purged = server
        .send("POST", "/v1/history/purge", &server.admin, None)
        .await
        .expect(200, "");
    let count = purged.json["purged"].as_u64().unwrap();
    assert!(count >= 6, "{}", purged.text);
    let history = server
        .get("/v1/history", &server.alice)
        .await
        .expect(200, "");
    assert_eq!(history.json["events"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_by_path_agent_time_id_limit_and_order() {
    let server = TestServer::start().await;
    server.acquire(&server.alice, &["src/a.rs"], 60_000).await;
    server.clock.advance(Duration::from_secs(1));
    server.acquire(&server.bob, &["docs/b.md"], 60_000).await;
    server.clock.advance(Duration::from_secs(1));
    server.acquire(&server.alice, &["src/c.rs"], 60_000).await;

    let events = |reply: &super::Reply| -> Vec<(String, String)> {
        reply.json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["agent_id"].as_str().unwrap().into(),
                    e["file_path"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let pair = |a: &str, p: &str| (a.to_string(), p.to_string());
    let all = server.get("/v1/history", &server.bob).await.expect(200, "");
    assert_eq!(
        events(&all),
        [
            pair("alice", "src/a.rs"),
            pair("bob", "docs/b.md"),
            pair("alice", "src/c.rs")
        ]
    );
    let src = server
        .get("/v1/history?path=src/", &server.bob)
        .await
        .expect(200, "");
    assert_eq!(
        events(&src),
        [pair("alice", "src/a.rs"), pair("alice", "src/c.rs")]
    );
    let bob = server
        .get("/v1/history?agent=bob", &server.bob)
        .await
        .expect(200, "");
    assert_eq!(events(&bob), [pair("bob", "docs/b.md")]);
    let since = server
        .get(
            &format!("/v1/history?since={}", ts(T0_MS + 1_000)),
            &server.bob,
        )
        .await
        .expect(200, "");
    assert_eq!(
        events(&since),
        [pair("bob", "docs/b.md"), pair("alice", "src/c.rs")]
    );
    let since_ms = server
        .get(&format!("/v1/history?since={}", T0_MS + 2_000), &server.bob)
        .await
        .expect(200, "");
    assert_eq!(events(&since_ms), [pair("alice", "src/c.rs")]);
    let until = server
        .get(&format!("/v1/history?until={}", T0_MS + 1_000), &server.bob)
        .await
        .expect(200, "");
    assert_eq!(events(&until), [pair("alice", "src/a.rs")]);
    let first_id = all.json["events"][0]["id"].as_i64().unwrap();
    let after = server
        .get(&format!("/v1/history?after_id={first_id}"), &server.bob)
        .await
        .expect(200, "");
    assert_eq!(events(&after).len(), 2);
    let newest = server
        .get("/v1/history?order=newest&limit=1", &server.bob)
        .await
        .expect(200, "");
    assert_eq!(events(&newest), [pair("alice", "src/c.rs")]);
    let oldest = server
        .get("/v1/history?order=oldest&limit=1", &server.bob)
        .await
        .expect(200, "");
    assert_eq!(events(&oldest), [pair("alice", "src/a.rs")]);

    for bad in [
        "since=yesterday",
        "order=sideways",
        "limit=-1",
        "after_id=x",
        "path=/abs",
        "colour=red",
    ] {
        let reply = server
            .get(&format!("/v1/history?{bad}"), &server.bob)
            .await
            .expect(400, "invalid_input");
        assert!(!reply.message().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_exactly_the_routes_served_and_healthz_needs_no_token() {
    let server = TestServer::start().await;
    let health = server
        .send_raw("GET", "/healthz", None, None, Vec::new())
        .await;
    assert_eq!(
        (health.status, health.json.clone()),
        (200, json!({ "status": "ok" }))
    );

    server
        .send_raw("GET", "/v1/openapi.json", None, None, Vec::new())
        .await
        .expect(401, "unauthorized");
    let doc = server
        .get("/v1/openapi.json", &server.alice)
        .await
        .expect(200, "");
    assert_eq!(doc.json["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc.json["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = leasehold::server::route_table()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);

    // Every route of the table is routed with its method (the answer is never "no route").
    for (method, path) in &served {
        let concrete = path
            .replace("{id}", &uuid::Uuid::nil().to_string())
            .replace("{agent}", "nobody")
            .replace("{key}", "keep_history");
        if path == "/v1/events" {
            continue; // an endless stream; covered by the event tests
        }
        let body = match method.as_str() {
            "POST" | "PUT" | "DELETE" => Some(json!({})),
            _ => None,
        };
        let reply = server.send(method, &concrete, &server.admin, body).await;
        assert!(
            !matches!(reply.code(), "no_route" | "method_not_allowed") && reply.status != 405,
            "{method} {path}: {}",
            reply.text
        );
    }

    let unknown = server
        .get("/v2/leases", &server.alice)
        .await
        .expect(404, "no_route");
    assert!(unknown.message().contains("/v2/leases"));
    let wrong = server
        .send("PATCH", "/v1/leases", &server.alice, None)
        .await
        .expect(405, "method_not_allowed");
    assert!(wrong.message().contains("PATCH"));
}
