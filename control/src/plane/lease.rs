//! The one store lease under which a server keeps all its agents' registrations.
//!
//! Liveness is the server's to judge (heartbeats and the tunnel); the lease is only the backup
//! for a server that died: when it stops refreshing, the store drops every registration it
//! held once the lease ends. So agents' heartbeats never touch the store: the server refreshes
//! its one lease every third of its TTL, whatever the number of agents, and deletes an agent's
//! registration itself when the session ends. A lease the store lost (an etcd outage longer
//! than the TTL) is granted again and every live session's registration written under it.

use std::sync::Arc;
use std::time::Duration;

use super::Session;
use crate::error::ControlError;
use croupier_registry::store::{LeaseId, Store, StoreError};
use tokio_util::sync::CancellationToken;

/// The agents' lease of one server: granted on first use, refreshed by [`AgentLease::run`].
pub(super) struct AgentLease {
    ttl: Duration,
    current: tokio::sync::Mutex<Option<LeaseId>>,
}

impl AgentLease {
    pub(super) fn new(ttl: Duration) -> Self {
        AgentLease {
            ttl,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The lease to write a registration under, granted if there is none yet.
    pub(super) async fn get(&self, store: &dyn Store) -> Result<LeaseId, StoreError> {
        let mut current = self.current.lock().await;
        if let Some(lease) = *current {
            return Ok(lease);
        }
        let lease = store.grant_lease(self.ttl).await?;
        *current = Some(lease);
        Ok(lease)
    }

    /// Forgets `lost` (the store no longer has it), so that the next [`AgentLease::get`]
    /// grants a new one. A lease already replaced is left alone.
    pub(super) async fn lost(&self, lost: LeaseId) {
        let mut current = self.current.lock().await;
        if *current == Some(lost) {
            *current = None;
        }
    }

    /// Refreshes the lease every third of its TTL until `shutdown`. When the store lost it,
    /// calls `rewrite` with a new one, which writes the live registrations again and says
    /// whether all were written (if not, it is called again next period). The lease is not
    /// revoked at shutdown: agents move to another server and overwrite their registrations,
    /// and those that do not are dropped when it ends.
    pub(super) async fn run<F, Fut>(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
        rewrite: F,
    ) where
        F: Fn(LeaseId) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let period = (self.ttl / 3).max(Duration::from_millis(100));
        let mut rewrite_due = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if !rewrite_due {
                let Some(lease) = *self.current.lock().await else {
                    continue;
                };
                match store.keep_alive(lease).await {
                    Ok(()) => continue,
                    Err(StoreError::LeaseNotFound(_)) => {
                        tracing::warn!(
                            lease,
                            "the agents' lease ended in the store; writing the live \
                             registrations again under a new one"
                        );
                        self.lost(lease).await;
                        rewrite_due = true;
                    }
                    Err(e) => {
                        // The store is down, not the agents: sessions stay alive and the
                        // refresh is tried again next period.
                        tracing::warn!(lease, error = %e, "refreshing the agents' lease failed; the sessions stay alive");
                        continue;
                    }
                }
            }
            match self.get(store.as_ref()).await {
                Ok(new) => rewrite_due = !rewrite(new).await,
                Err(e) => {
                    tracing::warn!(error = %e, "granting a new agents' lease failed; retrying");
                }
            }
        }
    }
}

