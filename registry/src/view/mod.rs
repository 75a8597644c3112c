//! The in-memory view of the registry: agents, descriptors, node states and function
//! assignments, fed by one store
//! watch on `/croupier/`. Routing reads this view; the invoke path never reads the store.
//!
//! The view also keeps a bounded log of registration changes (which agent started or stopped
//! providing which function, descriptor and node-state updates), each tagged with the store
//! revision that caused it, so `WatchRegistrations` can resume from a revision.

mod apply;
mod types;

use apply::*;
pub use types::*;

use crate::assign::{AssignmentRecord, Effective, resolve};
use crate::keys;
use crate::model::{AgentRecord, DescriptorRecord, NodeRecord, ServerRecord};
use crate::policy::Policy;
use crate::store::{Revision, Store, StoreError};
use croupier_proto::registry::v1 as pb;
use parking_lot::RwLock;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct State {
    revision: Revision,
    agents: HashMap<String, Arc<AgentRecord>>,
    functions: HashMap<FnKey, Arc<DescriptorRecord>>,
    providers: HashMap<FnKey, BTreeSet<String>>,
    nodes: HashMap<String, NodeRecord>,
    servers: HashMap<String, Arc<ServerRecord>>,
    /// Function assignments by id.
    assignments: HashMap<String, Arc<AssignmentRecord>>,
    /// The revision of the last change to an assignment.
    assignments_revision: Revision,
    /// The stored admin policy (None: the built-in one).
    policy: Option<Arc<Policy>>,
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
        croupier_proto::task::spawn("registry view", async move {
            task_view.follow(store, stream, shutdown).await;
        });
        Ok(view)
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

    /// The admin policy in force: the stored one, or [`Policy::builtin`].
    pub fn policy(&self) -> Arc<Policy> {
        self.state
            .read()
            .policy
            .clone()
            .unwrap_or_else(|| Arc::new(Policy::builtin()))
    }

    /// True when an admin stored a policy (false: the built-in one applies).
    pub fn has_stored_policy(&self) -> bool {
        self.state.read().policy.is_some()
    }

    /// The descriptor of a function, if registered.
    pub fn descriptor(&self, key: &FnKey) -> Option<Arc<DescriptorRecord>> {
        self.read().functions.get(key).cloned()
    }

    /// The registered functions of a game and env closest in spelling to `function_id`
    /// (at most three, nearest first), for "did you mean" in a not-found error.
    pub fn nearest_functions(&self, game_id: &str, env: &str, function_id: &str) -> Vec<String> {
        let st = self.read();
        let names: BTreeSet<&str> = st
            .functions
            .keys()
            .chain(st.providers.keys())
            .filter(|k| k.game_id == game_id && k.env == env)
            .map(|k| k.function_id.as_str())
            .collect();
        let limit = (function_id.chars().count() / 3).max(2);
        let mut near: Vec<(usize, &str)> = names
            .into_iter()
            .filter_map(|name| {
                let d = strsim::levenshtein(name, function_id);
                let related = name.ends_with(function_id) || function_id.ends_with(name);
                (d <= limit || related).then_some((d, name))
            })
            .collect();
        near.sort();
        near.into_iter()
            .take(3)
            .map(|(_, n)| n.to_string())
            .collect()
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
                        assignment: if st.assignments.is_empty() {
                            None
                        } else {
                            resolve(
                                st.assignments.values().map(AsRef::as_ref),
                                a,
                                &key.function_id,
                            )
                        },
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What the assignments make of `function_id` on `agent_id` (None when none applies, or
    /// the agent is not registered).
    pub fn assignment(&self, agent_id: &str, function_id: &str) -> Option<Effective> {
        let st = self.read();
        let agent = st.agents.get(agent_id)?;
        resolve(
            st.assignments.values().map(AsRef::as_ref),
            agent,
            function_id,
        )
    }

    /// The version of `agent_id`'s assignments (see [`crate::assign::version`]); 0 for none.
    pub fn assignments_version(&self, agent_id: &str) -> i64 {
        let st = self.read();
        st.agents.get(agent_id).map_or(0, |agent| {
            crate::assign::version(st.assignments.values().map(AsRef::as_ref), agent)
        })
    }

    /// The revision of the last change to any assignment.
    pub fn assignments_revision(&self) -> Revision {
        self.read().assignments_revision
    }

    /// The assignment with this id.
    pub fn assignment_by_id(&self, id: &str) -> Option<Arc<AssignmentRecord>> {
        self.read().assignments.get(id).cloned()
    }

    /// Every assignment, sorted by id.
    pub fn assignments(&self) -> Vec<Arc<AssignmentRecord>> {
        let mut all: Vec<_> = self.read().assignments.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
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
