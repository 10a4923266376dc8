//! `process_*` metrics (CPU, memory, file descriptors, start time), read at
//! scrape time, and `proxy_build_info` (linkerd2-proxy's labels), so that
//! dashboards and `weft check` can tell which build every proxy runs.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// linkerd2-proxy's `proxy_build_info` labels. `WEFT_GIT_SHA` and
/// `WEFT_BUILD_DATE` are read at compile time when a release build sets
/// them; otherwise they are empty.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildInfo {
    date: &'static str,
    git_sha: &'static str,
    profile: &'static str,
    vendor: &'static str,
    version: &'static str,
}

const BUILD_INFO: BuildInfo = BuildInfo {
    date: match option_env!("WEFT_BUILD_DATE") {
        Some(d) => d,
        None => "",
    },
    git_sha: match option_env!("WEFT_GIT_SHA") {
        Some(s) => s,
        None => "",
    },
    profile: if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    },
    vendor: "weft",
    version: env!("CARGO_PKG_VERSION"),
};

/// `process_*` metrics read from /proc at scrape time.
#[derive(Debug)]
pub(super) struct ProcessCollector {
    start_time: f64,
    clock_ticks: f64,
    page_size: f64,
}

impl ProcessCollector {
    pub(super) fn new() -> Self {
        let start_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        ProcessCollector {
            start_time,
            clock_ticks: ticks.max(1) as f64,
            page_size: page.max(1) as f64,
        }
    }
}

/// Fields of /proc/self/stat after the command name: utime, stime, vsize, rss.
fn proc_stat() -> Option<(f64, f64, f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15, vsize 23, rss 24.
    let get = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    Some((get(14)?, get(15)?, get(23)?, get(24)?))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let info = ConstGauge::new(1i64);
        let mut family = encoder.encode_descriptor(
            "proxy_build_info",
            "Proxy build info",
            None,
            info.metric_type(),
        )?;
        info.encode(family.encode_family(&BUILD_INFO)?)?;
        let mut gauge = |name: &str, help: &str, value: f64| -> fmt::Result {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            self.start_time,
        )?;
        if let Some((_, _, vsize, rss)) = proc_stat() {
            gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                vsize,
            )?;
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss * self.page_size,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                "process_open_fds",
                "Number of open file descriptors",
                fds.count() as f64,
            )?;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors",
                limit.rlim_cur as f64,
            )?;
        }
        if let Some((utime, stime, _, _)) = proc_stat() {
            let c = ConstCounter::new((utime + stime) / self.clock_ticks);
            let desc = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(desc)?;
        }
        Ok(())
    }
}
