//! The MCP server: the lease operations as Model Context Protocol tools, for AI coding agents
//! that call tools rather than shell commands (`leasehold mcp` serves them over stdio).
//!
//! The server acts as one agent, fixed when it starts, through any [`LeaseManager`] (the local
//! database or a `leasehold serve`). Every answer is structured JSON (`structuredContent`, and
//! the same JSON as text) after a one-line summary, and carries a `next` hint saying what to do
//! now. A refusal is a tool error (`isError`) whose JSON is the library's error document
//! ([`LeaseError::to_json`]: `{"error": {"code": ..., ...}}`) plus `next`; conflicts list their
//! holders with the time they have left.
//!
//! Architecture invariant: this module knows MCP and the [`LeaseManager`] trait, not SQL, HTTP
//! or the engine. It maps paths to lease keys only through the [`KeyMapper`] its caller gives,
//! and reads the time only from the injected [`Clock`].

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cli::duration::parse_duration_ms;
use crate::cli::output::compact_duration;
use crate::clock::Clock;
use crate::error::LeaseError;
use crate::manager::LeaseManager;
use crate::model::{
    HistoryQuery, Lease, LeaseAcquisitionRequest, LeaseMode, LeaseQuery, LeaseReleaseRequest,
    LeaseRenewalRequest, LeaseStatus,
};
use crate::path::LeasePath;
use crate::time::Timestamp;

/// Turns a path as a tool received it into a lease key, or says why it cannot.
pub type KeyMapper = Arc<dyn Fn(&str) -> Result<String, LeaseError> + Send + Sync>;

/// The longest wait a `next` hint suggests: MCP clients time tool calls out, so a hint asks for
/// a wait a client will let finish and says to call again.
const SUGGESTED_WAIT_MAX_MS: u64 = 120_000;

/// The most history events one `lease_history` call returns.
const HISTORY_LIMIT_MAX: u32 = 1000;

/// Arguments of `acquire_leases`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireParams {
    /// Files or folders to lease, relative to the workspace root (or absolute paths inside it).
    /// A path ending in "/" (or naming an existing directory) is a folder lease covering
    /// everything under it. All are granted, or none.
    pub paths: Vec<String>,
    /// How long the leases last unless renewed or released: a duration such as "30s", "10m",
    /// "1h30m", or a number of seconds. Default: the workspace's default_ttl_seconds setting.
    #[serde(default)]
    pub ttl: Option<DurationParam>,
    /// Take shared leases (for reading: they conflict only with exclusive leases). Default:
    /// exclusive, for editing.
    #[serde(default)]
    pub shared: bool,
    /// Wait in the fair first-come queue while a path is held: a duration such as "2m", a
    /// number of seconds, or true for the workspace's acquisition timeout. Default: do not
    /// wait; answer at once with who holds the path.
    #[serde(default)]
    pub wait: Option<WaitParam>,
    /// Why you take the leases (others see it in status and history).
    #[serde(default)]
    pub reason: Option<String>,
}

/// A duration: text with a unit ("30s", "10m", "1h30m") or a number of seconds.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DurationParam {
    /// Whole seconds.
    Seconds(u64),
    /// Text with a unit.
    Text(String),
}

/// How long to wait: true (the workspace's acquisition timeout), false (not at all), or a
/// duration.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WaitParam {
    /// true: wait up to the acquisition_timeout_ms setting; false: do not wait.
    Flag(bool),
    /// Whole seconds.
    Seconds(u64),
    /// Text with a unit.
    Text(String),
}

/// Arguments of `renew_lease`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewParams {
    /// The lease to extend (its id, from acquire_leases or list_leases).
    pub lease_id: String,
    /// New time-to-live from now: "10m", "1h" or a number of seconds. Default: the lease's
    /// current TTL.
    #[serde(default)]
    pub ttl: Option<DurationParam>,
}

/// Arguments of `release_leases`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseParams {
    /// Release these leases, by id.
    #[serde(default)]
    pub lease_ids: Vec<String>,
    /// Release your active leases on exactly these paths ("src/" names a folder lease).
    #[serde(default)]
    pub paths: Vec<String>,
}

/// Arguments of `lease_status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// The file or folder to look at, relative to the workspace root.
    pub path: String,
}

