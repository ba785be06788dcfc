//! `GET /metrics`: valid Prometheus text, counting what happened.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::json;

use super::routes::post_json;
use super::{waiters, TestServer};
use crate::harness::eventually;

/// Parses the Prometheus text exposition format strictly enough to reject malformed output:
/// every sample belongs to a family declared by `# TYPE` (histograms through `_bucket`, `_sum`
/// and `_count`), names and labels are well-formed, values are numbers. Returns each sample as
/// `name{label="value",...}` (labels sorted) with its value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "one TYPE per family: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP name text");
            assert!(is_name(name), "{line}");
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("labels close")),
            None => (series, ""),
        };
        assert!(is_name(name), "{line}");
        let mut pairs = Vec::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (label, after) = rest.split_once("=\"").expect("label=\"value\"");
            assert!(is_name(label), "{line}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("label value closes") {
                    (_, '\\') => value.push(chars.next().expect("escape").1),
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            pairs.push(format!("{label}=\"{value}\""));
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
        let family = [
            name,
            name.trim_end_matches("_bucket"),
            name.trim_end_matches("_sum"),
            name.trim_end_matches("_count"),
        ]
        .into_iter()
        .find(|n| types.contains_key(*n))
        .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
        if family != name {
            assert_eq!(types[family], "histogram", "{line}");
        }
        pairs.sort();
        samples.insert(format!("{name}{{{}}}", pairs.join(",")), value);
    }
    samples
}

async fn scrape(server: &TestServer) -> BTreeMap<String, f64> {
    let reply = server.get("/metrics", &server.bob).await.expect(200, "");
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        reply.headers
    );
    parse_prometheus(&reply.text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text_counting_what_happened() {
    let server = TestServer::start().await;
    server
        .send_raw("GET", "/metrics", None, None, Vec::new())
        .await
        .expect(401, "unauthorized");

    let a = server.acquire(&server.alice, &["a"], 1_000).await;
    let a_id = a[0]["id"].as_str().unwrap().to_string();
    server
        .post("/v1/leases", &server.bob, json!({ "paths": ["a"] }))
        .await
        .expect(409, "conflict");
    server
        .post("/v1/leases", &server.bob, json!({ "paths": ["/a"] }))
        .await
        .expect(400, "invalid_input");
    server
        .post(
            &format!("/v1/leases/{a_id}/renew"),
            &server.alice,
            json!({}),
        )
        .await
        .expect(200, "");
    server
        .post(&format!("/v1/leases/{a_id}/renew"), &server.bob, json!({}))
        .await
        .expect(403, "not_holder");
    let b = server.acquire(&server.bob, &["b"], 60_000).await;
    server
        .send(
            "DELETE",
            &format!("/v1/leases/{}", b[0]["id"].as_str().unwrap()),
            &server.bob,
            None,
        )
        .await
        .expect(200, "");
    server.acquire(&server.carol, &["c1", "c2"], 60_000).await;
    server
        .post(
            "/v1/agents/carol/force-release",
            &server.admin,
            json!({ "reason": "r" }),
        )
        .await
        .expect(200, "");
    server.clock.advance(Duration::from_millis(1_000));
    server
        .send("POST", "/v1/cleanup", &server.admin, None)
        .await
        .expect(200, "");
    // One lease held and one waiter queued right now.
    server.acquire(&server.alice, &["d"], 600_000).await;
    let waiter = {
        let (url, token) = (server.url(), server.bob.clone());
        tokio::spawn(async move {
            post_json(&url, &token, json!({ "paths": ["d"], "wait_ms": 60_000 })).await
        })
    };
    waiters(&server, "d", 1).await;

    // Expiries and force-releases are counted from the engine's events, which arrive a moment
    // after the request that caused them was answered.
    eventually("expiries and force-releases are counted", || async {
        let m = scrape(&server).await;
        m.get("leasehold_expiries_total{}") == Some(&1.0)
            && m.get("leasehold_force_releases_total{}") == Some(&2.0)
    })
    .await;
    let m = scrape(&server).await;
    let at = |key: &str| *m.get(key).unwrap_or_else(|| panic!("no sample {key}"));
    assert_eq!(at("leasehold_acquisitions_total{result=\"granted\"}"), 4.0);
    assert_eq!(at("leasehold_acquisitions_total{result=\"conflict\"}"), 1.0);
    assert_eq!(
        at("leasehold_acquisitions_total{result=\"invalid_input\"}"),
        1.0
    );
    assert_eq!(at("leasehold_renewals_total{result=\"renewed\"}"), 1.0);
    assert_eq!(at("leasehold_renewals_total{result=\"not_holder\"}"), 1.0);
    assert_eq!(at("leasehold_releases_total{result=\"released\"}"), 1.0);
    assert_eq!(at("leasehold_active_leases{}"), 1.0);
    assert_eq!(at("leasehold_waiters{}"), 1.0);
    assert_eq!(
        at("leasehold_operation_duration_seconds_count{operation=\"renew\"}"),
        2.0
    );
    assert_eq!(
        at("leasehold_operation_duration_seconds_bucket{le=\"+Inf\",operation=\"cleanup\"}"),
        1.0
    );
    assert_eq!(
        at("leasehold_http_requests_total{method=\"POST\",route=\"/v1/leases/{id}/renew\",status=\"403\"}"),
        1.0
    );
    assert_eq!(
        at("leasehold_http_requests_total{method=\"POST\",route=\"/v1/leases\",status=\"409\"}"),
        1.0
    );
    assert_eq!(
        at("leasehold_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"401\"}"),
        1.0
    );
    assert!(
        at("leasehold_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/status\"}")
            >= 1.0
    );

    // The waiter runs out of time: its wait is observed.
    server.clock.advance(Duration::from_millis(60_000));
    let (status, _) = waiter.await.unwrap();
    assert_eq!(status, 409);
    let m = scrape(&server).await;
    assert_eq!(
        m["leasehold_acquisitions_total{result=\"wait_timeout\"}"],
        1.0
    );
    assert_eq!(m["leasehold_wait_duration_seconds_count{}"], 1.0);
    assert_eq!(m["leasehold_wait_duration_seconds_sum{}"], 60.0);
    assert_eq!(m["leasehold_waiters{}"], 0.0);
    // Unknown routes are counted under one label, not one per path.
    server
        .get("/nope/1", &server.bob)
        .await
        .expect(404, "no_route");
    server
        .get("/nope/2", &server.bob)
        .await
        .expect(404, "no_route");
    let m = scrape(&server).await;
    assert_eq!(
        m["leasehold_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"],
        2.0
    );
}

#[test]
fn the_parser_rejects_malformed_text() {
    for bad in [
        "x 1\n",                          // no TYPE
        "# TYPE x counter\nx{a=\"1} 1\n", // unclosed label value
        "# TYPE x counter\nx one\n",      // not a number
        "# TYPE x counter\n1x 1\n",       // bad name
        "# TYPE x counter\nx 1",          // no final newline
        "# TYPE x widget\nx 1\n",         // unknown type
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_prometheus(bad)).is_err(),
            "{bad:?}"
        );
    }
    let ok = parse_prometheus(
        "# HELP x_total help\n# TYPE x_total counter\nx_total{b=\"2\",a=\"q\\\"\"} 3\n",
    );
    assert_eq!(ok["x_total{a=\"q\"\",b=\"2\"}"], 3.0);
}
