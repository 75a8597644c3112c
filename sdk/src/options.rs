//! [`CallOptions`] and [`Route`]: where one call goes, under which key, and how long it may take.
//!
//! The fields are public, so existing code can keep writing `CallOptions { .. }`; new code can
//! chain the builder methods instead:
//!
//! ```
//! use std::time::Duration;
//! use croupier_sdk::{CallOptions, Route};
//!
//! let opts = CallOptions::new()
//!     .game("poker")
//!     .env("prod")
//!     .route(Route::Hash("table-42"))
//!     .selector("region", "eu")
//!     .idempotency_key("payout-7731")
//!     .timeout(Duration::from_secs(5));
//! assert_eq!(opts.routing, "hash");
//! assert_eq!(opts.hash_key, "table-42");
//! ```

use std::collections::HashMap;
use std::time::Duration;

use croupier_proto::function::v1::InvokeOptions;

/// How the server picks the agent(s) for a call (see the routing section of the architecture
/// document).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// The usable agent with the fewest calls in flight (the default, `"lb"`).
    LeastLoaded,
    /// A per-function counter over the usable agents (`"round_robin"`).
    RoundRobin,
    /// Rendezvous hashing on the key: a key keeps its agent while the agents don't change
    /// (`"hash"`).
    Hash(&'a str),
    /// Exactly this agent, never another (`"targeted"`).
    Target(&'a str),
    /// Every usable agent, each answering for itself (`"broadcast"`).
    Broadcast,
}

/// How to run one call.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Game ("default" when empty).
    pub game_id: String,
    /// Environment ("dev" when empty).
    pub env: String,
    /// Routing mode: "" / "lb", "round_robin", "hash", "targeted", "broadcast".
    pub routing: String,
    /// Key for hash routing.
    pub hash_key: String,
    /// Agent for targeted routing.
    pub target: String,
    /// Label selector.
    pub selector: HashMap<String, String>,
    /// Function version to match.
    pub version: String,
    /// Idempotency key. A call with a key is safe to repeat, so the client retries it when the
    /// server answers `UNAVAILABLE`.
    pub idempotency_key: String,
    /// Deadline. None: the server applies the descriptor's or its own default, within the
    /// client's default deadline (30 s, [`Client::with_default_timeout`]); a function whose
    /// descriptor allows longer needs an explicit timeout. For a job: how long it may run.
    ///
    /// [`Client::with_default_timeout`]: crate::Client::with_default_timeout
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Options with every field at its default: game "default", env "dev", least-loaded routing,
    /// no key, the default deadline.
    pub fn new() -> Self {
        CallOptions::default()
    }

    /// Sets the game.
    pub fn game(mut self, game_id: impl Into<String>) -> Self {
        self.game_id = game_id.into();
        self
    }

    /// Sets the environment.
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.env = env.into();
        self
    }

    /// Sets the routing mode (and its hash key or target agent).
    pub fn route(mut self, route: Route<'_>) -> Self {
        self.hash_key.clear();
        self.target.clear();
        self.routing = match route {
            Route::LeastLoaded => "lb".into(),
            Route::RoundRobin => "round_robin".into(),
            Route::Hash(key) => {
                self.hash_key = key.into();
                "hash".into()
            }
            Route::Target(agent) => {
                self.target = agent.into();
                "targeted".into()
            }
            Route::Broadcast => "broadcast".into(),
        };
        self
    }

    /// Sends the call to this agent only: the same as `.route(Route::Target(agent_id))`.
    pub fn target(self, agent_id: &str) -> Self {
        self.route(Route::Target(agent_id))
    }

    /// Adds a label the agent must have (all pairs must match).
    pub fn selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.selector.insert(key.into(), value.into());
        self
    }

    /// Sets the idempotency key: repeats with the same key (and payload) get the first answer
    /// without running again, which also makes the call safe for the client to retry.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = key.into();
        self
    }

    /// Sets the deadline (for a job: how long the job may run).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Only agents providing this version of the function.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The game, "default" when empty.
    pub(crate) fn game_or_default(&self) -> String {
        if self.game_id.is_empty() {
            "default".into()
        } else {
            self.game_id.clone()
        }
    }

    /// The environment, "dev" when empty.
    pub(crate) fn env_or_default(&self) -> String {
        if self.env.is_empty() {
            "dev".into()
        } else {
            self.env.clone()
        }
    }

    /// The proto options, with `timeout` as the server-side timeout (whole seconds, at least 1;
    /// None: 0, the server picks).
    pub(crate) fn to_proto_with(&self, timeout: Option<Duration>) -> InvokeOptions {
        InvokeOptions {
            idempotency_key: self.idempotency_key.clone(),
            timeout: timeout.map(|t| t.as_secs().max(1) as i32).unwrap_or(0),
            routing_mode: self.routing.clone(),
            target_agent: self.target.clone(),
            hash_key: self.hash_key.clone(),
            selector: self.selector.clone(),
            version: self.version.clone(),
        }
    }

    /// The proto options with this call's own timeout.
    pub(crate) fn to_proto(&self) -> InvokeOptions {
        self.to_proto_with(self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_the_public_fields() {
        let o = CallOptions::new()
            .game("g")
            .env("e")
            .target("a1")
            .selector("region", "eu")
            .selector("tier", "gold")
            .idempotency_key("x")
            .timeout(Duration::from_millis(2500))
            .version("1");
        assert_eq!((o.game_id.as_str(), o.env.as_str()), ("g", "e"));
        assert_eq!((o.routing.as_str(), o.target.as_str()), ("targeted", "a1"));
        assert_eq!(o.selector.len(), 2);
        let p = o.to_proto();
        assert_eq!(p.routing_mode, "targeted");
        assert_eq!(p.target_agent, "a1");
        assert_eq!(p.idempotency_key, "x");
        assert_eq!(p.timeout, 2);
        assert_eq!(p.version, "1");

        // A later route replaces the earlier one's key or target.
        let o = o.route(Route::Hash("k"));
        assert_eq!((o.routing.as_str(), o.hash_key.as_str()), ("hash", "k"));
        assert!(o.target.is_empty());
        assert_eq!(
            CallOptions::new().route(Route::Broadcast).routing,
            "broadcast"
        );
        assert_eq!(
            CallOptions::new().route(Route::RoundRobin).routing,
            "round_robin"
        );
        assert_eq!(CallOptions::new().route(Route::LeastLoaded).routing, "lb");
    }

    #[test]
    fn defaults_fill_game_env_and_timeout() {
        let o = CallOptions::new();
        assert_eq!(o.game_or_default(), "default");
        assert_eq!(o.env_or_default(), "dev");
        assert_eq!(o.to_proto().timeout, 0);
        assert_eq!(
            o.to_proto_with(Some(Duration::from_millis(10))).timeout,
            1,
            "sub-second timeouts round up to the server's one-second granularity"
        );
    }
}
