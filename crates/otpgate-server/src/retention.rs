//! Retention: each node deletes, every `retention.sweep_interval_secs`,
//! the verifications (with their phone numbers), outbox rows and inbox rows
//! older than `retention.days`, in batches of `retention.batch` rows, so
//! personal data is kept no longer than configured and the 31-bit id space
//! does not fill up. The daily counts the console charts stay (the store
//! keeps them apart). Several nodes sweeping at once is safe: each deletes
//! what it finds and skips rows another is deleting; the store's clock is
//! the server's, so tests move it with a manual clock.

use std::time::Duration;

use otpgate_store::Purged;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

const DAY_MS: i64 = 86_400_000;

/// Batches one sweep runs at most before yielding to the next interval: a
/// backlog is worked off over several sweeps rather than in one long burst.
const MAX_BATCHES: u32 = 100;

/// Sweeps until `shutdown` fires; the first sweep runs at start.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let every = Duration::from_secs(state.settings.retention.sweep_interval_secs);
    loop {
        match sweep(&state).await {
            Ok(p) if !p.is_empty() => tracing::info!(
                verifications = p.verifications,
                outbox = p.outbox,
                inbox = p.inbox,
                events = p.events,
                days = state.settings.retention.days,
                "retention: deleted old rows"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// One sweep: batches until one comes back short (at most 100 batches).
///
/// # Errors
/// The store's, from the batch that failed (earlier batches stay deleted).
pub async fn sweep(state: &AppState) -> Result<Purged, otpgate_store::StoreError> {
    let r = &state.settings.retention;
    let cutoff = state
        .clock
        .now_ms()
        .saturating_sub(i64::from(r.days).saturating_mul(DAY_MS));
    let mut total = Purged::default();
    for _ in 0..MAX_BATCHES {
        let p = state.store.purge_before(cutoff, r.batch).await?;
        total.verifications += p.verifications;
        total.outbox += p.outbox;
        total.inbox += p.inbox;
        total.events += p.events;
        let full = u64::from(r.batch);
        // Events counts a purged verification's several events too, so a
        // short batch of them may take one more (empty) round: harmless.
        if p.verifications < full && p.inbox < full && p.events < full {
            break;
        }
    }
    Ok(total)
}
