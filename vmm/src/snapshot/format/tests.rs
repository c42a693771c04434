//! The state file's framing, byte by byte: what the loader accepts and what each damage is
//! reported as.

use super::*;

fn header(state: &[u8]) -> Header {
    Header {
        format_version: FORMAT_VERSION,
        dust_version: "0.1.0".into(),
        cpuid_fingerprint: 1,
        host_fingerprint: 2,
        host: "test host".into(),
        memory_mib: 16,
        state_len: state.len() as u64,
        state_checksum: fnv1a(state),
        generation: 3,
    }
}

fn file(header: &Header, state: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(state);
    out
}

#[test]
fn a_whole_file_gives_its_header_and_state() {
    let state = br#"{"any":"bytes"}"#;
    let bytes = file(&header(state), state);
    let (h, s) = parse_file(&bytes).unwrap();
    assert_eq!(s, state);
    assert_eq!(h.memory_mib, 16);
    assert_eq!(h.generation, 3);
}

#[test]
fn a_file_without_the_magic_is_not_a_snapshot() {
    for bytes in [&b""[..], b"DUSTSNA", b"ELF\x7f\0\0\0\0\0\0\0\0"] {
        assert!(matches!(
            parse_file(bytes),
            Err(SnapshotError::NotASnapshot(_))
        ));
    }
}

#[test]
fn truncation_is_reported_where_it_happens() {
    let state = b"0123456789";
    let whole = file(&header(state), state);
    let no_len = &whole[..MAGIC.len() + 2];
    assert!(matches!(parse_file(no_len), Err(SnapshotError::Truncated(m)) if m.contains("length")));
    let half_header = &whole[..MAGIC.len() + 10];
    assert!(
        matches!(parse_file(half_header), Err(SnapshotError::Truncated(m)) if m.contains("header"))
    );
    let short_state = &whole[..whole.len() - 1];
    assert!(
        matches!(parse_file(short_state), Err(SnapshotError::Truncated(m)) if m.contains("9 of 10"))
    );
}

#[test]
fn an_implausible_header_length_is_corruption() {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&(HEADER_MAX + 1).to_le_bytes());
    assert!(matches!(
        parse_file(&bytes),
        Err(SnapshotError::Corrupted(_))
    ));
    // u32::MAX must not overflow the offset arithmetic.
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        parse_file(&bytes),
        Err(SnapshotError::Corrupted(_))
    ));
}

#[test]
fn a_damaged_state_fails_its_checksum() {
    let state = b"0123456789".to_vec();
    let mut bytes = file(&header(&state), &state);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(
        matches!(parse_file(&bytes), Err(SnapshotError::Corrupted(m)) if m.contains("checksum"))
    );
    // Trailing bytes are damage too.
    let mut bytes = file(&header(&state), &state);
    bytes.push(b'x');
    assert!(matches!(
        parse_file(&bytes),
        Err(SnapshotError::Corrupted(_))
    ));
}

#[test]
fn another_format_version_is_refused_with_its_writer() {
    let state = b"{}";
    let mut h = header(state);
    h.format_version = FORMAT_VERSION + 1;
    h.dust_version = "9.9.9".into();
    let bytes = file(&h, state);
    assert!(matches!(
        parse_file(&bytes),
        Err(SnapshotError::Version { found, dust }) if found == FORMAT_VERSION + 1 && dust == "9.9.9"
    ));
}

#[test]
fn a_header_that_is_not_json_is_corruption() {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&4u32.to_le_bytes());
    bytes.extend_from_slice(b"{]}x");
    assert!(
        matches!(parse_file(&bytes), Err(SnapshotError::Corrupted(m)) if m.starts_with("header"))
    );
}

#[test]
fn a_state_that_is_not_a_vm_state_is_corruption() {
    let h = header(b"");
    for state in [&b""[..], b"{}", b"[1,2]", b"{\"config\":{}}"] {
        assert!(
            matches!(check_state(state, &h), Err(SnapshotError::Corrupted(m)) if m.starts_with("state")),
            "{state:?}"
        );
    }
}
