//! Classification cost: `Catalog::inspect` (canonicalisation, route lookup, typed params, body
//! parsing) on typical requests, with no I/O. Targets: p50 <= 2 us for a REST request, p50 <=
//! 100 us for a Gmail send with a 50 KB message.
//!
//! Criterion measures each case (and, as reference points, the parts that dominate the Gmail
//! send and the issue create). A second pass then times single calls, one `Instant` pair per
//! call (200,000 calls after 20,000 of warm-up; 20,000 after 2,000 for the Gmail send), and
//! prints the per-call p50, p90 and p99.
//!
//! Run: `cargo bench --bench classify`. One case only: `cargo bench --bench classify --
//! rest_issue_create` (criterion's filter, which the per-call pass also applies).
//! Instruction counts: `valgrind --tool=callgrind <bench binary> --calls N rest_issue_create`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "estimates/mod.rs"]
mod estimates;

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use estimates::{median_us, name_filter, output_dir};

use agentgate::actions::catalog::{Catalog, Inspected};
use agentgate::actions::{canonical, mime};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use criterion::Criterion;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

/// The gate's default inspection limit (`limits.max_body_bytes`).
const LIMIT: u64 = 32 << 20;

/// One request as `Catalog::inspect` takes it.
struct Case {
    /// Criterion's function name, in the `classify` group.
    name: &'static str,
    host: &'static str,
    method: &'static str,
    target: &'static str,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The p50 target in microseconds, if the case has one.
    target_us: Option<f64>,
}

