//! Open-loop load on one HTTP endpoint, for goal H1 (`scripts/bench`):
//!
//!     health_load http://127.0.0.1:9187/health 500 5
//!
//! sends RATE requests/s for SECONDS over 20 keep-alive connections and prints
//! `requests N errors E p50 X ms p99 Y ms max Z ms`. Open loop: request i is due
//! at start + i/RATE and its latency counts from then, so a server that stalls
//! cannot hide its queue behind a client that waits for it. Each connection is a
//! thread of its own with blocking I/O: no async runtime whose timer rounds wake-ups
//! to the millisecond, and nothing the client does is counted as the server's time
//! except what the kernel's scheduler adds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 20;

struct Target {
    addr: String,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if !authority.contains(':') {
        return Err(format!("{url}: the URL needs an explicit port"));
    }
    Ok(Target {
        addr: authority.to_string(),
        host: authority.to_string(),
        path: path.to_string(),
    })
}

/// One GET on an open connection; the body is read in full and discarded.
fn get(conn: &mut BufReader<TcpStream>, request: &[u8]) -> std::io::Result<()> {
    conn.get_mut().write_all(request)?;
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().map_err(std::io::Error::other)?;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)
}

fn connect(target: &Target) -> std::io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect(&target.addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(BufReader::new(stream))
}

/// Requests `due` (offsets from `start`) on one connection; latencies in ms.
fn worker(target: &Target, start: Instant, due: Vec<Duration>) -> (Vec<f64>, usize) {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        target.path, target.host
    );
    let mut latencies = Vec::with_capacity(due.len());
    let mut errors = 0;
    let mut conn = connect(target).ok();
    for offset in due {
        let at = start + offset;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let result = match conn.as_mut() {
            Some(c) => get(c, request.as_bytes()),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        match result {
            Ok(()) => latencies.push(at.elapsed().as_secs_f64() * 1000.0),
            Err(_) => {
                errors += 1;
                conn = connect(target).ok();
            }
        }
    }
    (latencies, errors)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: health_load URL RATE SECONDS");
        std::process::exit(2);
    }
    let target = parse_url(&args[1]).unwrap_or_else(|e| {
        eprintln!("health_load: {e}");
        std::process::exit(2)
    });
    let (rate, seconds): (f64, f64) = match (args[2].parse(), args[3].parse()) {
        (Ok(r), Ok(s)) if r > 0.0 && s > 0.0 => (r, s),
        _ => {
            eprintln!("health_load: RATE and SECONDS must be positive numbers");
            std::process::exit(2)
        }
    };
    let total = (rate * seconds) as usize;
    let start = Instant::now() + Duration::from_millis(200);
    let mut slots: Vec<Vec<Duration>> = vec![Vec::new(); CONNECTIONS];
    for i in 0..total {
        slots[i % CONNECTIONS].push(Duration::from_secs_f64(i as f64 / rate));
    }
    let results: Vec<(Vec<f64>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = slots
            .into_iter()
            .map(|due| scope.spawn(|| worker(&target, start, due)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect()
    });
    let errors: usize = results.iter().map(|r| r.1).sum();
    let mut latencies: Vec<f64> = results.into_iter().flat_map(|r| r.0).collect();
    if latencies.is_empty() {
        eprintln!("health_load: no request succeeded ({errors} errors)");
        std::process::exit(1);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "requests {} errors {} p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        latencies.len(),
        errors,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
}
