//! Redis as a lock service: `SET key token NX PX 30000` to acquire, `DEL key` to release.
//!
//! A minimal RESP2 client over one `TcpStream` per client, not the `redis` crate: the workload
//! needs two commands and their one-line replies, and a bare client, one command at a time on
//! its own connection, is the fastest way to talk to Redis (the way `redis-benchmark` does), so
//! Redis is measured at its best. (Releasing with a plain `DEL` is what the issue measured; a release that checks the
//! token first would need a Lua script and be slower.)

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::drive::{BoxError, Target};

pub struct RedisClient {
    conn: Connection,
    /// This client's lock value, so that a key says who set it.
    token: String,
}

struct Connection {
    stream: BufReader<TcpStream>,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl RedisClient {
    pub async fn connect(addr: &str, client: usize) -> Result<RedisClient, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RedisClient {
            conn: Connection {
                stream: BufReader::new(stream),
                out: Vec::with_capacity(128),
                line: Vec::with_capacity(64),
            },
            token: format!("client-{client}-{}", std::process::id()),
        })
    }
}

impl Connection {
    /// Sends one command as a RESP array of bulk strings and reads its one-line reply
    /// (`+OK`, `$-1` for nil, `:1`, or `-ERR ...`), without the trailing CRLF.
    async fn command(&mut self, args: &[&[u8]]) -> Result<&[u8], BoxError> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            self.out
                .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&self.out).await?;
        self.line.clear();
        let n = self.stream.read_until(b'\n', &mut self.line).await?;
        if n < 3 {
            return Err("redis closed the connection".into());
        }
        let reply = &self.line[..n - 2];
        if reply.first() == Some(&b'-') {
            return Err(format!("redis: {}", String::from_utf8_lossy(reply)).into());
        }
        Ok(reply)
    }
}

impl Target for RedisClient {
    type Held = String;

    async fn acquire(&mut self, path: &str) -> Result<Option<String>, BoxError> {
        let set: [&[u8]; 6] = [
            b"SET",
            path.as_bytes(),
            self.token.as_bytes(),
            b"NX",
            b"PX",
            b"30000",
        ];
        match self.conn.command(&set).await? {
            b"+OK" => Ok(Some(path.to_string())),
            b"$-1" => Ok(None),
            other => {
                Err(format!("redis SET: unexpected {:?}", String::from_utf8_lossy(other)).into())
            }
        }
    }

    async fn release(&mut self, key: String) -> Result<(), BoxError> {
        match self.conn.command(&[b"DEL", key.as_bytes()]).await? {
            b":1" => Ok(()),
            other => {
                Err(format!("redis DEL: unexpected {:?}", String::from_utf8_lossy(other)).into())
            }
        }
    }
}
