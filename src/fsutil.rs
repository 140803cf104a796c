//! File helpers for the plugin's own state (run table, checkpoints, dead-letters, agent id):
//! a private directory, and whole-file writes that a crash leaves old or new, never mixed.
//! It imports nothing of ours, so every layer may use it.

use std::io::{self, Write};
use std::path::Path;

/// Creates `dir` (and missing parents) private to the plugin's user, and takes group and other
/// permissions off it if it already existed: the state dir holds containers' output and the
/// run table holds their log-opts (credentials among them). `make install` creates the state
/// dir's host folder with `mkdir -p`, 0755.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
