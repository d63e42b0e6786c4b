//! Email channel: SMTP through lettre. `smtp://host:port` speaks plain SMTP
//! (`?tls=required` insists on STARTTLS, `?tls=opportunistic` uses it when
//! offered), `smtps://` is TLS from the start. The user name comes from the URL,
//! the password from `password_file` (never from the URL or the command line).
//! Servers are verified against the public roots, plus `ca_file` when given.

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Alert, AlertError, Channel};
use crate::config::EmailConfig;

/// Sends alerts by email.
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

fn err(message: impl std::fmt::Display) -> AlertError {
    AlertError {
        channel: "email".into(),
        message: message.to_string(),
    }
}

impl Email {
    /// Builds the transport.
    ///
    /// # Errors
    /// A bad SMTP URL or address, or an unreadable password file.
    pub fn new(cfg: &EmailConfig) -> Result<Self, AlertError> {
        let url = url::Url::parse(&cfg.smtp_url).map_err(|e| err(format!("smtp_url: {e}")))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&cfg.smtp_url)
            .map_err(|e| err(format!("smtp_url: {e}")))?
            .timeout(Some(std::time::Duration::from_secs(15)));
        if let Some(path) = &cfg.ca_file {
            builder = builder.tls(tls_trusting(&url, path)?);
        }
        if let Some(path) = &cfg.password_file {
            let password = std::fs::read_to_string(path)
                .map_err(|e| err(format!("password_file {}: {e}", path.display())))?;
            let user = user_name(&url);
            builder = builder.credentials(Credentials::new(user, password.trim().to_owned()));
        }
        let parse = |a: &str| {
            a.parse::<Mailbox>()
                .map_err(|e| err(format!("address '{a}': {e}")))
        };
        Ok(Self {
            transport: builder.build(),
            from: parse(&cfg.from)?,
            to: cfg.to.iter().map(|a| parse(a)).collect::<Result<_, _>>()?,
        })
    }
}

/// The URL's user name, percent-decoded (`alerts%40example.com` → `alerts@example.com`).
fn user_name(url: &url::Url) -> String {
    percent_encoding::percent_decode_str(url.username())
        .decode_utf8_lossy()
        .into_owned()
}

/// The URL's TLS mode with `ca_file` trusted besides the public roots.
fn tls_trusting(url: &url::Url, ca_file: &std::path::Path) -> Result<Tls, AlertError> {
    let pem =
        std::fs::read(ca_file).map_err(|e| err(format!("ca_file {}: {e}", ca_file.display())))?;
    let cert = Certificate::from_pem(&pem)
        .map_err(|e| err(format!("ca_file {}: {e}", ca_file.display())))?;
    let host = url.host_str().ok_or_else(|| err("smtp_url: no host"))?;
    let params = TlsParameters::builder(host.to_owned())
        .add_root_certificate(cert)
        .build()
        .map_err(|e| err(format!("TLS set-up: {e}")))?;
    let mode = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    match (url.scheme(), mode.as_deref()) {
        ("smtps", _) => Ok(Tls::Wrapper(params)),
        ("smtp", Some("required")) => Ok(Tls::Required(params)),
        ("smtp", Some("opportunistic")) => Ok(Tls::Opportunistic(params)),
        _ => Err(err(
            "ca_file is only used with TLS: smtps://, or smtp:// with ?tls=required",
        )),
    }
}

#[async_trait]
impl Channel for Email {
    fn name(&self) -> &'static str {
        "email"
    }

    async fn send(&self, alert: &Alert) -> Result<(), AlertError> {
        let mut msg = Message::builder()
            .from(self.from.clone())
            .subject(alert.subject());
        for to in &self.to {
            msg = msg.to(to.clone());
        }
        let msg = msg.body(alert.body()).map_err(err)?;
        self.transport.send(msg).await.map(drop).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_comes_from_the_url_percent_decoded() {
        let user = |u: &str| user_name(&url::Url::parse(u).unwrap());
        assert_eq!(user("smtp://alerts@mail:587?tls=required"), "alerts");
        assert_eq!(
            user("smtp://alerts%40example.com@mail:587"),
            "alerts@example.com"
        );
        assert_eq!(user("smtp://a+b@mail:25"), "a+b");
        assert_eq!(user("smtp://mail:25"), "");
    }
}
