//! Who is asking: the [`Caller`] extractor turns `Authorization: Bearer TOKEN` into the token's
//! agent, and says what that agent may not do.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::error::LeaseError;
use crate::server::error::ApiError;
use crate::server::tokens::Identity;
use crate::server::AppState;

/// The agent a request acts as, from its bearer token. Every route but `/healthz` takes one.
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

impl Caller {
    /// The token's agent.
    pub fn agent(&self) -> &str {
        &self.0.agent_id
    }

    /// Refuses a token that is not an admin token.
    pub fn require_admin(&self, action: &str) -> Result<(), ApiError> {
        if self.0.admin {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "{action} needs an admin token; the token of agent {:?} is not one",
            self.0.agent_id
        )))
    }

    /// Refuses a request that names an agent other than the token's: an agent cannot act as
    /// another by naming it.
    pub fn check_agent(&self, named: Option<&str>) -> Result<(), ApiError> {
        match named {
            Some(named) if named != self.0.agent_id => Err(ApiError::Forbidden(format!(
                "the request names agent {named:?} but the token is agent {:?}'s; \
                 a token acts only as its own agent",
                self.0.agent_id
            ))),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(
                "this route needs a token: send the header `Authorization: Bearer <token>` \
                 (create one with `leasehold token create --agent ID`)"
                    .into(),
            ));
        };
        let text = header.to_str().unwrap_or_default().trim();
        let token = match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::Unauthorized(
                    "the Authorization header must be `Bearer <token>`".into(),
                ))
            }
        };
        let tokens = app.inner.tokens.clone();
        let found = match tokens.try_authenticate(token) {
            Some(found) => found?,
            None => {
                let token = token.to_string();
                tokio::task::spawn_blocking(move || tokens.authenticate(&token))
                    .await
                    .map_err(|e| LeaseError::storage(format!("token lookup task failed: {e}")))??
            }
        };
        found.map(Caller).ok_or_else(|| {
            ApiError::Unauthorized("the token is unknown or has been revoked".into())
        })
    }
}
