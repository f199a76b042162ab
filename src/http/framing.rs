//! Framing errors carry the error body too (issue 13 point 5; WORKER-4950).
//!
//! Why: a request whose line or headers cannot be parsed never reaches the
//! router: hyper answers it itself, with a status line, `content-length: 0`
//! and no body, and offers no hook to change that. This wrapper around a
//! connection's socket recognises exactly that answer (a 4xx written while
//! no request of the connection is in flight, with a zero content length)
//! and writes, in its place, the same status with the JSON error body every
//! other refusal carries, then closes the connection as hyper would.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::WorkerError;

/// A socket whose framing-error answers get the error body.
pub struct WithErrorBodies<S> {
    inner: S,
    /// Requests of this connection in flight (the server's count).
    in_flight: Arc<AtomicUsize>,
    /// A replacement being written, how far, and the length hyper asked to write.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> WithErrorBodies<S> {
    pub fn new(inner: S, in_flight: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            in_flight,
            pending: None,
        }
    }
}

/// The answer with a body for hyper's bodiless `head`, when it is one.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let status: u16 = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let lower = text.to_ascii_lowercase();
    // The statuses hyper answers by itself; anything else is the router's.
    if ![400, 408, 431].contains(&status)
        || !lower.contains("\r\ncontent-length: 0\r\n")
        || !text.ends_with("\r\n\r\n")
    {
        return None;
    }
    let (reason, error) = match status {
        431 => (
            "Request Header Fields Too Large",
            WorkerError::PayloadTooLarge {
                message: "the request's headers are larger than this worker reads (about 400 KiB, or more than \
                          100 header fields); send fewer or shorter headers"
                    .into(),
            },
        ),
        408 => (
            "Request Timeout",
            WorkerError::RequestTimeout {
                message: "the request's headers did not arrive within header_read_timeout_ms; the connection is \
                          closed"
                    .into(),
            },
        ),
        _ => (
            "Bad Request",
            WorkerError::invalid(
                "the request line or headers are not valid HTTP/1.1, so the request was not read; check the \
                 client (the method, the path and every header line must be well formed)",
            ),
        ),
    };
    let body = serde_json::to_vec(&error.body()).ok()?;
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<S: AsyncRead + Unpin> AsyncRead for WithErrorBodies<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WithErrorBodies<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() && self.in_flight.load(Ordering::SeqCst) == 0 {
            if let Some(r) = replacement(buf) {
                self.pending = Some((r, 0, buf.len()));
            }
        }
        let Some((bytes, done, asked)) = self.pending.take() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        let mut done = done;
        while done < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[done..]) {
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.pending = Some((bytes, done, asked));
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(asked))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// Whole buffers only, so hyper's answer arrives in one write to recognise.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodiless_framing_answers_get_the_error_body_and_nothing_else_changes() {
        for (head, status, code) in [
            (
                "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
                400,
                "INVALID_PARAMS",
            ),
            (
                "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
                431,
                "PAYLOAD_TOO_LARGE",
            ),
        ] {
            let r = String::from_utf8(replacement(head.as_bytes()).expect(head)).unwrap();
            assert!(r.starts_with(&format!("HTTP/1.1 {status} ")), "{r}");
            let (_, body) = r.split_once("\r\n\r\n").unwrap();
            let j: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(j["code"], code);
            assert!(r.contains(&format!("content-length: {}\r\n", body.len())));
        }
        // Answers with a body, successes and body chunks pass through.
        for other in [
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n",
            "data: {\"t\":\"HTTP/1.1 400\"}\n\n",
        ] {
            assert!(replacement(other.as_bytes()).is_none(), "{other}");
        }
    }
}
