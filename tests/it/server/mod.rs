//! `leasehold serve` over real HTTP on a loopback port (issue 4): a server per test on
//! `127.0.0.1:0` with a temporary database and a manual clock, driven by a plain HTTP client.
//! Expiry is reached by moving the clock, never by sleeping.

mod access;
mod events;
mod input;
mod metrics;
mod remote;
mod routes;
mod shutdown;
mod waiting;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use leasehold::server::{ServeConfig, ServeError, Server, TokenStore};
use leasehold::ManualClock;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::harness::T0_MS;

/// How long any single step of a test may take before it fails (real time, for progress of
/// other tasks only).
const STEP: Duration = Duration::from_secs(5);

/// A running server and the tokens of its agents.
pub struct TestServer {
    /// The server's address.
    pub addr: SocketAddr,
    /// The clock the server reads.
    pub clock: ManualClock,
    /// The database file.
    pub db: PathBuf,
    /// Agent `alice`, not admin.
    pub alice: String,
    /// Agent `bob`, not admin.
    pub bob: String,
    /// Agent `carol`, not admin.
    pub carol: String,
    /// Agent `root`, admin.
    pub admin: String,
    /// The token store of the same database, as the CLI would open it.
    pub tokens: Arc<TokenStore>,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    _dir: Arc<tempfile::TempDir>,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub text: String,
    /// The body as JSON (`null` when it is not JSON).
    pub json: Value,
}

impl Reply {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    /// The error message of an error answer.
    pub fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or("")
    }

    /// Asserts the status and, for an error, the code; returns self for more checks.
    #[track_caller]
    pub fn expect(self, status: u16, code: &str) -> Reply {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "unexpected answer: {}",
            self.text
        );
        self
    }
}

/// Options for a test server.
#[derive(Clone)]
pub struct Options {
    pub heartbeat: Duration,
    pub background: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat: Duration::from_secs(15),
            background: false,
        }
    }
}

impl TestServer {
    /// A server with default options (no background task: tests call cleanup themselves).
    pub async fn start() -> TestServer {
        TestServer::start_with(Options::default()).await
    }

