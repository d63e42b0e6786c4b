//! Email channel: SMTP through lettre. `smtp://host:port` speaks plain SMTP
//! (`?tls=required` insists on STARTTLS, `?tls=opportunistic` uses it when
//! offered), `smtps://` is TLS from the start. The user name comes from the URL,
//! the password from `password_file` (never from the URL or the command line).

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
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
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&cfg.smtp_url)
            .map_err(|e| err(format!("smtp_url: {e}")))?
            .timeout(Some(std::time::Duration::from_secs(15)));
        if let Some(path) = &cfg.password_file {
            let password = std::fs::read_to_string(path)
                .map_err(|e| err(format!("password_file {}: {e}", path.display())))?;
            let user = url_user(&cfg.smtp_url).unwrap_or_default();
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

/// The user name of an `smtp://user@host` URL.
fn url_user(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let (userinfo, _) = rest.split_once('@')?;
    Some(userinfo.split(':').next().unwrap_or_default().to_owned())
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
    fn the_user_comes_from_the_url() {
        assert_eq!(
            url_user("smtp://alerts@mail:587?tls=required").as_deref(),
            Some("alerts")
        );
        assert_eq!(url_user("smtp://mail:25"), None);
    }
}
