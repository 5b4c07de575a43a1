//! Log output to stderr with the access log in batches: a `tracing_subscriber` writer that
//! appends each access-log line to a buffer which a background thread writes out at most
//! [`FLUSH_EVERY`] later, so a busy server makes one `write` per batch instead of one per request
//! (the syscall was the largest per-request cost left in the manifest GET path; BENCHMARKS.md,
//! round 2 of issue 16). An idle server's lines still go out within milliseconds.
//!
//! No line is lost on shutdown: dropping the [`FlushGuard`] writes out what is buffered and turns
//! the writer into a direct one for anything logged after. Every other line (startup, warnings,
//! errors, what an operator or a test looks for right after an action) is written at once,
//! behind whatever access lines are buffered, so the order holds and a crash cannot take it along.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The longest an access-log line waits in the buffer. At 40,000 requests a second that is about
/// 80 lines per write.
pub const FLUSH_EVERY: Duration = Duration::from_millis(2);
/// Lines of this target are batched; all others are written at once.
const ACCESS: &str = "berth::access";
/// A buffer this full is written out by the logging thread itself rather than waiting.
const FULL: usize = 256 << 10;

struct Shared {
    buf: Mutex<Vec<u8>>,
    /// Held while a batch is written to stderr, taken before `buf` is released: batches go out in
    /// the order they were cut, while new lines go on filling `buf` (a `write` under `buf`'s lock
    /// made request threads wait for it).
    out: Mutex<Vec<u8>>,
    /// Signalled when the buffer stops being empty, and on shutdown.
    filled: Condvar,
    /// The guard is gone: write every line at once.
    direct: AtomicBool,
}

impl Shared {
    /// Append `line`, and write the buffer out now when asked to or when it is full.
    fn append(&self, line: &[u8], now: bool) -> io::Result<()> {
        let mut buf = self.buf.lock();
        let was_empty = buf.is_empty();
        buf.extend_from_slice(line);
        if now || buf.len() >= FULL || self.direct.load(Ordering::Acquire) {
            return self.drain(buf);
        }
        if was_empty {
            self.filled.notify_one();
        }
        Ok(())
    }

    /// Cut the buffered lines as one batch and write it to stderr; `buf` is unlocked during the
    /// write. Batches reach stderr in the order they were cut.
    fn drain(&self, mut buf: MutexGuard<'_, Vec<u8>>) -> io::Result<()> {
        let mut out = self.out.lock();
        std::mem::swap(&mut *buf, &mut *out);
        drop(buf);
        let result = io::stderr().lock().write_all(&out);
        out.clear();
        result
    }
}

/// The writer to hand to `tracing_subscriber::fmt().with_writer(..)`.
#[derive(Clone)]
pub struct Batched(Arc<Shared>);

/// Writes out what is buffered when dropped; keep it until the process has nothing more to log
/// in batches (the end of `serve`).
pub struct FlushGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

/// A batched stderr writer and the guard that flushes it.
pub fn stderr() -> (Batched, FlushGuard) {
    let shared = Arc::new(Shared {
        buf: Mutex::new(Vec::with_capacity(64 << 10)),
        out: Mutex::new(Vec::with_capacity(64 << 10)),
        filled: Condvar::new(),
        direct: AtomicBool::new(false),
    });
    let flusher = std::thread::Builder::new()
        .name("log-flush".into())
        .spawn({
            let shared = shared.clone();
            move || flush_loop(&shared)
        })
        .expect("spawning the log flush thread");
    let guard = FlushGuard {
        shared: shared.clone(),
        flusher: Some(flusher),
    };
    (Batched(shared), guard)
}

/// Sleep until a line arrives, let more gather for [`FLUSH_EVERY`], write them out; until the
/// guard is dropped. An idle server's thread stays asleep.
fn flush_loop(shared: &Shared) {
    loop {
        let mut buf = shared.buf.lock();
        while buf.is_empty() && !shared.direct.load(Ordering::Acquire) {
            shared.filled.wait(&mut buf);
        }
        if !shared.direct.load(Ordering::Acquire) {
            // The lock is released while waiting, so lines keep arriving.
            shared.filled.wait_for(&mut buf, FLUSH_EVERY);
        }
        let last = shared.direct.load(Ordering::Acquire);
        // Nowhere to report a failed write to stderr; the next batch tries again.
        let _ = shared.drain(buf);
        if last {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        {
            let _buf = self.shared.buf.lock();
            self.shared.direct.store(true, Ordering::Release);
            self.shared.filled.notify_all();
        }
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        // Whatever an event appended between the flusher's last drain and now.
        let _ = self.shared.drain(self.shared.buf.lock());
    }
}

/// One event's writer. tracing_subscriber formats a whole line and writes it with one
/// `write_all`, so each line is appended under the lock once.
pub struct Line<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.shared.append(bytes, self.urgent)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.0,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line {
            shared: &self.0,
            // Levels order by verbosity: ERROR < WARN < INFO.
            urgent: meta.target() != ACCESS || *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_for_the_flusher_and_the_guard_writes_out_the_rest() {
        let (writer, guard) = stderr();
        writer.make_writer().write_all(b"batched\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !writer.0.buf.lock().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(FLUSH_EVERY);
        }
        assert!(writer.0.buf.lock().is_empty(), "the flusher wrote the line out");

        writer.make_writer().write_all(b"pending\n").unwrap();
        drop(guard);
        assert!(writer.0.buf.lock().is_empty(), "the guard wrote out the rest");
        writer.make_writer().write_all(b"after\n").unwrap();
        assert!(writer.0.buf.lock().is_empty(), "after the guard, lines go out at once");
    }
}
