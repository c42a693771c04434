//! What a person sees while a service is created (`dust serve`, `dust services add`): on a
//! terminal a spinner with the step and its elapsed time, then one line per finished step
//! with its duration; elsewhere (a pipe, journald) only the plain lines.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use summoner::progress::{Progress, Step};

/// A spinner on stderr showing `msg` and the time since it started, if stderr is a
/// terminal; `finish_and_clear` it when done.
pub fn spinner(msg: String) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(msg);
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

/// The line of a finished step: `dust: web: compile 2.31 s (translate 0.02 s, ...)`.
pub fn line(service: &str, s: &Step) -> String {
    format!(
        "dust: {service}: {} {:.2} s ({})",
        s.step, s.seconds, s.detail
    )
}

/// Creation progress on stderr.
pub struct Console {
    /// Spinners allowed (stderr is a terminal and one service is created at a time).
    spin: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Console {
    /// A spinner per step on a terminal, plain lines elsewhere.
    pub fn new() -> Self {
        Self {
            spin: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    /// Plain lines only (services created side by side).
    pub fn lines() -> Self {
        Self {
            spin: false,
            bar: Mutex::new(None),
        }
    }

    fn bar(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Console {
    fn begin(&self, service: &str, what: &str) {
        let msg = format!("dust: {service}: {what}");
        match self.spin.then(|| spinner(msg.clone())).flatten() {
            Some(b) => *self.bar() = Some(b),
            None => eprintln!("{msg}..."),
        }
    }

    fn end(&self, service: &str, step: &Step) {
        if let Some(b) = self.bar().take() {
            b.finish_and_clear();
        }
        eprintln!("{}", line(service, step));
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // A step that failed leaves no spinner behind.
        if let Some(b) = self.bar().take() {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_step_is_one_line_with_its_duration() {
        let s = Step {
            step: "compile".into(),
            detail: "translate 0.02 s, compile 2.10 s (340 KB of C), link 0.05 s".into(),
            seconds: 2.174,
        };
        assert_eq!(
            line("web", &s),
            "dust: web: compile 2.17 s (translate 0.02 s, compile 2.10 s (340 KB of C), link 0.05 s)"
        );
    }
}
