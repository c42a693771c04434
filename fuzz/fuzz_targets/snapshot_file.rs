//! The snapshot loader's parsing of a state file (`DIR/snapshot`): framing, JSON header,
//! checksum, then the JSON state, as a restore reads them before it touches KVM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::snapshot::{check_state, fnv1a, parse_file, Header, FORMAT_VERSION};

fuzz_target!(|data: &[u8]| {
    if let Ok((header, state)) = parse_file(data) {
        let _ = check_state(state, &header);
    }
    // The state parser on its own too: the checksum keeps most mutations from reaching it.
    let header = Header {
        format_version: FORMAT_VERSION,
        dust_version: String::new(),
        cpuid_fingerprint: 0,
        host_fingerprint: 0,
        host: String::new(),
        memory_mib: 16,
        state_len: data.len() as u64,
        state_checksum: fnv1a(data),
        generation: 0,
    };
    let _ = check_state(data, &header);
});
