//! HTTP API (axum): `/health` and `/metrics` for monitoring, and a bearer-token
//! protected API to start backups and read runs and backups.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ring::digest::{SHA256, digest};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::commands::prune::{self, PruneError, Recorder};
use crate::config::Config;
use crate::daemon::{Daemon, DaemonError, TokenHash, TriggerError, stop_signal};
use crate::policy::schedule::SystemClock;
use tokio::net::TcpListener;

/// Largest request body accepted.
const BODY_LIMIT: usize = 16 * 1024;

/// Builds the router.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/backups/{job}", get(list_backups).post(start_backup))
        .route("/runs/{id}", get(get_run))
        .route("/prune/{job}/approve", post(approve_prune))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(daemon)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

/// Why a request was not authorised.
enum AuthError {
    /// No token configured; names the config key that enables the endpoint.
    Disabled(&'static str),
    Unauthorized,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match self {
            Self::Disabled(key) => error(
                StatusCode::FORBIDDEN,
                format!("this endpoint is disabled: configure {key}"),
            ),
            Self::Unauthorized => {
                let mut resp = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    "Bearer".parse().expect("header value"),
                );
                resp
            }
        }
    }
}

/// A caller that presented the API token (`http.token_file`); holds its identity
/// for the audit log (a token fingerprint, never the token).
struct Caller(String);

/// A caller that presented the admin token (`http.admin_token_file`).
struct Admin(String);

impl axum::extract::FromRequestParts<Arc<Daemon>> for Caller {
    type Rejection = AuthError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        d: &Arc<Daemon>,
    ) -> Result<Self, Self::Rejection> {
        let expected = d
            .api_token
            .as_ref()
            .ok_or(AuthError::Disabled("http.token_file"))?;
        check_bearer(&parts.headers, expected).map(Self)
    }
}

impl axum::extract::FromRequestParts<Arc<Daemon>> for Admin {
    type Rejection = AuthError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        d: &Arc<Daemon>,
    ) -> Result<Self, Self::Rejection> {
        let expected = d
            .admin_token
            .as_ref()
            .ok_or(AuthError::Disabled("http.admin_token_file"))?;
        check_bearer(&parts.headers, expected).map(|a| Self(a.replacen("api:", "admin:", 1)))
    }
}

/// Checks `Authorization: Bearer …` against `expected` in constant time.
fn check_bearer(headers: &HeaderMap, expected: &TokenHash) -> Result<String, AuthError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Hashing first makes the comparison length-independent.
    let hash = digest(&SHA256, presented.as_bytes());
    if presented.is_empty() || !bool::from(hash.as_ref().ct_eq(expected)) {
        return Err(AuthError::Unauthorized);
    }
    Ok(format!("api:{}", &hex::encode(hash.as_ref())[..8]))
}

// Long on purpose: the /health document field by field, as the README's contract lists it.
async fn health(State(d): State<Arc<Daemon>>) -> Response {
    let now = d.clock.now();
    let config = d.strata.config();
    let mut healthy = true;
    let mut jobs = serde_json::Map::new();
    let restore_tests = d.restore_tests();
    let progress = d.progress();
    for (name, h) in d.health() {
        let restore_test = restore_tests.get(&name).map(|t| {
            json!({ "at": t.started_at, "ok": t.ok, "seconds": t.seconds, "backup_id": t.backup_id, "error": t.error })
        });
        let rpo = config.jobs.get(&name).map_or(0, |j| j.rpo.as_secs());
        // A physical job's recovery point is its newest archived WAL file.
        let point = match &h.wal {
            Some(w) => w.last_archived,
            None => h.last_success,
        };
        let age = point.map(|t| (now - t).num_seconds().max(0));
        let within = age.is_some_and(|a| a as u64 <= rpo);
        healthy &= within;
        healthy &= h
            .wal
            .as_ref()
            .is_none_or(|w| w.problem.is_none() && w.gaps.is_empty());
        let job_progress = progress.get(&name).cloned();
        jobs.insert(
            name,
            json!({
                "last_success": h.last_success,
                "age_seconds": age,
                "rpo_seconds": rpo,
                "within_rpo": within,
                "last_result": h.last_result,
                "last_run_id": h.last_run_id,
                "last_error": h.last_error,
                "next_run": h.next_run,
                "running": h.running,
                "queued": h.queued,
                "progress": job_progress,
                "restore_test": restore_test,
                "wal": h.wal,
            }),
        );
    }
    let state_db = match &d.state {
        None => "not configured",
        Some(s) if s.reachable() => "ok",
        Some(s) if !s.tried() => "connecting",
        Some(_) => {
            healthy = false;
            "unreachable"
        }
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Warnings need attention but do not make the daemon unhealthy.
    let checks = d.checks();
    let threshold = config.alerts.monthly_cost_usd;
    let mut warnings = Vec::new();
    if let Some(usd) = checks.usd_monthly.filter(|u| *u > threshold) {
        warnings.push(format!(
            "storage costs ${usd:.2}/month, above the ${threshold:.2} alert threshold"
        ));
    }
    for (target, summary) in &checks.lifecycle {
        if summary.starts_with("drift") || summary.starts_with("cannot") {
            warnings.push(format!("lifecycle of {target}: {summary}"));
        }
    }
    if !checks.compliance_failing.is_empty() {
        warnings.push(format!(
            "compliance checks failing: {} (see `strata compliance`)",
            checks.compliance_failing.join(", ")
        ));
    }
    let outbox = d.state.as_ref().map(|s| {
        let (waiting, dropped) = s.outbox();
        json!({ "waiting": waiting, "dropped": dropped })
    });
    let body = json!({
        "status": if healthy { "ok" } else { "failing" },
        "starting": !d.started(),
        "state_db": state_db,
        "state_outbox": outbox,
        "jobs": jobs,
        "storage": {
            "usd_monthly": checks.usd_monthly,
            "projected_usd_monthly": checks.projected_usd_monthly,
            "alert_threshold_usd": threshold,
            "over_threshold": checks.usd_monthly.is_some_and(|u| u > threshold),
            "checked_at": checks.checked_at,
        },
        "lifecycle": checks.lifecycle,
        "warnings": warnings,
    });
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    d.update_progress_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        d.metrics.render(),
    )
        .into_response()
}