impl Case {
    fn run(&self, catalog: &Catalog) -> Inspected {
        catalog
            .inspect(
                black_box(self.host),
                black_box(self.method),
                black_box(self.target),
                black_box(&self.headers),
                black_box(&self.body),
                LIMIT,
            )
            .unwrap_or_else(|e| panic!("{}: refused: {e}", self.name))
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// The headers Octokit (`@octokit/rest` on Node) sends, plus `extra`.
fn octokit(extra: &[(&str, &str)]) -> HeaderMap {
    let mut pairs = vec![
        ("host", "api.github.com"),
        (
            "user-agent",
            "octokit-rest.js/20.1.1 octokit-core.js/5.2.0 Node.js/20.11.0 (linux; x64)",
        ),
        ("accept", "application/vnd.github.v3+json"),
        ("x-github-api-version", "2022-11-28"),
        (
            "authorization",
            "token ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
        ),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive"),
    ];
    pairs.extend_from_slice(extra);
    headers(&pairs)
}

/// A ~300-byte issue, as `octokit.rest.issues.create` sends it.
fn issue_body() -> Vec<u8> {
    let body = json!({
        "title": "Flaky test: proxy::tests::keep_alive times out on CI",
        "body": "Seen 3 times this week on the Linux runners.\n\nSteps: run `cargo test` \
                 under load.\nExpected: passes.\nActual: times out after 60 s.\n\n\
                 Logs: see run 1234.",
        "labels": ["bug", "ci", "flaky-test"],
        "assignees": ["octocat"],
        "milestone": 4
    });
    serde_json::to_vec(&body).unwrap()
}

/// One pkt-line, as git frames it.
fn pkt(payload: &str) -> Vec<u8> {
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload.as_bytes());
    out
}

/// `git push --atomic origin main feature :refs/tags/v0.9` as git 2.47 sends it: three
/// commands (update, create, delete), capabilities on the first, flush, then the pack (here
/// an empty version-2 pack; the classifier reads only its header).
fn push_body() -> Vec<u8> {
    let (a, b, c, z) = (
        "cff77f7b687dae112f95ede7ed0e2675751e319f",
        "c5dc2a5293ae44242836895b7083a8ca143fc8bd",
        "89ef89ffefd5349f53f0f84591308c801396c9d2",
        "0000000000000000000000000000000000000000",
    );
    let mut body = pkt(&format!(
        "{a} {b} refs/heads/main\0 report-status-v2 side-band-64k quiet atomic \
         object-format=sha1 agent=git/2.47.3\n"
    ));
    body.extend(pkt(&format!("{z} {b} refs/heads/feature\n")));
    body.extend(pkt(&format!("{c} {z} refs/tags/v0.9\n")));
    body.extend(b"0000");
    body.extend(b"PACK\0\0\0\x02\0\0\0\0");
    body.extend(hex::decode("029d08823bd8a8eab510ad6ac75c823cfd3ed31e").unwrap());
    body
}

/// A multipart/mixed message (text part plus a PDF-like attachment) whose base64url `raw` is
/// about 50 KB, as `users.messages.send` receives it from google-api-python-client: the JSON
/// body, and the message itself.
fn gmail_send_body() -> (Vec<u8>, String) {
    let attachment: Vec<u8> = (0..26_800u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let attachment = STANDARD.encode(attachment);
    let mut lines = String::new();
    for chunk in attachment.as_bytes().chunks(76) {
        lines.push_str(std::str::from_utf8(chunk).unwrap());
        lines.push_str("\r\n");
    }
    let message = format!(
        "From: Release Bot <bot@acme.example>\r\n\
         To: Alice <alice@acme.example>, bob@partner.example\r\n\
         Cc: releases@acme.example\r\n\
         Subject: Release notes for v1.4.0\r\n\
         Date: Thu, 26 Nov 2026 14:00:00 +0000\r\n\
         Message-ID: <20261126140000.1234@acme.example>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"===============5844174532254387262==\"\r\n\
         \r\n\
         --===============5844174532254387262==\r\n\
         Content-Type: text/plain; charset=\"utf-8\"\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n\
         Hi all,\r\n\r\nThe release notes for v1.4.0 are attached.\r\n\r\n-- \r\nRelease Bot\r\n\
         --===============5844174532254387262==\r\n\
         Content-Type: application/pdf\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"release-notes-v1.4.0.pdf\"\r\n\
         \r\n\
         {lines}\
         --===============5844174532254387262==--\r\n"
    );
    let raw = URL_SAFE_NO_PAD.encode(message.as_bytes());
    assert!(
        (49_000..=51_000).contains(&raw.len()),
        "raw is {} bytes",
        raw.len()
    );
    let body = serde_json::to_vec(&json!({ "raw": raw, "threadId": "18c2f0a1b2c3d4e5" })).unwrap();
    (body, message)
}

fn cases() -> Vec<Case> {
    let issue = issue_body();
    let issue_len = issue.len().to_string();
    let push = push_body();
    let push_len = push.len().to_string();
    let (send, _) = gmail_send_body();
    let send_len = send.len().to_string();
    vec![
        Case {
            name: "rest_issue_create",
            host: "api.github.com",
            method: "POST",
            target: "/repos/acme/api/issues",
            headers: octokit(&[
                ("content-type", "application/json; charset=utf-8"),
                ("content-length", &issue_len),
            ]),
            body: issue,
            target_us: Some(2.0),
        },
        Case {
            name: "rest_repo_delete",
            host: "api.github.com",
            method: "DELETE",
            target: "/repos/acme/api",
            headers: octokit(&[]),
            body: Vec::new(),
            target_us: Some(2.0),
        },
        Case {
            name: "rest_pulls_list",
            host: "api.github.com",
            method: "GET",
            target: "/repos/acme/api/pulls?state=open&per_page=30",
            headers: octokit(&[]),
            body: Vec::new(),
            target_us: Some(2.0),
        },
        Case {
            name: "git_push_3_commands",
            host: "github.com",
            method: "POST",
            target: "/acme/api.git/git-receive-pack",
            headers: headers(&[
                ("host", "github.com"),
                ("user-agent", "git/2.47.3"),
                ("accept-encoding", "deflate, gzip, br, zstd"),
                ("content-type", "application/x-git-receive-pack-request"),
                ("accept", "application/x-git-receive-pack-result"),
                ("content-length", &push_len),
            ]),
            body: push,
            target_us: None,
        },
        Case {
            name: "gmail_send_raw_50k",
            host: "gmail.googleapis.com",
            method: "POST",
            target: "/gmail/v1/users/me/messages/send?alt=json",
            headers: headers(&[
                ("host", "gmail.googleapis.com"),
                (
                    "user-agent",
                    "(gzip) google-api-python-client/2.150.0 gdcl/2.150.0 gl-python/3.12.3",
                ),
                ("accept", "application/json"),
                ("accept-encoding", "gzip, deflate"),
                ("authorization", "Bearer ya29.a0AfB_byC0123456789"),
                ("content-type", "application/json"),
                ("content-length", &send_len),
            ]),
            body: send,
            target_us: Some(100.0),
        },
    ]
}

/// Checks each case classifies as intended before anything is timed.
fn check(case: &Case, got: &Inspected) {
    let a = &got.actions[0];
    let expect = match case.name {
        "rest_issue_create" => "github.issues.create",
        "rest_repo_delete" => "github.repos.delete",
        "rest_pulls_list" => "github.pulls.list",
        "git_push_3_commands" => "git.push",
        "gmail_send_raw_50k" => "gmail.users.messages.send",
        other => panic!("no expectation for {other}"),
    };
    assert_eq!(a.name, expect, "{}: {:?}", case.name, a.params);
    match case.name {
        "rest_issue_create" => assert_eq!(a.params["labels"], json!(["bug", "ci", "flaky-test"])),
        "rest_pulls_list" => assert_eq!(a.params["per_page"], 30),
        "git_push_3_commands" => assert_eq!(a.params["refs"].as_array().map(Vec::len), Some(3)),
        "gmail_send_raw_50k" => {
            assert_eq!(
                a.params.get("recipients_known"),
                Some(&Value::Bool(true)),
                "the message was not read: {:?}",
                a.params
            );
        }
        _ => {}
    }
}

/// Per-call latency percentiles (p50, p90, p99) in microseconds.
fn per_call(case: &Case, catalog: &Catalog, calls: usize) -> [f64; 3] {
    for _ in 0..calls / 10 {
        black_box(case.run(catalog));
    }
    let mut times: Vec<Duration> = Vec::with_capacity(calls);
    for _ in 0..calls {
        // The result is dropped inside the timed region, as criterion's `iter` does.
        let start = Instant::now();
        drop(black_box(case.run(catalog)));
        times.push(start.elapsed());
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    [at(0.50), at(0.90), at(0.99)]
}

/// `--calls N CASE`: N calls of one case and nothing else (no criterion, no clock), for an
/// instruction count under `valgrind --tool=callgrind`. Two runs with different N give the
/// cost of one call as the difference over the difference in N.
fn calls_only(catalog: &Catalog, cases: &[Case]) -> bool {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == "--calls") else {
        return false;
    };
    let n: usize = args[at + 1].parse().expect("--calls N CASE");
    let name = &args[at + 2];
    let case = cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"));
    for _ in 0..n {
        drop(black_box(case.run(catalog)));
    }
    true
}

fn main() {
    let catalog = Catalog::builtin(BTreeSet::new()).unwrap();
    let cases = cases();
    for case in &cases {
        check(case, &case.run(&catalog));
    }
    if calls_only(&catalog, &cases) {
        return;
    }

    let out = output_dir();
    let mut c = Criterion::default()
        .output_directory(&out)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(60)
        .configure_from_args();
    let mut g = c.benchmark_group("classify");
    for case in &cases {
        g.bench_function(case.name, |b| b.iter(|| case.run(&catalog)));
    }
    // Reference points: the parts of a case that dominate it, timed alone.
    let issue = issue_body();
    g.bench_function("part_issue_parse_json", |b| {
        b.iter(|| canonical::parse_json(black_box(&issue)).unwrap())
    });
    let (send, message) = gmail_send_body();
    g.bench_function("part_gmail_parse_json", |b| {
        b.iter(|| canonical::parse_json(black_box(&send)).unwrap())
    });
    let raw = URL_SAFE_NO_PAD.encode(message.as_bytes());
    g.bench_function("part_gmail_base64url_decode", |b| {
        b.iter(|| URL_SAFE_NO_PAD.decode(black_box(&raw)).unwrap())
    });
    g.bench_function("part_gmail_mime_extract", |b| {
        b.iter(|| mime::extract(black_box(message.as_bytes())).unwrap())
    });
    g.finish();
    c.final_summary();
    if std::env::args().any(|a| a == "--profile-time") {
        return;
    }

    println!();
    println!("== parts (criterion median, us) ==");
    for func in [
        "part_issue_parse_json",
        "part_gmail_parse_json",
        "part_gmail_base64url_decode",
        "part_gmail_mime_extract",
    ] {
        if let Some(m) = median_us(&out, "classify", func) {
            println!("classify/{func:<28} {m:>10.3}");
        }
    }
    println!();
    println!("== Catalog::inspect: criterion median, and per-call p50 / p90 / p99 (us) ==");
    let filter = name_filter();
    for case in cases
        .iter()
        .filter(|c| filter.as_ref().is_none_or(|f| c.name.contains(f.as_str())))
    {
        let calls = if case.body.len() > 10_000 {
            20_000
        } else {
            200_000
        };
        let [p50, p90, p99] = per_call(case, &catalog, calls);
        let median =
            median_us(&out, "classify", case.name).map_or("-".into(), |m| format!("{m:.3}"));
        let verdict = match case.target_us {
            Some(t) if p50 <= t => format!("target p50 <= {t:.0} us: met"),
            Some(t) => format!("target p50 <= {t:.0} us: MISSED"),
            None => String::new(),
        };
        println!(
            "{}",
            format!(
                "classify/{:<22} body {:>6} B  median {median:>8}  \
                 p50 {p50:>8.3}  p90 {p90:>8.3}  p99 {p99:>8.3}  {verdict}",
                case.name,
                case.body.len()
            )
            .trim_end()
        );
    }
}
