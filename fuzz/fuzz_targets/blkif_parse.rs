//! Fuzzes blkif slot parsing (both ABIs, 512 and 4096-byte sectors) and indirect pages.
//! Run: `cargo +nightly fuzz run blkif_parse`.
#![no_main]

use xen_blkif::{parse_indirect_page, parse_slot, Abi, DiscardLimits, Limits, Request, SegmentList};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&knobs, slot)) = data.split_first() else { return };
    let abi = if knobs & 1 == 0 { Abi::X86_64 } else { Abi::X86_32 };
    let limits = Limits {
        sectors: 1 << 24,
        sector_size: if knobs & 2 == 0 { 512 } else { 4096 },
        read_only: knobs & 4 != 0,
        max_indirect_segments: if knobs & 8 == 0 { 256 } else { 0 },
        flush: knobs & 16 == 0,
        barrier: knobs & 32 == 0,
        discard: (knobs & 64 == 0).then_some(DiscardLimits { granularity: 4096, alignment: 0, secure: knobs & 128 != 0 }),
    };
    if let Ok(Request::ReadWrite { segments: SegmentList::Indirect { nr_segments, .. }, .. }) = parse_slot(abi, slot, &limits) {
        let _ = parse_indirect_page(slot, usize::from(nr_segments).min(512), &limits);
    }
});
