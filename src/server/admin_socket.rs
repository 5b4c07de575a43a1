//! The admin channel's Unix socket, `<root>/admin.sock` (see `api::admin` for what it serves):
//! bound owner-only before the server takes requests, removed when serving ends. Binding a
//! listener and its file belongs with the server's other listeners, not with the handlers.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::api::admin::{Admin, SOCKET_FILE};

/// The bound admin socket, not yet serving.
pub struct Socket {
    listener: tokio::net::UnixListener,
    remove: RemoveOnDrop,
}

/// Bind `<root>/admin.sock`, owner-only, before the server starts taking requests.
pub fn bind(root: &Path) -> std::io::Result<Socket> {
    let path = root.join(SOCKET_FILE);
    // Only the process holding the store's lock gets here, so a socket file present is a
    // leftover of a server that died.
    let _ = std::fs::remove_file(&path);
    // Bound under a temporary name and renamed once it is owner-only, so nobody can connect
    // while it still has the umask's mode.
    let staging = root.join(format!("{SOCKET_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = tokio::net::UnixListener::bind(&staging)
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding the admin socket {}: {e}", staging.display())))?;
    let staged = RemoveOnDrop(staging);
    std::fs::set_permissions(&staged.0, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::rename(&staged.0, &path)?;
    std::mem::forget(staged);
    Ok(Socket {
        listener,
        remove: RemoveOnDrop(path),
    })
}

impl Socket {
    /// Serve `admin` until `stop`; the socket file is removed when serving ends.
    pub async fn serve(self, admin: Admin, stop: CancellationToken) -> std::io::Result<()> {
        axum::serve(self.listener, crate::api::admin::router(admin))
            .with_graceful_shutdown(stop.cancelled_owned())
            .await?;
        drop(self.remove);
        Ok(())
    }
}

/// Removes the socket file when the server stops (a crash leaves it; the next start replaces it).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
