//! The view's vocabulary: function keys, filters, routing candidates and registration changes.

use crate::model::{AgentRecord, NodeState};
use crate::store::Revision;
use croupier_proto::registry::v1 as pb;
use std::sync::Arc;

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
    /// What the admins' assignments make of the function on it (None when none applies).
    pub assignment: Option<crate::assign::Effective>,
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
