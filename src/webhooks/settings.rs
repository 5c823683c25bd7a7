//! The `[webhooks]` config section (kept beside the capability it
//! configures; `config.rs` embeds it).

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;

/// Outbound webhooks: the only traffic the appliance sends, and only to
/// the destinations listed here (see README, Webhooks).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSection {
    /// Origins (`https://siem.corp.example:8443`) and CIDRs (`10.0.0.0/8`)
    /// deliveries may go to. Empty (the default): no outbound traffic.
    pub allow: Vec<String>,
    /// Plain `http://` to any allowed destination (else only to `http://`
    /// origins listed in `allow`).
    pub allow_http: bool,
    /// PEM file of CAs that receivers' certificates are checked against
    /// (default: the system trust store).
    pub ca_file: Option<PathBuf>,
    /// Deadline of one delivery attempt, 1 to 60 seconds.
    pub timeout_secs: u64,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            allow_http: false,
            ca_file: None,
            timeout_secs: 10,
        }
    }
}

impl WebhooksSection {
    /// The parsed allow list (validated at load).
    pub fn egress(&self) -> super::egress::Egress {
        super::egress::Egress::parse(&self.allow, self.allow_http).unwrap_or_default()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        super::egress::Egress::parse(&self.allow, self.allow_http)
            .map_err(|e| ConfigError::Invalid(format!("[webhooks] allow: {e}")))?;
        if !(1..=60).contains(&self.timeout_secs) {
            return Err(ConfigError::Invalid(
                "[webhooks] timeout_secs must be between 1 and 60".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebhooksSection, String> {
        let s: WebhooksSection = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate().map_err(|e| e.to_string())?;
        Ok(s)
    }

    #[test]
    fn the_section_is_strict_and_empty_by_default() {
        let d = parse("").unwrap();
        assert!(d.allow.is_empty() && d.egress().is_empty());
        assert_eq!(d.timeout_secs, 10);
        let ok = parse("allow = [\"https://siem.corp.example:8443\", \"10.0.0.0/8\"]").unwrap();
        assert!(!ok.egress().is_empty());
        let e = parse("allow = [\"siem.corp.example\"]").unwrap_err();
        assert!(e.contains("siem.corp.example"), "{e}");
        assert!(parse("timeout_secs = 0").is_err());
        assert!(parse("timeout_secs = 61").is_err());
        assert!(parse("allowed = []").is_err(), "unknown keys are refused");
    }
}
