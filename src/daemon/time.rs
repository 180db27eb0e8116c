//! Timer helpers for the shell's `select!` loops (the core never sleeps: it
//! is told the time).

/// Sleep until `t`, or forever when there is nothing to wait for, so a
/// `select!` arm can wait on an optional deadline. Takes a std or a tokio
/// `Instant`.
pub(crate) async fn sleep_until_opt(t: Option<impl Into<tokio::time::Instant>>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_deadline_wakes_and_none_never_does() {
        let soon = std::time::Instant::now() + Duration::from_millis(10);
        tokio::time::timeout(Duration::from_secs(30), sleep_until_opt(Some(soon))).await.expect("std deadline");
        let soon = tokio::time::Instant::now() + Duration::from_millis(10);
        tokio::time::timeout(Duration::from_secs(30), sleep_until_opt(Some(soon))).await.expect("tokio deadline");
        let never = tokio::time::timeout(Duration::from_millis(50), sleep_until_opt(None::<std::time::Instant>)).await;
        assert!(never.is_err(), "no deadline must mean no wake-up");
    }
}
