//! Fuzz target `canonical`. Its body is `common::canonical`, which `tests/fuzz_corpus.rs` also
//! replays over every seed in `fuzz/corpus/canonical/`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run canonical` (see fuzz/README.md).
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::canonical(data);
});
