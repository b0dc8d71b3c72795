//! The threads `/preview` renders on, off the runtime that serves `/mutate`: a preview of a
//! large List is milliseconds to seconds of CPU, and on the runtime's workers it held up every
//! admission request queued behind it. A bounded queue in front of them: a preview that finds it
//! full gets 429.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use super::error::ApiError;

type Job = Box<dyn FnOnce() + Send>;

pub struct PreviewPool {
    jobs: SyncSender<Job>,
}

impl PreviewPool {
    /// `threads` threads and room for `queue` previews waiting for one.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new().name(format!("nixuv-preview-{i}")).spawn(move || work(&rx))?;
        }
        Ok(PreviewPool { jobs })
    }

    /// Runs `f` on the pool and waits for its result; 429 when the queue is full.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many previews at once; retry shortly"))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "previews are not served now"))
            }
        }
        // A job that panicked dropped its sender (the thread goes on with the next).
        rx.await.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the preview failed"))
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_off_the_runtime_and_refuses_beyond_the_queue() {
        let pool = Arc::new(PreviewPool::new(1, 1).unwrap());
        let name = pool.run(|| std::thread::current().name().unwrap_or("").to_string()).await.unwrap();
        assert_eq!(name, "nixuv-preview-0");
        // One running, one queued: a third is refused.
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let hold = |gate: Arc<(Mutex<bool>, std::sync::Condvar)>| {
            move || {
                let (l, c) = &*gate;
                let _g = c.wait_while(l.lock().unwrap(), |open| !*open).unwrap();
            }
        };
        let running = tokio::spawn({
            let (p, g) = (Arc::clone(&pool), Arc::clone(&gate));
            async move { p.run(hold(g)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let queued = tokio::spawn({
            let (p, g) = (Arc::clone(&pool), Arc::clone(&gate));
            async move { p.run(hold(g)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let refused = pool.run(|| ()).await.unwrap_err();
        assert_eq!(refused.code, StatusCode::TOO_MANY_REQUESTS);
        {
            let (l, c) = &*gate;
            *l.lock().unwrap() = true;
            c.notify_all();
        }
        running.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        // A job that panics fails alone; the thread goes on.
        assert_eq!(
            pool.run(|| panic!("boom")).await.map(|_: ()| ()).unwrap_err().code,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
