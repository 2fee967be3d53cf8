//! Fuzz target `inspect`. Its body is `common::inspect`, which `tests/fuzz_corpus.rs` also
//! replays over every seed in `fuzz/corpus/inspect/`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run inspect` (see fuzz/README.md).
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::inspect(data);
});