/// Arguments of `list_leases`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// List every agent's active leases, not only yours. Default: false (yours).
    #[serde(default)]
    pub all_agents: bool,
    /// Only leases overlapping this path (on it, on a folder above it, or below it).
    #[serde(default)]
    pub path: Option<String>,
}

/// Arguments of `lease_history`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Only events on paths overlapping this one.
    #[serde(default)]
    pub path: Option<String>,
    /// Only this agent's events.
    #[serde(default)]
    pub agent: Option<String>,
    /// Only events since this time: an RFC 3339 time or a duration ago such as "30m".
    #[serde(default)]
    pub since: Option<String>,
    /// At most this many events, the most recent (default 50, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A tool's answer before it becomes an MCP result.
struct Answer {
    /// One line for the model and the person reading along.
    summary: String,
    /// The structured result (an object); `next` is added to it.
    body: Value,
    /// What to do now.
    next: String,
}

/// A refusal before it becomes an MCP tool error.
struct Failure {
    /// The error document, `{"error": {"code": ..., "message": ..., ...}}`.
    document: Value,
    /// What to do now.
    next: String,
}

type Outcome = Result<Answer, Failure>;

/// The lease tools, acting as one agent.
#[derive(Clone)]
pub struct LeaseTools {
    manager: Arc<dyn LeaseManager>,
    agent: String,
    keys: KeyMapper,
    clock: Arc<dyn Clock>,
    tool_router: ToolRouter<LeaseTools>,
}

impl std::fmt::Debug for LeaseTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTools")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// The tool names, in the order they are listed.
pub const TOOL_NAMES: [&str; 6] = [
    "acquire_leases",
    "renew_lease",
    "release_leases",
    "lease_status",
    "list_leases",
    "lease_history",
];

#[tool_router]
impl LeaseTools {
    /// Tools acting as `agent` on `manager`; `keys` maps the paths tools receive to lease keys.
    pub fn new(
        manager: Arc<dyn LeaseManager>,
        agent: String,
        keys: KeyMapper,
        clock: Arc<dyn Clock>,
    ) -> LeaseTools {
        LeaseTools {
            manager,
            agent,
            keys,
            clock,
            tool_router: Self::tool_router(),
        }
    }

    /// Tools whose paths must already be lease keys (workspace-relative, `/`-separated).
    pub fn with_plain_keys(
        manager: Arc<dyn LeaseManager>,
        agent: String,
        clock: Arc<dyn Clock>,
    ) -> LeaseTools {
        let keys: KeyMapper = Arc::new(|path: &str| Ok(LeasePath::parse(path)?.to_string()));
        LeaseTools::new(manager, agent, keys, clock)
    }

