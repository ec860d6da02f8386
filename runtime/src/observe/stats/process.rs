//! The standard `process_*` metrics, as Prometheus client libraries provide them: CPU time,
//! memory, descriptors and start time, read from `/proc` and `getrusage`. A value that cannot
//! be read is left out rather than guessed.

use super::metrics::{Exposition, Kind};

pub(super) fn metrics(m: &mut Exposition) {
    if let Some(cpu) = cpu_seconds() {
        m.single(
            "process_cpu_seconds_total",
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
            cpu,
        );
    }
    if let Some((virtual_bytes, resident_bytes)) = memory() {
        m.single(
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory size in bytes.",
            virtual_bytes as f64,
        );
        m.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            resident_bytes as f64,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory's own descriptor, open while it is read, is not counted.
        let open = dir.count().saturating_sub(1);
        m.single(
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors.",
            open as f64,
        );
    }
    if let Some(max) = max_fds() {
        m.single(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
    if let Some(start) = start_time_seconds() {
        m.single(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
}

fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage fills the zeroed struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0).then_some(usage)
    }?;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// Virtual and resident bytes, from `/proc/self/statm` (in pages).
fn memory() -> Option<(u64, u64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_whitespace().map(|f| f.parse::<u64>().ok());
    let (size, resident) = (fields.next()??, fields.next()??);
    let page = page_size()?;
    Some((size * page, resident * page))
}

fn page_size() -> Option<u64> {
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().filter(|p| *p > 0)
}

fn max_fds() -> Option<u64> {
    // SAFETY: getrlimit fills the struct it is given.
    let limit = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0).then_some(limit)
    }?;
    Some(limit.rlim_cur as u64)
}

/// Boot time plus the process's start in clock ticks after boot (`/proc/self/stat`, field 22).
fn start_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: fields after it are
    // counted from its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot as f64 + ticks as f64 / hz as f64)
}
