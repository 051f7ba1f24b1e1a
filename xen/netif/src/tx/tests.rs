use super::*;
use proptest::prelude::*;
use xen_abi::netif::{NETIF_RSP_ERROR, XEN_NETIF_EXTRA_TYPE_HASH};

const ALL: TxFeatures = TxFeatures {
    gso_tcpv4: true,
    gso_tcpv6: true,
};

fn slot(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> NetifTxRequest {
    NetifTxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    }
}

fn extra_slot(type_: u8, flags: u8, u: [u8; 6]) -> NetifTxRequest {
    let extra = NetifExtraInfo { type_, flags, u };
    let mut req = NetifTxRequest::default();
    req.as_mut_bytes()[..8].copy_from_slice(extra.as_bytes());
    req
}

fn run(chain: &[NetifTxRequest]) -> (TxItem, usize) {
    let mut rest = chain[1..].iter().copied();
    let mut popped = 0;
    let item = parse_tx(
        chain[0],
        &mut || {
            let s = rest.next();
            popped += usize::from(s.is_some());
            s
        },
        ALL,
    );
    (item, popped + 1)
}

#[test]
fn single_slot_packet() {
    let (item, popped) = run(&[slot(7, 100, NETTXF_CSUM_BLANK, 3, 60)]);
    assert_eq!(popped, 1);
    let TxVerdict::Packet(p) = &item.verdict else {
        panic!("{item:?}")
    };
    assert_eq!(p.len, 60);
    assert!(p.csum_blank);
    assert_eq!(
        p.fragments,
        vec![TxFragment {
            gref: 7,
            offset: 100,
            len: 60
        }]
    );
    let rsps: Vec<_> = item.responses(0).collect();
    assert_eq!(rsps, vec![NetifTxResponse { id: 3, status: 0 }]);
}

#[test]
fn fragments_and_first_slot_size() {
    let chain = [
        slot(1, 0, NETTXF_MORE_DATA, 10, 5000),
        slot(2, 0, NETTXF_MORE_DATA, 11, 4000),
        slot(3, 0, 0, 12, 900),
    ];
    let (item, popped) = run(&chain);
    assert_eq!(popped, 3);
    let TxVerdict::Packet(p) = &item.verdict else {
        panic!("{item:?}")
    };
    let lens: Vec<u16> = p.fragments.iter().map(|f| f.len).collect();
    assert_eq!(lens, vec![100, 4000, 900]);
    assert_eq!(p.len, 5000);
    let ids: Vec<u16> = item.responses(0).map(|r| r.id).collect();
    assert_eq!(ids, vec![10, 11, 12]);
}

#[test]
fn gso_extra_is_parsed_and_answered_null() {
    let gso = NetifExtraGso {
        size: 1448,
        type_: XEN_NETIF_GSO_TYPE_TCPV4,
        pad: 0,
        features: 0,
    };
    let mut u = [0u8; 6];
    u.copy_from_slice(gso.as_bytes());
    let chain = [
        slot(1, 0, NETTXF_EXTRA_INFO | NETTXF_MORE_DATA, 1, 3000),
        extra_slot(XEN_NETIF_EXTRA_TYPE_GSO, 0, u),
        slot(2, 0, 0, 2, 1000),
    ];
    let (item, _) = run(&chain);
    let TxVerdict::Packet(p) = &item.verdict else {
        panic!("{item:?}")
    };
    assert_eq!(
        p.gso,
        Some(Gso {
            kind: GsoKind::TcpV4,
            size: 1448
        })
    );
    let rsps: Vec<_> = item.responses(0).collect();
    assert_eq!(rsps.len(), 3);
    assert_eq!(rsps[1].status, NETIF_RSP_NULL);
}

#[test]
fn gso_not_advertised_or_zero_is_fatal() {
    let mut u = [0u8; 6];
    u[..2].copy_from_slice(&1448u16.to_ne_bytes());
    u[2] = XEN_NETIF_GSO_TYPE_TCPV6;
    let chain = [
        slot(1, 0, NETTXF_EXTRA_INFO, 1, 100),
        extra_slot(XEN_NETIF_EXTRA_TYPE_GSO, 0, u),
    ];
    let item = parse_tx(chain[0], &mut || Some(chain[1]), TxFeatures::default());
    assert_eq!(
        item.verdict,
        TxVerdict::Fatal(TxFatal::BadGsoType(XEN_NETIF_GSO_TYPE_TCPV6))
    );
    u[..2].copy_from_slice(&0u16.to_ne_bytes());
    let chain = [
        slot(1, 0, NETTXF_EXTRA_INFO, 1, 100),
        extra_slot(XEN_NETIF_EXTRA_TYPE_GSO, 0, u),
    ];
    assert_eq!(
        run(&chain).0.verdict,
        TxVerdict::Fatal(TxFatal::ZeroGsoSize)
    );
}

#[test]
fn extra_type_abuse_is_fatal() {
    for t in [XEN_NETIF_EXTRA_TYPE_NONE, XEN_NETIF_EXTRA_TYPE_MAX, 200] {
        let chain = [
            slot(1, 0, NETTXF_EXTRA_INFO, 1, 100),
            extra_slot(t, 0, [0; 6]),
        ];
        assert_eq!(
            run(&chain).0.verdict,
            TxVerdict::Fatal(TxFatal::InvalidExtraType(t))
        );
    }
    // An extra chain that runs off the ring.
    let chain = [
        slot(1, 0, NETTXF_EXTRA_INFO, 1, 100),
        extra_slot(XEN_NETIF_EXTRA_TYPE_HASH, XEN_NETIF_EXTRA_FLAG_MORE, [0; 6]),
    ];
    assert_eq!(
        run(&chain).0.verdict,
        TxVerdict::Fatal(TxFatal::MissingExtraInfo)
    );
}

