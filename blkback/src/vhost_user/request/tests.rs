use proptest::prelude::*;

use super::*;

/// Guest memory for the tests: 64 KiB from address 0.
struct Memory(Vec<u8>);

impl Memory {
    fn new() -> Self {
        Self(vec![0; 65536])
    }
    fn put(&mut self, addr: u64, bytes: &[u8]) {
        let a = addr as usize;
        self.0[a..a + bytes.len()].copy_from_slice(bytes);
    }
    fn header(&mut self, addr: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.put(addr, &h);
    }
    fn parse(&self, chain: &[(u64, u32, bool)], limits: &Limits) -> Option<Parsed> {
        parse(
            chain,
            |addr, out| {
                let a = addr as usize;
                match a.checked_add(out.len()).and_then(|end| self.0.get(a..end)) {
                    Some(src) => {
                        out.copy_from_slice(src);
                        true
                    }
                    None => false,
                }
            },
            limits,
        )
    }
}

const DISK: Limits = Limits {
    sectors: 2048,
    block: 512,
    read_only: false,
    discard: true,
};

fn seg(addr: u64, len: u32) -> Segment {
    Segment { addr, len }
}

#[test]
fn linux_layouts_parse() {
    let mut m = Memory::new();
    m.header(0, VIRTIO_BLK_T_IN, 8);
    let p = m
        .parse(&[(0, 16, false), (4096, 4096, true), (100, 1, true)], &DISK)
        .unwrap();
    assert_eq!(p.status, 100);
    assert_eq!(
        p.request,
        Ok(Request::Read {
            offset: 4096,
            segments: vec![seg(4096, 4096)],
            len: 4096
        })
    );
    m.header(0, VIRTIO_BLK_T_OUT, 0);
    let p = m
        .parse(
            &[
                (0, 16, false),
                (4096, 512, false),
                (8192, 1024, false),
                (200, 1, true),
            ],
            &DISK,
        )
        .unwrap();
    assert_eq!(
        p.request,
        Ok(Request::Write {
            offset: 0,
            segments: vec![seg(4096, 512), seg(8192, 1024)],
            len: 1536
        })
    );
    m.header(0, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        m.parse(&[(0, 16, false), (200, 1, true)], &DISK)
            .unwrap()
            .request,
        Ok(Request::Flush)
    );
    m.header(0, VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(
        m.parse(&[(0, 16, false), (300, 20, true), (200, 1, true)], &DISK)
            .unwrap()
            .request,
        Ok(Request::GetId {
            segments: vec![seg(300, 20)]
        })
    );
}

#[test]
fn any_layout_header_and_status_may_share_descriptors() {
    let mut m = Memory::new();
    // Header split over two descriptors, data in the second's tail; status at the end of the
    // data descriptor.
    m.header(1000, VIRTIO_BLK_T_OUT, 2);
    let p = m
        .parse(
            &[(1000, 10, false), (1010, 6 + 512, false), (5000, 513, true)],
            &DISK,
        )
        .unwrap();
    assert_eq!(p.status, 5512);
    assert_eq!(
        p.request,
        Ok(Request::Write {
            offset: 1024,
            segments: vec![seg(1016, 512)],
            len: 512
        })
    );
}

#[test]
fn discard_ranges_are_checked() {
    let mut m = Memory::new();
    m.header(0, VIRTIO_BLK_T_DISCARD, 0);
    let range = |sector: u64, sectors: u32, flags: u32| {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&sectors.to_le_bytes());
        r[12..].copy_from_slice(&flags.to_le_bytes());
        r
    };
    let chain = [(0, 16, false), (100, 16, false), (200, 1, true)];
    m.put(100, &range(8, 16, 0));
    assert_eq!(
        m.parse(&chain, &DISK).unwrap().request,
        Ok(Request::Discard {
            offset: 4096,
            len: 8192
        })
    );
    m.put(100, &range(8, 16, 1));
    assert_eq!(
        m.parse(&chain, &DISK).unwrap().request,
        Err(2),
        "unmap flag"
    );
    m.put(100, &range(2040, 16, 0));
    assert_eq!(
        m.parse(&chain, &DISK).unwrap().request,
        Err(1),
        "past the end"
    );
    let two = [(0, 16, false), (100, 32, false), (200, 1, true)];
    assert_eq!(m.parse(&two, &DISK).unwrap().request, Err(2), "two ranges");
    let short = [(0, 16, false), (100, 15, false), (200, 1, true)];
    assert_eq!(m.parse(&short, &DISK).unwrap().request, Err(1));
    // Write zeroes takes the unmap flag and no other; a read-only disk refuses it.
    m.header(0, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    m.put(100, &range(8, 16, 1));
    assert_eq!(
        m.parse(&chain, &DISK).unwrap().request,
        Ok(Request::WriteZeroes {
            offset: 4096,
            len: 8192,
            unmap: true
        })
    );
    m.put(100, &range(8, 16, 0));
    assert_eq!(
        m.parse(&chain, &DISK).unwrap().request,
        Ok(Request::WriteZeroes {
            offset: 4096,
            len: 8192,
            unmap: false
        })
    );
    m.put(100, &range(8, 16, 2));
    assert_eq!(
        m.parse(&chain, &DISK).unwrap().request,
        Err(2),
        "reserved flag"
    );
    let ro = Limits {
        read_only: true,
        ..DISK
    };
    assert_eq!(m.parse(&chain, &ro).unwrap().request, Err(1));
    m.header(0, VIRTIO_BLK_T_DISCARD, 0);
    let no_discard = Limits {
        discard: false,
        ..DISK
    };
    assert_eq!(m.parse(&chain, &no_discard).unwrap().request, Err(2));
}

#[test]
fn hostile_chains_are_refused_with_a_status() {
    let mut m = Memory::new();
    m.header(0, VIRTIO_BLK_T_IN, 0);
    // No writable byte at all: nothing can be answered.
    assert_eq!(m.parse(&[(0, 16, false)], &DISK), None);
    assert_eq!(m.parse(&[], &DISK), None);
    // Readable after writable.
    let p = m
        .parse(
            &[
                (0, 16, false),
                (4096, 512, true),
                (8192, 512, false),
                (200, 1, true),
            ],
            &DISK,
        )
        .unwrap();
    assert_eq!(p.request, Err(1));
    // Short header.
    assert_eq!(
        m.parse(&[(0, 15, false), (200, 1, true)], &DISK)
            .unwrap()
            .request,
        Err(1)
    );
    // Header outside guest memory.
    assert_eq!(
        m.parse(&[(u64::MAX - 8, 16, false), (200, 1, true)], &DISK)
            .unwrap()
            .request,
        Err(1)
    );
    // Unaligned length, past the end, sector overflow.
    assert_eq!(
        m.parse(&[(0, 16, false), (4096, 100, true), (200, 1, true)], &DISK)
            .unwrap()
            .request,
        Err(1)
    );
    m.header(0, VIRTIO_BLK_T_IN, 2047);
    assert_eq!(
        m.parse(&[(0, 16, false), (4096, 1024, true), (200, 1, true)], &DISK)
            .unwrap()
            .request,
        Err(1)
    );
    m.header(0, VIRTIO_BLK_T_IN, u64::MAX / 256);
    assert_eq!(
        m.parse(&[(0, 16, false), (4096, 512, true), (200, 1, true)], &DISK)
            .unwrap()
            .request,
        Err(1)
    );
    // A 4 KiB-block disk refuses 512-byte units.
    let big = Limits {
        block: 4096,
        ..DISK
    };
    m.header(0, VIRTIO_BLK_T_IN, 1);
    assert_eq!(
        m.parse(&[(0, 16, false), (4096, 4096, true), (200, 1, true)], &big)
            .unwrap()
            .request,
        Err(1)
    );
    // Unknown types, and writes to a read-only disk.
    m.header(0, 77, 0);
    assert_eq!(
        m.parse(&[(0, 16, false), (200, 1, true)], &DISK)
            .unwrap()
            .request,
        Err(2)
    );
    m.header(0, VIRTIO_BLK_T_OUT, 0);
    let ro = Limits {
        read_only: true,
        ..DISK
    };
    assert_eq!(
        m.parse(&[(0, 16, false), (4096, 512, false), (200, 1, true)], &ro)
            .unwrap()
            .request,
        Err(1)
    );
    // Too many segments.
    let mut chain = vec![(0u64, 16u32, false)];
    chain.extend((0..MAX_SEGMENTS as u64 + 1).map(|i| (4096 + i * 512, 512, false)));
    chain.push((200, 1, true));
    let huge = Limits {
        sectors: 1 << 30,
        ..DISK
    };
    assert_eq!(m.parse(&chain, &huge).unwrap().request, Err(1));
}

proptest! {
    /// Whatever the chain and the header, parsing answers without panicking, and an accepted
    /// request stays inside the disk and inside the chain's own buffers.
    #[test]
    fn any_chain_parses_safely(
        header in proptest::collection::vec(any::<u8>(), 16),
        chain in proptest::collection::vec((0u64..70000, 0u32..9000, any::<bool>()), 0..8),
    ) {
        let mut m = Memory::new();
        m.put(0, &header);
        let mut with_header = vec![(0u64, 16u32, false)];
        with_header.extend(chain.iter().copied());
        for c in [&chain, &with_header] {
            if let Some(Parsed { request: Ok(r), .. }) = m.parse(c, &DISK) {
                let in_disk = |offset: u64, len: u64| offset + len <= DISK.sectors * 512;
                match r {
                    Request::Read { offset, len, segments } | Request::Write { offset, len, segments } => {
                        prop_assert!(in_disk(offset, len));
                        prop_assert_eq!(total(&segments), len);
                    }
                    Request::Discard { offset, len } | Request::WriteZeroes { offset, len, .. } => {
                        prop_assert!(in_disk(offset, len))
                    }
                    Request::Flush | Request::GetId { .. } => {}
                }
            }
        }
    }
}

proptest! {
    /// The fuzz harness on random input (the fuzzer runs it on nightly).
    #[test]
    fn the_fuzz_harness_holds_on_random_input(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        super::fuzz::run(&data);
    }
}
