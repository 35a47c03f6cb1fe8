//! Graceful shutdown, in the style of mini-redis: one signal that every task listens for, and a
//! drop guard that tells the server when the last task has finished.
//!
//! The signal is a `watch` channel rather than mini-redis's `broadcast`: a task spawned *after*
//! shutdown began still sees it (a broadcast subscriber would miss the earlier send and wait
//! forever). Every [`Shutdown`] also holds a clone of an `mpsc::Sender` that is never used to
//! send; when the last clone is dropped, [`ShutdownController::wait_for_tasks`] returns.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Held by every long-lived task: tells it when to stop, and keeps the server waiting for it.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Shutdown {
    /// Resolves once shutdown has begun (at once if it already has). Cancel-safe, so it can be a
    /// branch of `tokio::select!` in a loop.
    pub(crate) async fn requested(&mut self) {
        // An error means the controller is gone, which also means: stop.
        let _ = self.signal.wait_for(|stop| *stop).await;
    }
}

/// Owned by the server: starts the shutdown and waits for the tasks to finish.
#[derive(Debug)]
pub(crate) struct ShutdownController {
    signal: watch::Sender<bool>,
    alive: Option<mpsc::Sender<()>>,
    finished: mpsc::Receiver<()>,
}

impl ShutdownController {
    pub(crate) fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (alive, finished) = mpsc::channel(1);
        ShutdownController {
            signal,
            alive: Some(alive),
            finished,
        }
    }

    /// A handle for a new task.
    pub(crate) fn handle(&self) -> Shutdown {
        let alive = match &self.alive {
            Some(alive) => alive.clone(),
            // After `wait_for_tasks` began nobody should be spawning; a detached guard is harmless.
            None => mpsc::channel(1).0,
        };
        Shutdown {
            signal: self.signal.subscribe(),
            _alive: alive,
        }
    }

    /// Tells every task to stop.
    pub(crate) fn trigger(&self) {
        self.signal.send_replace(true);
    }

    /// Waits until every [`Shutdown`] handle is dropped, or `bound` passes. Returns whether all
    /// tasks finished.
    pub(crate) async fn wait_for_tasks(&mut self, bound: Duration) -> bool {
        self.alive = None;
        tokio::time::timeout(bound, self.finished.recv())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_handles_see_an_earlier_trigger() {
        let controller = ShutdownController::new();
        controller.trigger();
        let mut late = controller.handle();
        // Would hang (and time the test out) if a late handle missed the trigger.
        late.requested().await;
    }

    #[tokio::test]
    async fn waits_for_every_handle() {
        let mut controller = ShutdownController::new();
        let mut handle = controller.handle();
        let task = tokio::spawn(async move {
            handle.requested().await;
        });
        assert!(
            !controller.wait_for_tasks(Duration::from_millis(20)).await,
            "the task still holds its handle"
        );
        controller.trigger();
        task.await.unwrap();
        assert!(controller.wait_for_tasks(Duration::from_secs(10)).await);
    }
}