    /// The agent the tools act as.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    #[tool(
        description = "Take leases on files or folders before editing them, so that other agents \
            do not change them under you. Exclusive by default (shared=true for reading). All \
            paths are granted or none. If another agent holds a path, the answer is an error \
            naming the holder and when its lease ends; pass wait (\"2m\") to wait in the fair \
            queue instead. Calling again for paths you already hold returns the same leases. \
            Release them with release_leases when done.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn acquire_leases(
        &self,
        Parameters(params): Parameters<AcquireParams>,
    ) -> CallToolResult {
        finish(self.acquire(params).await)
    }

    #[tool(
        description = "Extend one of your leases to now + ttl (default: its current TTL), before \
            it expires. A lease that expired or was released cannot be renewed: acquire the \
            path again.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn renew_lease(&self, Parameters(params): Parameters<RenewParams>) -> CallToolResult {
        finish(self.renew(params).await)
    }

    #[tool(
        description = "Give leases back when you are done, so waiting agents can proceed. By \
            lease_ids, or by paths (your leases on exactly those paths); with no arguments, \
            every active lease you hold. Every lease is checked before any is released. \
            Retrying is safe: leases of yours that already ended are listed under not_held.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn release_leases(
        &self,
        Parameters(params): Parameters<ReleaseParams>,
    ) -> CallToolResult {
        finish(self.release(params).await)
    }

    #[tool(
        description = "Who holds a file or folder (including leases on folders above it, and \
            below a folder), in which mode, until when and how long is left, and who waits \
            for it in queue order. Changes nothing.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn lease_status(&self, Parameters(params): Parameters<StatusParams>) -> CallToolResult {
        finish(self.status(params).await)
    }

    #[tool(
        description = "Active leases: yours (default) or every agent's (all_agents=true), \
            optionally only those overlapping a path. Changes nothing.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_leases(&self, Parameters(params): Parameters<ListParams>) -> CallToolResult {
        finish(self.list(params).await)
    }

    #[tool(
        description = "What happened to leases (acquired, renewed, released, expired, \
            force_released, wait_failed, deadlock), the most recent events oldest first, \
            optionally by path, agent or time. Changes nothing.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn lease_history(&self, Parameters(params): Parameters<HistoryParams>) -> CallToolResult {
        finish(self.history(params).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for LeaseTools {
    /// Routes a call to its tool. Arguments that do not fit the tool's schema are answered like
    /// every other refusal: an `invalid_input` error document (`what: "arguments"`), not only
    /// the SDK's bare text. A call the client cancels (or that is still running when the
    /// connection closes) is dropped at once, which takes a waiting acquisition out of the
    /// queue.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let cancelled = context.ct.clone();
        let call = ToolCallContext::new(self, request, context);
        let routed = tokio::select! {
            routed = self.tool_router.call(call) => routed?,
            () = cancelled.cancelled() => {
                return Err(ErrorData::internal_error("the call was cancelled", None));
            }
        };
        Ok(match routed {
            CallToolResponse::Complete(result)
                if result.is_error == Some(true) && result.structured_content.is_none() =>
            {
                let text = result
                    .content
                    .iter()
                    .find_map(|c| c.as_text().map(|t| t.text.clone()))
                    .unwrap_or_default();
                let why = text
                    .strip_prefix("failed to deserialize parameters:")
                    .unwrap_or(&text)
                    .trim()
                    .to_string();
                let mut failure = self.invalid("arguments", why);
                failure.next = "Fix the arguments to fit the tool's input schema and call again; \
                                nothing was changed."
                    .to_string();
                finish(Err(failure)).into()
            }
            other => other,
        })
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("leasehold", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Leases on the files and folders of a workspace shared with other agents. You \
                 act as agent {:?}. Before editing files, take leases on them with \
                 acquire_leases; if another agent holds one, wait (wait=\"2m\") or work on \
                 something else; release them with release_leases when done. Paths are \
                 relative to the workspace root.",
                self.agent
            ))
    }
}

impl LeaseTools {
    fn key(&self, path: &str) -> Result<String, Failure> {
        (self.keys)(path).map_err(|e| self.failure(e))
    }

