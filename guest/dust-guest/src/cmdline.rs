//! The command line, split into the program's arguments and runtime parameters.
//!
//! The VMM's command line is a list of words separated by whitespace. A word `key=value`
//! whose key contains a `.` is a runtime parameter, in the style of Linux module parameters
//! (`virtio_mmio.device=4K@0xd0000000:5`): the runtime consumes it and the program does not
//! see it. Every other word, including `key=value` words without a dot in the key (such as
//! the `vm=<id>` the summoner appends), is a program argument, in order.

use crate::scan;

pub use crate::boot::cmdline;

/// Is `word` a runtime parameter (`key=value` with a `.` in the key)?
pub fn is_param(word: &str) -> bool {
    let w = word.as_bytes();
    scan::find(w, b'=').is_some_and(|eq| scan::find(&w[..eq], b'.').is_some())
}

/// The words of `line`, separated by spaces. (The runtime turns tabs and line breaks of
/// the boot command line into spaces, once.)
pub fn words(line: &str) -> Words<'_> {
    Words { rest: line }
}

/// Iterator of [`words`]. Byte scans instead of `split_ascii_whitespace`: this runs at
/// boot, where every instruction costs ~0.5 us.
#[derive(Clone)]
pub struct Words<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let start = scan::skip(self.rest.as_bytes(), b' ');
        let rest = &self.rest.as_bytes()[start..];
        if rest.is_empty() {
            self.rest = "";
            return None;
        }
        let len = scan::find(rest, b' ').unwrap_or(rest.len());
        // Both cut points are next to spaces (ASCII), so they are char boundaries.
        let word = &self.rest[start..start + len];
        self.rest = &self.rest[start + len..];
        Some(word)
    }
}

/// The program's arguments: the words of `line` that are not runtime parameters.
pub fn args_of(line: &str) -> impl Iterator<Item = &str> + Clone {
    words(line).filter(|w| !is_param(w))
}

/// The runtime parameters of `line` as `(key, value)` pairs.
pub fn params_of(line: &str) -> impl Iterator<Item = (&str, &str)> + Clone {
    words(line)
        .filter(|w| is_param(w))
        .filter_map(|w| w.split_once('='))
}

/// The program's arguments (see the module docs).
pub fn args() -> impl Iterator<Item = &'static str> + Clone {
    args_of(cmdline())
}

/// The runtime parameters (see the module docs), e.g. `("virtio_mmio.device", "4K@0xd0000000:5")`.
pub fn params() -> impl Iterator<Item = (&'static str, &'static str)> + Clone {
    params_of(cmdline())
}

/// The value of the first argument `key=value`: `arg_value("vm")` is `Some("web-7")` for
/// the command line `vm=web-7`.
pub fn arg_value(key: &str) -> Option<&'static str> {
    value_of(args(), key)
}

fn value_of<'a>(mut args: impl Iterator<Item = &'a str>, key: &str) -> Option<&'a str> {
    args.find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "  alpha virtio_mmio.device=4K@0xd0000000:5 beta=2 42 vm=web-7 ";

    #[test]
    fn args_skip_runtime_params() {
        let a: Vec<_> = args_of(LINE).collect();
        assert_eq!(a, ["alpha", "beta=2", "42", "vm=web-7"]);
    }

    #[test]
    fn params_are_dotted_keys() {
        let p: Vec<_> = params_of(LINE).collect();
        assert_eq!(p, [("virtio_mmio.device", "4K@0xd0000000:5")]);
        assert!(!is_param("a.b"));
        assert!(!is_param("=x.y"));
        assert!(is_param("a.b="));
    }

    #[test]
    fn arg_values_by_key() {
        assert_eq!(value_of(args_of(LINE), "vm"), Some("web-7"));
        assert_eq!(value_of(args_of(LINE), "beta"), Some("2"));
        assert_eq!(value_of(args_of(LINE), "virtio_mmio.device"), None);
        assert_eq!(value_of(args_of(LINE), "v"), None);
    }

    #[test]
    fn words_split_at_spaces() {
        let w: Vec<_> = words(" a bé   c  ").collect();
        assert_eq!(w, ["a", "bé", "c"]);
        assert_eq!(words("").count(), 0);
        assert_eq!(words("   ").count(), 0);
    }

    #[test]
    fn empty_line_has_nothing() {
        assert_eq!(args_of("").count(), 0);
        assert_eq!(params_of("   ").count(), 0);
    }
}
