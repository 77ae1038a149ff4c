//! Background tasks tied to the value that owns them.

use tokio::task::JoinHandle;

/// A spawned task that is aborted when this handle is dropped, so background work (the
/// event listener, the block timer, a connection driver) never outlives its owner.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    pub fn spawn<F>(future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        AbortOnDrop(tokio::spawn(future))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
