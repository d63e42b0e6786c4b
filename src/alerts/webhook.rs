//! Webhook channel: a JSON POST. `text` carries the whole message, so Slack- and
//! Mattermost-style incoming webhooks show it as is; the other fields are for
//! machines.

use std::time::Duration;

use async_trait::async_trait;

use super::{Alert, AlertError, Channel};

/// POSTs alerts to a URL.
pub struct Webhook {
    url: String,
    client: reqwest::Client,
}

impl Webhook {
    /// A channel to `url` (10 s timeout per request).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        }
    }
}

/// The JSON document sent for `alert`.
pub fn payload(alert: &Alert) -> serde_json::Value {
    serde_json::json!({
        "text": alert.body(),
        "kind": alert.kind,
        "job": alert.job,
        "at": alert.at,
        "cause": alert.cause,
        "action": alert.action,
        "resolved": alert.resolved,
        "host": alert.host,
    })
}

#[async_trait]
impl Channel for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, alert: &Alert) -> Result<(), AlertError> {
        let err = |message: String| AlertError {
            channel: "webhook".into(),
            message,
        };
        let resp = self
            .client
            .post(&self.url)
            .json(&payload(alert))
            .send()
            .await
            // The URL may carry a secret (Slack's does): never print it.
            .map_err(|e| err(e.without_url().to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(err(format!("the receiver answered {}", resp.status())))
        }
    }
}
