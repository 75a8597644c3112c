//! How store events change the view: agents, descriptors, node states and servers, and the
//! registration changes (deltas) each one produces for watchers.

use super::*;
use crate::assign::AssignmentRecord;
use crate::keys;
use crate::model::{AgentRecord, DescriptorRecord, NodeRecord, NodeState, ServerRecord};
use crate::store::{EventKind, KeyValue, Revision, Store, StoreError, WatchEvent};
use croupier_proto::registry::v1 as pb;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

impl RegistryView {
    pub(super) async fn follow(
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
    pub(super) fn load(&self, kvs: Vec<KeyValue>, revision: Revision, diff: bool) {
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
    pub(super) fn apply(&self, ev: &WatchEvent) {
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
        } else if let Some(id) = key.strip_prefix(keys::ASSIGNMENTS) {
            match ev.kind {
                EventKind::Put => {
                    if let Some(mut rec) = decode::<AssignmentRecord>(&ev.kv) {
                        rec.revision = ev.kv.mod_revision;
                        st.assignments.insert(id.to_string(), Arc::new(rec));
                    }
                }
                EventKind::Delete => {
                    st.assignments.remove(id);
                }
            }
            st.assignments_revision = rev;
        } else if key == keys::POLICY {
            st.policy = match ev.kind {
                EventKind::Put => decode_policy(&ev.kv),
                EventKind::Delete => None,
            };
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

    pub(super) fn push_changes(&self, st: &mut State, changes: Vec<Change>) {
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
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring unreadable registry record");
            None
        }
    }
}

/// A stored policy; one that no longer validates is ignored (with a warning), which leaves the
/// built-in policy in force rather than a half-read one.
fn decode_policy(kv: &KeyValue) -> Option<Arc<Policy>> {
    match Policy::from_json(&kv.value) {
        Ok(p) => Some(Arc::new(p)),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the stored policy");
            None
        }
    }
}

pub(super) fn apply_put_silent(st: &mut State, kv: &KeyValue) {
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
    } else if key == keys::POLICY {
        st.policy = decode_policy(kv);
    } else if let Some(agent_id) = key.strip_prefix(keys::NODES)
        && let Some(rec) = decode::<NodeRecord>(kv)
    {
        st.nodes.insert(agent_id.to_string(), rec);
    } else if let Some(server_id) = key.strip_prefix(keys::SERVERS)
        && let Some(rec) = decode::<ServerRecord>(kv)
    {
        st.servers.insert(server_id.to_string(), Arc::new(rec));
    } else if let Some(id) = key.strip_prefix(keys::ASSIGNMENTS)
        && let Some(mut rec) = decode::<AssignmentRecord>(kv)
    {
        rec.revision = kv.mod_revision;
        st.assignments_revision = st.assignments_revision.max(kv.mod_revision);
        st.assignments.insert(id.to_string(), Arc::new(rec));
    }
}

pub(super) fn fn_key(a: &AgentRecord, function_id: &str) -> FnKey {
    FnKey::new(&a.game_id, &a.env, function_id)
}

pub(super) fn add_providers(st: &mut State, a: &AgentRecord) {
    for f in &a.functions {
        st.providers
            .entry(fn_key(a, &f.id))
            .or_default()
            .insert(a.agent_id.clone());
    }
}

pub(super) fn remove_providers(st: &mut State, a: Option<&AgentRecord>) {
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

pub(super) fn node_state(st: &State, agent_id: &str) -> NodeState {
    st.nodes.get(agent_id).map(|n| n.state).unwrap_or_default()
}

pub(super) fn agent_changes(
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

pub(super) fn descriptor_change(
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

pub(super) fn registration(st: &State, key: &FnKey) -> pb::FunctionRegistration {
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

pub(super) fn agent_info(st: &State, a: &AgentRecord, function_id: &str) -> pb::AgentInfo {
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

pub(super) fn collect_registrations(st: &State, filter: &Filter) -> Vec<pb::FunctionRegistration> {
    let keys: BTreeSet<&FnKey> = st
        .functions
        .keys()
        .chain(st.providers.keys())
        .filter(|k| filter.matches(k))
        .collect();
    keys.into_iter().map(|k| registration(st, k)).collect()
}
