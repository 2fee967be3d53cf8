//! Fuzz target `git_push`. Its body is `common::git_push`, which `tests/fuzz_corpus.rs` also
//! replays over every seed in `fuzz/corpus/git_push/`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run git_push` (see fuzz/README.md).
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::git_push(data);
});
