//! Bounded blocking lanes: request work that blocks (SQLite, key
//! unwrapping) runs on at most this many threads at once. More would only
//! add context switches on an appliance with few cores, and each open firm
//! keeps as many read connections warm (`store::firm::MAX_IDLE_READERS`).

use super::FirmError;

static LANES: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(crate::store::firm::MAX_IDLE_READERS);

/// Runs blocking work on one of the bounded lanes.
pub async fn lane<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, FirmError> {
    let _permit = LANES
        .acquire()
        .await
        .map_err(|_| FirmError::Internal("blocking lanes closed"))?;
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "blocking task failed");
        FirmError::Internal("blocking task failed")
    })
}

/// [`lane`] for work that returns a service result.
pub async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, FirmError> + Send + 'static,
) -> Result<R, FirmError> {
    lane(f).await?
}
