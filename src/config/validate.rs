//! From the raw shapes to a validated [`Config`]: ${VAR} substitution, then
//! every section checked, every problem kept with its key path.

use super::raw::*;
use super::*;

/// Replaces `${VAR}` and `${VAR:-default}` in every string value of the tree.
pub(super) fn substitute(
    v: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) {
    match v {
        Value::String(s) => match expand(s, env) {
            Ok(out) => *s = out,
            Err(var) => problems.add(
                path,
                format!(
                    "environment variable {var} is not set (use ${{{var}:-default}} for a default)"
                ),
            ),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, &format!("{path}[{i}]"), env, problems);
            }
        }
        Value::Mapping(map) => {
            for (k, item) in map.iter_mut() {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned);
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                substitute(item, &child, env, problems);
            }
        }
        Value::Tagged(t) => substitute(&mut t.value, path, env, problems),
        _ => {}
    }
}

/// Expands one string; `Err(name)` for an unset variable without default.
pub(super) fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..start + len];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (
            env(name).filter(|v| !v.is_empty() || default.is_none()),
            default,
        ) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(name.to_owned()),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

pub(super) fn existing_file(path: &Path, at: &str, problems: &mut Problems) {
    if !path.is_file() {
        problems.add(at, format!("file {} does not exist", path.display()));
    }
}

pub(super) fn db_url(text: &str, at: &str, problems: &mut Problems) -> Option<DbUrl> {
    text.parse::<DbUrl>().map_err(|e| problems.add(at, e)).ok()
}

pub(super) fn cron(text: &str, at: &str, problems: &mut Problems) -> Option<CronSchedule> {
    CronSchedule::parse(text)
        .map_err(|e| problems.add(at, e))
        .ok()
}

// Long on purpose: One check per top-level section, in the order of docs/config-reference.yaml.
pub(super) fn validate(raw: RawConfig, path: &Path, p: &mut Problems) -> Option<Config> {
    let timezone = match raw
        .timezone
        .as_deref()
        .unwrap_or("UTC")
        .parse::<chrono_tz::Tz>()
    {
        Ok(tz) => Some(tz),
        Err(_) => {
            p.add(
                "timezone",
                format!(
                    "unknown time zone '{}' (use an IANA name such as America/New_York)",
                    raw.timezone.unwrap_or_default()
                ),
            );
            None
        }
    };
    let http = raw.http.and_then(|h| {
        let listen = h.listen.as_deref().unwrap_or("127.0.0.1:9187");
        let listen = listen
            .parse::<SocketAddr>()
            .map_err(|_| p.add("http.listen", format!("'{listen}' is not an address:port")))
            .ok();
        for (key, file) in [
            ("http.token_file", &h.token_file),
            ("http.admin_token_file", &h.admin_token_file),
        ] {
            if let Some(f) = file {
                existing_file(f, key, p);
            }
        }
        Some(HttpConfig {
            listen: listen?,
            token_file: h.token_file,
            admin_token_file: h.admin_token_file,
        })
    });
    let state_url = raw
        .state
        .and_then(|s| db_url(&s.database_url, "state.database_url", p));
    let encryption = raw.encryption.and_then(|e| validate_encryption(e, p));
    let mut pricing: BTreeMap<StorageClass, f64> = StorageClass::PRICED
        .into_iter()
        .zip([0.023, 0.0125, 0.004, 0.00099])
        .collect();
    for (class, price) in raw.pricing.unwrap_or_default() {
        let at = format!("pricing.{class}");
        if let Some(class) = check_class(&class, &at, p) {
            if price.is_finite() && price >= 0.0 {
                pricing.insert(class, price);
            } else {
                p.add(at, "price must be a non-negative number (USD per GB-month)");
            }
        }
    }
    let alerts = raw
        .alerts
        .map_or_else(AlertsConfig::default, |a| validate_alerts(a, p));
    let daemon = validate_daemon(raw.daemon, p);
    let restore_jobs = match raw.restore.and_then(|r| r.jobs) {
        None => cores(),
        Some(n) if (1..=64).contains(&n) => n,
        Some(_) => {
            p.add("restore.jobs", "must be between 1 and 64");
            1
        }
    };
    let mut targets = BTreeMap::new();
    for (name, t) in raw.targets {
        if !valid_name(&name) {
            p.add(
                format!("targets.{name}"),
                "target names use lowercase letters, digits, - and _",
            );
        }
        if let Some(t) = validate_target(&name, t, p) {
            targets.insert(name, t);
        }
    }
    let job_names: Vec<String> = raw.jobs.keys().cloned().collect();
    let mut jobs = BTreeMap::new();
    for (name, j) in raw.jobs {
        if let Some(j) = validate_job(&name, j, &targets, &job_names, p) {
            if j.globals.role_passwords && encryption.is_none() {
                p.add(
                    format!("jobs.{name}.globals.role_passwords"),
                    "password hashes are only stored encrypted; configure encryption",
                );
            }
            jobs.insert(name, j);
        }
    }
    if jobs.is_empty() && p.0.is_empty() {
        p.add("jobs", "no jobs are configured");
    }
    super::window::check_physical_lifecycles(
        &jobs,
        &targets,
        timezone.unwrap_or(chrono_tz::UTC),
        p,
    );
    if raw.require_authenticated_manifests == Some(true) && encryption.is_none() {
        p.add(
            "require_authenticated_manifests",
            "manifests are authenticated with the encryption key; configure encryption",
        );
    }
    if let Some(state) = &state_url {
        for job in jobs.values() {
            if state.to_string() == job.database_url.to_string() {
                p.add(
                    "state.database_url",
                    format!(
                        "is the database job '{}' backs up; give the state a database of its own",
                        job.name
                    ),
                );
            }
        }
    }
    Some(Config {
        path: path.to_owned(),
        timezone: timezone?,
        http,
        state_url,
        encryption,
        pricing,
        alerts,
        restore_jobs,
        daemon,
        require_authenticated_manifests: raw.require_authenticated_manifests.unwrap_or(false),
        targets,
        jobs,
    })
}

