//! leasehold's HTTP server as a target: the server runs in a child process (this same binary,
//! `--serve-child DB`), as Redis and etcd do, so that its memory can be read on its own and
//! every request crosses a real loopback connection. Each client is one agent with its own
//! token and one keep-alive HTTP/1.1 connection.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use leasehold::server::{token_create, ServeConfig, Server};
use leasehold::SystemClock;

use crate::drive::{BoxError, Target};
use crate::stats::Samples;

/// The child side: serve `db` on a free loopback port, print the address on stdout, and stop
/// gracefully on SIGTERM (or when the parent dies).
pub async fn serve_child(db: PathBuf) -> Result<(), BoxError> {
    // Die with the bench if it is killed: nothing else would stop this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
    let mut config = ServeConfig::new(db);
    config.listen = "127.0.0.1:0".parse()?;
    let server = Server::bind(config, Arc::new(SystemClock)).await?;
    println!("{}", server.local_addr());
    server.run(leasehold::server::shutdown_signal()).await?;
    Ok(())
}

/// A server in a child process of this binary (started with `args`), which prints its
/// address on its first line; stopped (SIGTERM, then waited for) when dropped.
pub struct ChildServer {
    child: Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Starts the child and waits for its address.
    pub fn start(args: &[&OsStr]) -> Result<ChildServer, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout from a server child")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        match line.trim().parse() {
            Ok(addr) => Ok(ChildServer { child, addr }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("a server child did not start (said {line:?})").into())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The leasehold server child process on its database.
pub struct ServerProcess {
    child: ChildServer,
    pub db: PathBuf,
}

impl ServerProcess {
    /// Starts the child on `db` (created if needed) and waits for its address.
    pub fn start(db: &Path) -> Result<ServerProcess, BoxError> {
        let child = ChildServer::start(&[OsStr::new("--serve-child"), db.as_os_str()])?;
        Ok(ServerProcess {
            child,
            db: db.to_path_buf(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.child.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `VmRSS` and `VmHWM` (peak) of the server process, in KiB.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// A token for `agent` (written straight into the database the server reads).
    pub fn token(&self, agent: &str) -> Result<String, BoxError> {
        Ok(token_create(self.db.as_path(), agent, false)?.token)
    }
}

/// One keep-alive HTTP/1.1 connection acting as one agent.
///
/// A minimal client, as the Redis one is: it writes each request in one `write` and reads the
/// answer into a reused buffer (headers parsed with `httparse`, the body by its
/// `Content-Length`, which every answer of leasehold's carries). hyper's client runs each
/// connection as a task of its own, fed through a channel, so each request woke two tasks; the
/// clients share the machine's two cores with the server, and that cost came out of the
/// server's share.
pub struct HttpClient {
    stream: TcpStream,
    host: String,
    authorization: String,
    /// Bytes read but not yet used; a keep-alive answer never runs into the next one here
    /// (one request at a time), but a partial read must be kept.
    buf: Vec<u8>,
}

#[derive(Deserialize)]
struct Granted {
    leases: Vec<LeaseId>,
}

#[derive(Deserialize)]
struct LeaseId {
    id: String,
}

#[derive(Deserialize)]
struct Status {
    waiters: Vec<serde_json::Value>,
}

/// Where an answer's body starts and how long it is, once its head has been read.
fn parse_head(buf: &[u8]) -> Result<Option<(StatusCode, usize, usize)>, BoxError> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(response.code.ok_or("an answer without a status")?)?;
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .ok_or("an answer without Content-Length")?;
    let length: usize = std::str::from_utf8(length.value)?.trim().parse()?;
    Ok(Some((status, head_len, length)))
}

impl HttpClient {
    pub async fn connect(addr: SocketAddr, token: &str) -> Result<HttpClient, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpClient {
            stream,
            host: addr.to_string(),
            authorization: format!("Bearer {token}"),
            buf: Vec::with_capacity(4096),
        })
    }

    async fn call(
        &mut self,
        method: Method,
        uri: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), BoxError> {
        let body = body.unwrap_or_default();
        let mut request = format!(
            "{method} {uri} HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\n",
            self.host, self.authorization
        );
        if !body.is_empty() {
            request.push_str("content-type: application/json\r\n");
        }
        request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        request.push_str(&body);
        self.stream.write_all(request.as_bytes()).await?;
        loop {
            if let Some((status, head, length)) = parse_head(&self.buf)? {
                while self.buf.len() < head + length {
                    self.read_more().await?;
                }
                let answer = Bytes::copy_from_slice(&self.buf[head..head + length]);
                self.buf.drain(..head + length);
                return Ok((status, answer));
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), BoxError> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// `POST /v1/leases` for one path; the lease id when granted, `None` on 409 `conflict`.
    pub async fn acquire_path(
        &mut self,
        path: &str,
        wait_ms: Option<u64>,
    ) -> Result<Option<String>, BoxError> {
        let wait = wait_ms
            .map(|ms| format!(",\"wait_ms\":{ms}"))
            .unwrap_or_default();
        let body = format!(
            "{{\"paths\":[{}],\"ttl_ms\":30000{wait}}}",
            serde_json::to_string(path)?
        );
        let (status, answer) = self.call(Method::POST, "/v1/leases", Some(body)).await?;
        match status {
            StatusCode::CREATED => {
                let granted: Granted = serde_json::from_slice(&answer)?;
                let lease = granted
                    .leases
                    .into_iter()
                    .next()
                    .ok_or("no lease in a 201")?;
                Ok(Some(lease.id))
            }
            StatusCode::CONFLICT => Ok(None),
            other => Err(format!(
                "POST /v1/leases: {other} {}",
                String::from_utf8_lossy(&answer)
            )
            .into()),
        }
    }

    /// `DELETE /v1/leases/{id}`.
    pub async fn release_lease(&mut self, lease_id: &str) -> Result<(), BoxError> {
        let (status, answer) = self
            .call(Method::DELETE, &format!("/v1/leases/{lease_id}"), None)
            .await?;
        if status != StatusCode::OK {
            return Err(format!(
                "DELETE /v1/leases: {status} {}",
                String::from_utf8_lossy(&answer)
            )
            .into());
        }
        Ok(())
    }

    /// How many waiters `GET /v1/status?path=` shows for `path`.
    async fn waiters(&mut self, path: &str) -> Result<usize, BoxError> {
        let (status, answer) = self
            .call(Method::GET, &format!("/v1/status?path={path}"), None)
            .await?;
        if status != StatusCode::OK {
            return Err(format!("GET /v1/status: {status}").into());
        }
        Ok(serde_json::from_slice::<Status>(&answer)?.waiters.len())
    }
}

impl Target for HttpClient {
    type Held = String;

    async fn acquire(&mut self, path: &str) -> Result<Option<String>, BoxError> {
        self.acquire_path(path, None).await
    }

    async fn release(&mut self, lease_id: String) -> Result<(), BoxError> {
        self.release_lease(&lease_id).await
    }
}

/// Hand-off latencies over `rounds` hand-offs.
pub struct Handoff {
    /// From just before the holder's `DELETE` is written to the waiter's `201` fully read.
    pub from_release_sent: Samples,
    /// From the holder's `DELETE` answer fully read to the waiter's `201` fully read (zero when
    /// the waiter's answer came first).
    pub from_release_answered: Samples,
}

/// A holder takes a path; a waiter asks for it with `wait_ms` and is seen queued in
/// `GET /v1/status`; the holder releases; the waiter's grant is timed. Then the waiter releases.
pub async fn handoff(server: &ServerProcess, rounds: usize) -> Result<Handoff, BoxError> {
    let mut holder = HttpClient::connect(server.addr(), &server.token("handoff-holder")?).await?;
    let mut waiter =
        Some(HttpClient::connect(server.addr(), &server.token("handoff-waiter")?).await?);
    let mut result = Handoff {
        from_release_sent: Samples::default(),
        from_release_answered: Samples::default(),
    };
    for i in 0..rounds {
        let path = format!("handoff/f{i}.rs");
        let held = holder
            .acquire_path(&path, None)
            .await?
            .ok_or("hand-off path already held")?;
        let mut client = waiter.take().expect("the waiter's connection is back");
        let wait_path = path.clone();
        let waiting = tokio::spawn(async move {
            let granted = client.acquire_path(&wait_path, Some(10_000)).await;
            (Instant::now(), granted, client)
        });
        let queued_by = Instant::now() + Duration::from_secs(5);
        while holder.waiters(&path).await? == 0 {
            if Instant::now() > queued_by {
                return Err("the waiter never showed up in the queue".into());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let sent = Instant::now();
        holder.release_lease(&held).await?;
        let answered = Instant::now();
        let (granted_at, granted, mut client) = waiting.await?;
        let lease_id = granted?.ok_or("the waiter was refused")?;
        result.from_release_sent.push(granted_at - sent);
        result
            .from_release_answered
            .push(granted_at.saturating_duration_since(answered));
        client.release_lease(&lease_id).await?;
        waiter = Some(client);
    }
    Ok(result)
}
