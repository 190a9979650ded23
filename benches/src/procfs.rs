//! What the harness reads from `/proc`: how busy the machine is (`/proc/stat`), and a
//! process's CPU time (`/proc/PID/stat`) and peak resident memory (`/proc/PID/status`).

use std::process::Command;

/// A `/proc` file that does not have the expected shape.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("/proc/stat has no aggregate `cpu ` line")]
    NoCpuLine,
    #[error("/proc/stat `cpu` line: {0}")]
    CpuLine(String),
    #[error("/proc/PID/stat: {0}")]
    PidStat(String),
    #[error("/proc/PID/status has no parsable VmHWM line")]
    NoVmHwm,
    #[error("/proc/PID/status has no parsable VmRSS line")]
    NoVmRss,
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Cumulative CPU time of all CPUs from the aggregate `cpu` line of `/proc/stat`, in
/// clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + idle + iowait + irq + softirq + steal. guest and
    /// guest_nice are left out: the kernel already counts them in user and nice.
    pub total: u64,
    /// idle + iowait: the time nothing ran.
    pub idle: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Result<CpuTimes, ProcError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or(ProcError::NoCpuLine)?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| {
            f.parse::<u64>()
                .map_err(|e| ProcError::CpuLine(format!("{f:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if fields.len() < 4 {
        return Err(ProcError::CpuLine(format!(
            "{} fields, want at least 4",
            fields.len()
        )));
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; older kernels
    // have fewer, and missing ones count as 0.
    let total = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Ok(CpuTimes { total, idle })
}

/// Percentage of CPU time that was not idle between two samples (steal counts as busy:
/// a neighbour on the hypervisor took it). `None` if no time passed.
pub fn busy_percent(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let idle = after.idle.checked_sub(before.idle)?;
    if total == 0 {
        return None;
    }
    Some(total.saturating_sub(idle) as f64 * 100.0 / total as f64)
}

/// Reads `/proc/stat` now.
pub fn read_cpu_times() -> Result<CpuTimes, ProcError> {
    parse_proc_stat(&read("/proc/stat")?)
}

/// The CPU time a process has used so far, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcCpu {
    pub utime: u64,
    pub stime: u64,
}

/// Parses `/proc/PID/stat`: `utime` and `stime` are fields 14 and 15 (1-based). The
/// command name (field 2) is in parentheses and may hold spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn parse_pid_stat(text: &str) -> Result<ProcCpu, ProcError> {
    let close = text
        .rfind(')')
        .ok_or_else(|| ProcError::PidStat("no `)` after the command name".into()))?;
    // After ")": field 3 (state) is index 0, so field N is index N - 3.
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<u64, ProcError> {
        let s = rest
            .get(n - 3)
            .ok_or_else(|| ProcError::PidStat(format!("no field {n}")))?;
        s.parse()
            .map_err(|e| ProcError::PidStat(format!("field {n} {s:?}: {e}")))
    };
    Ok(ProcCpu {
        utime: field(14)?,
        stime: field(15)?,
    })
}

/// Parses `VmHWM` (peak resident set size) from `/proc/PID/status`, in KiB.
pub fn parse_vm_hwm_kib(status: &str) -> Result<u64, ProcError> {
    status_kib(status, "VmHWM:").ok_or(ProcError::NoVmHwm)
}

/// Parses `VmRSS` (resident set size now) from `/proc/PID/status`, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Result<u64, ProcError> {
    status_kib(status, "VmRSS:").ok_or(ProcError::NoVmRss)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// A live process's resident set size now, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    parse_vm_rss_kib(&read(&format!("/proc/{pid}/status"))?)
}

/// CPU seconds (user + system) and peak RSS of a running process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessUsage {
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
}

