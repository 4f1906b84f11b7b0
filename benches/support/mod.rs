//! What both end-to-end benchmarks (`load.rs`, `mqtt_load.rs`) need besides their protocol:
//! settings from the environment, CPU and memory accounting from /proc, medians and
//! percentiles, child processes killed on drop, CPU pinning. Included with
//! `#[path = "support/mod.rs"] mod support;`.
#![allow(dead_code)]

use anyhow::{Context, bail};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::time::Instant;

pub fn env_or<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v}: {e}")),
        _ => Ok(default),
    }
}

/// utime + stime of a whole process (every thread, live or exited), in seconds.
pub fn cpu_seconds(pid: u32, clk_tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck)
}

/// VmRSS in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Machine-wide (busy, steal) CPU seconds from /proc/stat: busy is every state but idle and
/// iowait (steal included: time the hypervisor gave to someone else).
pub fn machine_cpu_seconds(clk_tck: f64) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice (guest is in user).
    let busy: f64 = v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4)?;
    Some((busy / clk_tck, v.get(7)? / clk_tck))
}

/// CPU time of a set of processes between two instants.
pub struct CpuMeter {
    pids: Vec<Option<u32>>,
    start: Vec<Option<f64>>,
    machine: Option<(f64, f64)>,
    clk_tck: f64,
    /// When the measurement started.
    pub t0: Instant,
}

impl CpuMeter {
    pub fn start(pids: Vec<Option<u32>>, clk_tck: f64) -> CpuMeter {
        let start = pids
            .iter()
            .map(|p| p.and_then(|p| cpu_seconds(p, clk_tck)))
            .collect();
        CpuMeter {
            pids,
            start,
            machine: machine_cpu_seconds(clk_tck),
            clk_tck,
            t0: Instant::now(),
        }
    }

    /// CPU seconds used by each process since `start`.
    pub fn stop(&self) -> Vec<Option<f64>> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(p, s)| Some(cpu_seconds((*p)?, self.clk_tck)? - (*s)?))
            .collect()
    }

    /// Machine-wide busy and steal CPU seconds since `start`.
    pub fn machine(&self) -> Option<(f64, f64)> {
        let (busy0, steal0) = self.machine?;
        let (busy1, steal1) = machine_cpu_seconds(self.clk_tck)?;
        Some((busy1 - busy0, steal1 - steal0))
    }
}

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn median_of<R>(runs: &[R], f: impl Fn(&R) -> Option<f64>) -> Option<f64> {
    median(runs.iter().filter_map(f).collect())
}

/// Pins this process (the load generator, and whatever it spawns unpinned) to CPU 0.
pub fn pin_self_to_cpu0() -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("taskset (util-linux) is needed to pin; BENCH_PIN=0 to run unpinned")?;
    if !status.success() {
        bail!("taskset failed: {status}");
    }
    Ok(())
}

/// A child process, killed (by its PID) and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// Held open so a child that serves until the end of its stdin (`ztgate sim-plc`) sees EOF
    /// and ends when the benchmark dies.
    pub _stdin: Option<ChildStdin>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited: {status}", self.name),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
