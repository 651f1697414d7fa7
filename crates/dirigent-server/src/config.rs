//! The server's validated settings. Reading them from a file, the environment and flags is
//! the binary's job; this is what it produces.

use std::{fmt, net::SocketAddr};

use jiff::SignedDuration;

/// Everything `dirigent serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database_url: DatabaseUrl,
    /// The password of `admin` when the database is empty; generated when absent.
    pub admin_password: Option<Secret>,
    /// How long a login session lasts.
    pub session_ttl: SignedDuration,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    pub fleet: crate::fleet::FleetSettings,
    /// This node's id and how soon other nodes take over from it.
    pub cluster: crate::cluster::ClusterSettings,
    /// Serve HTTPS with this certificate; plain HTTP without.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Load balancers whose `X-Forwarded-For` names the client (for the audit log and the
    /// login throttle); other peers are the client themselves.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// A program that checks passwords the local ones do not match (PAM, LDAP, …).
    pub login_command: Option<crate::auth::external::LoginCommand>,
    /// How long finished data is kept.
    pub retention: Retention,
}

/// How long finished data is kept, each kind by itself; 0 keeps it forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Ended runs, with their transitions, output and frames.
    pub runs_days: u32,
    /// The most run output kept; the oldest ended runs' output goes first.
    pub run_output_max_mib: u64,
    pub trigger_firings_days: u32,
    pub work_item_attempts_days: u32,
    pub activities_days: u32,
    /// The audit log, trimmed by this alone.
    pub audit_days: u32,
    /// Agents' own log records: by age, and the most kept.
    pub agent_logs_days: u32,
    pub agent_logs_max_mib: u64,
    /// The orchestrator's own log records: by age, and the most kept.
    pub server_logs_days: u32,
    pub server_logs_max_mib: u64,
    /// The most output of ended activities kept (which go by age with their activity).
    pub activity_output_max_mib: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            runs_days: 90,
            run_output_max_mib: 2048,
            trigger_firings_days: 90,
            work_item_attempts_days: 90,
            activities_days: 90,
            audit_days: 365,
            agent_logs_days: 30,
            agent_logs_max_mib: 1024,
            server_logs_days: 30,
            server_logs_max_mib: 1024,
            activity_output_max_mib: 512,
        }
    }
}

impl Retention {
    /// Before when each kind is deleted, at `now`.
    pub fn cutoffs(&self, now: jiff::Timestamp) -> dirigent_store::Cutoffs {
        let before = |days: u32| {
            (0 < days)
                .then(|| {
                    now.checked_sub(SignedDuration::from_hours(24 * i64::from(days)))
                        .ok()
                })
                .flatten()
        };
        let bytes = |mib: u64| (0 < mib).then(|| mib.saturating_mul(1024 * 1024));
        dirigent_store::Cutoffs {
            runs: before(self.runs_days),
            output_max_bytes: bytes(self.run_output_max_mib),
            trigger_firings: before(self.trigger_firings_days),
            work_item_attempts: before(self.work_item_attempts_days),
            activities: before(self.activities_days),
            audit: before(self.audit_days),
            agent_logs: before(self.agent_logs_days),
            agent_logs_max_bytes: bytes(self.agent_logs_max_mib),
            server_logs: before(self.server_logs_days),
            server_logs_max_bytes: bytes(self.server_logs_max_mib),
            activity_output_max_bytes: bytes(self.activity_output_max_mib),
        }
    }
}

impl ServerConfig {
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:8420";
    pub const DEFAULT_SESSION_TTL: SignedDuration = SignedDuration::from_hours(12);
    pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
}

/// A database URL whose password never appears in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: String) -> DatabaseUrl {
        DatabaseUrl(url)
    }

    /// The URL with its password, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // scheme://user:password@host → scheme://user:***@host
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return f.write_str(&self.0);
        };
        match rest.split_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                let user = userinfo.split(':').next().unwrap_or_default();
                write!(f, "{scheme}://{user}:***@{host}")
            }
            _ => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A secret value that never appears in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Secret {
        Secret(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_are_redacted() {
        for (url, shown) in [
            (
                "postgres://dirigent:s3cret@db:5432/prod",
                "postgres://dirigent:***@db:5432/prod",
            ),
            ("postgres://dirigent@db/prod", "postgres://dirigent@db/prod"),
            (
                "sqlite://./dirigent-data/dirigent.db",
                "sqlite://./dirigent-data/dirigent.db",
            ),
        ] {
            let url = DatabaseUrl::new(url.to_owned());
            assert_eq!(url.to_string(), shown);
            assert_eq!(format!("{url:?}"), format!("\"{shown}\""));
        }
        assert_eq!(format!("{:?}", Secret::new("hunter22".into())), "\"***\"");
    }
}
