//! Every validation rule of the block section of `shared/hostile-frontends.md`, for both ABIs.

use proptest::prelude::*;
use xen_abi::blkif::*;
use zerocopy::IntoBytes;

use super::*;
use crate::abi::{encode_response, Abi};

fn limits() -> Limits {
    Limits {
        sectors: 1 << 20,
        sector_size: 512,
        read_only: false,
        max_indirect_segments: 256,
        flush: true,
        barrier: true,
        discard: Some(DiscardLimits {
            granularity: 4096,
            alignment: 0,
            secure: false,
        }),
    }
}

fn seg(gref: u32, first: u8, last: u8) -> BlkifRequestSegment {
    BlkifRequestSegment {
        gref,
        first_sect: first,
        last_sect: last,
        _pad: 0,
    }
}

fn native(op: u8, nr: u8, sector: u64, segs: &[BlkifRequestSegment]) -> Vec<u8> {
    let mut r = BlkifRequest {
        operation: op,
        nr_segments: nr,
        id: 0xfeed_0000_0000_0001,
        sector_number: sector,
        ..Default::default()
    };
    for (dst, s) in r.seg.iter_mut().zip(segs) {
        *dst = *s;
    }
    r.as_bytes().to_vec()
}

fn x86_32(op: u8, nr: u8, sector: u64, segs: &[BlkifRequestSegment]) -> Vec<u8> {
    let mut r = BlkifX86_32Request {
        operation: op,
        nr_segments: nr,
        id: 0xfeed_0000_0000_0001u64.to_le_bytes(),
        sector_number: sector.to_le_bytes(),
        ..Default::default()
    };
    for (dst, s) in r.seg.iter_mut().zip(segs) {
        dst.copy_from_slice(s.as_bytes());
    }
    r.as_bytes().to_vec()
}

fn both(op: u8, nr: u8, sector: u64, segs: &[BlkifRequestSegment]) -> [(Abi, Vec<u8>); 2] {
    [
        (Abi::X86_64, native(op, nr, sector, segs)),
        (Abi::X86_32, x86_32(op, nr, sector, segs)),
    ]
}

fn status(r: Result<Request, Rejection>) -> i16 {
    match r {
        Ok(_) => BLKIF_RSP_OKAY,
        Err(rej) => {
            assert_eq!(rej.id, 0xfeed_0000_0000_0001, "rejections keep the id");
            rej.status
        }
    }
}

#[test]
fn protocol_key_selects_the_abi() {
    assert_eq!(Abi::from_protocol(None), Ok(Abi::X86_64));
    assert_eq!(Abi::from_protocol(Some(b"x86_64-abi")), Ok(Abi::X86_64));
    assert_eq!(Abi::from_protocol(Some(b"x86_32-abi")), Ok(Abi::X86_32));
    assert!(Abi::from_protocol(Some(b"arm-abi")).is_err());
    assert!(Abi::from_protocol(Some(b"\xff")).is_err());
    assert_eq!(
        (
            Abi::X86_64.ring_slots(1),
            Abi::X86_32.ring_slots(1),
            Abi::X86_64.ring_slots(16)
        ),
        (32, 32, 512)
    );
}

