//! What creating a service does, step by step, while a person waits (`dust serve`,
//! `dust services add`): compiling a wasm module (translate, compile N KB of C, link) and
//! booting, warming up and saving a snapshot template. Each step is told to a [`Progress`]
//! as it begins and ends, logged (info, with the service and its duration), and kept: the
//! control API's answer to a creation lists them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One finished step of a service's creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Which: `compile` (a wasm module into its guest image) or `template` (boot, warm-up
    /// and snapshot).
    pub step: String,
    /// What it did, for people: `translate 0.02 s, compile 2.10 s (340 KB of C), link 0.05
    /// s`, `the cached image`, ...
    pub detail: String,
    /// How long it took, seconds.
    pub seconds: f64,
}

/// Told about a service's creation as it goes. Calls come from the task creating it.
pub trait Progress: Send + Sync {
    /// `service` begins a step: `what` says it for people ("compiling hello.wasm").
    fn begin(&self, service: &str, what: &str);
    /// `service` finished `step`.
    fn end(&self, service: &str, step: &Step);
}

/// Tells nobody (the log and the kept steps still have them).
pub struct Quiet;

impl Progress for Quiet {
    fn begin(&self, _: &str, _: &str) {}
    fn end(&self, _: &str, _: &Step) {}
}

/// A step that took `took`.
pub(crate) fn step(step: &str, detail: String, took: Duration) -> Step {
    Step {
        step: step.into(),
        detail,
        seconds: took.as_secs_f64(),
    }
}

/// Tell `progress` and the log that `service` finished `s`; keep it in `steps`.
pub(crate) fn finished(progress: &dyn Progress, service: &str, s: Step, steps: &mut Vec<Step>) {
    tracing::info!(
        service,
        step = %s.step,
        seconds = format_args!("{:.3}", s.seconds),
        "creating the service: {} done ({})",
        s.step,
        s.detail
    );
    progress.end(service, &s);
    steps.push(s);
}

/// What compiling a module did: its phases with the size of the C, or the cache hit.
pub(crate) fn compiled(image: &crate::wasm::aot::CompiledImage) -> String {
    if image.cached {
        return "reused the cached image (same module, dust version and flags)".into();
    }
    image
        .phases
        .iter()
        .map(|(p, d)| match *p {
            "compile" => format!(
                "compile {:.2} s ({} KB of C)",
                d.as_secs_f64(),
                image.c_bytes.div_ceil(1024)
            ),
            p => format!("{p} {:.2} s", d.as_secs_f64()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What taking a template did (`info.total_us` is 0 when the cache had it).
pub(crate) fn template(info: &vmm::snapshot::SnapshotInfo) -> String {
    if info.total_us == 0 {
        return "reused the cached snapshot".into();
    }
    format!(
        "booted and warmed up to ready (guest {:.2} s), snapshot of {} KB",
        info.guest_us as f64 / 1e6,
        info.memory_bytes.div_ceil(1024)
    )
}
