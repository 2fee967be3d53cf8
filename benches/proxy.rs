//! Latency the gate adds, against the same loopback HTTPS upstream measured directly in the same
//! run (targets 1 and 2 of the gate-core issue):
//!
//! - `keepalive_get/{direct,through_gate}`: one small GET on one persistent HTTP/1.1 connection
//!   (target: the gate adds <= 150 us at p50);
//! - `new_connection/{direct,through_gate}`: a new TCP (+ CONNECT) + full TLS handshake + first
//!   small GET, with the gate's leaf certificate cached and its upstream pool warm
//!   (target: the gate adds <= 0.5 ms at p50);
//! - `new_connection_resumed/*`: the same with TLS session resumption left on (informational).
//!
//! After criterion, prints the medians and the differences, then a per-stage breakdown of new
//! connections (TCP/CONNECT, TLS handshake, first response), measured request by request.
//!
//! Run: `cargo bench --bench proxy`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use criterion::Criterion;

const GET: Shape = Shape::SmallGet;

fn main() {
    let rig = Rig::new(H2_H1);
    let out = output_dir();
    let mut c = Criterion::default()
        .output_directory(&out)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .sample_size(60)
        .noise_threshold(0.05)
        .configure_from_args();

    keepalive(&mut c, &rig);
    new_connections(&mut c, &rig, "new_connection", false);
    new_connections(&mut c, &rig, "new_connection_resumed", true);
    c.final_summary();

    print_medians(&out);
    stage_breakdown(&rig, 1000);
}

/// One persistent HTTP/1.1 connection each way, small GET, response read in full.
///
/// Each connection is opened just before its own measurement, so neither waits idle through
/// the other side's measurement.
fn keepalive(c: &mut Criterion, rig: &Rig) {
    let mut g = c.benchmark_group("keepalive_get");
    for name in ["direct", "through_gate"] {
        let mut sender = rig.client_rt.block_on(async {
            let mut s = if name == "direct" {
                Sender::H1(direct_h1(rig.up.addr, &rig.direct_tls(H1, false)).await)
            } else {
                Sender::H1(gate_h1(rig.gate.addr(), &rig.gate_tls(H1, false)).await)
            };
            // Warm the connection (and the gate's upstream pool).
            for _ in 0..500 {
                s.fetch(GET).await;
            }
            s
        });
        rig.clear_recorded();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t = rig.client_rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        sender.fetch(GET).await;
                    }
                    t.elapsed()
                });
                rig.clear_recorded();
                t
            })
        });
    }
    g.finish();
}

/// A new connection per iteration, to the first full response.
fn new_connections(c: &mut Criterion, rig: &Rig, group: &str, resume: bool) {
    let direct_cfg = rig.direct_tls(H1, resume);
    let gate_cfg = rig.gate_tls(H1, resume);
    let (up, gate) = (rig.up.addr, rig.gate.addr());
    // Warm the gate's certificate cache and upstream pool (and the session caches if resuming).
    rig.client_rt.block_on(async {
        for _ in 0..50 {
            Sender::H1(direct_h1(up, &direct_cfg).await)
                .fetch(GET)
                .await;
            Sender::H1(gate_h1(gate, &gate_cfg).await).fetch(GET).await;
        }
    });
    rig.clear_recorded();
    let mut g = c.benchmark_group(group);
    g.measurement_time(Duration::from_secs(6)).sample_size(40);
    g.bench_function("direct", |b| {
        b.iter_custom(|iters| {
            let t = rig.client_rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    Sender::H1(direct_h1(up, &direct_cfg).await)
                        .fetch(GET)
                        .await;
                }
                t.elapsed()
            });
            rig.clear_recorded();
            t
        })
    });
    g.bench_function("through_gate", |b| {
        b.iter_custom(|iters| {
            let t = rig.client_rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    Sender::H1(gate_h1(gate, &gate_cfg).await).fetch(GET).await;
                }
                t.elapsed()
            });
            rig.clear_recorded();
            t
        })
    });
    g.finish();
}

fn print_medians(out: &Path) {
    println!();
    println!("== medians (criterion median estimate per iteration) ==");
    println!(
        "{:<24} {:>12} {:>14} {:>12} {:>10}",
        "group", "direct us", "through us", "added us", "target"
    );
    for (group, target_us) in [
        ("keepalive_get", Some(150.0)),
        ("new_connection", Some(500.0)),
        ("new_connection_resumed", None),
    ] {
        let (Some(d), Some(g)) = (
            median_us(out, group, "direct"),
            median_us(out, group, "through_gate"),
        ) else {
            continue;
        };
        let added = g - d;
        let verdict = match target_us {
            Some(t) if added <= t => format!("<= {t:.0} met"),
            Some(t) => format!("<= {t:.0} MISSED"),
            None => "-".to_string(),
        };
        println!("{group:<24} {d:>12.1} {g:>14.1} {added:>12.1} {verdict:>10}");
    }
}

/// New connections one at a time, timing each stage: TCP connect (direct) or TCP connect +
/// CONNECT exchange (gate); the TLS handshake; the first request to its full response.
fn stage_breakdown(rig: &Rig, n: usize) {
    let direct_cfg = rig.direct_tls(H1, false);
    let gate_cfg = rig.gate_tls(H1, false);
    let (up, gate) = (rig.up.addr, rig.gate.addr());
    let mut d: [Vec<Duration>; 4] = Default::default();
    let mut g: [Vec<Duration>; 4] = Default::default();
    rig.client_rt.block_on(async {
        for i in 0..n {
            // Alternate which side goes first so drift affects both equally.
            for side in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
                let t0 = Instant::now();
                let s = if side == 0 {
                    tcp(up).await
                } else {
                    tunnel(gate, TARGET).await
                };
                let t1 = Instant::now();
                let cfg = if side == 0 { &direct_cfg } else { &gate_cfg };
                let t = tls(s, cfg).await;
                let t2 = Instant::now();
                let mut send = Sender::H1(h1(t).await);
                send.fetch(GET).await;
                let t3 = Instant::now();
                let v = if side == 0 { &mut d } else { &mut g };
                v[0].push(t1 - t0);
                v[1].push(t2 - t1);
                v[2].push(t3 - t2);
                v[3].push(t3 - t0);
            }
        }
    });
    rig.clear_recorded();
    println!();
    println!("== new connection, per stage ({n} each, interleaved; p50 / p90 in us) ==");
    println!(
        "{:<28} {:>18} {:>18} {:>12}",
        "stage", "direct", "through gate", "added p50"
    );
    let names = [
        "TCP connect (+ CONNECT)",
        "TLS handshake (full)",
        "first GET to full response",
        "total",
    ];
    for (k, name) in names.iter().enumerate() {
        d[k].sort();
        g[k].sort();
        let (dp, gp) = (pct(&d[k], 50.0), pct(&g[k], 50.0));
        println!(
            "{:<28} {:>18} {:>18} {:>12}",
            name,
            format!("{} / {}", us(dp), us(pct(&d[k], 90.0))),
            format!("{} / {}", us(gp), us(pct(&g[k], 90.0))),
            format!("{:.1}", (gp.as_secs_f64() - dp.as_secs_f64()) * 1e6),
        );
    }
}