#[test]
fn valid_reads_and_writes_parse_in_both_abis() {
    for (abi, slot) in both(BLKIF_OP_WRITE, 2, 8, &[seg(10, 0, 7), seg(11, 2, 3)]) {
        let r = parse_slot(abi, &slot, &limits()).unwrap();
        let Request::ReadWrite {
            id,
            op,
            sector,
            segments: SegmentList::Direct(s),
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!((id, op, sector), (0xfeed_0000_0000_0001, RwOp::Write, 8));
        assert_eq!(
            s,
            vec![
                Segment {
                    gref: 10,
                    first_sect: 0,
                    last_sect: 7
                },
                Segment {
                    gref: 11,
                    first_sect: 2,
                    last_sect: 3
                }
            ]
        );
        assert_eq!((s[1].offset(), s[1].len()), (1024, 1024));
    }
}

#[test]
fn bad_segment_counts_are_errors() {
    for (abi, slot) in both(BLKIF_OP_READ, 0, 0, &[]) {
        assert_eq!(status(parse_slot(abi, &slot, &limits())), BLKIF_RSP_ERROR);
    }
    let mut slot = native(BLKIF_OP_READ, 1, 0, &[seg(1, 0, 7)]);
    slot[1] = 12;
    assert_eq!(
        status(parse_slot(Abi::X86_64, &slot, &limits())),
        BLKIF_RSP_ERROR
    );
}

#[test]
fn bad_segments_are_errors() {
    for bad in [seg(1, 0, 8), seg(1, 5, 4), seg(1, 0, 255)] {
        for (abi, slot) in both(BLKIF_OP_READ, 1, 0, &[bad]) {
            assert_eq!(
                status(parse_slot(abi, &slot, &limits())),
                BLKIF_RSP_ERROR,
                "{bad:?}"
            );
        }
    }
    let four_k = Limits {
        sector_size: 4096,
        sectors: 1 << 20,
        ..limits()
    };
    for (abi, slot) in both(BLKIF_OP_READ, 1, 0, &[seg(1, 1, 7)]) {
        assert_eq!(
            status(parse_slot(abi, &slot, &four_k)),
            BLKIF_RSP_ERROR,
            "misaligned to 4K"
        );
    }
    for (abi, slot) in both(BLKIF_OP_READ, 1, 4, &[seg(1, 0, 7)]) {
        assert_eq!(
            status(parse_slot(abi, &slot, &four_k)),
            BLKIF_RSP_ERROR,
            "start misaligned to 4K"
        );
    }
    for (abi, slot) in both(BLKIF_OP_READ, 1, 8, &[seg(1, 0, 7)]) {
        assert_eq!(status(parse_slot(abi, &slot, &four_k)), BLKIF_RSP_OKAY);
    }
}

#[test]
fn out_of_range_and_overflowing_extents_are_errors() {
    let l = limits();
    for (sector, expect) in [
        (l.sectors - 8, BLKIF_RSP_OKAY),
        (l.sectors - 7, BLKIF_RSP_ERROR),
        (u64::MAX - 3, BLKIF_RSP_ERROR),
    ] {
        for (abi, slot) in both(BLKIF_OP_READ, 1, sector, &[seg(1, 0, 7)]) {
            assert_eq!(
                status(parse_slot(abi, &slot, &l)),
                expect,
                "sector {sector}"
            );
        }
    }
}

#[test]
fn read_only_disks_refuse_writes_flushes_and_discards() {
    let ro = Limits {
        read_only: true,
        ..limits()
    };
    for op in [
        BLKIF_OP_WRITE,
        BLKIF_OP_FLUSH_DISKCACHE,
        BLKIF_OP_WRITE_BARRIER,
    ] {
        for (abi, slot) in both(op, 1, 0, &[seg(1, 0, 7)]) {
            assert_eq!(status(parse_slot(abi, &slot, &ro)), BLKIF_RSP_ERROR);
        }
    }
    let discard = BlkifRequestDiscard {
        operation: BLKIF_OP_DISCARD,
        id: 0xfeed_0000_0000_0001,
        nr_sectors: 8,
        ..Default::default()
    };
    assert_eq!(
        status(parse_slot(Abi::X86_64, discard.as_bytes(), &ro)),
        BLKIF_RSP_ERROR
    );
    for (abi, slot) in both(BLKIF_OP_READ, 1, 0, &[seg(1, 0, 7)]) {
        assert_eq!(status(parse_slot(abi, &slot, &ro)), BLKIF_RSP_OKAY);
    }
}

#[test]
fn flushes_with_and_without_data() {
    for (abi, slot) in both(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, &[]) {
        assert_eq!(
            parse_slot(abi, &slot, &limits()),
            Ok(Request::Flush {
                id: 0xfeed_0000_0000_0001,
                operation: 3
            })
        );
    }
    for (abi, slot) in both(BLKIF_OP_FLUSH_DISKCACHE, 1, 0, &[seg(1, 0, 7)]) {
        let r = parse_slot(abi, &slot, &limits()).unwrap();
        assert!(
            matches!(
                r,
                Request::ReadWrite {
                    op: RwOp::Write,
                    flush_after: true,
                    operation: 3,
                    ..
                }
            ),
            "{r:?}"
        );
    }
    let none = Limits {
        flush: false,
        barrier: false,
        ..limits()
    };
    for op in [BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER] {
        for (abi, slot) in both(op, 0, 0, &[]) {
            assert_eq!(status(parse_slot(abi, &slot, &none)), BLKIF_RSP_EOPNOTSUPP);
        }
    }
}

#[test]
fn discard_rules() {
    let d = |sector, nr, flag| BlkifRequestDiscard {
        operation: BLKIF_OP_DISCARD,
        flag,
        id: 0xfeed_0000_0000_0001,
        sector_number: sector,
        nr_sectors: nr,
        ..Default::default()
    };
    let d32 = |sector: u64, nr: u64, flag| BlkifX86_32RequestDiscard {
        operation: BLKIF_OP_DISCARD,
        flag,
        id: 0xfeed_0000_0000_0001u64.to_le_bytes(),
        sector_number: sector.to_le_bytes(),
        nr_sectors: nr.to_le_bytes(),
        ..Default::default()
    };
    let l = limits();
    for (sector, nr, flag, expect) in [
        (8, 16, 0, BLKIF_RSP_OKAY),
        (8, 16, BLKIF_DISCARD_SECURE, BLKIF_RSP_EOPNOTSUPP),
        (1, 8, 0, BLKIF_RSP_ERROR),
        (8, 9, 0, BLKIF_RSP_ERROR),
        (8, u64::MAX - 4, 0, BLKIF_RSP_ERROR),
        (l.sectors, 8, 0, BLKIF_RSP_ERROR),
    ] {
        assert_eq!(
            status(parse_slot(Abi::X86_64, d(sector, nr, flag).as_bytes(), &l)),
            expect,
            "{sector} {nr}"
        );
        assert_eq!(
            status(parse_slot(
                Abi::X86_32,
                d32(sector, nr, flag).as_bytes(),
                &l
            )),
            expect,
            "x86_32 {sector} {nr}"
        );
    }
    let r = parse_slot(Abi::X86_64, d(8, 16, 0).as_bytes(), &l).unwrap();
    assert_eq!(
        r,
        Request::Discard {
            id: 0xfeed_0000_0000_0001,
            sector: 8,
            nr_sectors: 16,
            secure: false
        }
    );
    let off = Limits { discard: None, ..l };
    assert_eq!(
        status(parse_slot(Abi::X86_64, d(8, 16, 0).as_bytes(), &off)),
        BLKIF_RSP_EOPNOTSUPP
    );
}

#[test]
fn indirect_rules() {
    let ind = |indirect_op, nr, sector| BlkifRequestIndirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op,
        nr_segments: nr,
        id: 0xfeed_0000_0000_0001,
        sector_number: sector,
        indirect_grefs: [100, 101, 102, 103, 104, 105, 106, 107],
        ..Default::default()
    };
    let l = limits();
    let r = parse_slot(Abi::X86_64, ind(BLKIF_OP_WRITE, 256, 0).as_bytes(), &l).unwrap();
    assert!(
        matches!(r, Request::ReadWrite { op: RwOp::Write, segments: SegmentList::Indirect { nr_segments: 256, ref pages }, .. } if pages == &[100])
    );
    let r = parse_slot(
        Abi::X86_64,
        ind(BLKIF_OP_READ, 1, 0).as_bytes(),
        &Limits {
            max_indirect_segments: 4096,
            ..l
        },
    )
    .unwrap();
    assert!(matches!(
        r,
        Request::ReadWrite {
            segments: SegmentList::Indirect { nr_segments: 1, .. },
            ..
        }
    ));
    let big = Limits {
        max_indirect_segments: 4096,
        ..l
    };
    let r = parse_slot(Abi::X86_64, ind(BLKIF_OP_READ, 1025, 0).as_bytes(), &big).unwrap();
    assert!(
        matches!(r, Request::ReadWrite { segments: SegmentList::Indirect { ref pages, .. }, .. } if pages.len() == 3)
    );
    for (op, nr, expect) in [
        (BLKIF_OP_READ, 0, BLKIF_RSP_ERROR),
        (BLKIF_OP_READ, 257, BLKIF_RSP_ERROR),
        (BLKIF_OP_READ, 512, BLKIF_RSP_ERROR),
        (BLKIF_OP_DISCARD, 1, BLKIF_RSP_ERROR),
        (BLKIF_OP_INDIRECT, 1, BLKIF_RSP_ERROR),
        (BLKIF_OP_FLUSH_DISKCACHE, 1, BLKIF_RSP_ERROR),
    ] {
        assert_eq!(
            status(parse_slot(Abi::X86_64, ind(op, nr, 0).as_bytes(), &l)),
            expect,
            "op {op} nr {nr}"
        );
    }
    let off = Limits {
        max_indirect_segments: 0,
        ..l
    };
    assert_eq!(
        status(parse_slot(
            Abi::X86_64,
            ind(BLKIF_OP_READ, 1, 0).as_bytes(),
            &off
        )),
        BLKIF_RSP_EOPNOTSUPP
    );
    let i32 = BlkifX86_32RequestIndirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: BLKIF_OP_READ,
        nr_segments: 600u16.to_le_bytes(),
        id: 0xfeed_0000_0000_0001u64.to_le_bytes(),
        indirect_grefs: [
            7u32.to_le_bytes(),
            8u32.to_le_bytes(),
            [0; 4],
            [0; 4],
            [0; 4],
            [0; 4],
            [0; 4],
            [0; 4],
        ],
        ..Default::default()
    };
    let r = parse_slot(Abi::X86_32, i32.as_bytes(), &big).unwrap();
    assert!(
        matches!(r, Request::ReadWrite { segments: SegmentList::Indirect { nr_segments: 600, ref pages }, .. } if pages == &[7, 8])
    );
}

