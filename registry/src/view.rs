//! The in-memory view of the registry: agents, descriptors and node states, fed by one store
//! watch on `/croupier/`. Routing reads this view; the invoke path never reads the store.
//!
//! The view also keeps a bounded log of registration changes (which agent started or stopped
//! providing which function, descriptor and node-state updates), each tagged with the store
//! revision that caused it, so `WatchRegistrations` can resume from a revision.

use parking_lot::RwLock;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use croupier_proto::registry::v1 as pb;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::keys;
use crate::model::{AgentRecord, DescriptorRecord, NodeRecord, NodeState, ServerRecord};
use crate::store::{EventKind, KeyValue, Revision, Store, StoreError, WatchEvent};

/// How many registration changes the view keeps for resuming watches.
pub const DEFAULT_LOG_LIMIT: usize = 50_000;

/// Identifies a function within a game and environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FnKey {
    /// Game.
    pub game_id: String,
    /// Environment.
    pub env: String,
    /// Function id.
    pub function_id: String,
}

impl FnKey {
    /// Builds a key.
    pub fn new(game_id: &str, env: &str, function_id: &str) -> Self {
        FnKey {
            game_id: game_id.to_string(),
            env: env.to_string(),
            function_id: function_id.to_string(),
        }
    }
}

/// What a registration change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The agent now provides the function (or the function was registered).
    Added,
    /// The agent's details, its node state or the descriptor changed.
    Updated,
    /// The agent no longer provides the function (or the descriptor was removed).
    Removed,
}

/// One registration change.
#[derive(Clone, Debug)]
pub struct Change {
    /// Store revision that caused it.
    pub revision: Revision,
    /// What happened.
    pub kind: ChangeKind,
    /// The function.
    pub key: FnKey,
    /// The agent involved ("" for descriptor changes).
    pub agent_id: String,
    /// The function's descriptor and the agent concerned (none for removals and descriptor
    /// changes): a delta, not the whole registration.
    pub registration: pb::FunctionRegistration,
}

/// A routing candidate: an agent providing a function, with its node state.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The agent.
    pub agent: Arc<AgentRecord>,
    /// Its node state.
    pub state: NodeState,
}

/// Filter for registrations and watches; empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Game.
    pub game_id: String,
    /// Environment.
    pub env: String,
    /// Function.
    pub function_id: String,
}

impl Filter {
    /// A filter from request fields.
    pub fn new(game_id: String, env: String, function_id: String) -> Self {
        Filter {
            game_id,
            env,
            function_id,
        }
    }

    /// True when the key passes the filter.
    pub fn matches(&self, key: &FnKey) -> bool {
        (self.game_id.is_empty() || self.game_id == key.game_id)
            && (self.env.is_empty() || self.env == key.env)
            && (self.function_id.is_empty() || self.function_id == key.function_id)
    }
}

/// Errors of watch cursors.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The asked revision is older than what the view keeps.
    #[error(
        "revision {requested} is no longer kept (oldest: {oldest}); watch again with start_revision 0 to resync"
    )]
    Compacted {
        /// Asked revision.
        requested: Revision,
        /// Oldest kept.
        oldest: Revision,
    },
    /// The view is shutting down.
    #[error("the registry view is shutting down")]
    Closed,
}

#[derive(Default)]
struct State {
    revision: Revision,
    agents: HashMap<String, Arc<AgentRecord>>,
    functions: HashMap<FnKey, Arc<DescriptorRecord>>,
    providers: HashMap<FnKey, BTreeSet<String>>,
    nodes: HashMap<String, NodeRecord>,
    servers: HashMap<String, Arc<ServerRecord>>,
    log: VecDeque<Arc<Change>>,
    /// Every change with revision >= `oldest` is in `log`.
    oldest: Revision,
}

/// The registry view. Cheap to share (`Arc`).
pub struct RegistryView {
    state: RwLock<State>,
    log_limit: usize,
    applied: watch::Sender<Revision>,
}

