//! [`RemoteManager`]: the [`LeaseManager`] of a `leasehold serve` server, over HTTP. It is what
//! `leasehold --server URL --token TOKEN ...` uses instead of a local database: the same calls,
//! the same answers, and the same [`LeaseError`] variants, rebuilt from the server's JSON errors.
//!
//! Architecture invariant: this module knows the HTTP API's routes and bodies and nothing of
//! the lease rules; every decision is the server's.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::error::{LeaseError, Result};
use crate::manager::LeaseManager;
use crate::model::{
    HistoryEvent, HistoryQuery, Lease, LeaseAcquisitionRequest, LeaseAcquisitionResponse,
    LeaseQuery, LeaseReleaseRequest, LeaseReleaseResponse, LeaseRenewalRequest,
    LeaseRenewalResponse, PathStatus,
};
use crate::path::LeasePath;
use crate::rules;
use crate::settings::Settings;

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an answer may take, beyond any time the request asked to wait in the queue.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A lease manager on a `leasehold serve` server.
#[derive(Clone)]
pub struct RemoteManager {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port` and any path prefix, without a trailing `/`.
    base: String,
    token: String,
}

impl std::fmt::Debug for RemoteManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("RemoteManager")
            .field("server", &self.base)
            .finish_non_exhaustive()
    }
}

impl RemoteManager {
    /// A manager talking to the server at `server_url` (`http://host:port`, as given to
    /// `--server` or `LEASEHOLD_SERVER`) with `token` (`--token` or `LEASEHOLD_TOKEN`).
    /// Nothing is sent until the first call.
    pub fn new(server_url: &str, token: &str) -> Result<RemoteManager> {
        let base = server_url.trim().trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            return Err(LeaseError::invalid(
                "server",
                format!(
                    "{server_url:?}: https is not supported; reach the server over http on a \
                     trusted network or through a TLS-terminating proxy"
                ),
            ));
        }
        let uri: Uri = base.parse().map_err(|e| {
            LeaseError::invalid("server", format!("{server_url:?} is not a URL: {e}"))
        })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(LeaseError::invalid(
                "server",
                format!("{server_url:?} must look like http://HOST:PORT"),
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(LeaseError::invalid(
                "token",
                "a server needs a token: pass --token or set LEASEHOLD_TOKEN",
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(RemoteManager {
            client,
            base,
            token: token.to_string(),
        })
    }

    /// The server's URL, as given.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// Sends one request and reads its JSON answer, or the error the server answered.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Value>,
        wait: Duration,
    ) -> Result<T> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(ACCEPT, "application/json");
        let body = match body {
            Some(value) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(value.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .map_err(|e| LeaseError::invalid("server", format!("cannot build a request: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                LeaseError::storage(format!(
                    "cannot reach the leasehold server at {}: {}",
                    self.base,
                    chain(&e)
                ))
            })?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    LeaseError::storage(format!(
                        "the leasehold server at {} broke off its answer: {}",
                        self.base,
                        chain(&e)
                    ))
                })?
                .to_bytes();
            Ok::<_, LeaseError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(ANSWER_TIMEOUT + wait, exchange)
            .await
            .map_err(|_| {
                LeaseError::storage(format!(
                    "the leasehold server at {} did not answer in time",
                    self.base
                ))
            })??;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                LeaseError::storage(format!(
                    "the leasehold server at {} answered something unexpected: {e}",
                    self.base
                ))
            });
        }
        Err(error_of(status, &bytes))
    }

    /// Who the token speaks for (`GET /v1/whoami`): the CLI's default agent in remote mode.
    pub async fn whoami(&self) -> Result<Whoami> {
        self.get("/v1/whoami").await
    }

    async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T> {
        self.call(Method::GET, path_and_query, None, Duration::ZERO)
            .await
    }
}

/// The identity behind a token, as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Whoami {
    /// The agent every request made with the token acts as.
    pub agent_id: String,
    /// Whether the token is an admin token.
    pub admin: bool,
    /// The token's public id.
    pub token_id: String,
}

