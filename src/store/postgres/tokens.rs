//! The `api_tokens` table (migration `0002_tokens.sql`), on the store's connection pool.

use postgres::Row;

use crate::error::Result;
use crate::model::TokenInfo;
use crate::store::postgres::PgStore;
use crate::store::TokenTable;
use crate::time::Timestamp;

const TOKEN_COLUMNS: &str = "id, agent_id, is_admin, created_at, revoked_at, last_used_at";

/// The token table of one PostgreSQL database (or schema).
pub struct PgTokens {
    store: PgStore,
}

impl PgTokens {
    /// Uses `store`'s connections for the token table.
    pub fn new(store: PgStore) -> PgTokens {
        PgTokens { store }
    }
}

fn token_from_row(row: &Row) -> Result<TokenInfo> {
    Ok(TokenInfo {
        id: row.try_get(0)?,
        agent_id: row.try_get(1)?,
        admin: row.try_get(2)?,
        created_at: Timestamp(row.try_get(3)?),
        revoked_at: row.try_get::<_, Option<i64>>(4)?.map(Timestamp),
        last_used_at: row.try_get::<_, Option<i64>>(5)?.map(Timestamp),
    })
}

impl TokenTable for PgTokens {
    fn insert(&self, info: &TokenInfo, token_hash: &str) -> Result<()> {
        self.store.with_client(|client| {
            client.execute(
                "INSERT INTO api_tokens (id, agent_id, is_admin, token_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &info.id,
                    &info.agent_id,
                    &info.admin,
                    &token_hash,
                    &info.created_at.0,
                ],
            )?;
            Ok(())
        })
    }

    fn find_live(&self, token_hash: &str) -> Result<Option<TokenInfo>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
        );
        self.store.with_client(|client| {
            client
                .query_opt(&sql, &[&token_hash])?
                .as_ref()
                .map(token_from_row)
                .transpose()
        })
    }

    fn list(&self) -> Result<Vec<TokenInfo>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id");
        self.store.with_client(|client| {
            client
                .query(&sql, &[])?
                .iter()
                .map(token_from_row)
                .collect()
        })
    }

    fn revoke(&self, id: &str, now_ms: i64) -> Result<Option<TokenInfo>> {
        let sql = format!(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1
             RETURNING {TOKEN_COLUMNS}"
        );
        self.store.with_client(|client| {
            client
                .query_opt(&sql, &[&id, &now_ms])?
                .as_ref()
                .map(token_from_row)
                .transpose()
        })
    }

    fn touch(&self, id: &str, now_ms: i64) -> Result<()> {
        self.store.with_client(|client| {
            client.execute(
                "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1",
                &[&id, &now_ms],
            )?;
            Ok(())
        })
    }

    fn live_counts(&self, now_ms: i64) -> Result<(u64, u64)> {
        self.store.with_client(|client| {
            let row = client.query_one(
                "SELECT count(*) FILTER (WHERE status = 'active'), count(*) FILTER (WHERE status = 'pending')
                 FROM leases WHERE status IN ('active', 'pending') AND expires_at > $1",
                &[&now_ms],
            )?;
            Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
        })
    }
}
