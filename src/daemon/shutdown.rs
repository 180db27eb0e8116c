//! The shutdown signal shared by every task: a `watch` channel that turns
//! `true` once. Each loop selects on [`stopped`] next to its work.

use tokio::sync::watch;

/// Sender side, held by `main` (signals) and by tests.
pub type Trigger = watch::Sender<bool>;
/// Receiver side, cloned into every task.
pub type Signal = watch::Receiver<bool>;

/// A new untriggered signal.
pub fn channel() -> (Trigger, Signal) {
    watch::channel(false)
}

/// Resolves once shutdown was requested (or the trigger was dropped).
/// Holds no borrow across the await, so futures using it stay `Send`.
pub async fn stopped(rx: &mut Signal) {
    let _ = rx.wait_for(|s| *s).await;
}
