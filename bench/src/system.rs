//! What the figures were taken on: the machine, the server, the memory of
//! the service processes.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};

/// The arguments the harness starts nats-server with (besides port and store).
pub const NATS_FLAGS: &str = "-js -a 127.0.0.1 -p <free port> -sd <fresh temp dir>";

/// Cores, memory, CPU model, kernel, load average and the nats-server version.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name")
            .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
    });
    let meminfo = read("/proc/meminfo");
    let mem_kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    json!({
        "cores": cores,
        "memory_mb": mem_kb.map(|k| k / 1024),
        "cpu": model,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "load_average_at_start": load_average(),
    })
}

/// The 1, 5 and 15 minute load averages, e.g. `0.52 0.61 0.40`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `nats-server --version` of the binary the harness uses.
pub fn nats_version() -> String {
    Command::new(upr_tests::nats_server_bin())
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Peak resident memory (VmHWM) of a process in kB, while it runs.
pub fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's VmHWM every 20 ms until stopped, so the peak of a
/// process that exits by itself (whose /proc entry then loses it) is kept.
pub struct MemWatch {
    peak_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl MemWatch {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        let peak_kb = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak_kb.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(kb) = vm_hwm_kb(pid) {
                    p.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self {
            peak_kb,
            stop,
            task,
        }
    }

    /// The peak so far in MB (sampling once more first).
    pub fn peak_mb(&self, pid: Option<u32>) -> f64 {
        if let Some(kb) = pid.and_then(vm_hwm_kb) {
            self.peak_kb.fetch_max(kb, Ordering::Relaxed);
        }
        self.peak_kb.load(Ordering::Relaxed) as f64 / 1024.0
    }

    /// Stops sampling and returns the peak in MB.
    pub async fn stop(self, pid: Option<u32>) -> f64 {
        let mb = self.peak_mb(pid);
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        mb.max(self.peak_kb.load(Ordering::Relaxed) as f64 / 1024.0)
    }
}

/// The pid of the benchmark's nats-server listening on `port` (found by its
/// command line), so a profiler can be pointed at it.
pub fn nats_pid(port: u16) -> Option<u32> {
    let wanted = port.to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_server = args.first()?.ends_with(b"nats-server");
            let on_port = args
                .windows(2)
                .any(|w| w[0] == b"-p" && w[1] == wanted.as_bytes());
            (is_server && on_port).then_some(pid)
        })
}

/// CPU time (user + system, all threads) a process has used, in seconds;
/// `/proc/<pid>/stat` counts it in clock ticks of 1/100 s on Linux.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds used by a set of processes between two readings.
pub struct CpuMeter {
    pids: Vec<(String, u32)>,
    start: Vec<f64>,
}

impl CpuMeter {
    /// Starts measuring `pids` (named).
    pub fn start(pids: Vec<(String, u32)>) -> Self {
        let start = pids
            .iter()
            .map(|(_, p)| cpu_seconds(*p).unwrap_or(0.0))
            .collect();
        Self { pids, start }
    }

    /// CPU seconds of each process since [`CpuMeter::start`].
    pub fn stop(&self) -> Vec<(String, f64)> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|((name, pid), s)| (name.clone(), cpu_seconds(*pid).map_or(0.0, |e| e - s)))
            .collect()
    }
}

/// Raises this process's soft limit on open files to its hard limit, so a
/// part can hold a thousand sockets open (many systems start processes at a
/// soft limit of 1,024). The processes it starts afterwards inherit it.
/// Returns the (soft, hard) limits now in force, `None` when they cannot be
/// read.
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some((hard, hard));
    }
    Some((soft, hard))
}
