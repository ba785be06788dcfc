//! etcd as a lock service, the way its own lock recipe works: a lease per path (`LeaseGrant`,
//! TTL 30 s), a transaction that puts the key with that lease only if the key does not exist
//! (`Txn`: compare `create_revision == 0`), and `LeaseRevoke` to release (which deletes the key).
//!
//! This speaks etcd's native gRPC API, as `etcdctl` and the Go client do, over one HTTP/2
//! connection per client, with the three messages encoded by hand (a dozen protobuf fields).
//! The `etcd-client` crate would need `protoc` and tonic to build (about 36 s of extra
//! compilation in release, and in every test build, since a bench's dependencies are
//! dev-dependencies); the JSON gateway would need no code but adds a JSON-to-gRPC proxy hop
//! inside etcd and so would flatter leasehold.

use bytes::{Buf, Bytes};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::drive::{BoxError, Target};

pub struct EtcdClient {
    sender: SendRequest<Full<Bytes>>,
    base: String,
    token: String,
}

impl EtcdClient {
    pub async fn connect(addr: &str, client: usize) -> Result<EtcdClient, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(EtcdClient {
            sender,
            base: format!("http://{addr}"),
            token: format!("client-{client}-{}", std::process::id()),
        })
    }

    /// One unary gRPC call: the message framed with its 5-byte prefix (no compression, length),
    /// the answer's frame unwrapped, `grpc-status` checked in the headers and the trailers.
    async fn unary(&mut self, method: &str, message: Vec<u8>) -> Result<Bytes, BoxError> {
        let mut framed = Vec::with_capacity(message.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let request = Request::post(format!("{}{method}", self.base))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(framed)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(format!("etcd {method}: HTTP {}", response.status()).into());
        }
        grpc_status(method, response.headers())?;
        let collected = response.into_body().collect().await?;
        if let Some(trailers) = collected.trailers() {
            grpc_status(method, trailers)?;
        }
        let mut body = collected.to_bytes();
        if body.len() < 5 {
            return Err(format!("etcd {method}: empty answer").into());
        }
        body.advance(5);
        Ok(body)
    }
}

fn grpc_status(method: &str, headers: &http::HeaderMap) -> Result<(), BoxError> {
    match headers.get("grpc-status").map(|v| v.as_bytes()) {
        None | Some(b"0") => Ok(()),
        Some(code) => Err(format!(
            "etcd {method}: grpc-status {} {}",
            String::from_utf8_lossy(code),
            headers
                .get("grpc-message")
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default()
        )
        .into()),
    }
}

impl Target for EtcdClient {
    /// The lease id: revoking it releases the key.
    type Held = i64;

    async fn acquire(&mut self, path: &str) -> Result<Option<i64>, BoxError> {
        // LeaseGrantRequest { TTL = 1: 30 }
        let mut grant = Vec::new();
        put_varint_field(&mut grant, 1, 30);
        let answer = self.unary("/etcdserverpb.Lease/LeaseGrant", grant).await?;
        // LeaseGrantResponse { header = 1, ID = 2, TTL = 3, error = 4 }
        let mut lease_id = 0i64;
        for (field, value) in fields(&answer)? {
            match (field, value) {
                (2, Field::Varint(id)) => lease_id = id as i64,
                (4, Field::Bytes(error)) if !error.is_empty() => {
                    return Err(
                        format!("etcd LeaseGrant: {}", String::from_utf8_lossy(error)).into(),
                    )
                }
                _ => {}
            }
        }
        if lease_id == 0 {
            return Err("etcd LeaseGrant: no lease id in the answer".into());
        }

        // TxnRequest { compare = 1: [Compare], success = 2: [RequestOp] }
        // Compare { result = 1: EQUAL (0), target = 2: CREATE (1), key = 3, create_revision = 5: 0 }
        // (create_revision is in a oneof, so its zero is written out: that is what selects it.)
        let mut compare = Vec::new();
        put_varint_field(&mut compare, 1, 0);
        put_varint_field(&mut compare, 2, 1);
        put_bytes_field(&mut compare, 3, path.as_bytes());
        put_varint_field(&mut compare, 5, 0);
        // RequestOp { request_put = 2: PutRequest { key = 1, value = 2, lease = 3 } }
        let mut put = Vec::new();
        put_bytes_field(&mut put, 1, path.as_bytes());
        put_bytes_field(&mut put, 2, self.token.as_bytes());
        put_varint_field(&mut put, 3, lease_id as u64);
        let mut op = Vec::new();
        put_bytes_field(&mut op, 2, &put);
        let mut txn = Vec::new();
        put_bytes_field(&mut txn, 1, &compare);
        put_bytes_field(&mut txn, 2, &op);
        let answer = self.unary("/etcdserverpb.KV/Txn", txn).await?;
        // TxnResponse { header = 1, succeeded = 2, responses = 3 }
        let succeeded = fields(&answer)?
            .iter()
            .any(|(field, value)| *field == 2 && matches!(value, Field::Varint(1)));
        if succeeded {
            Ok(Some(lease_id))
        } else {
            // Someone holds the key: give the unused lease back so leases do not pile up.
            self.release(lease_id).await?;
            Ok(None)
        }
    }

    async fn release(&mut self, lease_id: i64) -> Result<(), BoxError> {
        // LeaseRevokeRequest { ID = 1 }
        let mut revoke = Vec::new();
        put_varint_field(&mut revoke, 1, lease_id as u64);
        self.unary("/etcdserverpb.Lease/LeaseRevoke", revoke)
            .await?;
        Ok(())
    }
}

// Protobuf wire format, just what the three calls need: varints and length-delimited fields.

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, value: u64) {
    put_varint(out, field << 3);
    put_varint(out, value);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u64, value: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn get_varint(input: &mut &[u8]) -> Result<u64, BoxError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or("truncated varint")?;
        *input = rest;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err("overlong varint".into())
}

/// The top-level fields of one message, in order.
fn fields(mut input: &[u8]) -> Result<Vec<(u64, Field<'_>)>, BoxError> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let key = get_varint(&mut input)?;
        let value = match key & 7 {
            0 => Field::Varint(get_varint(&mut input)?),
            2 => {
                let len = get_varint(&mut input)? as usize;
                if len > input.len() {
                    return Err("truncated field".into());
                }
                let (bytes, rest) = input.split_at(len);
                input = rest;
                Field::Bytes(bytes)
            }
            wire @ (1 | 5) => {
                let len = if wire == 1 { 8 } else { 4 };
                if len > input.len() {
                    return Err("truncated field".into());
                }
                input = &input[len..];
                Field::Fixed
            }
            wire => return Err(format!("unexpected wire type {wire}").into()),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}
