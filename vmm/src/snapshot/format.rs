//! The state file's on-disk format, as bytes: the framing (`DUSTSNAP`, header length, JSON
//! header, state) and the JSON state. Nothing here touches KVM or the file system, so the
//! loader's parsing is unit-tested and fuzzed (`fuzz/`) on its own.

use std::path::PathBuf;

use super::{fnv1a, Header, SnapshotError, State, FORMAT_VERSION, HEADER_MAX, MAGIC, STATE_FILE};

/// The framing of a state file (`DUSTSNAP`, header length, JSON header, state bytes), checked
/// up to the state's length and checksum: the header and the state bytes. The host is not
/// checked and the state not parsed (see [`check_state`]).
pub fn parse_file(bytes: &[u8]) -> Result<(Header, &[u8]), SnapshotError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| SnapshotError::NotASnapshot(PathBuf::from(STATE_FILE)))?;
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| SnapshotError::Truncated("the header length is missing".into()))?;
    let header_len = u32::from_le_bytes(len_bytes);
    if header_len > HEADER_MAX {
        return Err(SnapshotError::Corrupted(format!(
            "header length {header_len} is implausible"
        )));
    }
    let header_end = 4 + header_len as usize;
    let header_bytes = rest
        .get(4..header_end)
        .ok_or_else(|| SnapshotError::Truncated("the header ends early".into()))?;
    let header: Header = serde_json::from_slice(header_bytes)
        .map_err(|e| SnapshotError::Corrupted(format!("header: {e}")))?;
    if header.format_version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            found: header.format_version,
            dust: header.dust_version,
        });
    }
    let state_bytes = &rest[header_end..];
    if (state_bytes.len() as u64) < header.state_len {
        return Err(SnapshotError::Truncated(format!(
            "the state has {} of {} bytes",
            state_bytes.len(),
            header.state_len
        )));
    }
    if state_bytes.len() as u64 != header.state_len || fnv1a(state_bytes) != header.state_checksum {
        return Err(SnapshotError::Corrupted(
            "the state does not match its checksum".into(),
        ));
    }
    Ok((header, state_bytes))
}

/// The state after the header, parsed, and agreeing with the header's memory size.
pub(crate) fn parse_state(bytes: &[u8], header: &Header) -> Result<State, SnapshotError> {
    let state: State = serde_json::from_slice(bytes)
        .map_err(|e| SnapshotError::Corrupted(format!("state: {e}")))?;
    if state.config.memory_mib != header.memory_mib {
        return Err(SnapshotError::Corrupted(
            "header and state disagree on the memory size".into(),
        ));
    }
    Ok(state)
}

/// Whether `bytes` (the state after a header) is a state this dust could restore with
/// `header`: what a restore parses before it touches KVM. For tools and the fuzz targets.
pub fn check_state(bytes: &[u8], header: &Header) -> Result<(), SnapshotError> {
    parse_state(bytes, header).map(drop)
}

#[cfg(test)]
mod tests;
