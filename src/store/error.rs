//! The one error type of the repositories: a caller tells a retryable failure (no
//! connection, a lost or busy server) from a wrong statement or a corrupt row, and
//! answers 503 or 500 accordingly.

use deadpool_postgres::PoolError;
use thiserror::Error;

/// A failed repository call.
#[derive(Debug, Error)]
pub enum DbError {
    /// No connection in time, or none could be opened.
    #[error("no database connection")]
    Pool(#[from] PoolError),
    /// A statement failed.
    #[error("database statement failed")]
    Query(#[from] tokio_postgres::Error),
    /// A stored value breaks a rule the schema should have kept.
    #[error("unexpected value in the database: {0}")]
    Corrupt(String),
    /// One failure of a batch, answered to each of its callers.
    #[error(transparent)]
    Shared(std::sync::Arc<DbError>),
}

impl DbError {
    /// Whether the same call may succeed if retried: every pool failure, and statement
    /// failures that are about the connection or the server's state rather than the
    /// statement.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Query(e) => is_transient(e),
            Self::Corrupt(_) => false,
            Self::Shared(e) => e.is_transient(),
        }
    }
}

/// Whether a statement failure is about the connection or the server's state: no
/// SQLSTATE (the connection broke or timed out), or one of the classes 08 (connection),
/// 40 (serialization failure, deadlock), 53 (insufficient resources), 57 (operator
/// intervention, such as a shutdown or a cancelled statement) and 58 (system error),
/// and `lock_not_available` (55P03: a lock wait ran past `lock_timeout`).
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    e.code().is_none_or(|state| {
        state.code() == "55P03"
            || matches!(
                state.code().get(..2),
                Some("08" | "40" | "53" | "57" | "58")
            )
    })
}
