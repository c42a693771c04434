//! The run dir belongs to one daemon at a time (docs/security.md): the daemon holds an
//! exclusive `flock` on the directory itself while it lives (no lock file to leave behind). A daemon that died without
//! cleaning up (kill -9, a crash) left its lock free, so the next daemon to take it knows
//! that whatever lies in the run dir is a dead daemon's and removes it: template snapshot
//! directories (`<svc>-template-<id>.snap`), VM sockets and per-VM root directories. While
//! another daemon holds the lock, nothing is swept.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Take the run dir's lock; `None` if a live daemon holds it. Holding the returned
/// directory handle holds the lock (it is close-on-exec: workers never inherit it).
pub fn claim(run_dir: &Path) -> io::Result<Option<File>> {
    let f = File::open(run_dir)?;
    // SAFETY: flock on a file we own; no memory involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(f))
}

/// Remove what a dead daemon left in `run_dir` (call only while holding its lock): template
/// snapshots and VM sockets. Per-VM roots are the jail's ([`crate::jail::Jail::new`]).
/// Returns how many entries went.
pub fn sweep(run_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let (path, name) = (e.path(), e.file_name());
        let name = name.to_string_lossy();
        let Ok(kind) = e.file_type() else { continue };
        let gone = if kind.is_dir() && name.contains("-template-") && name.ends_with(".snap") {
            std::fs::remove_dir_all(&path).is_ok()
        } else if kind.is_socket() && name.contains(".vsock") {
            std::fs::remove_file(&path).is_ok()
        } else {
            false
        };
        removed += usize::from(gone);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_run_dir_is_not_swept_and_a_free_one_is() {
        let dir = std::env::temp_dir().join(format!("dust-rundir-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("web-template-1f-0.snap")).unwrap();
        std::fs::write(dir.join("web-template-1f-0.snap/memory"), b"x").unwrap();
        std::fs::write(dir.join("keep.toml"), b"").unwrap();
        let sock = std::os::unix::net::UnixListener::bind(dir.join("vm-1.vsock")).unwrap();
        let held = claim(&dir).unwrap();
        assert!(held.is_some());
        assert!(claim(&dir).unwrap().is_none(), "a second claim while held");
        drop(held);
        assert!(claim(&dir).unwrap().is_some());
        assert_eq!(sweep(&dir), 2);
        assert!(!dir.join("web-template-1f-0.snap").exists());
        assert!(!dir.join("vm-1.vsock").exists());
        assert!(dir.join("keep.toml").exists());
        drop(sock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
