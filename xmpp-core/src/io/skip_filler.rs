//! A read adapter that drops whitespace in front of the first TLS record.
//!
//! Spec §3.4: the C++ peers write a `\n` after `<starttls/>` and `<proceed/>`. When it
//! arrives in a later TCP segment than the nonza it is not in the XML reader's buffer, so
//! the TLS engine would read it as the start of a record and fail. A TLS record begins with
//! a content type byte (0x14–0x18), never with filler, so dropping filler until the first
//! other byte is safe.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::xml::is_filler;

/// Wraps a byte stream; see the module documentation.
#[derive(Debug)]
pub struct SkipFiller<T> {
    inner: T,
    skipping: bool,
}

impl<T> SkipFiller<T> {
    /// Starts skipping filler.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            skipping: true,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SkipFiller<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let start = buf.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            if !self.skipping {
                return Poll::Ready(Ok(()));
            }
            let filled = buf.filled().len();
            if filled == start {
                return Poll::Ready(Ok(())); // EOF
            }
            let new = &buf.filled()[start..];
            let skip = new.iter().take_while(|b| is_filler(**b)).count();
            if skip == 0 {
                self.skipping = false;
                return Poll::Ready(Ok(()));
            }
            // Move the remainder over the skipped filler.
            let rest: Vec<u8> = new[skip..].to_vec();
            buf.set_filled(start);
            buf.put_slice(&rest);
            if !rest.is_empty() {
                self.skipping = false;
                return Poll::Ready(Ok(()));
            }
            // Only filler arrived: read again rather than report an empty read (EOF).
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SkipFiller<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    // tokio-rustls writes its final alert with a vectored write; forwarding these keeps the
    // whole alert (and so the reason for a refusal) on the wire.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
