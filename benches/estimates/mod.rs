//! Reading criterion's results back, for the benches that print their own summary tables.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where criterion writes (the same rule criterion itself uses, made explicit so we can read
/// the estimates back).
pub fn output_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// Criterion's median estimate (of per-iteration time across samples), in microseconds.
pub fn median_us(out: &Path, group: &str, func: &str) -> Option<f64> {
    let p = out
        .join(group)
        .join(func)
        .join("new")
        .join("estimates.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    Some(v["median"]["point_estimate"].as_f64()? / 1000.0)
}

/// The name filter given to criterion (its first positional argument), if any: a bench's own
/// per-call pass then times only the cases it selects.
pub fn name_filter() -> Option<String> {
    const WITH_VALUE: [&str; 9] = [
        "--profile-time",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--measurement-time",
        "--warm-up-time",
        "--sample-size",
        "--output-format",
        "--color",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter().enumerate().find_map(|(i, a)| {
        let after_option = i > 0 && WITH_VALUE.contains(&args[i - 1].as_str());
        (!a.starts_with('-') && !after_option).then(|| a.clone())
    })
}
