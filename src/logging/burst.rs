//! The log writer of `nixuv serve`: lines gathered in memory and written by one thread in bursts.
//!
//! Written by hand rather than taken from tracing-appender's non-blocking writer (used before):
//! that writer hands every line to its thread through a channel, and with a stream of new Pods the
//! thread is asleep between two lines, so each line cost a wake-up (a futex call and two context
//! switches) and a `write` of its own: ~5 µs of the server's ~44 µs of CPU a request
//! (docs/performance.md). Here a line is appended to a shared buffer under a lock; only the line
//! that finds the buffer empty wakes the thread, which then waits [`LINGER`] for the rest of the
//! burst and writes all of it in one call. A line never waits: one that would take the bytes
//! waiting past [`LIMIT`] (stderr is a pipe nobody drains, or slower than the lines come) is
//! dropped and counted in [`DROPPED`] (`nixuv_log_lines_dropped_total`), so that logging can
//! never stop admission; [`Flusher`] writes what is left at exit, waiting at most
//! [`EXIT_WAIT`] for a stderr that does not take it.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer waits after the first line of a burst for the lines that follow it: at
/// most this late on stderr, and at most 1 / `LINGER` wake-ups and writes a second under load.
pub const LINGER: Duration = Duration::from_millis(10);
/// Bytes waiting beyond which a new line is dropped (about 2,500 admission lines).
pub const LIMIT: usize = 1024 * 1024;
/// How long the exit waits for the writer to write what is left.
pub const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Lines dropped because [`LIMIT`] bytes were waiting: a counter the metrics register.
pub static DROPPED: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);
/// The writer's buffer keeps at most this much capacity between bursts.
const KEEP: usize = 64 * 1024;

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    closed: bool,
    finished: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for a first line (or for the end).
    lines_waiting: Condvar,
    /// Signalled when the writer thread ends.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked while holding the lock left whole lines behind it (appending
        // cannot panic halfway through a line): the state is still good.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where the log layer writes (`MakeWriter`): cheap to clone, one per event.
#[derive(Clone)]
pub struct LogBuf {
    shared: Arc<Shared>,
}

/// Writes what is still waiting and stops the writer thread when dropped (at the end of `main`).
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A writer to `out`, written by a thread named `name`, and the guard that flushes it at exit.
pub fn spawn<W: Write + Send + 'static>(name: &str, out: W) -> std::io::Result<(LogBuf, Flusher)> {
    let shared = Arc::new(Shared { state: Mutex::default(), lines_waiting: Condvar::new(), done: Condvar::new() });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new().name(name.into()).spawn(move || {
            run(&shared, out);
            shared.lock().finished = true;
            shared.done.notify_all();
        })?
    };
    Ok((LogBuf { shared: Arc::clone(&shared) }, Flusher { shared, thread: Some(thread) }))
}

fn run<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.lines.is_empty() && !state.closed {
            state = shared.lines_waiting.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.lines.is_empty() {
            return; // closed, everything written
        }
        if !state.closed {
            drop(state);
            std::thread::sleep(LINGER);
            state = shared.lock();
        }
        std::mem::swap(&mut state.lines, &mut batch);
        drop(state);
        // stderr that cannot be written has nowhere to report to: the lines are given up, as
        // any logger must; the server goes on.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        batch.shrink_to(KEEP);
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        if state.lines.len() + line.len() > LIMIT && !state.lines.is_empty() {
            drop(state);
            DROPPED.inc();
            return Ok(line.len());
        }
        let first = state.lines.is_empty();
        state.lines.extend_from_slice(line);
        drop(state);
        if first {
            self.shared.lines_waiting.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(()) // the writer thread flushes each burst
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;

    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.lines_waiting.notify_one();
        // A stderr nobody reads would hold the exit for ever: wait a while, then leave the
        // thread to the process's end.
        let state = self.shared.lock();
        let (state, _) =
            self.shared.done.wait_timeout_while(state, EXIT_WAIT, |s| !s.finished).unwrap_or_else(|e| e.into_inner());
        let finished = state.finished;
        drop(state);
        if let (true, Some(t)) = (finished, self.thread.take()) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose bytes and write calls the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(b);
            s.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_many_threads_is_written_whole_in_few_writes() {
        let sink = Sink::default();
        let (buf, flusher) = spawn("test-log", sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = buf.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        w.write_all(format!("thread {t} line {i:04} {}\n", "x".repeat(200)).as_bytes()).unwrap();
                        // Paced well under what the writer drains (~0.5 MB per linger), as
                        // admission lines come: nothing is dropped.
                        if i % 50 == 49 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(flusher);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for t in 0..4 {
            // In order within a thread, none lost, none torn.
            let own: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with(&format!("thread {t} "))).collect();
            let want: Vec<String> = (0..5000).map(|i| format!("thread {t} line {i:04} {}", "x".repeat(200))).collect();
            assert_eq!(own, want);
        }
        // 4.3 MB of lines: at least LIMIT bytes or a LINGER's worth per write, never a write a line.
        assert!(writes < 1000, "{writes} writes for 20,000 lines");
    }

    #[test]
    fn the_lines_of_a_quiet_moment_are_written_after_the_linger_and_at_exit() {
        let sink = Sink::default();
        let (mut buf, flusher) = spawn("test-log", sink.clone()).unwrap();
        buf.write_all(b"one\n").unwrap();
        std::thread::sleep(LINGER * 20);
        assert_eq!(sink.0.lock().unwrap().0, b"one\n", "written without waiting for more lines");
        buf.write_all(b"two\n").unwrap();
        drop(flusher);
        assert_eq!(sink.0.lock().unwrap().0, b"one\ntwo\n", "flushed at exit");
    }

    /// A stderr that takes nothing (a pipe nobody reads): writers never wait, the bytes waiting
    /// stay under the limit, the lines beyond it are counted, and the exit does not hang.
    #[test]
    fn a_writer_that_cannot_write_never_holds_the_callers() {
        /// A sink that blocks on its first write until the test ends, as a full pipe would.
        struct Stuck(Arc<(Mutex<bool>, Condvar)>);
        impl Write for Stuck {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let (lock, cv) = &*self.0;
                let _g = cv.wait_while(lock.lock().unwrap(), |released| !*released).unwrap();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (buf, flusher) = spawn("test-log", Stuck(Arc::clone(&gate))).unwrap();
        let before = DROPPED.get();
        let line = vec![b'x'; 1000];
        let start = std::time::Instant::now();
        let mut w = buf.clone();
        for _ in 0..5000 {
            w.write_all(&line).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(2), "callers waited: {:?}", start.elapsed());
        assert!(buf.shared.lock().lines.len() <= LIMIT);
        // 5 MB written, at most ~1 MB waiting (and one burst held by the stuck write).
        assert!(DROPPED.get() - before >= 3000, "{} dropped", DROPPED.get() - before);
        let exit = std::time::Instant::now();
        drop(flusher);
        assert!(exit.elapsed() < EXIT_WAIT + Duration::from_secs(1), "the exit waited {:?}", exit.elapsed());
        let (lock, cv) = &*gate;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}
