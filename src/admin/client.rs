//! Client side of the admin protocol (blocking; used by `strongroomctl`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{PROTOCOL_VERSION, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {path}: {source} (is strongroomd running, and may you use its admin socket?)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("admin socket I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed reply from the daemon: {0}")]
    Protocol(String),
}

/// Sends one command and returns the daemon's response.
pub fn call(
    socket: &Path,
    cmd: &str,
    args: serde_json::Value,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let req = Request {
        v: PROTOCOL_VERSION,
        cmd: cmd.to_owned(),
        args,
    };
    let mut line = serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    // The daemon may refuse the peer and close before reading the request; its
    // refusal is still waiting to be read, so a failed write is not final.
    let written = (&stream).write_all(&line);
    let mut reader = BufReader::new(&stream);
    let mut reply = String::new();
    let read = reader.read_line(&mut reply);
    if reply.is_empty() {
        written?;
        read?;
        return Err(ClientError::Protocol(
            "connection closed without a reply (access denied?)".to_owned(),
        ));
    }
    serde_json::from_str(&reply).map_err(|e| ClientError::Protocol(e.to_string()))
}
