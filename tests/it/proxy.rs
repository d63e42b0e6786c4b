//! A fault-injecting HTTP proxy in front of a real S3 server. One request per
//! connection (it forces `Connection: close`), so each request can be matched and
//! answered, reset or rewritten on its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do with a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and body instead of forwarding.
    Respond(u16, &'static str),
    /// Reset the connection without answering.
    Reset,
    /// Forward, then replace the response's Content-Length header value.
    RewriteLength(u64),
    /// Wait this long, then forward (backpressure).
    Delay(u64),
}

/// A rule: requests whose method and path/query match get `fault`, `times` times
/// (forever when `None`).
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: &'static str,
    pub query_has: &'static str,
    pub fault: Fault,
    pub times: Option<usize>,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    rules: Arc<Mutex<Vec<Rule>>>,
    hits: Arc<Mutex<usize>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let hits: Arc<Mutex<usize>> = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, h, s) = (rules.clone(), hits.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (r, h, s) = (r.clone(), h.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = handle(conn, upstream, r, h, s).await;
                });
            }
        });
        Self {
            addr,
            rules,
            hits,
            seen,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, rule: Rule) {
        self.rules.lock().unwrap().push(rule);
    }

    /// The head (request line and headers) of every request seen.
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests were faulted.
    pub fn hits(&self) -> usize {
        *self.hits.lock().unwrap()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            // The client gave up mid-body: forward nothing, as a reset would.
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, buf)))
}

fn close_header(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

async fn handle(
    mut conn: TcpStream,
    upstream: SocketAddr,
    rules: Arc<Mutex<Vec<Rule>>>,
    hits: Arc<Mutex<usize>>,
    seen: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let Some((head, raw)) = read_request(&mut conn).await? else {
        return Ok(());
    };
    seen.lock().unwrap().push(head.clone());
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let fault = {
        let mut rules = rules.lock().unwrap();
        let found = rules
            .iter_mut()
            .find(|r| r.method == method && target.contains(r.query_has) && r.times != Some(0));
        found.map(|r| {
            if let Some(t) = &mut r.times {
                *t -= 1;
            }
            r.fault.clone()
        })
    };
    if fault.is_some() {
        *hits.lock().unwrap() += 1;
    }
    match fault {
        Some(Fault::Reset) => {
            conn.set_zero_linger()?;
            drop(conn);
            return Ok(());
        }
        Some(Fault::Respond(status, body)) => {
            let reply = format!(
                "HTTP/1.1 {status} Fault\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(reply.as_bytes()).await?;
            return conn.shutdown().await;
        }
        Some(Fault::Delay(ms)) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
        _ => {}
    }
    let head_end = find(&raw, b"\r\n\r\n").unwrap() + 4;
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(close_header(&head).as_bytes()).await?;
    up.write_all(&raw[head_end..]).await?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).await?;
    let split = find(&response, b"\r\n\r\n").map_or(response.len(), |i| i + 4);
    let mut resp_head = close_header(&String::from_utf8_lossy(&response[..split]));
    if let Some(Fault::RewriteLength(n)) = fault {
        resp_head = resp_head
            .split("\r\n")
            .map(|l| {
                if l.to_ascii_lowercase().starts_with("content-length:") {
                    format!("Content-Length: {n}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n");
    }
    conn.write_all(resp_head.as_bytes()).await?;
    conn.write_all(&response[split..]).await?;
    conn.shutdown().await
}