async fn start_backup(
    State(d): State<Arc<Daemon>>,
    Caller(actor): Caller,
    Path(job): Path<String>,
    body: Bytes,
) -> Response {
    // An optional JSON object, e.g. {"reason": "before the migration"}.
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => map.get("reason").cloned().unwrap_or(Value::Null),
            Ok(_) => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
        }
    };
    d.audit(
        &actor,
        "api.backup",
        Some(&job),
        None,
        json!({ "reason": reason }),
    )
    .await;
    match d.trigger(&job, "api", None, &actor).await {
        Ok(run_id) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "run_id": run_id })),
        )
            .into_response(),
        Err(e @ TriggerError::UnknownJob(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ TriggerError::AlreadyRunning(_)) => error(StatusCode::CONFLICT, e),
        Err(e @ TriggerError::Stopping) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn list_backups(
    State(d): State<Arc<Daemon>>,
    Caller(actor): Caller,
    Path(job): Path<String>,
) -> Response {
    let Some(cfg) = d.strata.config().job(&job) else {
        return error(StatusCode::NOT_FOUND, format!("unknown job '{job}'"));
    };
    d.audit(&actor, "api.list", Some(&job), None, Value::Null)
        .await;
    let mut items = Vec::new();
    for t in &cfg.targets {
        match crate::catalog::list_all(&d.strata, t, &job).await {
            Ok(listing) => {
                items.extend(listing.entries.into_iter().map(
                    |e| json!({ "target": t, "key": e.object_key(), "manifest": e.manifest }),
                ));
                items.extend(listing.refused.into_iter().map(|r| {
                    json!({ "target": t, "manifest_key": r.manifest_key, "refused": r.error.to_string() })
                }));
            }
            Err(e) => items.push(json!({ "target": t, "error": e.to_string() })),
        }
    }
    axum::Json(Value::Array(items)).into_response()
}

async fn get_run(State(d): State<Arc<Daemon>>, _: Caller, Path(id): Path<String>) -> Response {
    match d.run(&id).await {
        Some(run) => axum::Json(run).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no run '{id}'")),
    }
}

async fn approve_prune(
    State(d): State<Arc<Daemon>>,
    Admin(actor): Admin,
    Path(job): Path<String>,
) -> Response {
    if d.strata.config().job(&job).is_none() {
        return error(StatusCode::NOT_FOUND, format!("unknown job '{job}'"));
    }
    let Some(state) = &d.state else {
        return error(
            StatusCode::CONFLICT,
            "approvals need a state database (state.database_url) to hold the plan",
        );
    };
    d.audit(&actor, "api.prune-approve", Some(&job), None, Value::Null)
        .await;
    let rec = Recorder {
        state: Some(state),
        metrics: Some(&d.metrics),
        actor: &actor,
        clock: d.clock.as_ref(),
    };
    match prune::approve(&d.strata, &job, state, &rec, d.clock.now()).await {
        Ok((plan_id, out)) => axum::Json(json!({
            "plan_id": plan_id,
            "deleted": out.deleted,
            "locked": out.locked,
            "failed": out.failed,
        }))
        .into_response(),
        Err(e @ PruneError::NoPendingPlan(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ PruneError::LatestRunNotGood { .. }) => error(StatusCode::CONFLICT, e),
        Err(e @ PruneError::StateUnknown { .. }) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

/// `strata run`: the daemon with the system clock, until SIGTERM/SIGINT.
///
/// # Errors
/// Bad tokens or the listen address is taken.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let listen = config
        .http
        .as_ref()
        .map_or_else(|| "127.0.0.1:9187".parse().expect("address"), |h| h.listen);
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let daemon = Daemon::build(config, Arc::new(SystemClock)).await?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(DaemonError::Listen)?;
    let app = crate::http::router(daemon.clone());
    daemon.run_until_stopped(listener, app, stop_signal()).await
}
