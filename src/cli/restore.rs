//! `dust serve` start-up: open the state directory and bring back the services the
//! control API had created, next to the config file's (docs/deploy.md).

use std::path::Path;
use std::sync::Arc;

use summoner::state::State;
use summoner::{ServiceConfig, Summoner};

/// Open the state directory; a state file that cannot be read, or a service defined both
/// in it and in the config file, is an error naming both places.
pub fn open(
    dir: &Path,
    config_file: Option<&Path>,
    file_services: &[ServiceConfig],
) -> Result<Arc<State>, String> {
    if !dir.is_absolute() {
        return Err(format!("state_dir {}: use an absolute path", dir.display()));
    }
    let state = State::open(dir).map_err(|e| e.to_string())?;
    let from = match config_file {
        Some(p) => p.display().to_string(),
        None => "the command line".to_string(),
    };
    for r in state.services.records() {
        let name = &r.current.name;
        if file_services.iter().any(|s| &s.name == name) {
            return Err(format!(
                "service {name:?} is defined both in {from} and in the state file {} (created \
                 through the control API); remove it from one of them (`dust services remove \
                 {name}` against a daemon started without it, or delete its [[service]] table)",
                state.services.path().display()
            ));
        }
    }
    Ok(Arc::new(state))
}

/// Start every service the state file holds, side by side (each snapshot service boots
/// its template VM first). One that cannot start (its artifact gone or corrupt, its port
/// taken) is logged and skipped: the daemon and the other services still start, and its
/// record stays until it is replaced or removed.
pub async fn restore(summoner: &Arc<Summoner>, state: &State) {
    let mut starts = tokio::task::JoinSet::new();
    for r in state.services.records() {
        let name = r.current.name.clone();
        let run = match state.artifacts.resolve(&r.current) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("dust: service {name} (state file): not started: {e}");
                continue;
            }
        };
        eprintln!("dust: restoring {name} from the state file");
        let summoner = summoner.clone();
        starts.spawn(async move {
            let scheme = match run.mode {
                summoner::Mode::Http => "http://",
                summoner::Mode::Tcp => "tcp ",
            };
            // Side by side: plain lines, no spinner.
            let progress = super::progress::Console::lines();
            match summoner.add_with(run, &progress).await {
                Ok(addr) => eprintln!("dust: serving {name} on {scheme}{addr}"),
                Err(e) => eprintln!("dust: service {name} (state file): not started: {e}"),
            }
        });
    }
    while starts.join_next().await.is_some() {}
}