#[test]
fn indirect_pages_are_validated() {
    let mut page = vec![0u8; 4096];
    page[..8].copy_from_slice(seg(5, 0, 7).as_bytes());
    page[8..16].copy_from_slice(seg(6, 1, 1).as_bytes());
    assert_eq!(parse_indirect_page(&page, 2, &limits()).unwrap().len(), 2);
    page[8..16].copy_from_slice(seg(6, 3, 9).as_bytes());
    assert!(parse_indirect_page(&page, 2, &limits()).is_err());
    assert!(parse_indirect_page(&page, 513, &limits()).is_err());
    assert!(parse_indirect_page(&page[..8], 2, &limits()).is_err());
}

#[test]
fn unknown_operations_are_unsupported_with_their_id() {
    for op in [BLKIF_OP_RESERVED_1, 7, 100, 255] {
        for (abi, slot) in both(op, 1, 0, &[seg(1, 0, 7)]) {
            assert_eq!(
                status(parse_slot(abi, &slot, &limits())),
                BLKIF_RSP_EOPNOTSUPP
            );
        }
    }
}

#[test]
fn responses_are_written_whole() {
    let mut out = [0xaau8; 16];
    assert_eq!(
        encode_response(
            Abi::X86_64,
            0x1122_3344_5566_7788,
            1,
            BLKIF_RSP_ERROR,
            &mut out
        ),
        16
    );
    assert_eq!(
        out,
        [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 1, 0, 0xff, 0xff, 0, 0, 0, 0],
        "padding zeroed"
    );
    let mut out = [0xaau8; 12];
    assert_eq!(
        encode_response(Abi::X86_32, 7, 5, BLKIF_RSP_EOPNOTSUPP, &mut out),
        11
    );
    assert_eq!(&out[..11], &[7, 0, 0, 0, 0, 0, 0, 0, 5, 0xfe, 0xff]);
}

proptest! {
    /// Any slot content parses to a request or a rejection, never a panic, and accepted
    /// requests always lie within the disk.
    #[test]
    fn arbitrary_slots_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120), packed in any::<bool>(), ss4k in any::<bool>()) {
        let abi = if packed { Abi::X86_32 } else { Abi::X86_64 };
        let l = Limits { sector_size: if ss4k { 4096 } else { 512 }, ..limits() };
        match parse_slot(abi, &bytes, &l) {
            Ok(Request::ReadWrite { sector, segments: SegmentList::Direct(s), .. }) => {
                let total: u64 = s.iter().map(Segment::sectors).sum();
                prop_assert!(sector + total <= l.sectors);
                prop_assert!((1..=11).contains(&s.len()));
            }
            Ok(Request::Discard { sector, nr_sectors, .. }) => prop_assert!(sector + nr_sectors <= l.sectors),
            Ok(_) => {}
            Err(r) => prop_assert!(r.status == BLKIF_RSP_ERROR || r.status == BLKIF_RSP_EOPNOTSUPP),
        }
    }
}
