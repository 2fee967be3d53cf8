//! Fuzz target `mime`. Its body is `common::mime_message`, which `tests/fuzz_corpus.rs` also
//! replays over every seed in `fuzz/corpus/mime/`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run mime` (see fuzz/README.md).
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::mime_message(data);
});
