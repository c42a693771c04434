//! Links every guest binary as a static, freestanding image with the runtime's linker
//! script (see dust-guest/link.ld.in). Any guest package needs this build script.

fn main() -> Result<(), std::env::VarError> {
    let script = std::env::var("DEP_DUST_GUEST_LINK_SCRIPT")?;
    // x86_64-unknown-none links with rust-lld directly (no C compiler driver): plain
    // linker flags, no `-Wl,`.
    for arg in ["-static", "--gc-sections", "--build-id=none"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-T{script}");
    Ok(())
}