pub(super) fn validate_encryption(e: RawEncryption, p: &mut Problems) -> Option<EncryptionConfig> {
    let chunk_size = e.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
    if !(1024..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        p.add(
            "encryption.chunk_size",
            format!("must be between 1024 and {MAX_CHUNK_SIZE}"),
        );
    }
    if e.keys.is_empty() {
        p.add(
            "encryption.keys",
            "at least one key is required (create one with `strata keygen --out FILE`)",
        );
    }
    let mut loaded = Vec::new();
    for (id, file) in &e.keys {
        let at = format!("encryption.keys.{id}");
        if id.is_empty() || id.len() > 255 {
            p.add(&at, "key ids are 1 to 255 bytes");
            continue;
        }
        match MasterKey::load(id.clone(), file) {
            Ok(k) => loaded.push(k),
            Err(err) => p.add(&at, err),
        }
    }
    if !e.keys.contains_key(&e.active) {
        p.add(
            "encryption.active",
            format!("'{}' is not one of encryption.keys", e.active),
        );
        return None;
    }
    let keyring = Keyring::new(&e.active, loaded)?;
    Some(EncryptionConfig {
        keyring: std::sync::Arc::new(keyring),
        chunk_size,
    })
}

pub(super) fn validate_daemon(raw: Option<RawDaemon>, p: &mut Problems) -> DaemonSettings {
    let mut d = DaemonSettings::default();
    let Some(raw) = raw else { return d };
    match raw.max_concurrent_runs {
        None => {}
        Some(n) if (1..=256).contains(&n) => d.max_concurrent_runs = n,
        Some(_) => p.add("daemon.max_concurrent_runs", "must be between 1 and 256"),
    }
    let durations = [
        (
            "shutdown_grace",
            raw.shutdown_grace,
            &mut d.shutdown_grace,
            false,
        ),
        ("stale_after", raw.stale_after, &mut d.stale_after, false),
        (
            "check_interval",
            raw.check_interval,
            &mut d.check_interval,
            true,
        ),
        ("thaw_poll", raw.thaw_poll, &mut d.thaw_poll, true),
    ];
    for (key, text, slot, positive) in durations {
        let Some(text) = text else { continue };
        match humantime::parse_duration(&text) {
            Ok(v) if positive && v.is_zero() => {
                p.add(format!("daemon.{key}"), "must be longer than 0s");
            }
            Ok(v) => *slot = v,
            Err(e) => p.add(
                format!("daemon.{key}"),
                format!("'{text}' is not a duration: {e}"),
            ),
        }
    }
    d
}

pub(super) fn validate_alerts(a: RawAlerts, p: &mut Problems) -> AlertsConfig {
    let mut out = AlertsConfig::default();
    if let Some(email) = a.email {
        if !(email.smtp_url.starts_with("smtp://") || email.smtp_url.starts_with("smtps://")) {
            p.add(
                "alerts.email.smtp_url",
                "must start with smtp:// or smtps://",
            );
        }
        if email.to.is_empty() {
            p.add("alerts.email.to", "at least one recipient is required");
        }
        for (i, addr) in email.to.iter().chain([&email.from]).enumerate() {
            if !addr.contains('@') {
                let at = if i < email.to.len() {
                    format!("alerts.email.to[{i}]")
                } else {
                    "alerts.email.from".into()
                };
                p.add(at, format!("'{addr}' is not an email address"));
            }
        }
        if let Some(f) = &email.password_file {
            existing_file(f, "alerts.email.password_file", p);
        }
        if let Some(f) = &email.ca_file {
            existing_file(f, "alerts.email.ca_file", p);
            let tls = email.smtp_url.starts_with("smtps://")
                || email.smtp_url.contains("tls=required")
                || email.smtp_url.contains("tls=opportunistic");
            if !tls {
                p.add(
                    "alerts.email.ca_file",
                    "only used with TLS: smtps://, or smtp:// with ?tls=required",
                );
            }
        }
        out.email = Some(EmailConfig {
            smtp_url: email.smtp_url,
            from: email.from,
            to: email.to,
            password_file: email.password_file,
            ca_file: email.ca_file,
        });
    }
    if let Some(w) = a.webhook {
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            p.add("alerts.webhook.url", "must be an http:// or https:// URL");
        }
        out.webhook_url = Some(w.url);
    }
    if let Some(r) = a.size_change_ratio {
        if r.is_finite() && r > 0.0 {
            out.size_change_ratio = r;
        } else {
            p.add(
                "alerts.size_change_ratio",
                "must be a positive number (0.5 = 50%)",
            );
        }
    }
    if let Some(c) = a.monthly_cost_usd {
        if c.is_finite() && c >= 0.0 {
            out.monthly_cost_usd = c;
        } else {
            p.add("alerts.monthly_cost_usd", "must be a non-negative number");
        }
    }
    if let Some(r) = a.repeat_interval {
        match humantime::parse_duration(&r) {
            Ok(d) => out.repeat_interval = d,
            Err(e) => p.add("alerts.repeat_interval", format!("'{r}': {e}")),
        }
    }
    out
}
