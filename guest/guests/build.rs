//! Links every guest binary as a static, freestanding image with the runtime's linker
//! script (see dust-guest/link.ld.in). Any guest package needs this build script.

fn main() -> Result<(), std::env::VarError> {
    let script = std::env::var("DEP_DUST_GUEST_LINK_SCRIPT")?;
    for arg in [
        "-nostdlib",
        "-static",
        "-Wl,--gc-sections",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-T{script}");
    Ok(())
}
