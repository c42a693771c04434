//! `process_*` metrics of the daemon itself, read from /proc/self on each scrape, named and
//! defined as the Prometheus client libraries do, so the usual dashboards and alerts (CPU,
//! memory, fd exhaustion, restarts) work on dust unchanged.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Registered on the root registry (no `dust_` prefix): the names are the conventional ones.
#[derive(Debug, Default)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A file that cannot be read or parsed leaves its metrics out of this scrape rather
        // than failing the whole exposition: the dust_* metrics matter more.
        if let Some(s) = Stat::read() {
            counter(
                &mut encoder,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                s.cpu_seconds,
            )?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                s.resident_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                s.virtual_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                s.start_time_seconds,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process.",
                s.threads,
            )?;
        }
        if let Some(n) = open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                n,
            )?;
        }
        if let Some(n) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| max_fds(&l))
        {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                n,
            )?;
        }
        Ok(())
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// What /proc/self/stat (and /proc/stat for the boot time) tell.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stat {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
}

impl Stat {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Self::parse(&stat, boot, ticks.try_into().ok()?, page.try_into().ok()?)
    }

    /// Parse /proc/self/stat: times are in clock ticks (`ticks` a second), the start time
    /// counts from boot (`boot`, seconds since the epoch), the resident set is in pages.
    pub(super) fn parse(stat: &str, boot: u64, ticks: u64, page: u64) -> Option<Self> {
        if ticks == 0 {
            return None;
        }
        // Field 2, the command name, is in parentheses and may itself hold spaces or
        // parentheses: the fields that follow start after the last ')'.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // proc(5) numbers the fields from 1; fields[0] here is field 3 (state).
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        let ticks = ticks as f64;
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_time_seconds: boot as f64 + field(22)? as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)?.checked_mul(page)?,
        })
    }
}

/// The `btime` line of /proc/stat: boot time, seconds since the epoch.
pub(super) fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open files from /proc/self/limits (what `open` runs into); none when
/// it is "unlimited" or the line is missing.
pub(super) fn max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn open_fds() -> Option<u64> {
    // The directory handle read_dir holds is one of the entries; client libraries count it
    // too, so the numbers compare.
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    u64::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_command_name_with_spaces_and_parens() {
        // Fields 3..=24 of proc(5), with utime 250, stime 150, 7 threads, started 1000
        // ticks after boot, 123456 bytes of virtual memory and 30 resident pages.
        let stat = "4242 (dust (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 7 0 1000 123456 30 18446744073709551615 rest";
        let s = Stat::parse(stat, 1_700_000_000, 100, 4096).unwrap();
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 4.0,
                resident_bytes: 30 * 4096,
                virtual_bytes: 123_456,
                start_time_seconds: 1_700_000_010.0,
                threads: 7,
            }
        );
    }

    #[test]
    fn a_truncated_stat_line_is_none_not_garbage() {
        assert_eq!(Stat::parse("4242 (dust) S 1 2 3", 0, 100, 4096), None);
        assert_eq!(Stat::parse("no parens at all", 0, 100, 4096), None);
    }

    #[test]
    fn this_process_reads_plausibly() {
        let s = Stat::read().expect("/proc/self/stat readable on Linux");
        assert!(s.threads >= 1, "{s:?}");
        assert!(
            s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes,
            "{s:?}"
        );
        assert!(s.start_time_seconds > 1e9, "{s:?}");
        assert!(open_fds().unwrap() >= 3);
    }

    #[test]
    fn boot_time_and_fd_limit_parse() {
        assert_eq!(
            boot_time("cpu  1 2 3\nintr 5\nbtime 1712345678\nprocesses 9\n"),
            Some(1_712_345_678)
        );
        assert_eq!(boot_time("cpu 1\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63455                63455                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_fds(limits), Some(1024));
        assert_eq!(
            max_fds("Max open files            unlimited            unlimited            files\n"),
            None
        );
    }
}
