//! Identity and access: no token or a bad one is 401; an agent acts only as itself and on its
//! own leases; admin-only routes refuse other tokens. Every refusal leaves the database as it was.

use std::time::Duration;

use serde_json::json;

use super::TestServer;

/// Every route (with concrete parameters) and a body to send it.
fn every_route(lease_id: &str) -> Vec<(&'static str, String, Option<serde_json::Value>)> {
    vec![
        ("POST", "/v1/leases".into(), Some(json!({ "paths": ["x"] }))),
        ("GET", "/v1/leases".into(), None),
        ("GET", format!("/v1/leases/{lease_id}"), None),
        ("DELETE", format!("/v1/leases/{lease_id}"), None),
        (
            "POST",
            format!("/v1/leases/{lease_id}/renew"),
            Some(json!({})),
        ),
        ("GET", "/v1/status?path=x".into(), None),
        (
            "POST",
            "/v1/agents/alice/force-release".into(),
            Some(json!({ "reason": "r" })),
        ),
        ("POST", "/v1/cleanup".into(), None),
        ("GET", "/v1/history".into(), None),
        ("POST", "/v1/history/purge".into(), None),
        ("GET", "/v1/config".into(), None),
        (
            "PUT",
            "/v1/config/keep_history".into(),
            Some(json!({ "value": false })),
        ),
        ("GET", "/v1/events".into(), None),
        ("GET", "/v1/whoami".into(), None),
        ("GET", "/metrics".into(), None),
        ("GET", "/v1/openapi.json".into(), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_401_and_change_nothing() {
    let server = TestServer::start().await;
    let lease = server.acquire(&server.alice, &["src/a.rs"], 1_000).await;
    let id = lease[0]["id"].as_str().unwrap().to_string();
    server.clock.advance(Duration::from_millis(1_000)); // so that a cleanup would change something
    let revoked = server.tokens.create("alice", true).unwrap();
    server.tokens.revoke(&revoked.info.id).unwrap();
    let before = server.snapshot().await;

    let headers: Vec<Option<String>> = vec![
        None,
        Some("Basic YWxpY2U6c2VjcmV0".into()),
        Some("Bearer".into()),
        Some("Bearer lh_0000".into()),
        Some("Bearer not-even-a-token".into()),
        Some(format!("Bearer {}", revoked.token)),
        // Only the hash is stored: the hash is not a token.
        Some(format!("Bearer {}", server.alice.replace("lh_", "lh_0"))),
    ];
    for (method, path, body) in every_route(&id) {
        for header in &headers {
            let mut request = http::Request::builder()
                .method(method)
                .uri(format!("{}{path}", server.url()))
                .header("content-type", "application/json");
            if let Some(header) = header {
                request = request.header("authorization", header);
            }
            let body = body.as_ref().map(|b| b.to_string()).unwrap_or_default();
            let request = request
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {header:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let reply = super::reply_of(response).await;
            assert_eq!(reply.code(), "unauthorized", "{method} {path}");
            assert!(!reply.message().is_empty());
        }
    }
    assert_eq!(server.snapshot().await, before);

    // A token revoked while the server runs stops working at once.
    let fresh = server.tokens.create("dave", false).unwrap();
    server.get("/v1/leases", &fresh.token).await.expect(200, "");
    server.tokens.revoke(&fresh.info.id).unwrap();
    server
        .get("/v1/leases", &fresh.token)
        .await
        .expect(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_b_cannot_renew_or_release_agent_a_lease() {
    let server = TestServer::start().await;
    let lease = server.acquire(&server.alice, &["src/a.rs"], 60_000).await;
    let id = lease[0]["id"].as_str().unwrap().to_string();
    let before = server.snapshot().await;

    let renew = server
        .post(
            &format!("/v1/leases/{id}/renew"),
            &server.bob,
            json!({ "ttl_ms": 999_000 }),
        )
        .await
        .expect(403, "not_holder");
    assert_eq!(renew.json["error"]["holder"], "alice");
    assert_eq!(renew.json["error"]["agent_id"], "bob");
    assert_eq!(renew.json["error"]["lease_id"], id.as_str());
    let release = server
        .send("DELETE", &format!("/v1/leases/{id}"), &server.bob, None)
        .await
        .expect(403, "not_holder");
    assert_eq!(release.json["error"]["holder"], "alice");
    // Even an admin token acts as its own agent here: force-release is the admin's tool.
    server
        .send("DELETE", &format!("/v1/leases/{id}"), &server.admin, None)
        .await
        .expect(403, "not_holder");
    // Naming the holder in the body does not help: the token decides.
    let named = server
        .send(
            "DELETE",
            &format!("/v1/leases/{id}"),
            &server.bob,
            Some(json!({ "agent_id": "alice" })),
        )
        .await
        .expect(403, "forbidden");
    assert!(named.message().contains("\"bob\""), "{}", named.message());
    server
        .post(
            &format!("/v1/leases/{id}/renew"),
            &server.bob,
            json!({ "agent_id": "alice" }),
        )
        .await
        .expect(403, "forbidden");

    assert_eq!(server.snapshot().await, before);
    let still = server
        .get(&format!("/v1/leases/{id}"), &server.bob)
        .await
        .expect(200, "");
    assert_eq!(still.json, lease[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_cannot_force_release_clean_up_purge_or_change_settings() {
    let server = TestServer::start().await;
    server.acquire(&server.alice, &["a"], 60_000).await;
    server.acquire(&server.bob, &["b"], 1_000).await;
    server.clock.advance(Duration::from_secs(40 * 24 * 3600)); // cleanup and purge would act
    let before = server.snapshot().await;

    for token in [&server.alice, &server.bob] {
        let forced = server
            .post(
                "/v1/agents/alice/force-release",
                token,
                json!({ "reason": "mine" }),
            )
            .await
            .expect(403, "forbidden");
        assert!(forced.message().contains("admin"), "{}", forced.message());
        server
            .send("POST", "/v1/cleanup", token, None)
            .await
            .expect(403, "forbidden");
        server
            .send("POST", "/v1/history/purge", token, None)
            .await
            .expect(403, "forbidden");
        server
            .send(
                "PUT",
                "/v1/config/keep_history",
                token,
                Some(json!({ "value": false })),
            )
            .await
            .expect(403, "forbidden");
        server
            .send(
                "PUT",
                "/v1/config/nonsense",
                token,
                Some(json!({ "value": 1 })),
            )
            .await
            .expect(403, "forbidden");
    }
    assert_eq!(server.snapshot().await, before);

    // The same requests with the admin token do act.
    server
        .send("POST", "/v1/cleanup", &server.admin, None)
        .await
        .expect(200, "");
    assert_ne!(server.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_another_agent_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let before = server.snapshot().await;
    let reply = server
        .post(
            "/v1/leases",
            &server.alice,
            json!({ "paths": ["a"], "agent_id": "bob" }),
        )
        .await
        .expect(403, "forbidden");
    assert!(reply.message().contains("\"alice\""), "{}", reply.message());
    assert_eq!(server.snapshot().await, before);
    // Naming oneself is fine.
    let ok = server
        .post(
            "/v1/leases",
            &server.alice,
            json!({ "paths": ["a"], "agent_id": "alice" }),
        )
        .await
        .expect(201, "");
    assert_eq!(ok.json["leases"][0]["agent_id"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_listed_and_revoked_by_database_path() {
    let server = TestServer::start().await;
    let created = leasehold::server::token_create(&server.db, "eve", true).unwrap();
    assert!(created.token.starts_with("lh_"));
    assert_eq!(
        (created.info.agent_id.as_str(), created.info.admin),
        ("eve", true)
    );
    server
        .send("POST", "/v1/cleanup", &created.token, None)
        .await
        .expect(200, "");

    let listed = leasehold::server::token_list(&server.db).unwrap();
    assert_eq!(listed.len(), 5);
    let eve = listed.iter().find(|t| t.id == created.info.id).unwrap();
    assert_eq!(eve.agent_id, "eve");
    assert!(eve.revoked_at.is_none());
    assert!(eve.last_used_at.is_some());
    let who = server
        .get("/v1/whoami", &created.token)
        .await
        .expect(200, "");
    assert_eq!(
        who.json,
        serde_json::json!({ "agent_id": "eve", "admin": true, "token_id": created.info.id })
    );
    let serialized = serde_json::to_string(&listed).unwrap();
    assert!(
        !serialized.contains(&created.token),
        "a listing never shows a secret"
    );

    let revoked = leasehold::server::token_revoke(&server.db, &created.info.id).unwrap();
    assert!(revoked.revoked_at.is_some());
    server
        .send("POST", "/v1/cleanup", &created.token, None)
        .await
        .expect(401, "unauthorized");
    let missing = leasehold::server::token_revoke(&server.db, "tok_nope").unwrap_err();
    assert_eq!(missing.code(), "invalid_input");
    assert_eq!(
        leasehold::server::token_create(&server.db, "", false)
            .unwrap_err()
            .code(),
        "invalid_input"
    );
}
