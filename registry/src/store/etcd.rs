//! The etcd backend of [`Store`] (etcd v3 API through `etcd-client`), for several server
//! replicas sharing one registry.
//!
//! Every key is stored under an optional namespace prefix ([`EtcdOptions::namespace`]), added on
//! the way in and stripped on the way out, so several meshes (or test runs) can share one etcd
//! cluster. Revisions, leases, transactions and watches are etcd's own: revisions are global to
//! the cluster (not contiguous per namespace), lease TTLs are whole seconds (at least 1), and a
//! watch from a compacted revision ends with [`StoreError::Compacted`].
//!
//! [`Store::write_all`] is one etcd transaction (no conditions), so its changes share one
//! revision.
//!
//! Errors: a connection or quorum failure is [`StoreError::Unavailable`] with etcd's message; a
//! lease that ended is [`StoreError::LeaseNotFound`]; a batch etcd refuses (too many ops, too
//! large) is [`StoreError::InvalidBatch`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use super::{
    CasOutcome, EventKind, Expect, KeyValue, LeaseId, RangeResult, Revision, Store, StoreError,
    WatchEvent, WatchStream, WriteOp, check_batch,
};

/// The largest range or watch response read from etcd. The client's default (4 MiB) is a
/// snapshot of about 9,000 agents, or a watch response batching as many changes (a reconnect
/// storm): past it the registry view could not load.
const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;
/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Endpoints, e.g. `http://127.0.0.1:2379` (`https://` with TLS).
    pub endpoints: Vec<String>,
    /// Prefix added to every key (e.g. `/mesh-a`); empty for none.
    pub namespace: String,
    /// CA certificate (PEM) that signed etcd's server certificates; enables TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication.
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// Deadline of each request (retried on another member after it). Default 3 s.
    pub timeout: Option<Duration>,
}

/// A [`Store`] on etcd. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    namespace: String,
    /// No retry starts past this long after a request's first attempt (twice the request
    /// timeout: one member that does not answer is skipped, an unreachable etcd fails soon).
    retry_budget: Duration,
}

/// An error another attempt (on another member, after an election) may not meet.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
            ) && !s.message().contains("lease not found")
        }
        _ => false,
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

