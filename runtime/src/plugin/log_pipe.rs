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
const MAX_LINE: usize = 4096;
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
    tokens: f64,
    refilled: Instant,
    dropped: u64,
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
                tokens: BURST,
                refilled: Instant::now(),
                dropped: 0,
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
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * LINES_PER_SECOND).min(BURST);
        self.refilled = now;
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if self.tokens < 1.0 {
            self.dropped += 1;
            return;
        }
        self.tokens -= 1.0;
        if self.dropped > 0 {
            tracing::warn!(
                plugin = self.stage,
                "{} {} lines of the plugin not logged (over {LINES_PER_SECOND} lines/s)",
                self.dropped,
                self.stream
            );
            self.dropped = 0;
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
