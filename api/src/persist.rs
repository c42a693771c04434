//! The API's side of the state directory ([`summoner::state`]): artifact references
//! resolved before a config is checked, every change written before the API answers, and
//! texts for clients that name no host path they did not give themselves.

use std::path::Path;

use summoner::config::{ServiceConfigError, Workload};
use summoner::state::{artifacts, ArtifactError, Artifacts, Record, State};
use summoner::ServiceConfig;

use crate::control::{Control, ServiceStatus};
use crate::error::{ErrorCode, HttpError};
use crate::models;

/// The longest client-given path echoed in an error (a `data:` URL is not a path).
const ECHO_MAX: usize = 80;

fn no_state() -> HttpError {
    HttpError::new(
        ErrorCode::NoState,
        "this daemon keeps no state directory, so it has no artifacts and no rollback",
    )
}

pub(crate) fn state<C: Control>(c: &C) -> Result<&State, HttpError> {
    c.state().map(|s| &**s).ok_or_else(no_state)
}

/// An artifact error in a client's terms.
pub(crate) fn artifact_error(e: ArtifactError) -> HttpError {
    let code = match &e {
        ArtifactError::Io(io) => {
            tracing::error!("artifact store: {io}");
            return HttpError::new(
                ErrorCode::Internal,
                "the artifact store failed; see the daemon's log",
            );
        }
        ArtifactError::NotFound(_) => ErrorCode::ArtifactNotFound,
        ArtifactError::Invalid { .. } => ErrorCode::InvalidArtifact,
        ArtifactError::BadDigest(_) | ArtifactError::Corrupt(_) => ErrorCode::InvalidConfig,
    };
    HttpError::new(code, e.to_string())
}

/// `config` with its `sha256:<hex>` references replaced by the stored, verified files:
/// what the summoner checks and runs.
pub(crate) fn resolve<C: Control>(
    c: &C,
    config: &ServiceConfig,
) -> Result<ServiceConfig, HttpError> {
    if Artifacts::references(config).is_empty() {
        return Ok(config.clone());
    }
    state(c)?.artifacts.resolve(config).map_err(|e| match e {
        ArtifactError::NotFound(_) => HttpError::new(
            ErrorCode::InvalidConfig,
            format!("service {}: {e}", config.name),
        ),
        e => artifact_error(e),
    })
}

