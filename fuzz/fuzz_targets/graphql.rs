//! Fuzz target `graphql`. Its body is `common::graphql`, which `tests/fuzz_corpus.rs` also
//! replays over every seed in `fuzz/corpus/graphql/`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run graphql` (see fuzz/README.md).
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::graphql(data);
});
