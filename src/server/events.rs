//! `GET /v1/events`: the history as it happens, as Server-Sent Events. One SSE event per
//! history event committed by this server (`event:` its type, `id:` its history id, `data:` the
//! JSON event), filtered by path and agent, with heartbeats on idle connections.
//!
//! A client that reconnects with `Last-Event-ID` first gets the events it missed, read from the
//! history. A client too slow to keep up gets a `lagged` event saying how many it missed
//! (it can read them from `/v1/history`), and the stream goes on.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::model::{HistoryEvent, HistoryQuery};
use crate::path::LeasePath;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, QueryParams};
use crate::server::AppState;

/// At most this many missed events are replayed to a client reconnecting with `Last-Event-ID`.
const REPLAY_LIMIT: u32 = 10_000;

/// The query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    path: Option<String>,
    agent: Option<String>,
}

/// Which events a client wants.
#[derive(Debug, Clone)]
struct Filter {
    path: Option<LeasePath>,
    agent: Option<String>,
    /// Events at or below this id were already sent (replayed).
    after_id: i64,
}

impl Filter {
    fn admits(&self, event: &HistoryEvent) -> bool {
        event.id > self.after_id
            && self.agent.as_ref().is_none_or(|a| *a == event.agent_id)
            && self
                .path
                .as_ref()
                .is_none_or(|p| p.overlaps(&LeasePath::from_stored(event.file_path.clone())))
    }
}

fn to_sse(event: &HistoryEvent) -> Event {
    Event::default()
        .event(event.event_type.as_str())
        .id(event.id.to_string())
        .data(serde_json::to_string(event).unwrap_or_default())
}

/// `GET /v1/events?path=P&agent=A`.
pub(crate) async fn events(
    State(app): State<AppState>,
    _caller: Caller,
    QueryParams(query): QueryParams<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let path = query
        .path
        .filter(|p| !p.is_empty())
        .map(|p| LeasePath::parse(&p))
        .transpose()?;
    let agent = query.agent.filter(|a| !a.is_empty());
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    // Subscribe before reading the history, so that nothing committed in between is missed;
    // the filter's `after_id` drops what the replay already sent.
    let receiver = (app.inner.subscribe)();
    let mut filter = Filter {
        path,
        agent,
        after_id: i64::MIN,
    };
    let mut replay = Vec::new();
    if let Some(after) = last_seen {
        replay = app
            .inner
            .manager
            .get_history(HistoryQuery {
                path: filter.path.as_ref().map(|p| p.as_str().to_string()),
                agent_id: filter.agent.clone(),
                after_id: Some(after),
                limit: Some(REPLAY_LIMIT),
                ..HistoryQuery::default()
            })
            .await?;
        filter.after_id = replay.last().map_or(after, |e| e.id.max(after));
    }
    let replayed = stream::iter(replay.iter().map(|e| Ok(to_sse(e))).collect::<Vec<_>>());
    let live = live_events(receiver, filter, app.inner.shutdown.subscribe());
    Ok(Sse::new(replayed.chain(live)).keep_alive(
        KeepAlive::new()
            .interval(app.inner.heartbeat)
            .text("heartbeat"),
    ))
}

/// The live part of the stream; it ends when the server shuts down, so that graceful
/// shutdown does not wait forever on watchers.
fn live_events(
    receiver: broadcast::Receiver<HistoryEvent>,
    filter: Filter,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(
        (receiver, filter, shutdown),
        |(mut receiver, filter, mut shutdown)| async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.wait_for(|stopping| *stopping) => return None,
                    next = receiver.recv() => next,
                };
                let event = match next {
                    Ok(event) if filter.admits(&event) => to_sse(&event),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "an event stream client fell behind");
                        Event::default()
                            .event("lagged")
                            .data(json!({ "missed": missed }).to_string())
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(event), (receiver, filter, shutdown)));
            }
        },
    )
}
