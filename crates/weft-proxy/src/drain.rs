//! Graceful shutdown: one signal to stop, and a way to wait until every
//! connection that was running has finished.
//!
//! Each task that must finish before exit holds a [`Watch`]. The owner of the
//! [`Drain`] signals, then waits for every `Watch` to be dropped (the channel's
//! receivers all gone), bounded by the grace period.

use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// Held by a listener or connection task; tells it when to wind down.
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

impl Drain {
    pub fn new() -> (Drain, Watch) {
        let (tx, rx) = watch::channel(false);
        (Drain { tx }, Watch { rx })
    }

    /// Tells every watcher to drain, then waits for all of them to finish or for
    /// `grace` to pass. Returns whether everything finished in time.
    pub async fn drain(self, grace: Duration) -> bool {
        self.tx.send_replace(true);
        tokio::time::timeout(grace, self.tx.closed()).await.is_ok()
    }
}

impl Watch {
    /// Completes once draining has started.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // An error means the Drain was dropped without draining: treat as a signal.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Drain requests from outside the process (the admin server's `/shutdown`).
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(tokio::sync::mpsc::Sender<()>);

impl ShutdownTrigger {
    pub fn new() -> (Self, tokio::sync::mpsc::Receiver<()>) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        (ShutdownTrigger(tx), rx)
    }

    pub fn trigger(&self) {
        let _ = self.0.try_send(());
    }
}
