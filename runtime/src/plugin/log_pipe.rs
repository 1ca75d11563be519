//! A plugin's stdout and stderr: each complete line goes to the host log
//! (rate-limited, so a chatty plugin cannot flood it), and the last bytes
//! are kept to explain a trap (a panic message is the last thing written).
//! Writes never fail: a plugin that prints forever must not trap for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes kept for trap explanations.
const TAIL_BYTES: usize = 64 * 1024;
/// Longest line logged; the rest of a longer line is cut.
pub const MAX_LINE: usize = 4096;
/// Lines per second a plugin may log, on average...
const LINES_PER_SECOND: f64 = 20.0;
/// ...and at once.
const BURST: f64 = 100.0;

/// One output stream of one plugin instance; clones share it.
#[derive(Clone)]
pub struct LogPipe {
    state: Arc<Mutex<LogState>>,
}

struct LogState {
    stage: String,
    stream: &'static str,
    tail: VecDeque<u8>,
    line: Vec<u8>,
    rate: RateLimit,
}

/// A token bucket for a plugin's log records: `LINES_PER_SECOND` on
/// average, `BURST` at once. Shared by stdout, stderr and the `log` import.
pub struct RateLimit {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            tokens: BURST,
            refilled: Instant::now(),
            dropped: 0,
        }
    }
}

impl RateLimit {
    /// Whether one more record may be logged now. Going over the rate is
    /// logged once when dropping starts, and the count once it ends.
    pub fn admit(&mut self, stage: &str, what: std::fmt::Arguments<'_>) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * LINES_PER_SECOND).min(BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            if self.dropped == 1 {
                tracing::warn!(
                    plugin = stage,
                    "{what} of the plugin over {LINES_PER_SECOND} lines/s: dropping some"
                );
            }
            return false;
        }
        self.tokens -= 1.0;
        let dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            tracing::warn!(
                plugin = stage,
                "{dropped} {what} of the plugin not logged (over {LINES_PER_SECOND} lines/s)"
            );
        }
        true
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl LogPipe {
    /// The `stream` ("stdout" or "stderr") of plugin stage `stage`.
    pub fn new(stage: &str, stream: &'static str) -> LogPipe {
        LogPipe {
            state: Arc::new(Mutex::new(LogState {
                stage: stage.to_string(),
                stream,
                tail: VecDeque::new(),
                line: Vec::new(),
                rate: RateLimit::default(),
            })),
        }
    }

    /// The last bytes written, as text.
    pub fn tail_text(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = state.tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    fn accept(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.tail.extend(bytes);
        let excess = state.tail.len().saturating_sub(TAIL_BYTES);
        state.tail.drain(..excess);
        for &byte in bytes {
            if byte == b'\n' {
                state.emit();
            } else if state.line.len() < MAX_LINE {
                state.line.push(byte);
            }
        }
    }
}

impl LogState {
    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if !self
            .rate
            .admit(&self.stage, format_args!("{} lines", self.stream))
        {
            return;
        }
        tracing::info!(plugin = self.stage, stream = self.stream, "{line}");
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.accept(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(TAIL_BYTES)
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.accept(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