impl RegistryView {
    /// Loads the current registry from `store`, then keeps it current from a watch in a
    /// background task that ends when `shutdown` is cancelled.
    pub async fn start(
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        Self::start_with_log_limit(store, shutdown, DEFAULT_LOG_LIMIT).await
    }

    /// Like [`RegistryView::start`], keeping at most `log_limit` changes for resuming watches.
    pub async fn start_with_log_limit(
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
        log_limit: usize,
    ) -> Result<Arc<Self>, StoreError> {
        let (applied, _) = watch::channel(0);
        let view = Arc::new(RegistryView {
            state: RwLock::new(State::default()),
            log_limit: log_limit.max(16),
            applied,
        });
        let snapshot = store.range(keys::ROOT).await?;
        let from = snapshot.revision + 1;
        view.load(snapshot.kvs, snapshot.revision, false);
        let stream = store.watch(keys::ROOT, from).await?;
        let task_view = view.clone();
        tokio::spawn(async move {
            task_view.follow(store, stream, shutdown).await;
        });
        Ok(view)
    }

    async fn follow(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut stream: crate::store::WatchStream,
        shutdown: CancellationToken,
    ) {
        loop {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok(ev)) => self.apply(&ev),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "registry watch failed; reloading");
                        break;
                    }
                    None => {
                        tracing::warn!("registry watch ended; reloading");
                        break;
                    }
                }
            }
            // Reload and diff, so watchers see what changed while the watch was down.
            let mut delay = Duration::from_millis(100);
            stream = loop {
                let attempt = async {
                    let snap = store.range(keys::ROOT).await?;
                    let from = snap.revision + 1;
                    let stream = store.watch(keys::ROOT, from).await?;
                    Ok::<_, StoreError>((snap, stream))
                };
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = attempt => r,
                };
                match result {
                    Ok((snap, stream)) => {
                        self.load(snap.kvs, snap.revision, true);
                        break stream;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "registry reload failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            };
        }
    }

    /// Replaces the state with a snapshot; with `diff`, logs the differences as changes.
    fn load(&self, kvs: Vec<KeyValue>, revision: Revision, diff: bool) {
        let mut fresh = State::default();
        for kv in &kvs {
            apply_put_silent(&mut fresh, kv);
        }
        let mut st = self.state.write();
        let old = std::mem::take(&mut *st);
        fresh.log = old.log;
        fresh.oldest = if diff { old.oldest } else { revision + 1 };
        fresh.revision = revision.max(old.revision);
        *st = fresh;
        if diff {
            let mut changes = Vec::new();
            let agent_ids: HashSet<&String> = old.agents.keys().chain(st.agents.keys()).collect();
            for id in agent_ids {
                let before = old.agents.get(id).cloned();
                let after = st.agents.get(id).cloned();
                let node_changed = old.nodes.get(id) != st.nodes.get(id);
                agent_changes(
                    &st,
                    revision,
                    before.as_deref(),
                    after.as_deref(),
                    node_changed,
                    &mut changes,
                );
            }
            let fn_keys: HashSet<&FnKey> =
                old.functions.keys().chain(st.functions.keys()).collect();
            for key in fn_keys {
                let (b, a) = (old.functions.get(key), st.functions.get(key));
                if b != a {
                    changes.push(descriptor_change(
                        &st,
                        revision,
                        key,
                        b.is_some(),
                        a.is_some(),
                    ));
                }
            }
            self.push_changes(&mut st, changes);
        }
        drop(st);
        self.applied.send_replace(revision);
    }

    /// Applies one watch event.
    fn apply(&self, ev: &WatchEvent) {
        let rev = ev.revision();
        let mut st = self.state.write();
        st.revision = rev;
        let key = ev.kv.key.as_str();
        let mut changes = Vec::new();
        if let Some(rest) = key.strip_prefix(keys::AGENTS) {
            let Some(agent_id) = rest.rsplit('/').next() else {
                return;
            };
            let before = st.agents.get(agent_id).cloned();
            match ev.kind {
                EventKind::Put => {
                    let Some(rec) = decode::<AgentRecord>(&ev.kv) else {
                        return;
                    };
                    let rec = Arc::new(rec);
                    remove_providers(&mut st, before.as_deref());
                    add_providers(&mut st, &rec);
                    st.agents.insert(rec.agent_id.clone(), rec.clone());
                    agent_changes(&st, rev, before.as_deref(), Some(&rec), false, &mut changes);
                }
                EventKind::Delete => {
                    // Only remove when the deleted key is the one the agent is registered under
                    // (an agent that moved to another game/env keeps its new registration).
                    if let Some(b) = before.as_deref()
                        && keys::agent(&b.game_id, &b.env, &b.agent_id) == key
                    {
                        remove_providers(&mut st, Some(b));
                        st.agents.remove(agent_id);
                        agent_changes(&st, rev, Some(b), None, false, &mut changes);
                    }
                }
            }
        } else if let Some(rest) = key.strip_prefix(keys::FUNCTIONS) {
            let mut parts = rest.splitn(3, '/');
            let (Some(g), Some(e), Some(f)) = (parts.next(), parts.next(), parts.next()) else {
                return;
            };
            let fk = FnKey::new(g, e, f);
            let existed = st.functions.contains_key(&fk);
            match ev.kind {
                EventKind::Put => {
                    let Some(rec) = decode::<DescriptorRecord>(&ev.kv) else {
                        return;
                    };
                    st.functions.insert(fk.clone(), Arc::new(rec));
                    changes.push(descriptor_change(&st, rev, &fk, existed, true));
                }
                EventKind::Delete => {
                    if st.functions.remove(&fk).is_some() {
                        changes.push(descriptor_change(&st, rev, &fk, true, false));
                    }
                }
            }
        } else if let Some(server_id) = key.strip_prefix(keys::SERVERS) {
            match ev.kind {
                EventKind::Put => {
                    if let Some(rec) = decode::<ServerRecord>(&ev.kv) {
                        st.servers.insert(server_id.to_string(), Arc::new(rec));
                    }
                }
                EventKind::Delete => {
                    st.servers.remove(server_id);
                }
            }
        } else if let Some(agent_id) = key.strip_prefix(keys::NODES) {
            match ev.kind {
                EventKind::Put => {
                    let Some(rec) = decode::<NodeRecord>(&ev.kv) else {
                        return;
                    };
                    st.nodes.insert(agent_id.to_string(), rec);
                }
                EventKind::Delete => {
                    st.nodes.remove(agent_id);
                }
            }
            if let Some(a) = st.agents.get(agent_id).cloned() {
                agent_changes(&st, rev, Some(&a), Some(&a), true, &mut changes);
            }
        }
        self.push_changes(&mut st, changes);
        drop(st);
        self.applied.send_replace(rev);
    }

    fn push_changes(&self, st: &mut State, changes: Vec<Change>) {
        for c in changes {
            st.log.push_back(Arc::new(c));
        }
        if st.log.len() > self.log_limit {
            // Drop whole revisions so that every revision >= oldest is complete.
            let mut last_dropped = None;
            while st.log.len() > self.log_limit {
                last_dropped = st.log.pop_front().map(|c| c.revision);
            }
            if let Some(r) = last_dropped {
                while st.log.front().is_some_and(|c| c.revision == r) {
                    st.log.pop_front();
                }
                st.oldest = st.oldest.max(r + 1);
            }
        }
    }

    /// A live server replica (registered under its lease).
    pub fn server(&self, server_id: &str) -> Option<Arc<ServerRecord>> {
        self.read().servers.get(server_id).cloned()
    }

    /// The revision the view reflects.
    pub fn revision(&self) -> Revision {
        *self.applied.borrow()
    }

    /// Waits until the view reflects `revision` (read-your-writes after a store write), at most
    /// `timeout`. Returns false on timeout.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The descriptor of a function, if registered.
    pub fn descriptor(&self, key: &FnKey) -> Option<Arc<DescriptorRecord>> {
        self.read().functions.get(key).cloned()
    }

    /// The agents providing a function, with their node states.
    pub fn candidates(&self, key: &FnKey) -> Vec<Candidate> {
        let st = self.read();
        st.providers
            .get(key)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| st.agents.get(id))
                    .map(|a| Candidate {
                        agent: a.clone(),
                        state: node_state(&st, &a.agent_id),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One agent's registration.
    pub fn agent(&self, agent_id: &str) -> Option<Arc<AgentRecord>> {
        self.read().agents.get(agent_id).cloned()
    }

    /// An agent's node state record (default: normal).
    pub fn node(&self, agent_id: &str) -> NodeRecord {
        self.read()
            .nodes
            .get(agent_id)
            .cloned()
            .unwrap_or_else(|| NodeRecord {
                agent_id: agent_id.to_string(),
                ..Default::default()
            })
    }

    /// All agents matching a game/env filter, sorted by id.
    pub fn agents(&self, filter: &Filter) -> Vec<(Arc<AgentRecord>, NodeRecord)> {
        let st = self.read();
        let mut out: Vec<_> = st
            .agents
            .values()
            .filter(|a| {
                (filter.game_id.is_empty() || filter.game_id == a.game_id)
                    && (filter.env.is_empty() || filter.env == a.env)
            })
            .map(|a| {
                let node = st
                    .nodes
                    .get(&a.agent_id)
                    .cloned()
                    .unwrap_or_else(|| NodeRecord {
                        agent_id: a.agent_id.clone(),
                        ..Default::default()
                    });
                (a.clone(), node)
            })
            .collect();
        out.sort_by(|a, b| a.0.agent_id.cmp(&b.0.agent_id));
        out
    }

    /// Registrations matching a filter, sorted by (game, env, function), and the revision.
    pub fn registrations(&self, filter: &Filter) -> (Vec<pb::FunctionRegistration>, Revision) {
        let st = self.read();
        (collect_registrations(&st, filter), st.revision)
    }

    /// One page of the registrations matching a filter, sorted by (game, env, function): those
    /// after `after`, at most `max_items`, and no more than `max_bytes` encoded (at least one).
    /// Returns the page, the revision, and the key to continue after when more follow.
    pub fn registrations_page(
        &self,
        filter: &Filter,
        after: Option<&FnKey>,
        max_items: usize,
        max_bytes: usize,
    ) -> (Vec<pb::FunctionRegistration>, Revision, Option<FnKey>) {
        use prost::Message as _;
        let st = self.read();
        let keys: BTreeSet<&FnKey> = st
            .functions
            .keys()
            .chain(st.providers.keys())
            .filter(|k| filter.matches(k) && after.is_none_or(|a| *k > a))
            .collect();
        let mut page = Vec::new();
        let mut bytes = 0usize;
        let mut last: Option<&FnKey> = None;
        let mut more = false;
        for k in keys {
            if page.len() >= max_items.max(1) {
                more = true;
                break;
            }
            let reg = registration(&st, k);
            let len = reg.encoded_len() + 8;
            if !page.is_empty() && bytes + len > max_bytes {
                more = true;
                break;
            }
            bytes += len;
            page.push(reg);
            last = Some(k);
        }
        let next = if more { last.cloned() } else { None };
        (page, st.revision, next)
    }

    /// How many functions (registered or provided) exist in a game and env, and whether `key`
    /// is one of them.
    pub fn function_count(&self, key: &FnKey) -> (usize, bool) {
        let st = self.read();
        let in_scope = |k: &&FnKey| k.game_id == key.game_id && k.env == key.env;
        let provided_only = st
            .providers
            .keys()
            .filter(in_scope)
            .filter(|k| !st.functions.contains_key(*k))
            .count();
        let count = st.functions.keys().filter(in_scope).count() + provided_only;
        let known = st.functions.contains_key(key) || st.providers.contains_key(key);
        (count, known)
    }

    /// Registrations matching a filter plus a cursor that yields every later change, taken
    /// atomically so nothing is missed or seen twice.
    pub fn snapshot_and_follow(
        self: &Arc<Self>,
        filter: &Filter,
    ) -> (Vec<pb::FunctionRegistration>, Revision, Cursor) {
        let st = self.read();
        let regs = collect_registrations(&st, filter);
        let rev = st.revision;
        drop(st);
        (regs, rev, self.cursor_from(rev + 1))
    }

    /// A cursor over changes with revision >= `start_revision`.
    pub fn follow_from(self: &Arc<Self>, start_revision: Revision) -> Result<Cursor, ViewError> {
        let st = self.read();
        if start_revision < st.oldest {
            return Err(ViewError::Compacted {
                requested: start_revision,
                oldest: st.oldest,
            });
        }
        drop(st);
        Ok(self.cursor_from(start_revision))
    }

    fn cursor_from(self: &Arc<Self>, next: Revision) -> Cursor {
        Cursor {
            view: self.clone(),
            next,
            rx: self.applied.subscribe(),
        }
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state.read()
    }
}

/// Yields registration changes in revision order.
pub struct Cursor {
    view: Arc<RegistryView>,
    next: Revision,
    rx: watch::Receiver<Revision>,
}

impl Cursor {
    /// Waits for and returns the next changes (at least one).
    pub async fn next(&mut self) -> Result<Vec<Arc<Change>>, ViewError> {
        loop {
            {
                let st = self.view.read();
                if self.next < st.oldest {
                    return Err(ViewError::Compacted {
                        requested: self.next,
                        oldest: st.oldest,
                    });
                }
                let start = st.log.partition_point(|c| c.revision < self.next);
                let out: Vec<_> = st.log.range(start..).cloned().collect();
                if let Some(last) = out.last() {
                    self.next = last.revision + 1;
                    return Ok(out);
                }
                // Nothing new: everything up to the applied revision was seen.
                self.next = self.next.max(st.revision + 1);
            }
            let seen = self.next - 1;
            if self.rx.wait_for(|r| *r > seen).await.is_err() {
                return Err(ViewError::Closed);
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring unreadable registry record");
            None
        }
    }
}

fn apply_put_silent(st: &mut State, kv: &KeyValue) {
    let key = kv.key.as_str();
    if key.starts_with(keys::AGENTS) {
        if let Some(rec) = decode::<AgentRecord>(kv) {
            let rec = Arc::new(rec);
            add_providers(st, &rec);
            st.agents.insert(rec.agent_id.clone(), rec);
        }
    } else if let Some(rest) = key.strip_prefix(keys::FUNCTIONS) {
        let mut parts = rest.splitn(3, '/');
        if let (Some(g), Some(e), Some(f)) = (parts.next(), parts.next(), parts.next())
            && let Some(rec) = decode::<DescriptorRecord>(kv)
        {
            st.functions.insert(FnKey::new(g, e, f), Arc::new(rec));
        }
    } else if let Some(agent_id) = key.strip_prefix(keys::NODES)
        && let Some(rec) = decode::<NodeRecord>(kv)
    {
        st.nodes.insert(agent_id.to_string(), rec);
    } else if let Some(server_id) = key.strip_prefix(keys::SERVERS)
        && let Some(rec) = decode::<ServerRecord>(kv)
    {
        st.servers.insert(server_id.to_string(), Arc::new(rec));
    }
}

fn fn_key(a: &AgentRecord, function_id: &str) -> FnKey {
    FnKey::new(&a.game_id, &a.env, function_id)
}

fn add_providers(st: &mut State, a: &AgentRecord) {
    for f in &a.functions {
        st.providers
            .entry(fn_key(a, &f.id))
            .or_default()
            .insert(a.agent_id.clone());
    }
}

fn remove_providers(st: &mut State, a: Option<&AgentRecord>) {
    let Some(a) = a else { return };
    for f in &a.functions {
        let k = fn_key(a, &f.id);
        if let Some(set) = st.providers.get_mut(&k) {
            set.remove(&a.agent_id);
            if set.is_empty() {
                st.providers.remove(&k);
            }
        }
    }
}

fn node_state(st: &State, agent_id: &str) -> NodeState {
    st.nodes.get(agent_id).map(|n| n.state).unwrap_or_default()
}

fn agent_changes(
    st: &State,
    rev: Revision,
    before: Option<&AgentRecord>,
    after: Option<&AgentRecord>,
    node_changed: bool,
    out: &mut Vec<Change>,
) {
    let keyset = |a: Option<&AgentRecord>| -> BTreeSet<FnKey> {
        a.map(|a| a.functions.iter().map(|f| fn_key(a, &f.id)).collect())
            .unwrap_or_default()
    };
    let (b, a) = (keyset(before), keyset(after));
    let agent_id = after
        .or(before)
        .map(|x| x.agent_id.clone())
        .unwrap_or_default();
    let details_changed = node_changed || before != after;
    for k in b.union(&a) {
        let kind = match (b.contains(k), a.contains(k)) {
            (false, true) => ChangeKind::Added,
            (true, false) => ChangeKind::Removed,
            _ if details_changed => ChangeKind::Updated,
            _ => continue,
        };
        // Only the agent concerned: a change costs the same with 10 or 10 000 providers.
        let agents = match (kind, after) {
            (ChangeKind::Removed, _) | (_, None) => Vec::new(),
            (_, Some(a)) => vec![agent_info(st, a, &k.function_id)],
        };
        out.push(Change {
            revision: rev,
            kind,
            key: k.clone(),
            agent_id: agent_id.clone(),
            registration: pb::FunctionRegistration {
                function_id: k.function_id.clone(),
                game_id: k.game_id.clone(),
                env: k.env.clone(),
                agents,
                function_descriptor: st.functions.get(k).map(|d| d.to_proto()),
            },
        });
    }
}

fn descriptor_change(
    st: &State,
    rev: Revision,
    key: &FnKey,
    existed: bool,
    exists: bool,
) -> Change {
    let has_agents = st.providers.get(key).is_some_and(|s| !s.is_empty());
    let kind = match (existed, exists) {
        (false, true) if !has_agents => ChangeKind::Added,
        (true, false) if !has_agents => ChangeKind::Removed,
        _ => ChangeKind::Updated,
    };
    Change {
        revision: rev,
        kind,
        key: key.clone(),
        agent_id: String::new(),
        // The descriptor; the agents are unchanged (and not repeated).
        registration: pb::FunctionRegistration {
            function_id: key.function_id.clone(),
            game_id: key.game_id.clone(),
            env: key.env.clone(),
            agents: Vec::new(),
            function_descriptor: st.functions.get(key).map(|d| d.to_proto()),
        },
    }
}

fn registration(st: &State, key: &FnKey) -> pb::FunctionRegistration {
    let agents = st
        .providers
        .get(key)
        .map(|ids| {
            ids.iter()
                .filter_map(|id| st.agents.get(id))
                .map(|a| agent_info(st, a, &key.function_id))
                .collect()
        })
        .unwrap_or_default();
    pb::FunctionRegistration {
        function_id: key.function_id.clone(),
        game_id: key.game_id.clone(),
        env: key.env.clone(),
        agents,
        function_descriptor: st.functions.get(key).map(|d| d.to_proto()),
    }
}

fn agent_info(st: &State, a: &AgentRecord, function_id: &str) -> pb::AgentInfo {
    pb::AgentInfo {
        agent_id: a.agent_id.clone(),
        addr: a.addr.clone(),
        last_heartbeat: a.registered_at,
        labels: a.labels.clone().into_iter().collect(),
        node_state: croupier_proto::common::v1::NodeState::from(node_state(st, &a.agent_id)) as i32,
        online: true,
        version: a
            .provides(function_id)
            .map(|f| f.version.clone())
            .unwrap_or_default(),
    }
}

fn collect_registrations(st: &State, filter: &Filter) -> Vec<pb::FunctionRegistration> {
    let keys: BTreeSet<&FnKey> = st
        .functions
        .keys()
        .chain(st.providers.keys())
        .filter(|k| filter.matches(k))
        .collect();
    keys.into_iter().map(|k| registration(st, k)).collect()
}
