//! Checking a service config: everything short of binding its port and booting. Run once
//! per change (the API's check, or [`crate::Summoner::add`]), never per request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm::SerialConfig;

use super::{ServiceConfig, ServiceConfigError, Workload, MAX_COUNT};

/// The range of every duration of a service.
pub const DURATIONS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(3600);

impl ServiceConfig {
    /// Check everything short of binding the port and booting. Reads (and for a wasm
    /// service parses) files: call it off async threads for large modules.
    pub fn validate(&self) -> Result<(), ServiceConfigError> {
        self.check_name()?;
        self.check_counts()?;
        self.check_durations()?;
        self.check_guest()?;
        self.check_workload()
    }

    fn check_name(&self) -> Result<(), ServiceConfigError> {
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        match ok_name {
            true => Ok(()),
            false => Err(ServiceConfigError::Name(self.name.clone())),
        }
    }

    fn check_counts(&self) -> Result<(), ServiceConfigError> {
        let name = self.name.clone();
        for (field, n) in [
            ("max_concurrent", self.max_concurrent),
            ("max_connections", self.max_connections),
        ] {
            if n == 0 {
                return Err(ServiceConfigError::Zero { name, field });
            }
        }
        for (field, value) in [
            ("max_concurrent", self.max_concurrent),
            ("queue_depth", self.queue_depth),
            ("pool_size", self.pool_size),
            ("max_connections", self.max_connections),
        ] {
            if value > MAX_COUNT {
                return Err(ServiceConfigError::TooLarge { name, field, value });
            }
        }
        let fuel = self.wasm_workload().and_then(|w| w.fuel);
        for (field, zero) in [
            ("memory_limit_mib", self.memory_limit_mib == Some(0)),
            ("fuel", fuel == Some(0)),
        ] {
            if zero {
                return Err(ServiceConfigError::Zero { name, field });
            }
        }
        if self.pool_size > self.max_concurrent {
            return Err(ServiceConfigError::PoolTooBig {
                name,
                pool: self.pool_size,
                max: self.max_concurrent,
            });
        }
        Ok(())
    }

    fn check_durations(&self) -> Result<(), ServiceConfigError> {
        for (field, d) in [
            ("queue_deadline", self.queue_deadline),
            ("request_deadline", self.request_deadline),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if !DURATIONS.contains(&d) {
                let name = self.name.clone();
                return Err(ServiceConfigError::DurationRange { name, field });
            }
        }
        Ok(())
    }

    /// The VM side: port, command line, serial file shape, the VM config, the image.
    fn check_guest(&self) -> Result<(), ServiceConfigError> {
        let name = self.name.clone();
        if !(1..=65535).contains(&self.guest_port) {
            let port = self.guest_port;
            return Err(ServiceConfigError::GuestPort { name, port });
        }
        if self.cmdline.chars().any(char::is_control) {
            return Err(ServiceConfigError::Cmdline { name });
        }
        if let SerialConfig::File(p) = &self.serial {
            // The shape alone; where it may go is the daemon's (`serial_path`).
            if let Err(problem) = serial_in(Path::new("/"), p, true) {
                return Err(ServiceConfigError::SerialFile {
                    name,
                    problem: problem.into(),
                    dir: "the daemon's log_dir".into(),
                });
            }
        }
        self.vm_config("check", Path::new("/"))
            .validate()
            .map_err(|source| ServiceConfigError::Vm {
                name: name.clone(),
                source,
            })?;
        self.check_image()
    }

    /// The image as the worker's loader will see it, so that an image that can never boot
    /// is refused now instead of failing every request.
    fn check_image(&self) -> Result<(), ServiceConfigError> {
        if matches!(&self.workload, Workload::Wasm(w) if w.compiles() && w.compiled.is_none()) {
            // Compiled (and the image checked) when the service is added.
            return Ok(());
        }
        let image = self.image_path();
        let why = match std::fs::metadata(&image) {
            Ok(m) if m.is_file() => vmm::check_image(&image, self.memory_mib)
                .err()
                .map(|e| e.to_string()),
            Ok(_) => Some("not a regular file".to_string()),
            Err(_) if matches!(self.workload, Workload::Wasm(_)) => Some(format!(
                "the built-in {} guest is missing (run scripts/build-guests, or set \
                 DUST_GUEST_DIR)",
                crate::wasm::GUEST
            )),
            Err(_) if image.as_os_str().is_empty() => {
                Some("no image given (give `image`, or `wasm` for a WebAssembly handler)".into())
            }
            Err(e) => Some(e.to_string()),
        };
        match why {
            None => Ok(()),
            Some(why) => Err(ServiceConfigError::Image {
                name: self.name.clone(),
                path: image.display().to_string(),
                why,
            }),
        }
    }

    fn check_workload(&self) -> Result<(), ServiceConfigError> {
        let Workload::Wasm(w) = &self.workload else {
            return Ok(());
        };
        let name = self.name.clone();
        crate::wasm::check_file(&w.module, self.memory_mib).map_err(|source| {
            ServiceConfigError::Wasm {
                name,
                path: w.module.display().to_string(),
                source,
            }
        })?;
        Ok(())
    }

    /// Where a daemon whose log directory is `log_dir` writes this service's serial output:
    /// `None` without a serial file, else the file in `log_dir` the config names, as a
    /// plain file name or as a path directly inside `log_dir`.
    pub fn serial_path(&self, log_dir: &Path) -> Result<Option<PathBuf>, ServiceConfigError> {
        let SerialConfig::File(p) = &self.serial else {
            return Ok(None);
        };
        serial_in(log_dir, p, false)
            .map(Some)
            .map_err(|problem| ServiceConfigError::SerialFile {
                name: self.name.clone(),
                problem: problem.into(),
                dir: log_dir.display().to_string(),
            })
    }
}

/// `file` resolved in `log_dir`, or what is wrong with it. Only a file directly in
/// `log_dir` passes: with no directory between, the one symlink that could lead out is the
/// file itself, which [`open_serial_file`] refuses to follow. `shape_only` skips the
/// check that an absolute path lies in `log_dir`.
pub fn serial_in(log_dir: &Path, file: &Path, shape_only: bool) -> Result<PathBuf, &'static str> {
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;
    let bytes = file.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err("is empty");
    }
    if bytes.contains(&0) {
        return Err("contains a NUL byte");
    }
    if file.components().any(|c| c == Component::ParentDir) {
        return Err("must not contain \"..\"");
    }
    let rel = match (file.is_absolute(), shape_only) {
        (true, true) => return Ok(file.to_path_buf()),
        (true, false) => file
            .strip_prefix(log_dir)
            .map_err(|_| "is outside the log directory")?,
        (false, _) => file,
    };
    let mut parts = rel.components().filter(|c| *c != Component::CurDir);
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(name)), None) => Ok(log_dir.join(name)),
        (None, _) => Err("names the log directory itself"),
        _ => Err("must be a file directly in the log directory (no subdirectories)"),
    }
}
