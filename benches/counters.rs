//! Counter cost behind `count(...)`: one count on a busy series, and one uncontended admission
//! (count under the lock, then record), in memory and with the sled store. Budget: a decision
//! has about 5 us in all.
//!
//! Cases:
//! - `count_1h_10k_events`: a 1 h window over 10,000 events spread across that hour (coalesced
//!   into 3,600 entries of 1 s).
//! - `count_1h_10k_entries`: a 1 h window over 10,000 uncoalesced entries, one every 1.1 s.
//! - `count_1h_full_day`: a 1 h window on a series at its memory bound (86,400 entries, one
//!   per second for 24 h).
//! - `admit_memory` / `admit_sled`: one key, the decision reads its count and admits; the
//!   clock advances 1 ms per call, so calls coalesce and every 1,000th starts an entry.
//! - `admit_refused`: the decision refuses (a limit reached): lock, count, unlock.
//!
//! Criterion measures each case; a second pass then times single calls (100,000 after 10,000
//! of warm-up), one `Instant` pair per call, and prints p50, p90 and p99.
//!
//! Run: `cargo bench --bench counters`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentgate::counters::{CountView, Counters, SeriesKey};
use criterion::Criterion;

const HOUR: u64 = 3600 * 1000;
/// 2026-03-03T10:00:00Z.
const T0: i64 = 1_772_532_000_000;

fn key(group: &str) -> SeriesKey {
    SeriesKey::new("gmail.users.messages.send|agent", group)
}

/// A series with `n` events, `step_ms` apart, ending at `end`.
fn filled(n: i64, step_ms: i64, end: i64) -> (Counters, SeriesKey) {
    let c = Counters::in_memory();
    let k = key("busy");
    for i in 0..n {
        c.record(std::slice::from_ref(&k), end - (n - 1 - i) * step_ms)
            .unwrap();
    }
    (c, k)
}

/// One admission at `now` that admits when the count is under `limit`.
fn admit(c: &Counters, k: &SeriesKey, now: i64, limit: u64) -> bool {
    let keys = std::slice::from_ref(k);
    let decide = |v: &dyn CountView| {
        let ok = v.count(k, HOUR, now) < limit;
        (ok, ok)
    };
    c.admit(keys, now, decide, keys).unwrap()
}

struct Case {
    name: &'static str,
    run: Box<dyn Fn()>,
}

fn cases(db: &sled::Db) -> Vec<Case> {
    let mut cases = Vec::new();
    let end = T0 + HOUR as i64;

    let (c, k) = filled(10_000, 360, end);
    assert_eq!(c.count(&k, HOUR, end), 10_000);
    cases.push(Case {
        name: "count_1h_10k_events",
        run: Box::new(move || {
            black_box(c.count(black_box(&k), HOUR, end));
        }),
    });

    let (c, k) = filled(10_000, 1_100, end);
    assert_eq!(c.count(&k, HOUR, end), 3_273);
    cases.push(Case {
        name: "count_1h_10k_entries",
        run: Box::new(move || {
            black_box(c.count(black_box(&k), HOUR, end));
        }),
    });

    let (c, k) = filled(86_400, 1_000, end);
    assert_eq!(c.count(&k, HOUR, end), 3_600);
    cases.push(Case {
        name: "count_1h_full_day",
        run: Box::new(move || {
            black_box(c.count(black_box(&k), HOUR, end));
        }),
    });

    let c = Counters::in_memory();
    let k = key("coder");
    let now = Cell::new(T0);
    cases.push(Case {
        name: "admit_memory",
        run: Box::new(move || {
            now.set(now.get() + 1);
            black_box(admit(&c, &k, now.get(), u64::MAX));
        }),
    });

    let c = Counters::open(db.open_tree("bench").unwrap(), T0).unwrap();
    let k = key("coder");
    let now = Cell::new(T0);
    cases.push(Case {
        name: "admit_sled",
        run: Box::new(move || {
            now.set(now.get() + 1);
            black_box(admit(&c, &k, now.get(), u64::MAX));
        }),
    });

    let (c, k) = filled(10_000, 360, end);
    cases.push(Case {
        name: "admit_refused",
        run: Box::new(move || {
            black_box(admit(&c, &k, end, 20));
        }),
    });
    cases
}

fn output_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

/// Per-call latency percentiles (p50, p90, p99) in microseconds.
fn per_call(case: &Case, calls: usize) -> [f64; 3] {
    for _ in 0..calls / 10 {
        (case.run)();
    }
    let mut times: Vec<Duration> = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        (case.run)();
        times.push(start.elapsed());
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    [at(0.50), at(0.90), at(0.99)]
}

fn main() {
    let db = sled::Config::new().temporary(true).open().unwrap();
    let cases = cases(&db);
    let mut c = Criterion::default()
        .output_directory(&output_dir())
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(60)
        .configure_from_args();
    let mut g = c.benchmark_group("counters");
    for case in &cases {
        g.bench_function(case.name, |b| b.iter(|| (case.run)()));
    }
    g.finish();
    c.final_summary();

    println!("\nper call (us)            p50      p90      p99");
    for case in &cases {
        let [p50, p90, p99] = per_call(case, 100_000);
        println!("{:<22} {p50:>8.3} {p90:>8.3} {p99:>8.3}", case.name);
    }
}
