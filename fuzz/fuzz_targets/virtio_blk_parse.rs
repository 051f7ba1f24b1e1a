//! Fuzzes the vhost-user-blk chain parser: any chain of descriptors over fuzzed guest memory,
//! with the disk's knobs flipped (`blkback::vhost_user::request::fuzz::run`).
//! Run: `cargo +nightly fuzz run virtio_blk_parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blkback::vhost_user::request::fuzz::run(data));
