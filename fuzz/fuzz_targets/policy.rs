//! Fuzz target `policy`. Its body is `common::policy`, which `tests/fuzz_corpus.rs` also
//! replays over every seed in `fuzz/corpus/policy/`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run policy` (see fuzz/README.md).
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::policy(data);
});