/// `path` as it may be echoed to a client: at most [`ECHO_MAX`] characters.
fn echo(path: &Path) -> String {
    let s = path.to_string_lossy();
    if s.chars().count() <= ECHO_MAX {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(ECHO_MAX).collect();
    format!("{head:?}... ({} bytes)", s.len())
}

/// The text of `text` with the files `run` resolved to shown as the references `declared`
/// gave (the daemon's state directory is no client's business).
pub(crate) fn scrub(text: &str, declared: &ServiceConfig, run: &ServiceConfig) -> String {
    let ran = artifacts::file(&run.workload);
    let given = artifacts::file(&declared.workload);
    if ran == given || ran.as_os_str().is_empty() {
        return text.to_string();
    }
    text.replace(&ran.display().to_string(), &given.display().to_string())
}

/// 422 for a config that does not hold up. For a file given by its host path the client
/// learns only that it cannot be used, never whether it exists (the daemon's log says
/// why); for an uploaded artifact, why.
pub(crate) fn invalid_config(
    e: &ServiceConfigError,
    declared: &ServiceConfig,
    run: &ServiceConfig,
) -> HttpError {
    tracing::warn!(service = %declared.name, "config refused (control API): {e}");
    let given = artifacts::file(&declared.workload);
    let by_path = !given.as_os_str().is_empty() && !is_ref(given);
    let message = match (e, &declared.workload) {
        (ServiceConfigError::Image { name, .. }, Workload::Image(_)) if by_path => format!(
            "service {name}: image {}: cannot be used as a guest image (missing, unreadable \
             or not bootable; the daemon's log says which). Upload it with POST \
             /v1/artifacts to learn why",
            echo(given)
        ),
        (ServiceConfigError::Wasm { name, .. }, Workload::Wasm(_)) if by_path => format!(
            "service {name}: wasm module {}: cannot be used (missing, unreadable or not a \
             valid module; the daemon's log says which). Upload it with POST \
             /v1/artifacts to learn why",
            echo(given)
        ),
        (e, _) => scrub(&e.to_string(), declared, run),
    };
    HttpError::new(ErrorCode::InvalidConfig, message)
}

fn is_ref(p: &Path) -> bool {
    p.to_string_lossy()
        .starts_with(summoner::state::artifacts::SCHEME)
}

fn write_failed(e: summoner::state::StateError) -> HttpError {
    tracing::error!("the change is made but not saved: {e}");
    HttpError::new(
        ErrorCode::StateWrite,
        "the change is made but could not be saved to the state directory, so it will not \
         survive a restart; see the daemon's log",
    )
}

/// Make `current` (and what it replaced) durable before the API answers.
pub(crate) fn save<C: Control>(
    c: &C,
    current: ServiceConfig,
    previous: Option<ServiceConfig>,
) -> Result<(), HttpError> {
    let Some(s) = c.state() else { return Ok(()) };
    s.services
        .put(Record { current, previous })
        .map_err(write_failed)
}

/// Forget a removed service durably.
pub(crate) fn forget<C: Control>(c: &C, name: &str) -> Result<(), HttpError> {
    let Some(s) = c.state() else { return Ok(()) };
    s.services.remove(name).map(drop).map_err(write_failed)
}

/// How the running service `running` was defined: its state record, else its config with
/// artifact files shown as references.
pub(crate) fn defined<C: Control>(c: &C, running: &ServiceConfig) -> ServiceConfig {
    match c.state() {
        Some(s) => match s.services.get(&running.name) {
            Some(r) => r.current,
            None => s.artifacts.unresolve(running),
        },
        None => running.clone(),
    }
}

/// The current and the previous definition of `name` (409 if there is no previous one).
pub(crate) fn previous<C: Control>(
    c: &C,
    name: &str,
) -> Result<(ServiceConfig, ServiceConfig), HttpError> {
    let record = state(c)?.services.get(name);
    match record {
        Some(Record {
            current,
            previous: Some(previous),
        }) => Ok((current, previous)),
        _ => Err(HttpError::new(
            ErrorCode::NoPrevious,
            format!(
                "service {name:?} has no previous definition: only a replacement through the \
                 control API keeps one"
            ),
        )),
    }
}

/// A service as clients see it: artifact files shown as their references.
pub(crate) fn shown<C: Control>(c: &C, mut s: ServiceStatus) -> models::Service {
    // Of the resolved config: the module's own file, its compiled image.
    let engine = s.config.wasm_workload().map(|w| w.running_engine());
    if let Some(state) = c.state() {
        s.config = state.artifacts.unresolve(&s.config);
    }
    models::Service {
        engine_running: engine,
        ..s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_error(path: &str) -> ServiceConfigError {
        ServiceConfigError::Image {
            name: "a".into(),
            path: path.into(),
            why: "No such file or directory (os error 2)".into(),
        }
    }

    #[test]
    fn a_host_path_is_echoed_without_why_and_an_artifact_with_it() {
        let listen = "127.0.0.1:0".parse().unwrap();
        let by_path = ServiceConfig::new("a", listen, "/etc/shadow");
        let e = invalid_config(&image_error("/etc/shadow"), &by_path, &by_path);
        assert_eq!(e.code(), ErrorCode::InvalidConfig);
        assert!(e.message.contains("\"/etc/shadow\""), "{}", e.message);
        assert!(!e.message.contains("No such file"), "{}", e.message);

        let digest = format!("sha256:{}", "0".repeat(64));
        let declared = ServiceConfig::new("a", listen, digest.as_str());
        let run = ServiceConfig::new("a", listen, "/var/lib/dust/artifacts/sha256-00");
        let e = invalid_config(
            &image_error("/var/lib/dust/artifacts/sha256-00"),
            &declared,
            &run,
        );
        assert!(e.message.contains(&digest), "{}", e.message);
        assert!(e.message.contains("No such file"), "{}", e.message);
        assert!(!e.message.contains("/var/lib/dust"), "{}", e.message);
    }

    #[test]
    fn long_paths_are_cut() {
        let url = format!("data:application/wasm;base64,{}", "A".repeat(50_000));
        let c = ServiceConfig::new("a", "127.0.0.1:0".parse().unwrap(), url.as_str());
        let e = invalid_config(&image_error(&url), &c, &c);
        assert!(e.message.len() < 500, "{} bytes", e.message.len());
        assert!(e.message.contains("(50029 bytes)"), "{}", e.message);
    }
}
