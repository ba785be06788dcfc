//! Bad input: malformed JSON, wrong types, unknown fields, bad paths, bad query strings and
//! oversized bodies get a 4xx with a clear message and change nothing.

use serde_json::json;

use super::{raw_request, read_raw, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_with_a_clear_message_and_change_nothing() {
    let server = TestServer::start().await;
    let id = server.acquire(&server.alice, &["held"], 60_000).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = server.snapshot().await;
    let json_type = Some("application/json");

    // (body, what the message must mention)
    let cases: Vec<(&str, &str)> = vec![
        ("{", "EOF while parsing"),
        ("{\"paths\": [\"a\"]", "EOF while parsing"),
        ("[1, 2]", "invalid type"),
        ("null", "invalid type"),
        ("{\"paths\": \"a\"}", "invalid type: string"),
        ("{\"paths\": [1]}", "invalid type: integer"),
        ("{\"paths\": [\"a\"], \"ttl_ms\": -5}", "invalid value"),
        ("{\"paths\": [\"a\"], \"ttl_ms\": \"60s\"}", "invalid type"),
        ("{\"paths\": [\"a\"], \"wait_ms\": 1.5}", "invalid type"),
        (
            "{\"paths\": [\"a\"], \"mode\": \"sometimes\"}",
            "unknown variant `sometimes`",
        ),
        (
            "{\"paths\": [\"a\"], \"colour\": \"red\"}",
            "unknown field `colour`",
        ),
        ("{\"path\": [\"a\"]}", "unknown field `path`"),
        ("{\"ttl_ms\": 5}", "missing field `paths`"),
        ("{}", "missing field `paths`"),
        ("", "missing field `paths`"),
    ];
    for (body, mention) in cases {
        let reply = server
            .send_raw(
                "POST",
                "/v1/leases",
                Some(&server.alice),
                json_type,
                body.as_bytes().to_vec(),
            )
            .await
            .expect(400, "invalid_input");
        assert!(
            reply.message().contains(mention),
            "{body:?}: {}",
            reply.message()
        );
        assert_eq!(reply.json["error"]["what"], "body", "{body:?}");
    }

    // Well-formed requests the engine refuses.
    for (body, what) in [
        (json!({ "paths": [] }), "paths"),
        (json!({ "paths": ["/etc/passwd"] }), "path"),
        (json!({ "paths": ["../outside"] }), "path"),
        (json!({ "paths": [""] }), "path"),
        (json!({ "paths": ["a\u{0000}b"] }), "path"),
        (json!({ "paths": ["."] }), "path"),
        (json!({ "paths": ["a", "./a"] }), "paths"),
        (json!({ "paths": ["a"], "ttl_ms": 0 }), "ttl_ms"),
        (
            json!({ "paths": ["a"], "ttl_ms": 999_999_999_999u64 }),
            "ttl_ms",
        ),
        (
            json!({ "paths": ["a"], "wait_ms": 999_999_999_999u64 }),
            "wait_ms",
        ),
        (
            json!({ "paths": ["a"], "reason": "x".repeat(5000) }),
            "reason",
        ),
    ] {
        let reply = server
            .post("/v1/leases", &server.alice, body.clone())
            .await
            .expect(400, "invalid_input");
        assert_eq!(reply.json["error"]["what"], what, "{body}: {}", reply.text);
        assert!(!reply.json["error"]["why"].as_str().unwrap().is_empty());
    }

    // Renewal and settings bodies.
    let renew = format!("/v1/leases/{id}/renew");
    for body in [
        "{\"ttl_ms\": \"long\"}",
        "{\"ttl\": 5}",
        "{\"ttl_ms\": 5",
        "{\"ttl_ms\": 0}",
    ] {
        server
            .send_raw(
                "POST",
                &renew,
                Some(&server.alice),
                json_type,
                body.as_bytes().to_vec(),
            )
            .await
            .expect(400, "invalid_input");
    }
    server
        .send(
            "DELETE",
            &format!("/v1/leases/{id}"),
            &server.alice,
            Some(json!({ "force": true })),
        )
        .await
        .expect(400, "invalid_input");
    for (key, body) in [
        ("keep_history", json!({ "value": "maybe" })),
        ("keep_history", json!({ "value": [true] })),
        ("keep_history", json!({ "value": null })),
        ("keep_history", json!({ "val": true })),
        ("default_ttl_seconds", json!({ "value": 0 })),
        ("default_ttl_seconds", json!({ "value": 1.5 })),
        ("no_such_setting", json!({ "value": 1 })),
    ] {
        let reply = server
            .send(
                "PUT",
                &format!("/v1/config/{key}"),
                &server.admin,
                Some(body.clone()),
            )
            .await
            .expect(400, "invalid_input");
        assert!(!reply.message().is_empty(), "{key} {body}");
    }

    // A body that is not declared as JSON.
    let reply = server
        .send_raw(
            "POST",
            "/v1/leases",
            Some(&server.alice),
            Some("text/plain"),
            b"{\"paths\":[\"a\"]}".to_vec(),
        )
        .await
        .expect(415, "invalid_input");
    assert!(
        reply.message().contains("application/json"),
        "{}",
        reply.message()
    );
    // No content type at all is read as JSON (curl -d without -H).
    // (Checked last, as it succeeds.)

    // Query strings.
    for path in [
        "/v1/status",
        "/v1/status?path=",
        "/v1/status?path=/abs",
        "/v1/status?path=a&extra=1",
        "/v1/leases?status=expired",
        "/v1/leases?limit=lots",
        "/v1/leases?path=../x",
        "/v1/leases?owner=alice",
        "/v1/events?path=/abs",
        "/v1/events?since=1",
    ] {
        let reply = server
            .get(path, &server.alice)
            .await
            .expect(400, "invalid_input");
        assert!(!reply.message().is_empty(), "{path}");
    }

    assert_eq!(server.snapshot().await, before);
    server
        .send_raw(
            "POST",
            "/v1/leases",
            Some(&server.alice),
            None,
            b"{\"paths\":[\"a\"]}".to_vec(),
        )
        .await
        .expect(201, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_one_mebibyte_are_413_and_change_nothing() {
    let server = TestServer::start().await;
    let before = server.snapshot().await;
    let limit = leasehold::server::MAX_BODY_BYTES;
    assert_eq!(limit, 1 << 20);

    // A valid JSON document just over the limit, declared by its length.
    let padding = "x".repeat(limit);
    let body = json!({ "paths": ["a"], "reason": padding })
        .to_string()
        .into_bytes();
    let reply = server
        .send_raw(
            "POST",
            "/v1/leases",
            Some(&server.alice),
            Some("application/json"),
            body.clone(),
        )
        .await
        .expect(413, "payload_too_large");
    assert!(reply.message().contains("1048576"), "{}", reply.message());
    assert_eq!(reply.json["error"]["limit_bytes"], limit);
    // On a route that reads no body, too.
    server
        .send_raw(
            "POST",
            "/v1/cleanup",
            Some(&server.admin),
            Some("application/json"),
            body.clone(),
        )
        .await
        .expect(413, "payload_too_large");

    // The same body sent in chunks, without a declared length.
    let mut request = format!(
        "POST /v1/leases HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        server.alice
    )
    .into_bytes();
    for chunk in body.chunks(64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = read_raw(raw_request(server.addr, &request).await).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    assert!(answer.contains("payload_too_large"), "{answer}");

    // Exactly at the limit is accepted by the size check (and then judged on its content).
    let fits = format!(
        "{{\"paths\": [\"a\"], \"reason\": \"{}\"}}",
        "x".repeat(limit - 30)
    );
    assert_eq!(fits.len(), limit);
    let reply = server
        .send_raw(
            "POST",
            "/v1/leases",
            Some(&server.alice),
            Some("application/json"),
            fits.into_bytes(),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (400, "invalid_input"),
        "{}",
        &reply.text
    );
    assert_eq!(reply.json["error"]["what"], "reason");

    assert_eq!(server.snapshot().await, before);
}
