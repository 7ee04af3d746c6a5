//! Telling a service's loops to stop: one [`Stopper`] that the service's
//! `run` fires when its shutdown future resolves, and a [`Stop`] handed to
//! every loop, which checks it between messages and waits on it instead of
//! sleeping blind.
//!
//! A loop that was told to stop finishes the message in hand (and acks it)
//! before it returns; nothing here cancels work.

use std::time::Duration;

use tokio::sync::watch;

/// Fires the stop for every [`Stop`] made from it. Dropping it counts as
/// firing: once nobody can ask the loops to stop, they must not wait for it.
#[derive(Debug)]
pub struct Stopper(watch::Sender<bool>);

/// Whether the service was asked to stop, and a way to wait for it. Cheap
/// to clone: every loop holds its own.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

/// A new pair: the [`Stopper`] for the service's `run`, a [`Stop`] for its loops.
pub fn channel() -> (Stopper, Stop) {
    let (tx, rx) = watch::channel(false);
    (Stopper(tx), Stop(rx))
}

impl Stopper {
    /// Asks every [`Stop`] to stop.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Another [`Stop`] for a loop started later.
    pub fn subscribe(&self) -> Stop {
        Stop(self.0.subscribe())
    }
}

impl Stop {
    /// Whether the service was asked to stop.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the service is asked to stop (at once if it was, or if
    /// its [`Stopper`] is gone).
    pub async fn stopped(&self) {
        let mut rx = self.0.clone();
        // An error means the stopper was dropped: nothing can ask any more.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Sleeps `delay` before a retry, ending early when asked to stop;
    /// `true` when the service is stopping (the caller returns rather than
    /// retries).
    pub async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.stopped() => true,
            () = tokio::time::sleep(delay) => self.is_stopped(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pause_sleeps_its_whole_delay_unless_asked_to_stop() {
        let (stopper, stop) = channel();
        let started = tokio::time::Instant::now();
        assert!(!stop.pause(Duration::from_secs(5)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let waiting = tokio::spawn({
            let stop = stop.clone();
            async move { stop.pause(Duration::from_secs(60)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        stopper.stop();
        assert!(waiting.await.expect("the pause ends"));
        assert!(stop.is_stopped());
        assert!(
            stop.pause(Duration::from_secs(60)).await,
            "at once once stopped"
        );
    }

    #[tokio::test]
    async fn a_dropped_stopper_ends_every_wait() {
        let (stopper, stop) = channel();
        let later = stopper.subscribe();
        drop(stopper);
        stop.stopped().await;
        later.stopped().await;
    }
}
