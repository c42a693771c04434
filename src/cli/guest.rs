//! `dust guest new DIR` and `dust guest build DIR`: writing and building a unikernel guest
//! outside the dust tree. The runtime (`guest/dust-guest`) comes from a dust source tree,
//! by default the one this binary was built from; `.dust-sdk` in the guest's directory is
//! a symlink to it, which the guest's `Cargo.toml` names as the path of `dust-guest`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::{Args, Subcommand};

/// `dust guest ...`.
#[derive(Subcommand, Debug)]
pub enum GuestCmd {
    /// Write a new guest crate in DIR (an HTTP hello on `dust_guest::http::serve`).
    New {
        /// Directory to create (must not exist, or be empty); its name becomes the crate's.
        dir: PathBuf,
        #[command(flatten)]
        sdk: Sdk,
    },
    /// Build the guest in DIR for x86_64-unknown-none (release), check its instructions, and
    /// print the image's path as the last line of stdout.
    Build {
        /// The guest crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        sdk: Sdk,
    },
}

/// Where the dust source tree is.
#[derive(Args, Debug)]
pub struct Sdk {
    /// dust source tree with the guest runtime (default: the tree this binary was built from).
    #[arg(long = "sdk", value_name = "PATH")]
    path: Option<PathBuf>,
}

/// Why a guest could not be created or built.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The SDK path has no guest runtime.
    #[error("{0} is not a dust source tree (no guest/dust-guest/Cargo.toml); pass --sdk PATH")]
    NoSdk(PathBuf),
    /// `new` into a directory with files in it.
    #[error("{0} exists and is not empty")]
    NotEmpty(PathBuf),
    /// No usable crate name in the directory's name.
    #[error("cannot make a crate name from {0}")]
    BadName(PathBuf),
    /// No guest crate in the directory.
    #[error("{0} has no Cargo.toml (create a guest with `dust guest new DIR`)")]
    NoCrate(PathBuf),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A tool could not be started.
    #[error("cannot run {tool}: {source}")]
    Spawn {
        /// The tool.
        tool: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// cargo failed (its messages are on stderr).
    #[error("cargo build failed")]
    Cargo,
    /// cargo built no executable.
    #[error("cargo built no executable in {0}")]
    NoImage(PathBuf),
    /// The image holds instructions the emulating KVM cannot run.
    #[error("{0} failed the ISA check (see above)")]
    Isa(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GuestError + '_ {
    move |source| GuestError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs `dust guest ...`.
pub fn guest(cmd: GuestCmd) -> ExitCode {
    let result = match cmd {
        GuestCmd::New { dir, sdk } => new(&dir, &sdk).map(|name| {
            eprintln!(
                "dust: created guest {name} in {}; build it with `dust guest build {}`",
                dir.display(),
                dir.display()
            );
        }),
        GuestCmd::Build { dir, sdk } => build(&dir, &sdk).map(|image| {
            println!("{}", image.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dust: {e}");
            ExitCode::from(dust_abi::status::VMM_ERROR)
        }
    }
}

impl Sdk {
    /// The dust source tree, checked and absolute.
    fn root(&self) -> Result<PathBuf, GuestError> {
        let root = match &self.path {
            Some(p) => p.clone(),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        };
        let root = std::fs::canonicalize(&root).map_err(|_| GuestError::NoSdk(root.clone()))?;
        if !root.join("guest/dust-guest/Cargo.toml").is_file() {
            return Err(GuestError::NoSdk(root));
        }
        Ok(root)
    }
}

/// A crate name from a directory name: lowercase ASCII letters, digits, `-` and `_`,
/// starting with a letter.
fn crate_name(dir: &Path) -> Option<String> {
    let base = dir.file_name()?.to_str()?;
    let name: String = base
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    name.starts_with(|c: char| c.is_ascii_lowercase())
        .then_some(name)
}

/// Points `dir/.dust-sdk` at `sdk` (replacing an older link).
fn link_sdk(dir: &Path, sdk: &Path) -> Result<(), GuestError> {
    let link = dir.join(".dust-sdk");
    if std::fs::read_link(&link).is_ok_and(|t| t == sdk) {
        return Ok(());
    }
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).map_err(io(&link))?;
    }
    std::os::unix::fs::symlink(sdk, &link).map_err(io(&link))
}

fn new(dir: &Path, sdk: &Sdk) -> Result<String, GuestError> {
    let sdk = sdk.root()?;
    let name = crate_name(dir).ok_or_else(|| GuestError::BadName(dir.to_owned()))?;
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(GuestError::NotEmpty(dir.to_owned()));
    }
    let files: [(&str, &str); 6] = [
        ("Cargo.toml", include_str!("guest_template/Cargo.toml.in")),
        (
            ".cargo/config.toml",
            include_str!("guest_template/config.toml.in"),
        ),
        ("build.rs", include_str!("guest_template/build.rs.in")),
        ("src/main.rs", include_str!("guest_template/main.rs.in")),
        ("README.md", include_str!("guest_template/README.md.in")),
        (".gitignore", include_str!("guest_template/gitignore.in")),
    ];
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text.replace("@NAME@", &name)).map_err(io(&path))?;
    }
    // Start from the versions the dust tree's guests are tested with; cargo drops the
    // entries this crate does not use and adds its own.
    let lock = sdk.join("guest/Cargo.lock");
    if lock.is_file() {
        std::fs::copy(&lock, dir.join("Cargo.lock")).map_err(io(&lock))?;
    }
    link_sdk(dir, &sdk)?;
    Ok(name)
}

fn build(dir: &Path, sdk: &Sdk) -> Result<PathBuf, GuestError> {
    let sdk = sdk.root()?;
    let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
    if !dir.join("Cargo.toml").is_file() {
        return Err(GuestError::NoCrate(dir));
    }
    link_sdk(&dir, &sdk)?;
    // cargo finds the guest's .cargo/config.toml (target, rustflags) from its working
    // directory. Flags from the environment would replace the guest's rustflags.
    let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| GuestError::Spawn {
            tool: "cargo".into(),
            source,
        })?;
    let mut images = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if msg["reason"] == "compiler-artifact" {
                if let Some(exe) = msg["executable"].as_str() {
                    images.push(PathBuf::from(exe));
                }
            }
        }
    }
    let status = child.wait().map_err(|source| GuestError::Spawn {
        tool: "cargo".into(),
        source,
    })?;
    if !status.success() {
        return Err(GuestError::Cargo);
    }
    let image = images.pop().ok_or(GuestError::NoImage(dir))?;
    let isa = sdk.join("scripts/check-guest-isa");
    let ok = Command::new(&isa)
        .arg(&image)
        .stdout(Stdio::null())
        .status()
        .map_err(|source| GuestError::Spawn {
            tool: isa.display().to_string(),
            source,
        })?;
    if !ok.success() {
        return Err(GuestError::Isa(image));
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_come_from_the_directory() {
        assert_eq!(
            crate_name(Path::new("/tmp/My Guest")),
            Some("my-guest".into())
        );
        assert_eq!(crate_name(Path::new("web_1")), Some("web_1".into()));
        assert_eq!(crate_name(Path::new("/tmp/1abc")), None);
        assert_eq!(crate_name(Path::new("/")), None);
    }
}
