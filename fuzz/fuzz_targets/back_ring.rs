//! Fuzzes the backend ring with a hostile frontend: arbitrary producer indices, slot contents,
//! passes, re-arms and restarts (`xen_ring::script`). Run: `cargo +nightly fuzz run back_ring`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = xen_ring::script::run_back_ring_script(data);
});
