//! Fuzz target `authority`. Its body is `common::authority`, which `tests/fuzz_corpus.rs` also
//! replays over every seed in `fuzz/corpus/authority/`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run authority` (see fuzz/README.md).
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::authority(data);
});
