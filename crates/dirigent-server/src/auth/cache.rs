//! Credentials authenticated recently, so that a busy robot's every call does not read its
//! token, user and roles from the database.
//!
//! An entry lives a few seconds at most. Any change on this node that could end or narrow a
//! credential — a logout, a revoked token, a changed user or role, an ended run — empties the
//! cache at once; other nodes sharing the database see such a change within the lifetime.
//! A credential's own expiry is still checked on every request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{auth::Caller, fleet::FleetEvent};

/// How long an entry is trusted.
const LIFETIME: Duration = Duration::from_secs(5);
/// Entries kept at most; beyond, the cache starts afresh.
const MAX_ENTRIES: usize = 10_000;

/// Callers by the digest of their token.
#[derive(Debug, Default)]
pub struct CredentialCache {
    entries: Mutex<HashMap<String, (Instant, Caller)>>,
}

impl CredentialCache {
    /// The caller behind `digest`, if authenticated within the lifetime.
    pub fn get(&self, digest: &str) -> Option<Caller> {
        let entries = self.lock();
        let (cached_at, caller) = entries.get(digest)?;
        (cached_at.elapsed() < LIFETIME).then(|| caller.clone())
    }

    pub fn insert(&self, digest: String, caller: Caller) {
        let mut entries = self.lock();
        if MAX_ENTRIES <= entries.len() {
            entries.clear();
        }
        entries.insert(digest, (Instant::now(), caller));
    }

    /// Forgets every entry: a credential, user or role changed.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// A cache that empties whenever a run ends, so that its run token stops working at once.
    pub fn following_runs(fleet: &crate::fleet::Fleet) -> Arc<CredentialCache> {
        let this = Arc::new(CredentialCache::default());
        let mut events = fleet.subscribe();
        let cache = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                let ended = match events.recv().await {
                    Ok(FleetEvent::Run(run)) => run.state.is_final(),
                    Ok(_) => false,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                match cache.upgrade() {
                    Some(cache) if ended => cache.clear(),
                    Some(_) => {}
                    None => return,
                }
            }
        });
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Caller)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