    fn keys(&self, paths: &[String]) -> Result<Vec<String>, Failure> {
        paths.iter().map(|path| self.key(path)).collect()
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn acquire(&self, params: AcquireParams) -> Outcome {
        if params.paths.is_empty() {
            return Err(self.invalid("paths", "at least one path is required"));
        }
        let paths = self.keys(&params.paths)?;
        let ttl_ms = params
            .ttl
            .as_ref()
            .map(|ttl| self.duration_ms("ttl", ttl, false))
            .transpose()?;
        let wait_ms = match params.wait {
            None | Some(WaitParam::Flag(false)) => None,
            Some(WaitParam::Flag(true)) => Some(
                self.manager
                    .get_settings()
                    .await
                    .map_err(|e| self.failure(e))?
                    .acquisition_timeout_ms,
            ),
            Some(WaitParam::Seconds(seconds)) => {
                Some(self.duration_ms("wait", &DurationParam::Seconds(seconds), true)?)
            }
            Some(WaitParam::Text(text)) => {
                Some(self.duration_ms("wait", &DurationParam::Text(text), true)?)
            }
        };
        let request = LeaseAcquisitionRequest {
            agent_id: self.agent.clone(),
            paths,
            mode: if params.shared {
                LeaseMode::Shared
            } else {
                LeaseMode::Exclusive
            },
            ttl_ms,
            wait_ms: wait_ms.filter(|ms| *ms > 0),
            max_renewals: None,
            reason: params.reason,
        };
        let granted = self
            .manager
            .acquire_lease(request)
            .await
            .map_err(|e| self.failure(e))?;
        let now = self.now_ms();
        let until = latest_expiry(&granted.leases);
        let names = key_list(&granted.leases);
        let waited = if granted.waited_ms > 0 {
            format!(" after waiting {}", compact_duration(granted.waited_ms))
        } else {
            String::new()
        };
        Ok(Answer {
            summary: format!(
                "acquired {names}{waited}; held until {until} ({} left)",
                left(until, now)
            ),
            body: json!({
                "agent_id": self.agent,
                "leases": self.lease_views(&granted.leases),
                "waited_ms": granted.waited_ms,
            }),
            next: "Make your changes, then call release_leases (no arguments releases all of \
                   yours). Call renew_lease before they expire if you need longer."
                .to_string(),
        })
    }

    async fn renew(&self, params: RenewParams) -> Outcome {
        let lease_id = self.lease_id(&params.lease_id)?;
        let ttl_ms = params
            .ttl
            .as_ref()
            .map(|ttl| self.duration_ms("ttl", ttl, false))
            .transpose()?;
        let renewed = self
            .manager
            .renew_lease(LeaseRenewalRequest {
                lease_id,
                agent_id: self.agent.clone(),
                ttl_ms,
            })
            .await
            .map_err(|e| self.failure(e))?
            .lease;
        let until = renewed.expires_at;
        Ok(Answer {
            summary: format!(
                "renewed {} until {until} ({} left)",
                renewed.file_path,
                left(until, self.now_ms())
            ),
            body: json!({ "lease": self.lease_view(&renewed) }),
            next: format!(
                "You hold {} until {until}; release it with release_leases when done.",
                renewed.file_path
            ),
        })
    }

    async fn release(&self, params: ReleaseParams) -> Outcome {
        let everything = params.lease_ids.is_empty() && params.paths.is_empty();
        let mut leases: Vec<Lease> = Vec::new();
        // Leases of this agent that ended already: a retried release finds its leases
        // released, which is what it asked for, so they are reported, not refused.
        let mut not_held: Vec<Lease> = Vec::new();
        // Check every lease before releasing any, so that a refusal changes nothing.
        for text in &params.lease_ids {
            let lease_id = self.lease_id(text)?;
            if leases.iter().chain(&not_held).any(|l| l.id == lease_id) {
                continue;
            }
            let lease = self
                .manager
                .get_lease(lease_id)
                .await
                .map_err(|e| self.failure(e))?;
            if lease.agent_id != self.agent {
                return Err(self.failure(LeaseError::NotHolder {
                    lease_id: lease.id,
                    holder: lease.agent_id,
                    agent_id: self.agent.clone(),
                }));
            }
            if lease.status == LeaseStatus::Active {
                leases.push(lease);
            } else {
                not_held.push(lease);
            }
        }
        for key in self.keys(&params.paths)? {
            let mine = self.own_active_leases(Some(&key)).await?;
            let on_key: Vec<Lease> = mine.into_iter().filter(|l| l.file_path == key).collect();
            if on_key.is_empty() {
                return Err(Failure {
                    document: json!({ "error": {
                        "code": "not_found",
                        "message": format!("{} holds no active lease on {key}", self.agent),
                        "path": key,
                        "agent_id": self.agent,
                    }}),
                    next: "list_leases shows the leases you hold; release_leases with no \
                           arguments releases all of them."
                        .to_string(),
                });
            }
            for lease in on_key {
                if !leases.iter().any(|l| l.id == lease.id) {
                    leases.push(lease);
                }
            }
        }
        if everything {
            leases = self.own_active_leases(None).await?;
        }
        let mut released = Vec::with_capacity(leases.len());
        for lease in leases {
            let request = LeaseReleaseRequest {
                lease_id: lease.id,
                agent_id: self.agent.clone(),
            };
            let lease = self
                .manager
                .release_lease(request)
                .await
                .map_err(|e| self.failure(e))?
                .lease;
            released.push(lease);
        }
        let mut summary = if released.is_empty() {
            format!("{} held no active lease to release", self.agent)
        } else {
            format!("released {}", key_list(&released))
        };
        let mut next = "Agents waiting for these paths may take them now. Acquire again before \
                        changing these files."
            .to_string();
        if !not_held.is_empty() {
            let ended: Vec<String> = not_held
                .iter()
                .map(|l| format!("{} ({})", l.file_path, l.status))
                .collect();
            summary.push_str(&format!("; already ended: {}", ended.join(", ")));
            if not_held.iter().any(|l| l.status != LeaseStatus::Released) {
                next.push_str(
                    " A lease that expired or was force-released no longer protected its \
                     files: re-read them before relying on your changes.",
                );
            }
        }
        Ok(Answer {
            summary,
            body: json!({
                "agent_id": self.agent,
                "released": self.lease_views(&released),
                "not_held": self.lease_views(&not_held),
            }),
            next,
        })
    }

    async fn status(&self, params: StatusParams) -> Outcome {
        let key = self.key(&params.path)?;
        let status = self
            .manager
            .get_path_status(&key)
            .await
            .map_err(|e| self.failure(e))?;
        let now = self.now_ms();
        let others: Vec<&Lease> = status
            .holders
            .iter()
            .filter(|l| l.agent_id != self.agent)
            .collect();
        let mine = status.holders.iter().any(|l| l.agent_id == self.agent);
        let (summary, next) = if let Some(first) = others.first() {
            let until = latest_expiry(others.iter().copied());
            (
                format!(
                    "{key} is held by {} ({} lease on {}) until {} ({} left); {} waiting",
                    holder_names(others.iter().copied()),
                    first.mode,
                    first.file_path,
                    first.expires_at,
                    left(first.expires_at, now),
                    status.waiters.len()
                ),
                format!(
                    "To take it, call acquire_leases with wait=\"{}\" to queue fairly (call \
                     again if the wait times out), or ask {} to release it, or work on other \
                     files.",
                    suggested_wait(until, now),
                    holder_names(others.iter().copied())
                ),
            )
        } else if mine {
            let until = latest_expiry(&status.holders);
            (
                format!("{key} is held by you ({}) until {until}", self.agent),
                "It is yours; release it with release_leases when done.".to_string(),
            )
        } else {
            (
                format!("{key} is free"),
                "Take it with acquire_leases before changing it.".to_string(),
            )
        };
        Ok(Answer {
            summary,
            body: json!({
                "path": status.path,
                "locked": status.locked,
                "held_by_you": mine,
                "held_by_others": !others.is_empty(),
                "holders": self.lease_views(&status.holders),
                "waiters": self.lease_views(&status.waiters),
            }),
            next,
        })
    }

    async fn list(&self, params: ListParams) -> Outcome {
        let path = params.path.as_deref().map(|p| self.key(p)).transpose()?;
        let query = LeaseQuery {
            agent_id: (!params.all_agents).then(|| self.agent.clone()),
            path,
            include_inactive: false,
            limit: None,
        };
        let leases = self
            .manager
            .get_all_leases(query)
            .await
            .map_err(|e| self.failure(e))?;
        let whose = if params.all_agents {
            "all agents".to_string()
        } else {
            format!("you ({})", self.agent)
        };
        let summary = match leases.len() {
            0 => format!("no active leases held by {whose}"),
            n => format!("{n} active lease(s) held by {whose}: {}", key_list(&leases)),
        };
        Ok(Answer {
            summary,
            body: json!({ "agent_id": self.agent, "leases": self.lease_views(&leases) }),
            next: "lease_status shows who holds a path and who waits for it.".to_string(),
        })
    }

    async fn history(&self, params: HistoryParams) -> Outcome {
        let limit = params.limit.unwrap_or(50);
        if limit == 0 || limit > HISTORY_LIMIT_MAX {
            return Err(self.invalid(
                "limit",
                format!("must be between 1 and {HISTORY_LIMIT_MAX}"),
            ));
        }
        let path = params.path.as_deref().map(|p| self.key(p)).transpose()?;
        let since = params.since.as_deref().map(|s| self.since(s)).transpose()?;
        let mut events = self
            .manager
            .get_history(HistoryQuery {
                path,
                agent_id: params.agent,
                since,
                until: None,
                after_id: None,
                limit: Some(limit),
                newest_first: true,
            })
            .await
            .map_err(|e| self.failure(e))?;
        events.reverse();
        let summary = match events.last() {
            None => "no events".to_string(),
            Some(last) => format!(
                "{} event(s); the latest: {} {} by {} at {}",
                events.len(),
                last.event_type,
                last.file_path,
                last.agent_id,
                last.event_at
            ),
        };
        Ok(Answer {
            summary,
            body: json!({ "events": events }),
            next: "lease_status shows who holds a path now.".to_string(),
        })
    }

    /// This agent's active leases (overlapping `key` when given).
    async fn own_active_leases(&self, key: Option<&str>) -> Result<Vec<Lease>, Failure> {
        let query = LeaseQuery {
            agent_id: Some(self.agent.clone()),
            path: key.map(str::to_string),
            include_inactive: false,
            limit: None,
        };
        let leases = self
            .manager
            .get_all_leases(query)
            .await
            .map_err(|e| self.failure(e))?;
        Ok(leases
            .into_iter()
            .filter(|l| l.status == LeaseStatus::Active)
            .collect())
    }

    fn lease_id(&self, text: &str) -> Result<Uuid, Failure> {
        Uuid::parse_str(text.trim())
            .map_err(|_| self.invalid("lease_id", format!("{text:?} is not a lease id")))
    }

    fn duration_ms(
        &self,
        what: &str,
        value: &DurationParam,
        allow_zero: bool,
    ) -> Result<u64, Failure> {
        let ms = match value {
            DurationParam::Seconds(seconds) => seconds
                .checked_mul(1000)
                .ok_or_else(|| self.invalid(what, format!("{seconds} seconds is too long")))?,
            DurationParam::Text(text) => {
                parse_duration_ms(what, text, allow_zero).map_err(|e| Failure {
                    next: format!(
                        "Write {what} as a duration with a unit (\"30s\", \"10m\", \"1h30m\") or \
                         a number of seconds, and call again."
                    ),
                    document: e.to_json(),
                })?
            }
        };
        if ms == 0 && !allow_zero {
            return Err(self.invalid(what, "must be positive; the shortest is 1s (or \"1ms\")"));
        }
        Ok(ms)
    }

    fn since(&self, text: &str) -> Result<Timestamp, Failure> {
        if let Some(time) = Timestamp::parse_rfc3339(text.trim()) {
            return Ok(time);
        }
        let ago_ms = parse_duration_ms("since", text, true).map_err(|_| {
            self.invalid(
                "since",
                format!("{text:?} is neither an RFC 3339 time nor a duration such as 30m"),
            )
        })?;
        Ok(Timestamp(self.now_ms().saturating_sub(ago_ms as i64)))
    }

    fn invalid(&self, what: &str, why: impl Into<String>) -> Failure {
        self.failure(LeaseError::invalid(what, why))
    }

    /// The refusal for `error`, with the time each holder has left and a hint.
    fn failure(&self, error: LeaseError) -> Failure {
        let now = self.now_ms();
        let mut document = error.to_json();
        let holders = document
            .get_mut("error")
            .and_then(|body| body.get_mut("holders"))
            .and_then(Value::as_array_mut);
        if let Some(holders) = holders {
            for holder in holders {
                let expires_at = holder["expires_at"]
                    .as_str()
                    .and_then(Timestamp::parse_rfc3339);
                if let (Some(expires_at), Some(fields)) = (expires_at, holder.as_object_mut()) {
                    fields.insert("time_left_ms".into(), json!(left_ms(expires_at, now)));
                    fields.insert("time_left".into(), json!(left(expires_at, now)));
                }
            }
        }
        let next = self.next_after(&error, now);
        Failure { document, next }
    }

    /// What to do after `error`.
    fn next_after(&self, error: &LeaseError, now: i64) -> String {
        match error {
            LeaseError::AlreadyHeld { conflicts } => {
                let holders = conflict_names(conflicts);
                let until = conflicts
                    .iter()
                    .map(|c| c.expires_at)
                    .max()
                    .unwrap_or(Timestamp(now));
                format!(
                    "Held by {holders} until {until} ({} left). Call acquire_leases again with \
                     wait=\"{}\" to wait in the fair queue (call again if the wait times out), \
                     or ask {holders} to release it, or work on other files meanwhile.",
                    left(until, now),
                    suggested_wait(until, now)
                )
            }
            LeaseError::WaitTimeout { conflicts, .. } => format!(
                "Still held by {}. Call acquire_leases again with a longer wait, ask them to \
                 release it, or work on other files meanwhile.",
                conflict_names(conflicts)
            ),
            LeaseError::Deadlock { .. } => "Waiting would deadlock. Release the leases you hold \
                 (release_leases), then acquire every path you need in one acquire_leases call."
                .to_string(),
            LeaseError::NotFound { .. } => {
                "No such lease. list_leases shows the leases you hold.".to_string()
            }
            LeaseError::NotHolder { holder, .. } => format!(
                "That lease is {holder}'s, not yours ({}). list_leases shows yours.",
                self.agent
            ),
            LeaseError::LeaseLost { status, .. } => format!(
                "The lease is {status}: you no longer hold the path. Acquire it again with \
                 acquire_leases, and re-read the files first: someone may have changed them."
            ),
            LeaseError::RenewalLimitReached { .. } => "The lease may not be renewed again. \
                 Release it and acquire the path again if you still need it."
                .to_string(),
            LeaseError::InvalidInput { what, .. } => {
                format!("Fix {what} and call again; nothing was changed.")
            }
            LeaseError::Storage { .. } => "The lease database failed; nothing was changed. Try \
                 again shortly, or tell the person running you."
                .to_string(),
        }
    }

    fn lease_views(&self, leases: &[Lease]) -> Vec<Value> {
        leases.iter().map(|l| self.lease_view(l)).collect()
    }

    /// A lease as JSON, with the time it has left.
    fn lease_view(&self, lease: &Lease) -> Value {
        let now = self.now_ms();
        let mut view = serde_json::to_value(lease).unwrap_or_else(|_| json!({}));
        if let Some(fields) = view.as_object_mut() {
            let active = lease.status == LeaseStatus::Active;
            let left_ms = if active {
                left_ms(lease.expires_at, now)
            } else {
                0
            };
            fields.insert("time_left_ms".into(), json!(left_ms));
            fields.insert(
                "time_left".into(),
                json!(if active {
                    left(lease.expires_at, now)
                } else {
                    lease.status.to_string()
                }),
            );
        }
        view
    }
}

/// The MCP result for an outcome: a summary line, then the JSON (also as structured content).
fn finish(outcome: Outcome) -> CallToolResult {
    match outcome {
        Ok(answer) => {
            let mut body = answer.body;
            body["next"] = json!(answer.next);
            let mut result = CallToolResult::structured(body);
            result.content.insert(
                0,
                ContentBlock::text(format!("{}. Next: {}", answer.summary, answer.next)),
            );
            result
        }
        Err(failure) => {
            let message = failure.document["error"]["message"]
                .as_str()
                .unwrap_or("refused")
                .to_string();
            let mut document = failure.document;
            document["next"] = json!(failure.next);
            let mut result = CallToolResult::structured_error(document);
            result.content.insert(
                0,
                ContentBlock::text(format!("error: {message}. Next: {}", failure.next)),
            );
            result
        }
    }
}

fn left_ms(expires_at: Timestamp, now_ms: i64) -> u64 {
    u64::try_from(expires_at.0.saturating_sub(now_ms)).unwrap_or(0)
}

fn left(expires_at: Timestamp, now_ms: i64) -> String {
    crate::cli::output::time_left(expires_at, now_ms)
}

/// A wait worth asking for: the time left, rounded up to a second, at most
/// [`SUGGESTED_WAIT_MAX_MS`].
fn suggested_wait(until: Timestamp, now_ms: i64) -> String {
    let ms = left_ms(until, now_ms).clamp(1000, SUGGESTED_WAIT_MAX_MS);
    format!("{}s", ms.div_ceil(1000))
}

fn latest_expiry<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> Timestamp {
    leases
        .into_iter()
        .map(|l| l.expires_at)
        .max()
        .unwrap_or(Timestamp(0))
}

fn key_list(leases: &[Lease]) -> String {
    leases
        .iter()
        .map(|l| l.file_path.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn holder_names<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> String {
    let mut names: Vec<&str> = Vec::new();
    for lease in leases {
        if !names.contains(&lease.agent_id.as_str()) {
            names.push(&lease.agent_id);
        }
    }
    names.join(", ")
}

fn conflict_names(conflicts: &[crate::error::Conflict]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for conflict in conflicts {
        if !names.contains(&conflict.agent_id.as_str()) {
            names.push(&conflict.agent_id);
        }
    }
    names.join(", ")
}

/// Serves `tools` over this process's stdin and stdout until the client closes stdin.
pub async fn serve_stdio(tools: LeaseTools) -> Result<(), std::io::Error> {
    use rmcp::ServiceExt;
    let service = tools
        .serve(rmcp::transport::stdio_pipes())
        .await
        .map_err(std::io::Error::other)?;
    service.waiting().await.map_err(std::io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggested_waits_are_the_time_left_within_bounds() {
        let now = 1_000_000;
        assert_eq!(suggested_wait(Timestamp(now + 30_500), now), "31s");
        assert_eq!(suggested_wait(Timestamp(now + 3_600_000), now), "120s");
        assert_eq!(suggested_wait(Timestamp(now - 5), now), "1s");
    }
}