impl super::ControlPlane {
    /// Writes an agent's registration under the agents' lease, granting a new lease once when
    /// the store lost the current one. Returns the write's revision.
    pub(super) async fn put_registration(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> Result<croupier_registry::store::Revision, ControlError> {
        let mut retried = false;
        loop {
            let lease = self
                .lease
                .get(self.store.as_ref())
                .await
                .map_err(ControlError::store("granting the agents' lease"))?;
            match self.store.put(key, value.clone(), Some(lease)).await {
                Err(StoreError::LeaseNotFound(_)) if !retried => {
                    self.lease.lost(lease).await;
                    retried = true;
                }
                r => return r.map_err(ControlError::store("storing the agent registration")),
            }
        }
    }

    /// Writes every live session's registration again under `lease` (the previous one ended in
    /// the store). True when all were written.
    pub(super) async fn rewrite_registrations(&self, lease: LeaseId) -> bool {
        let sessions: Vec<Arc<Session>> = self.sessions.read().values().cloned().collect();
        let mut all = true;
        for s in sessions {
            let value = s.record.lock().value.clone();
            match self.store.put(&s.key, value, Some(lease)).await {
                Ok(rev) => s.record.lock().rev = rev,
                Err(e) => {
                    tracing::warn!(agent_id = %s.agent_id, error = %e, "writing the registration again failed; retrying");
                    all = false;
                }
            }
        }
        tracing::info!(
            lease,
            all,
            "live registrations written again under a new agents' lease"
        );
        all
    }

    /// Deletes a session's registration, unless another write (the agent registered again,
    /// here or with another server) replaced it since.
    pub(super) async fn delete_registration(&self, session: &Session) {
        let rev = session.record.lock().rev;
        if let Err(e) = self.store.compare_and_delete(&session.key, rev).await {
            tracing::warn!(agent_id = %session.agent_id, error = %e, "deleting the registration failed; it ends with the server's lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ControlConfig, ControlPlane};
    use crate::audit::AuditLog;
    use croupier_proto::control::v1::RegisterAgentRequest;
    use croupier_registry::identity::Identity;
    use croupier_registry::keys;
    use croupier_registry::store::Store;
    use croupier_registry::store::embedded::EmbeddedStore;
    use croupier_registry::view::RegistryView;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    async fn plane(store: Arc<dyn Store>, stop: &CancellationToken) -> Arc<ControlPlane> {
        let view = RegistryView::start(store.clone(), stop.child_token())
            .await
            .unwrap();
        let cfg = ControlConfig {
            heartbeat_interval: Duration::from_secs(1),
            missed_heartbeats: 2,
            ..Default::default()
        };
        ControlPlane::start(cfg, store, view, AuditLog::disabled(), stop.child_token())
    }

    async fn register(plane: &ControlPlane, agent: &str) {
        let who = Identity::parse_uri(&format!("spiffe://croupier/agent/{agent}")).unwrap();
        let req = RegisterAgentRequest {
            agent_id: agent.into(),
            game_id: "g".into(),
            env: "e".into(),
            functions: vec!["x.y".into()],
            ..Default::default()
        };
        plane.register(&who, req, None).await.unwrap();
    }

    async fn record(store: &dyn Store, agent: &str) -> Option<croupier_registry::store::KeyValue> {
        store.get(&keys::agent("g", "e", agent)).await.unwrap()
    }

    #[tokio::test]
    async fn agents_share_one_lease_and_a_lost_lease_brings_their_records_back() {
        let stop = CancellationToken::new();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let plane = plane(store.clone(), &stop).await;
        register(&plane, "a1").await;
        register(&plane, "a2").await;
        let a1 = record(store.as_ref(), "a1").await.unwrap();
        let a2 = record(store.as_ref(), "a2").await.unwrap();
        assert_ne!(a1.lease, 0, "the record hangs on a lease");
        assert_eq!(a1.lease, a2.lease, "one lease for all agents of a server");

        // The store loses the lease (an outage longer than its TTL): the records go, and the
        // server writes them again under a new lease within a refresh period (TTL / 3 = 1 s).
        store.revoke_lease(a1.lease).await.unwrap();
        assert!(record(store.as_ref(), "a1").await.is_none());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (b1, b2) = loop {
            let b1 = record(store.as_ref(), "a1").await;
            let b2 = record(store.as_ref(), "a2").await;
            if let (Some(b1), Some(b2)) = (b1, b2) {
                break (b1, b2);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "records not written again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_ne!(b1.lease, a1.lease);
        assert_eq!(b1.lease, b2.lease);

        // A session that ends deletes its own record only: a1's record written since by
        // "another server" (a plain put) stays.
        let other = store
            .put(&keys::agent("g", "e", "a1"), b1.value.clone(), None)
            .await
            .unwrap();
        let s1 = plane.session("a1").unwrap();
        plane.forget(&s1, "test").await;
        let kept = record(store.as_ref(), "a1").await.unwrap();
        assert_eq!(kept.mod_revision, other);
        let s2 = plane.session("a2").unwrap();
        plane.forget(&s2, "test").await;
        assert!(record(store.as_ref(), "a2").await.is_none());
        stop.cancel();
    }
}
