//! Stall check (target 3 of the gate-core issue): sequential keep-alive requests of mixed shapes
//! on one connection, through the gate and directly, reporting p50/p99/max per shape. A request
//! taking 30 ms or more is the sign of Nagle's algorithm meeting delayed ACKs somewhere on the
//! path; the max must stay well under that.
//!
//! Shapes, in rotation: small GET; POST of 1-3 KB with a Content-Length; POST of 1-3 KB in two
//! body frames without a length (chunked on HTTP/1.1); GET `/stream/70000` (the upstream writes
//! a 64 KiB chunk then the rest).
//!
//! Covered: agent->gate HTTP/1.1 and HTTP/2, each with an upstream offering h2 (the gate then
//! speaks h2 upstream) and one offering only http/1.1 (the gate speaks HTTP/1.1 upstream).
//!
//! Run: `cargo bench --bench stalls` (`-- N` to send N requests per run instead of 2000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::{Duration, Instant};

use common::*;

const STALL: Duration = Duration::from_millis(30);

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    println!("{n} sequential keep-alive requests per run, one connection per run");
    println!(
        "server: gate + fake upstream on a 2-worker tokio runtime; client: current-thread runtime"
    );
    let mut worst = Duration::ZERO;
    let mut stalls = 0usize;
    for (up_label, up_alpn) in [("h2+h1", H2_H1), ("h1 only", H1)] {
        let rig = Rig::new(up_alpn);
        for (proto, alpn) in [("HTTP/1.1", H1), ("HTTP/2", H2)] {
            for via_gate in [false, true] {
                if alpn == H2 && up_alpn == H1 && !via_gate {
                    // The upstream cannot speak h2; there is no direct h2 baseline.
                    continue;
                }
                let rows = run(&rig, alpn, via_gate, n);
                let path = if via_gate { "through gate" } else { "direct" };
                println!();
                println!("-- agent {proto}, {path}, upstream offers {up_label} --");
                println!(
                    "{:<24} {:>6} {:>10} {:>10} {:>10} {:>8}",
                    "shape", "count", "p50 us", "p99 us", "max us", ">=30ms"
                );
                for (label, mut v) in rows {
                    v.sort();
                    let max = *v.last().unwrap_or(&Duration::ZERO);
                    let over = v.iter().filter(|d| **d >= STALL).count();
                    if via_gate {
                        worst = worst.max(max);
                        stalls += over;
                    }
                    println!(
                        "{:<24} {:>6} {:>10} {:>10} {:>10} {:>8}",
                        label,
                        v.len(),
                        us(pct(&v, 50.0)),
                        us(pct(&v, 99.0)),
                        us(max),
                        over
                    );
                }
            }
        }
    }
    println!();
    println!(
        "through the gate, all runs: max {} us, requests >= 30 ms: {} -> {}",
        us(worst),
        stalls,
        if stalls == 0 && worst < STALL {
            "no stalls (target met)"
        } else {
            "STALLS (target missed)"
        }
    );
}

fn shape(i: usize) -> Shape {
    let size = 1024 + (i * 733) % 2048;
    match i % 4 {
        0 => Shape::SmallGet,
        1 => Shape::Post(size),
        2 => Shape::PostChunked(size),
        _ => Shape::Stream(70_000),
    }
}

/// One connection, `n` requests in sequence; per-shape latencies (plus "all").
fn run(rig: &Rig, alpn: &[&[u8]], via_gate: bool, n: usize) -> Vec<(&'static str, Vec<Duration>)> {
    let h2_agent = alpn == H2;
    let cfg = if via_gate {
        rig.gate_tls(alpn, false)
    } else {
        rig.direct_tls(alpn, false)
    };
    let mut by_shape: Vec<(&'static str, Vec<Duration>)> = (0..4)
        .map(|i| (shape(i).label(), Vec::with_capacity(n / 4 + 1)))
        .collect();
    let mut all = Vec::with_capacity(n);
    rig.client_rt.block_on(async {
        let s = if via_gate {
            tunnel(rig.gate.addr(), TARGET).await
        } else {
            tcp(rig.up.addr).await
        };
        let t = tls(s, &cfg).await;
        let mut send = if h2_agent {
            Sender::H2(h2(t).await)
        } else {
            Sender::H1(h1(t).await)
        };
        // Warm up the connection and the gate's upstream pool (not recorded).
        for i in 0..40 {
            send.fetch(shape(i)).await;
        }
        for i in 0..n {
            let sh = shape(i);
            let t = Instant::now();
            send.fetch(sh).await;
            let d = t.elapsed();
            by_shape[i % 4].1.push(d);
            all.push(d);
            if i % 500 == 499 {
                rig.clear_recorded();
            }
        }
    });
    rig.clear_recorded();
    by_shape.push(("all", all));
    by_shape
}
