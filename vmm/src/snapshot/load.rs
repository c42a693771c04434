//! Reading a snapshot directory back: the state file parsed and checked against this host
//! (the framing itself is in `format.rs`), the memory file opened and its size checked.

use std::fs::File;
use std::path::Path;

use super::format::{parse_file, parse_state};
use super::host::{cpuid_fingerprint, host_description};
use super::{fnv1a, io_err, Header, SnapshotError, State, MEMORY_FILE, STATE_FILE};

/// A snapshot read and checked: its header, state, and open memory file.
pub(crate) struct Loaded {
    pub header: Header,
    pub state: State,
    pub memory: File,
}

/// Read the header of the snapshot in `dir` and check it (what `dust run --restore` and
/// the summoner do before anything is built).
pub fn inspect(dir: &Path) -> Result<Header, SnapshotError> {
    load(dir).map(|l| l.header)
}

/// Read and check the snapshot in `dir`.
pub(crate) fn load(dir: &Path) -> Result<Loaded, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::Missing(dir.to_path_buf()))
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let (header, state_bytes) = parse_file(&bytes).map_err(|e| match e {
        SnapshotError::NotASnapshot(_) => SnapshotError::NotASnapshot(path.clone()),
        e => e,
    })?;
    let host = host_description();
    if header.host_fingerprint != fnv1a(host.as_bytes())
        || header.cpuid_fingerprint != cpuid_fingerprint()?
    {
        return Err(SnapshotError::Host {
            theirs: header.host.clone(),
            ours: host,
        });
    }
    let state = parse_state(state_bytes, &header)?;
    let mem_path = dir.join(MEMORY_FILE);
    let memory = File::open(&mem_path).map_err(io_err(&mem_path))?;
    let file_bytes = memory.metadata().map_err(io_err(&mem_path))?.len();
    if file_bytes != u64::from(header.memory_mib) << 20 {
        return Err(SnapshotError::MemorySize {
            file_bytes,
            memory_mib: header.memory_mib,
        });
    }
    Ok(Loaded {
        header,
        state,
        memory,
    })
}