#[test]
fn multicast_control_consumes_only_first_and_extras() {
    let mac = [0x01, 0x00, 0x5e, 0, 0, 1];
    let chain = [
        slot(0, 0, NETTXF_EXTRA_INFO, 9, 0),
        extra_slot(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, 0, mac),
    ];
    let (item, popped) = run(&chain);
    assert_eq!(popped, 2);
    assert_eq!(item.verdict, TxVerdict::Mcast(McastOp::Add(mac)));
    assert_eq!(item.slots(), 2);
}

#[test]
fn slot_limits_drop_then_fatal() {
    // Linux counts the slots after the first: 19 of them drop the packet (every slot is
    // consumed and answered with an error), 18 are accepted, 21 are malicious.
    let chain_of = |following: u16| {
        let mut chain = vec![slot(1, 0, NETTXF_MORE_DATA, 0, (following + 1) * 60)];
        for i in 1..=following {
            let flags = if i < following { NETTXF_MORE_DATA } else { 0 };
            chain.push(slot(1, 0, flags, i, 60));
        }
        chain
    };
    let (item, popped) = run(&chain_of(19));
    assert_eq!(item.verdict, TxVerdict::Drop(TxDrop::TooManySlots));
    assert_eq!((item.slots(), popped), (20, 20));
    assert!(item
        .responses(NETIF_RSP_ERROR)
        .all(|r| r.status == NETIF_RSP_ERROR));
    assert!(matches!(run(&chain_of(18)).0.verdict, TxVerdict::Packet(_)));
    assert_eq!(
        run(&chain_of(20)).0.verdict,
        TxVerdict::Drop(TxDrop::TooManySlots)
    );
    assert_eq!(
        run(&chain_of(21)).0.verdict,
        TxVerdict::Fatal(TxFatal::TooManySlots)
    );
}

#[test]
fn unterminated_chain_is_fatal() {
    let chain = [
        slot(1, 0, NETTXF_MORE_DATA, 0, 200),
        slot(1, 0, NETTXF_MORE_DATA, 1, 100),
    ];
    assert_eq!(
        run(&chain).0.verdict,
        TxVerdict::Fatal(TxFatal::UnterminatedChain)
    );
}

#[test]
fn size_checks() {
    // Later fragments larger than the declared total: dropped, not fatal.
    let chain = [slot(1, 0, NETTXF_MORE_DATA, 0, 100), slot(1, 0, 0, 1, 200)];
    assert_eq!(
        run(&chain).0.verdict,
        TxVerdict::Drop(TxDrop::BiggerThanFrame)
    );
    // First fragment shorter than an Ethernet header.
    let chain = [slot(1, 0, NETTXF_MORE_DATA, 0, 110), slot(1, 0, 0, 1, 100)];
    assert_eq!(run(&chain).0.verdict, TxVerdict::Drop(TxDrop::RuntHeader));
    assert_eq!(
        run(&[slot(1, 0, 0, 0, 13)]).0.verdict,
        TxVerdict::Drop(TxDrop::RuntHeader)
    );
    // Crossing the page, first or later fragment.
    assert!(matches!(
        run(&[slot(1, 4000, 0, 0, 200)]).0.verdict,
        TxVerdict::Fatal(TxFatal::CrossPage { .. })
    ));
    let chain = [
        slot(1, 0, NETTXF_MORE_DATA, 0, 300),
        slot(1, 4090, 0, 1, 100),
    ];
    assert!(matches!(
        run(&chain).0.verdict,
        TxVerdict::Fatal(TxFatal::CrossPage { .. })
    ));
}

#[test]
fn zero_length_fragments_are_skipped() {
    let chain = [
        slot(1, 0, NETTXF_MORE_DATA, 0, 100),
        slot(2, 0, NETTXF_MORE_DATA, 1, 0),
        slot(3, 4096, 0, 2, 0),
    ];
    let (item, _) = run(&chain);
    let TxVerdict::Packet(p) = &item.verdict else {
        panic!("{item:?}")
    };
    assert_eq!(p.fragments.len(), 1);
    assert_eq!(item.slots(), 3);
}

proptest! {
    /// Whatever the slots, the parser never pops more than it was given plus nothing, answers
    /// every popped slot, and a packet's fragments stay inside their pages and add up to its
    /// length.
    #[test]
    fn any_chain_is_judged_safely(raw in proptest::collection::vec(any::<[u8; 12]>(), 1..40)) {
        let slots: Vec<NetifTxRequest> = raw
            .iter()
            .map(|b| NetifTxRequest::read_from_bytes(b).unwrap())
            .collect();
        let (item, popped) = run(&slots);
        prop_assert_eq!(item.slots(), popped);
        prop_assert!(popped <= slots.len());
        prop_assert_eq!(item.responses(0).count(), popped);
        if let TxVerdict::Packet(p) = &item.verdict {
            let total: usize = p.fragments.iter().map(|f| usize::from(f.len)).sum();
            prop_assert_eq!(total, p.len);
            prop_assert!(p.len >= ETH_HLEN);
            for f in &p.fragments {
                prop_assert!(usize::from(f.offset) + usize::from(f.len) <= PAGE_SIZE);
            }
            prop_assert!(p.fragments.len() <= 1 + DROP_FOLLOWING_SLOTS);
        }
    }
}
