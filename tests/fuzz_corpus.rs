#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Replays every committed seed of every fuzz target (`fuzz/corpus/<target>/`) through the
//! target's own body (`fuzz/fuzz_targets/common.rs`), so the corpora run as ordinary tests
//! (style.md habit 13). A missing or empty corpus, or a target without one, fails the test.

#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The seed files of one target, sorted; dot files (libFuzzer's temporaries) are skipped.
fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    files
}

/// Runs every seed of `target`; reports every failing file, not just the first.
fn replay(target: &str, run: common::Body) {
    let files = seeds(target);
    let mut accepted = 0;
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy();
        match catch_unwind(AssertUnwindSafe(|| run(&data))) {
            Ok(true) => {
                accepted += 1;
                eprintln!("  {target}/{name}: accepted");
            }
            Ok(false) => eprintln!("  {target}/{name}: refused"),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} seed(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A useful corpus reaches both sides of the parser.
    assert!(accepted > 0, "{target}: no seed is accepted");
    assert!(accepted < files.len(), "{target}: no seed is refused");
    eprintln!("{target}: {} seeds, {accepted} accepted", files.len());
}

fn target(name: &str) -> common::Body {
    common::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

#[test]
fn authority_corpus() {
    replay("authority", target("authority"));
}

#[test]
fn canonical_corpus() {
    replay("canonical", target("canonical"));
}

#[test]
fn inspect_corpus() {
    replay("inspect", target("inspect"));
}

#[test]
fn git_push_corpus() {
    replay("git_push", target("git_push"));
}

#[test]
fn mime_corpus() {
    replay("mime", target("mime"));
}

#[test]
fn graphql_corpus() {
    replay("graphql", target("graphql"));
}

#[test]
fn policy_corpus() {
    replay("policy", target("policy"));
}

/// Every target file has a corpus and a replay, and every corpus a target.
#[test]
fn every_target_has_a_corpus() {
    let names = |dir: &Path, want_rs: bool| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter_map(|p| match (want_rs, p.extension()) {
                (true, Some(ext)) if ext == "rs" => Some(p.file_stem()?.to_str()?.to_string()),
                (false, _) if p.is_dir() => Some(p.file_name()?.to_str()?.to_string()),
                _ => None,
            })
            .filter(|n| n != "common")
            .collect()
    };
    let listed: BTreeSet<String> = common::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    let files = names(&fuzz_dir().join("fuzz_targets"), true);
    let corpora = names(&fuzz_dir().join("corpus"), false);
    assert_eq!(
        files, listed,
        "fuzz_targets/*.rs and common::TARGETS differ"
    );
    assert_eq!(corpora, listed, "fuzz/corpus/* and common::TARGETS differ");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &listed {
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
    }
}
