//! Per-job locks: PostgreSQL advisory locks, all held on one connection of
//! their own, so forty runs at once need one connection, not forty (a server
//! with `max_connections = 30` refused the twenty-third), and a process that
//! dies releases every lock with its connection.
//!
//! A task owns the connection and takes requests in order. When the
//! connection drops, the locks held on it are gone: the task reconnects and
//! takes them again, and says loudly when another process got one first.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::OP_TIMEOUT;
use crate::pg::DbUrl;

enum Request {
    Take {
        key: String,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    Release {
        key: String,
    },
}

/// The lock connection's task, reached through a channel.
pub struct LockPool {
    tx: mpsc::UnboundedSender<Request>,
}

/// A job's lock; dropping it releases it.
pub struct JobLock {
    key: String,
    tx: mpsc::UnboundedSender<Request>,
}

impl Drop for JobLock {
    fn drop(&mut self) {
        let _ = self.tx.send(Request::Release {
            key: std::mem::take(&mut self.key),
        });
    }
}

impl LockPool {
    /// Starts the task; it connects on the first request.
    pub fn start(url: DbUrl) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(url, rx));
        Self { tx }
    }

    /// Takes `key` unless another session holds it.
    ///
    /// # Errors
    /// The database is unreachable or does not answer in time.
    pub async fn try_lock(&self, key: &str) -> Result<Option<JobLock>, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Take {
                key: key.to_owned(),
                reply,
            })
            .map_err(|_| "the lock task stopped".to_owned())?;
        match tokio::time::timeout(OP_TIMEOUT, answer).await {
            Ok(Ok(Ok(true))) => Ok(Some(JobLock {
                key: key.to_owned(),
                tx: self.tx.clone(),
            })),
            Ok(Ok(Ok(false))) => Ok(None),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err("the lock task stopped".into()),
            Err(_) => Err(format!("no answer within {}s", OP_TIMEOUT.as_secs())),
        }
    }
}

const TAKE: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";
const RELEASE: &str = "SELECT pg_advisory_unlock(hashtextextended($1, 0))";

async fn connect(url: &DbUrl) -> Result<tokio_postgres::Client, String> {
    match tokio::time::timeout(OP_TIMEOUT, url.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", OP_TIMEOUT.as_secs())),
    }
}

async fn query_bool(client: &tokio_postgres::Client, sql: &str, key: &str) -> Result<bool, String> {
    match tokio::time::timeout(OP_TIMEOUT, client.query_one(sql, &[&key])).await {
        Ok(Ok(row)) => Ok(row.get(0)),
        Ok(Err(e)) => Err(crate::pg::pg_message(&e)),
        Err(_) => Err(format!("no answer within {}s", OP_TIMEOUT.as_secs())),
    }
}

async fn serve(url: DbUrl, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut held: BTreeSet<String> = BTreeSet::new();
    // After a failure, wait before connecting again so requests fail fast.
    let mut down_until: Option<tokio::time::Instant> = None;
    while let Some(request) = rx.recv().await {
        if client
            .as_ref()
            .is_some_and(tokio_postgres::Client::is_closed)
        {
            client = None;
            if !held.is_empty() {
                tracing::error!(locks = ?held, "the state database connection holding job locks dropped; taking them again");
            }
        }
        if client.is_none() && down_until.is_none_or(|t| tokio::time::Instant::now() >= t) {
            match connect(&url).await {
                Ok(c) => {
                    // Locks lost with the old connection are taken again.
                    for key in &held {
                        if !query_bool(&c, TAKE, key).await.unwrap_or(false) {
                            tracing::error!(lock = %key, "another process took a job lock this one held while the connection was down; both may run the job");
                        }
                    }
                    client = Some(c);
                    down_until = None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "lock connection unavailable");
                    down_until = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                }
            }
        }
        match request {
            Request::Take { key, reply } => {
                let result = match &client {
                    Some(c) => query_bool(c, TAKE, &key).await,
                    None => Err("the state database is unreachable".into()),
                };
                if result.as_ref().is_err() {
                    client = None;
                }
                if let Ok(true) = result {
                    held.insert(key);
                }
                let _ = reply.send(result);
            }
            Request::Release { key } => {
                held.remove(&key);
                if let Some(c) = &client {
                    if query_bool(c, RELEASE, &key).await.is_err() {
                        // The connection is suspect: dropping it releases the lock.
                        client = None;
                    }
                }
            }
        }
    }
}
