//! The log writer of `nixuv serve`: lines gathered in memory and written by one thread in bursts.
//!
//! Written by hand rather than taken from tracing-appender's non-blocking writer (used before):
//! that writer hands every line to its thread through a channel, and with a stream of new Pods the
//! thread is asleep between two lines, so each line cost a wake-up (a futex call and two context
//! switches) and a `write` of its own: ~5 µs of the server's ~44 µs of CPU a request
//! (docs/performance.md). Here a line is appended to a shared buffer under a lock; only the line
//! that finds the buffer empty wakes the thread, which then waits [`LINGER`] for the rest of the
//! burst and writes all of it in one call. Lines are never dropped: a request that finds
//! [`LIMIT`] bytes waiting waits for the thread (the memory is bounded), and [`Flusher`] writes
//! what is left at exit.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer waits after the first line of a burst for the lines that follow it: at
/// most this late on stderr, and at most 1 / `LINGER` wake-ups and writes a second under load.
pub const LINGER: Duration = Duration::from_millis(10);
/// Bytes waiting beyond which a new line waits for the writer (about 2,500 admission lines).
pub const LIMIT: usize = 1024 * 1024;
/// The writer's buffer keeps at most this much capacity between bursts.
const KEEP: usize = 64 * 1024;

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for a first line (or for the end).
    lines_waiting: Condvar,
    /// Requests wait here while `LIMIT` bytes are waiting.
    room: Condvar,
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
    let shared = Arc::new(Shared { state: Mutex::default(), lines_waiting: Condvar::new(), room: Condvar::new() });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new().name(name.into()).spawn(move || run(&shared, out))?
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
        shared.room.notify_all();
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
        while state.lines.len() >= LIMIT && !state.closed {
            state = self.shared.room.wait(state).unwrap_or_else(|e| e.into_inner());
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
        self.shared.room.notify_all();
        if let Some(t) = self.thread.take() {
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

    #[test]
    fn a_writer_that_cannot_keep_up_holds_the_callers_at_the_limit() {
        /// A sink that takes a while for each write, as a slow pipe would.
        #[derive(Clone, Default)]
        struct Slow(Arc<Mutex<usize>>);
        impl Write for Slow {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_millis(30));
                *self.0.lock().unwrap() += b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let slow = Slow::default();
        let (buf, flusher) = spawn("test-log", slow.clone()).unwrap();
        let line = vec![b'x'; 64 * 1024];
        let shared = Arc::clone(&buf.shared);
        let writer = {
            let mut w = buf.clone();
            let line = line.clone();
            std::thread::spawn(move || (0..64).for_each(|_| w.write_all(&line).unwrap()))
        };
        let mut most = 0;
        while !writer.is_finished() {
            most = most.max(shared.lock().lines.len());
            std::thread::sleep(Duration::from_millis(1));
        }
        writer.join().unwrap();
        drop(flusher);
        assert!(most <= LIMIT + line.len(), "{most} bytes waited");
        assert_eq!(*slow.0.lock().unwrap(), 64 * line.len());
    }
}
