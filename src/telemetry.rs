//! Logging: tracing-subscriber to stderr, human or JSON.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `STRATA_LOG` (or `RUST_LOG`) sets the filter,
/// `STRATA_LOG_FORMAT=json` switches to one JSON object per line.
pub fn init(default_level: &str) {
    let filter = EnvFilter::try_from_env("STRATA_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("STRATA_LOG_FORMAT").is_ok_and(|f| f == "json");
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
