//! systemd readiness (`Type=notify`): a datagram `READY=1` to `$NOTIFY_SOCKET`, sent once
//! the daemon's listeners are bound. Without the variable (not started by systemd) it does
//! nothing.

use std::os::unix::net::UnixDatagram;

/// Tells systemd the service is ready. Errors are returned for logging; a daemon keeps
/// running either way.
pub fn notify_ready() -> std::io::Result<bool> {
    notify("READY=1")
}

/// [`notify_ready`], logging the outcome (daemons call this once their listeners are
/// bound).
pub fn notify_ready_logged() {
    match notify_ready() {
        Ok(true) => tracing::info!("readiness sent to systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot notify systemd of readiness"),
    }
}

/// Tells systemd the service is stopping.
pub fn notify_stopping() -> std::io::Result<bool> {
    notify("STOPPING=1")
}

/// Sends `state` to `$NOTIFY_SOCKET`; `Ok(false)` when the variable is unset.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    notify_to(std::path::Path::new(&path), state).map(|()| true)
}

/// Sends `state` to the notification socket at `path`.
pub fn notify_to(path: &std::path::Path, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.first() == Some(&b'@') {
        // An abstract socket address: not reachable through a filesystem path.
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "abstract NOTIFY_SOCKET addresses are not supported; use a path",
        ));
    }
    sock.send_to(state.as_bytes(), path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_ready_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("sdnotify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        super::notify_to(&path, "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
