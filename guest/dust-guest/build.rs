//! Writes the guest linker script (`link.ld.in` with the load address from `dust-abi`)
//! and publishes its path to the guest binaries' build scripts as
//! `DEP_DUST_GUEST_LINK_SCRIPT` (thanks to `links = "dust_guest"`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=link.ld.in");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("link.ld");
    let script = include_str!("link.ld.in").replace(
        "@UNIKERNEL_BASE@",
        &format!("{:#x}", dust_abi::layout::UNIKERNEL_BASE),
    );
    std::fs::write(&out, script)?;
    println!("cargo:link_script={}", out.display());
    Ok(())
}
