//! The audit log: every change to a workspace, who made it and when; its activity feed.

use sqlx::{Any, Transaction};

/// Records `action` inside the transaction that makes the change (so the log and the change land together).
pub async fn record(
    tx: &mut Transaction<'_, Any>,
    workspace: Option<i64>,
    actor: i64,
    action: &str,
    detail: &str,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO audit_log (workspace_id, actor_id, action, detail) VALUES ($1, $2, $3, $4)")
        .bind(workspace)
        .bind(actor)
        .bind(action)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