/// The error a server answered with, as the variant the engine would have returned locally.
/// Refusals that only a server makes (no token, not an admin) become
/// [`LeaseError::InvalidInput`] about the token, with the server's message.
fn error_of(status: StatusCode, bytes: &[u8]) -> LeaseError {
    let document: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let message = document["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match document["error"]["code"].as_str() {
        Some("unauthorized") | Some("forbidden") => LeaseError::invalid("token", message),
        Some("payload_too_large") => LeaseError::invalid("body", message),
        Some(_) => LeaseError::from_json(&document),
        None => LeaseError::storage(format!(
            "the server answered {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )),
    }
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Percent-encodes a query value or path segment (everything but unreserved characters).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A query string (with its `?`) of the pairs whose value is present.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| format!("{key}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[derive(serde::Deserialize)]
struct LeaseList {
    leases: Vec<Lease>,
}

#[async_trait]
impl LeaseManager for RemoteManager {
    async fn acquire_lease(
        &self,
        request: LeaseAcquisitionRequest,
    ) -> Result<LeaseAcquisitionResponse> {
        rules::validate_agent(&request.agent_id)?;
        let mut body = Map::new();
        body.insert("agent_id".into(), json!(request.agent_id));
        body.insert("paths".into(), json!(request.paths));
        body.insert("mode".into(), json!(request.mode));
        let optional = [
            ("ttl_ms", request.ttl_ms.map(|v| json!(v))),
            ("wait_ms", request.wait_ms.map(|v| json!(v))),
            ("max_renewals", request.max_renewals.map(|v| json!(v))),
            ("reason", request.reason.map(|v| json!(v))),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                body.insert(key.into(), value);
            }
        }
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        self.call(Method::POST, "/v1/leases", Some(Value::Object(body)), wait)
            .await
    }

    async fn renew_lease(&self, request: LeaseRenewalRequest) -> Result<LeaseRenewalResponse> {
        rules::validate_agent(&request.agent_id)?;
        let mut body = json!({ "agent_id": request.agent_id });
        if let Some(ttl_ms) = request.ttl_ms {
            body["ttl_ms"] = json!(ttl_ms);
        }
        let path = format!("/v1/leases/{}/renew", request.lease_id);
        let lease = self
            .call(Method::POST, &path, Some(body), Duration::ZERO)
            .await?;
        Ok(LeaseRenewalResponse { lease })
    }

    async fn release_lease(&self, request: LeaseReleaseRequest) -> Result<LeaseReleaseResponse> {
        rules::validate_agent(&request.agent_id)?;
        let body = json!({ "agent_id": request.agent_id });
        let path = format!("/v1/leases/{}", request.lease_id);
        let lease = self
            .call(Method::DELETE, &path, Some(body), Duration::ZERO)
            .await?;
        Ok(LeaseReleaseResponse { lease })
    }

    async fn get_lease(&self, lease_id: Uuid) -> Result<Lease> {
        self.get(&format!("/v1/leases/{lease_id}")).await
    }

    async fn get_all_leases(&self, query_: LeaseQuery) -> Result<Vec<Lease>> {
        let status = if query_.include_inactive {
            "all"
        } else {
            "active"
        };
        let q = query(&[
            ("agent", query_.agent_id),
            ("path", query_.path),
            ("status", Some(status.to_string())),
            ("limit", query_.limit.map(|l| l.to_string())),
        ]);
        let list: LeaseList = self.get(&format!("/v1/leases{q}")).await?;
        Ok(list.leases)
    }

    async fn has_agent_lease(&self, agent_id: &str, path: &str) -> Result<bool> {
        rules::validate_agent(agent_id)?;
        let wanted = LeasePath::parse(path)?;
        let leases = self
            .get_all_leases(LeaseQuery {
                agent_id: Some(agent_id.to_string()),
                path: Some(path.to_string()),
                ..LeaseQuery::default()
            })
            .await?;
        Ok(leases.iter().any(|lease| {
            lease.agent_id == agent_id
                && LeasePath::from_stored(lease.file_path.clone()).covers(&wanted)
        }))
    }

    async fn cleanup_expired_leases(&self) -> Result<u64> {
        let answer: Value = self
            .call(Method::POST, "/v1/cleanup", None, Duration::ZERO)
            .await?;
        count(&answer, "expired")
    }

    async fn force_release_agent_leases(&self, agent_id: &str, reason: &str) -> Result<u64> {
        rules::validate_agent(agent_id)?;
        let path = format!("/v1/agents/{}/force-release", encode(agent_id));
        let body = json!({ "reason": reason });
        let answer: Value = self
            .call(Method::POST, &path, Some(body), Duration::ZERO)
            .await?;
        count(&answer, "released")
    }

    async fn get_path_status(&self, path: &str) -> Result<PathStatus> {
        self.get(&format!(
            "/v1/status{}",
            query(&[("path", Some(path.to_string()))])
        ))
        .await
    }

    async fn get_history(&self, history: HistoryQuery) -> Result<Vec<HistoryEvent>> {
        #[derive(serde::Deserialize)]
        struct Events {
            events: Vec<HistoryEvent>,
        }
        let q = query(&[
            ("path", history.path),
            ("agent", history.agent_id),
            ("since", history.since.map(|t| t.0.to_string())),
            ("until", history.until.map(|t| t.0.to_string())),
            ("after_id", history.after_id.map(|i| i.to_string())),
            ("limit", history.limit.map(|l| l.to_string())),
            ("order", history.newest_first.then(|| "newest".to_string())),
        ]);
        let events: Events = self.get(&format!("/v1/history{q}")).await?;
        Ok(events.events)
    }

    async fn purge_history(&self) -> Result<u64> {
        let answer: Value = self
            .call(Method::POST, "/v1/history/purge", None, Duration::ZERO)
            .await?;
        count(&answer, "purged")
    }

    async fn get_settings(&self) -> Result<Settings> {
        self.get("/v1/config").await
    }

    async fn update_setting(&self, key: &str, value: &str) -> Result<Settings> {
        let path = format!("/v1/config/{}", encode(key));
        let body = json!({ "value": value });
        self.call(Method::PUT, &path, Some(body), Duration::ZERO)
            .await
    }
}

fn count(answer: &Value, key: &str) -> Result<u64> {
    answer[key].as_u64().ok_or_else(|| {
        LeaseError::storage(format!(
            "the server's answer has no count {key:?}: {answer}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_everything_but_unreserved_characters() {
        assert_eq!(encode("src/a b+c.rs"), "src%2Fa%20b%2Bc.rs");
        assert_eq!(encode("ünï"), "%C3%BCn%C3%AF");
        assert_eq!(query(&[("a", None), ("b", Some("x&y".into()))]), "?b=x%26y");
        assert_eq!(query(&[("a", None)]), "");
    }

    #[test]
    fn refuses_urls_it_cannot_use() {
        for bad in ["https://h:1", "ftp://h", "h:1", "http://", ""] {
            assert_eq!(
                RemoteManager::new(bad, "lh_x").unwrap_err().code(),
                "invalid_input",
                "{bad}"
            );
        }
        assert_eq!(
            RemoteManager::new("http://h:1", " ").unwrap_err().code(),
            "invalid_input"
        );
        let remote = RemoteManager::new("http://127.0.0.1:7373/", "lh_secret").unwrap();
        assert_eq!(remote.server(), "http://127.0.0.1:7373");
        assert!(!format!("{remote:?}").contains("lh_secret"));
    }

    #[test]
    fn server_only_refusals_become_token_errors() {
        let body = br#"{"error":{"code":"forbidden","message":"cleanup needs an admin token"}}"#;
        match error_of(StatusCode::FORBIDDEN, body) {
            LeaseError::InvalidInput { what, why } => {
                assert_eq!(
                    (what.as_str(), why.as_str()),
                    ("token", "cleanup needs an admin token")
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            error_of(StatusCode::BAD_GATEWAY, b"<html>").code(),
            "storage"
        );
    }
}