impl EtcdStore {
    /// Connects to etcd. Fails with `Unavailable` when no endpoint answers.
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Unavailable(
                "no etcd endpoint configured (give --etcd-endpoints)".into(),
            ));
        }
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(3));
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(ca) = &opts.ca {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| {
                    StoreError::Unavailable(format!("reading etcd TLS file {}: {e}", p.display()))
                })
            };
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            match (&opts.cert, &opts.key) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Unavailable(
                        "etcd TLS: give both --etcd-cert and --etcd-key, or neither".into(),
                    ));
                }
            }
            connect = connect.with_tls(tls);
        }
        let client = Client::connect(&opts.endpoints, Some(connect))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "connecting to etcd at {}: {e}",
                    opts.endpoints.join(",")
                ))
            })?;
        let store = EtcdStore {
            client,
            namespace: opts.namespace.trim_end_matches('/').to_string(),
            retry_budget: timeout * 2,
        };
        // Fail now, not at the first request, when etcd does not answer.
        store.current_revision().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "etcd at {} does not answer: {e}",
                opts.endpoints.join(",")
            ))
        })?;
        Ok(store)
    }

    /// Runs `op` on a client, again (up to 4 more times, 100 ms → 800 ms apart, none starting
    /// past the retry budget) when it failed in a way another member may not: a dead member's
    /// connection, a timeout, a leader election. Returns the result and whether it was a retry.
    async fn call<T, F, Fut>(&self, op: F) -> Result<(T, bool), etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        let started = tokio::time::Instant::now();
        loop {
            match op(self.client.clone()).await {
                Ok(v) => return Ok((v, attempt > 0)),
                Err(e)
                    if attempt < 4
                        && transient(&e)
                        && started.elapsed() + delay < self.retry_budget =>
                {
                    tracing::debug!(error = %e, attempt, "etcd request failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        let key = String::from_utf8_lossy(kv.key());
        KeyValue {
            key: key
                .strip_prefix(self.namespace.as_str())
                .unwrap_or(&key)
                .to_string(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }

    fn lease_error(e: etcd_client::Error, lease: LeaseId) -> StoreError {
        match &e {
            etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found") => {
                StoreError::LeaseNotFound(lease)
            }
            etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found") => {
                StoreError::LeaseNotFound(lease)
            }
            _ => unavailable(e),
        }
    }

    fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
        lease.map(|l| PutOptions::new().with_lease(l))
    }

    /// A compare-and-set transaction. `written` is the value a put writes: when a retried
    /// attempt meets exactly that value, the first attempt went through and only its answer was
    /// lost, so the write counts as done.
    async fn cas(
        &self,
        key: &str,
        when: Compare,
        then: TxnOp,
        written: Option<&[u8]>,
    ) -> Result<CasOutcome, StoreError> {
        let full = self.key(key);
        let txn = Txn::new()
            .when([when])
            .and_then([then])
            .or_else([TxnOp::get(full, None)]);
        let (resp, retried) = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(unavailable)?;
        let revision = resp
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .unwrap_or(0);
        if resp.succeeded() {
            return Ok(CasOutcome::Done(revision));
        }
        let current = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| self.kv(kv))),
                _ => None,
            })
            .flatten();
        if retried
            && let (Some(kv), Some(value)) = (&current, written)
            && kv.value == value
        {
            return Ok(CasOutcome::Done(kv.mod_revision));
        }
        Ok(CasOutcome::Conflict(current))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let full = self.key(key);
        let (resp, _) = self
            .call(|mut c| {
                let full = full.clone();
                async move { c.get(full, None).await }
            })
            .await
            .map_err(unavailable)?;
        Ok(resp.kvs().first().map(|kv| self.kv(kv)))
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        let full = self.key(prefix);
        let (resp, _) = self
            .call(|c| {
                let full = full.clone();
                async move {
                    c.kv_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .get(full, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await
            .map_err(unavailable)?;
        Ok(RangeResult {
            kvs: resp.kvs().iter().map(|kv| self.kv(kv)).collect(),
            revision: resp
                .header()
                .map(etcd_client::ResponseHeader::revision)
                .unwrap_or(0),
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let full = self.key(key);
        let (resp, _) = self
            .call(|mut c| {
                let (full, value) = (full.clone(), value.clone());
                async move { c.put(full, value, Self::put_options(lease)).await }
            })
            .await
            .map_err(|e| Self::lease_error(e, lease.unwrap_or(0)))?;
        Ok(resp
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .unwrap_or(0))
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        let full = self.key(key);
        let (resp, _) = self
            .call(|mut c| {
                let full = full.clone();
                async move { c.delete(full, None::<DeleteOptions>).await }
            })
            .await
            .map_err(unavailable)?;
        Ok((resp.deleted() > 0).then(|| {
            resp.header()
                .map(etcd_client::ResponseHeader::revision)
                .unwrap_or(0)
        }))
    }

    async fn write_all(&self, ops: Vec<WriteOp>) -> Result<Revision, StoreError> {
        check_batch(&ops)?;
        if ops.is_empty() {
            return self.current_revision().await;
        }
        let txn = Txn::new().and_then(
            ops.iter()
                .map(|op| match op {
                    WriteOp::Put { key, value } => TxnOp::put(self.key(key), value.clone(), None),
                    WriteOp::Delete { key } => TxnOp::delete(self.key(key), None),
                })
                .collect::<Vec<_>>(),
        );
        // A retried attempt writes the same values again: harmless, one more revision.
        let (resp, _) = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| match &e {
                etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::InvalidArgument => {
                    StoreError::InvalidBatch(format!("etcd refused the batch: {}", s.message()))
                }
                _ => unavailable(e),
            })?;
        Ok(resp
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .unwrap_or(0))
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, StoreError> {
        let full = self.key(key);
        let when = match expect {
            Expect::Absent => Compare::create_revision(full.clone(), CompareOp::Equal, 0),
            Expect::ModRevision(r) => Compare::mod_revision(full.clone(), CompareOp::Equal, r),
        };
        let then = TxnOp::put(full, value.clone(), Self::put_options(lease));
        self.cas(key, when, then, Some(&value))
            .await
            .map_err(|e| match (e, lease) {
                (StoreError::Unavailable(m), Some(l)) if m.contains("lease not found") => {
                    StoreError::LeaseNotFound(l)
                }
                (e, _) => e,
            })
    }

    async fn compare_and_delete(
        &self,
        key: &str,
        mod_revision: Revision,
    ) -> Result<CasOutcome, StoreError> {
        let full = self.key(key);
        self.cas(
            key,
            Compare::mod_revision(full.clone(), CompareOp::Equal, mod_revision),
            TxnOp::delete(full, None),
            None,
        )
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let (resp, _) = self
            .call(|mut c| async move { c.lease_grant(secs, None).await })
            .await
            .map_err(unavailable)?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // One request on a keep-alive stream; etcd answers with the new TTL (0: no such lease).
        self.call(|mut c| async move { c.lease_keep_alive(lease).await.map(|_| ()) })
            .await
            .map(|_| ())
            .map_err(|e| Self::lease_error(e, lease))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match Self::lease_error(e, lease) {
                StoreError::LeaseNotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn watch(
        &self,
        prefix: &str,
        from_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        let mut opts = WatchOptions::new().with_prefix().with_prev_key();
        if from_revision > 0 {
            opts = opts.with_start_revision(from_revision);
        }
        let stream = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .watch(self.key(prefix), Some(opts))
            .await
            .map_err(unavailable)?;
        let this = self.clone();
        struct State {
            stream: etcd_client::WatchStream,
            queued: VecDeque<WatchEvent>,
            done: bool,
        }
        let state = State {
            stream,
            queued: VecDeque::new(),
            done: false,
        };
        let events = futures::stream::unfold(state, move |mut st| {
            let this = this.clone();
            async move {
                loop {
                    if let Some(ev) = st.queued.pop_front() {
                        return Some((Ok(ev), st));
                    }
                    if st.done {
                        return None;
                    }
                    let resp = match st.stream.next().await {
                        Some(Ok(r)) => r,
                        Some(Err(e)) => {
                            st.done = true;
                            return Some((Err(unavailable(e)), st));
                        }
                        None => return None,
                    };
                    if resp.canceled() {
                        st.done = true;
                        let err = if resp.compact_revision() > 0 {
                            StoreError::Compacted {
                                requested: from_revision,
                                oldest: resp.compact_revision(),
                            }
                        } else {
                            StoreError::Unavailable(format!(
                                "etcd cancelled the watch: {}",
                                resp.cancel_reason()
                            ))
                        };
                        return Some((Err(err), st));
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let kind = match ev.event_type() {
                            EventType::Put => EventKind::Put,
                            EventType::Delete => EventKind::Delete,
                        };
                        let mut kv = this.kv(kv);
                        if kind == EventKind::Delete {
                            kv.value.clear();
                        }
                        st.queued.push_back(WatchEvent {
                            kind,
                            kv,
                            prev: ev.prev_kv().map(|p| this.kv(p)),
                        });
                    }
                }
            }
        });
        Ok(Box::pin(events))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        // A count-only read of one (absent) key returns the cluster's revision in its header.
        let probe = self.key("/\u{0}revision-probe");
        let (resp, _) = self
            .call(|mut c| {
                let probe = probe.clone();
                async move {
                    c.get(probe, Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await
            .map_err(unavailable)?;
        Ok(resp
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .unwrap_or(0))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let current = self.current_revision().await?;
        let target = revision.min(current);
        match self.client.clone().compact(target, None).await {
            Ok(_) => Ok(()),
            // Compacting at or below an earlier compaction is a no-op.
            Err(etcd_client::Error::GRpcStatus(s))
                if s.message().contains("required revision has been compacted") =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}
