//! A plugin's stdout and stderr become log lines of its task (GetConnectorLogs, the server's
//! log), one event per line, tagged with the plugin and the stream. Lines longer than
//! [`MAX_LINE`] are cut.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// The longest line kept whole (bytes).
const MAX_LINE: usize = 4096;

/// Where a plugin's output stream goes: the task's span, so its log layer keeps the lines.
#[derive(Clone)]
pub(super) struct LogOutput {
    pub plugin: Arc<str>,
    pub stream: &'static str,
    pub span: tracing::Span,
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            out: self.clone(),
            buf: Vec::new(),
        })
    }
}

struct LineWriter {
    out: LogOutput,
    buf: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
        let o = &self.out;
        tracing::info!(parent: &o.span, plugin = %o.plugin, stream = o.stream, "{text}");
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.buf.extend_from_slice(data);
        while let Some(i) = me.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = me.buf.drain(..=i).collect();
            me.emit(&line[..i]);
        }
        if me.buf.len() > MAX_LINE {
            let line = std::mem::take(&mut me.buf);
            me.emit(&line);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.buf.is_empty() {
            let line = std::mem::take(&mut me.buf);
            me.emit(&line);
        }
        Poll::Ready(Ok(()))
    }
}