/// Reads a live process's CPU time and peak RSS; `clk_tck` converts ticks to seconds.
pub fn process_usage(pid: u32, clk_tck: u64) -> Result<ProcessUsage, ProcError> {
    let cpu = parse_pid_stat(&read(&format!("/proc/{pid}/stat"))?)?;
    let peak_rss_kib = parse_vm_hwm_kib(&read(&format!("/proc/{pid}/status"))?)?;
    Ok(ProcessUsage {
        cpu_seconds: (cpu.utime + cpu.stime) as f64 / clk_tck.max(1) as f64,
        peak_rss_kib,
    })
}

/// Clock ticks per second (`getconf CLK_TCK`); 100, the value on every Linux
/// architecture the harness runs on, if `getconf` is missing.
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_A: &str = "cpu  71131 0 6968 58470 492 0 55 63 0 0\n\
                          cpu0 34966 0 3184 30267 119 0 10 32 0 0\n\
                          cpu1 36165 0 3783 28203 373 0 45 30 0 0\n\
                          intr 1 2 3\nctxt 12345\n";

    #[test]
    fn proc_stat_totals_leave_guest_out() {
        let t = parse_proc_stat(STAT_A).unwrap();
        assert_eq!(t.total, 71131 + 6968 + 58470 + 492 + 55 + 63);
        assert_eq!(t.idle, 58470 + 492);
        // guest time is already in user: adding it would count it twice.
        let with_guest = parse_proc_stat("cpu  100 0 0 100 0 0 0 0 50 0\n").unwrap();
        assert_eq!(with_guest.total, 200);
        // Old kernels: four fields.
        let old = parse_proc_stat("cpu 1 2 3 4\n").unwrap();
        assert_eq!((old.total, old.idle), (10, 4));
        assert!(matches!(
            parse_proc_stat("cpu0 1 2 3 4\n"),
            Err(ProcError::NoCpuLine)
        ));
        assert!(parse_proc_stat("cpu  1 x 3 4\n").is_err());
    }

    #[test]
    fn busy_between_two_samples_counts_steal() {
        let a = parse_proc_stat("cpu  1000 0 100 5000 50 0 0 0 0 0\n").unwrap();
        // 200 ticks pass: 5 user, 3 system, 2 steal, 188 idle, 2 iowait.
        let b = parse_proc_stat("cpu  1005 0 103 5188 52 0 0 2 0 0\n").unwrap();
        let busy = busy_percent(a, b).unwrap();
        assert!((busy - 5.0).abs() < 1e-9, "{busy}");
        // All steal is all busy.
        let c = parse_proc_stat("cpu  1000 0 100 5000 50 0 0 100 0 0\n").unwrap();
        assert_eq!(busy_percent(a, c), Some(100.0));
        // No time passed, or counters went backwards.
        assert_eq!(busy_percent(a, a), None);
        assert_eq!(busy_percent(b, a), None);
    }

    #[test]
    fn pid_stat_fields_counted_from_the_last_paren() {
        let line = "4242 (zt (worker) 1) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    731 269 0 0 20 0 3 0 123456 104857600 2500 18446744073709551615";
        assert_eq!(
            parse_pid_stat(line).unwrap(),
            ProcCpu {
                utime: 731,
                stime: 269
            }
        );
        assert!(parse_pid_stat("4242 (short) S 1 2").is_err());
        assert!(parse_pid_stat("no paren at all").is_err());
    }

    #[test]
    fn vm_hwm() {
        let status =
            "Name:\tztunnel\nVmPeak:\t  900000 kB\nVmHWM:\t   36412 kB\nVmRSS:\t   30000 kB\n";
        assert_eq!(parse_vm_hwm_kib(status).unwrap(), 36412);
        assert_eq!(parse_vm_rss_kib(status).unwrap(), 30000);
        assert!(parse_vm_hwm_kib("Name:\tx\n").is_err());
        assert!(parse_vm_rss_kib("Name:\tx\n").is_err());
    }

    #[test]
    fn own_process_usage_is_readable() {
        let usage = process_usage(std::process::id(), clk_tck()).unwrap();
        assert!(usage.peak_rss_kib > 0);
        assert!(usage.cpu_seconds >= 0.0);
    }
}