    /// A server with `options`, on a fresh database.
    pub async fn start_with(options: Options) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().expect("a temporary directory"));
        let db = dir.path().join("leases.db");
        let clock = ManualClock::new(T0_MS);
        let tokens = Arc::new(TokenStore::open(&db, Arc::new(clock.clone())).expect("token store"));
        let token = |agent: &str, admin: bool| tokens.create(agent, admin).expect("token").token;
        let (alice, bob, carol, admin) = (
            token("alice", false),
            token("bob", false),
            token("carol", false),
            token("root", true),
        );
        let mut server = TestServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            clock,
            db,
            alice,
            bob,
            carol,
            admin,
            tokens,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop: None,
            task: None,
            _dir: dir,
        };
        server.launch(options).await;
        server
    }

    /// Starts serving the database (again), on a new port.
    pub async fn launch(&mut self, options: Options) {
        let mut config = ServeConfig::new(&self.db);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.heartbeat = options.heartbeat;
        config.background = options.background;
        let server = Server::bind(config, Arc::new(self.clock.clone()))
            .await
            .expect("the server binds");
        self.addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        self.task = Some(tokio::spawn(server.run(async move {
            let _ = stopped.await;
        })));
        self.stop = Some(stop);
        // A fresh client: connections to the old server are gone.
        self.client = Client::builder(TokioExecutor::new()).build_http();
    }

    /// Starts a graceful shutdown and returns the server task, to await when the test wants.
    pub fn begin_stop(&mut self) -> JoinHandle<Result<(), ServeError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("the server is running")
    }

    /// Stops the server gracefully and asserts that it stopped cleanly.
    pub async fn stop(&mut self) {
        let task = self.begin_stop();
        tokio::time::timeout(STEP, task)
            .await
            .expect("the server stops in time")
            .expect("the server task does not panic")
            .expect("the server stops without error");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a request with an optional bearer token, content type and raw body.
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(format!("{}{path}", self.url()));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let response = tokio::time::timeout(STEP, self.client.request(request))
            .await
            .expect("an answer in time")
            .expect("the request is answered");
        reply_of(response).await
    }

    /// Sends a request with a JSON body (or none).
    pub async fn send(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
        match body {
            Some(body) => {
                self.send_raw(
                    method,
                    path,
                    Some(token),
                    Some("application/json"),
                    body.to_string().into_bytes(),
                )
                .await
            }
            None => {
                self.send_raw(method, path, Some(token), None, Vec::new())
                    .await
            }
        }
    }

    /// `GET path` with `token`.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send("GET", path, token, None).await
    }

    /// `POST path` with `token` and a JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send("POST", path, token, Some(body)).await
    }

    /// Acquires `paths` for the token's agent with a TTL; asserts success; returns the leases.
    pub async fn acquire(&self, token: &str, paths: &[&str], ttl_ms: u64) -> Vec<Value> {
        let reply = self
            .post(
                "/v1/leases",
                token,
                json!({ "paths": paths, "ttl_ms": ttl_ms }),
            )
            .await
            .expect(201, "");
        reply.json["leases"].as_array().unwrap().clone()
    }

    /// Everything a refused request must leave alone: every lease in every status, every
    /// history event and every setting.
    pub async fn snapshot(&self) -> Value {
        let leases = self
            .get("/v1/leases?status=all", &self.admin)
            .await
            .expect(200, "");
        let history = self.get("/v1/history", &self.admin).await.expect(200, "");
        let config = self.get("/v1/config", &self.admin).await.expect(200, "");
        json!({ "leases": leases.json, "history": history.json, "config": config.json })
    }

    /// Opens an event stream with `query` (e.g. `?path=src/`) and extra headers.
    pub async fn events(&self, query: &str, headers: &[(&str, &str)]) -> SseReader {
        let mut request = Request::builder()
            .uri(format!("{}/v1/events{query}", self.url()))
            .header("authorization", format!("Bearer {}", self.alice));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(
            STEP,
            self.client
                .request(request.body(Full::new(Bytes::new())).unwrap()),
        )
        .await
        .expect("the stream opens in time")
        .expect("the stream opens");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader {
            body: response.into_body(),
            buffer: String::new(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn reply_of(response: http::Response<Incoming>) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = tokio::time::timeout(STEP, response.into_body().collect())
        .await
        .expect("the body in time")
        .expect("the body")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        json,
    }
}

/// One Server-Sent Event (or comment).
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The `event:` field.
    pub event: Option<String>,
    /// The `id:` field.
    pub id: Option<String>,
    /// The `data:` field, as JSON.
    pub data: Value,
    /// A comment line (heartbeats), without the colon.
    pub comment: Option<String>,
}

/// Reads an event stream event by event.
pub struct SseReader {
    body: Incoming,
    buffer: String,
}

impl SseReader {
    /// The next event or comment, or `None` when the stream ended. Fails after [`STEP`].
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: None,
                    id: None,
                    data: Value::Null,
                    comment: None,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        event.comment = Some(comment.trim().to_string());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "event" => event.event = Some(value.to_string()),
                            "id" => event.id = Some(value.to_string()),
                            "data" => data.push_str(value),
                            _ => {}
                        }
                    }
                }
                event.data = serde_json::from_str(&data).unwrap_or(Value::Null);
                return Some(event);
            }
            let frame = tokio::time::timeout(STEP, self.body.frame())
                .await
                .expect("an event in time");
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next event that is not a comment.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let event = self.next().await?;
            if event.comment.is_none() {
                return Some(event);
            }
        }
    }
}

/// Sends a raw HTTP/1.1 request over a new connection and returns the open stream, unread.
pub async fn raw_request(addr: SocketAddr, head_and_body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head_and_body).await.expect("write");
    stream
}

/// Reads a raw answer until the server closes or `STEP` passes, and returns it as text.
pub async fn read_raw(mut stream: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON of a raw POST of `body` to `path` with `token`.
pub fn raw_post(path: &str, token: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Waits until the status of `path` shows `n` waiters.
pub async fn waiters(server: &TestServer, path: &str, n: usize) {
    crate::harness::eventually(&format!("{n} waiter(s) on {path}"), || async {
        let status = server
            .get(&format!("/v1/status?path={path}"), &server.admin)
            .await;
        status.json["waiters"].as_array().map(Vec::len) == Some(n)
    })
    .await;
}
