//! Measuring helpers shared by the benchmarks: wall time, a min/median/max row, and the
//! peak resident set size of this process.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

/// Runs `f` and returns how long it took, with its result (kept from being optimised away).
pub fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let value = black_box(f());
    (start.elapsed(), value)
}

/// Prints min, median and max in ms, and returns the median.
pub fn row(label: &str, times: &mut [Duration]) -> f64 {
    times.sort();
    let ms = |time: Duration| time.as_secs_f64() * 1000.0;
    let median = ms(times[times.len() / 2]);
    println!(
        "  {label:<58} {:>8.1} {median:>8.1} {:>8.1}",
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
    median
}

/// A `kB` field of /proc/self/status.
pub fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
