use super::*;
use proptest::prelude::*;

/// A reference checksum: the RFC 1071 sum over an explicitly built pseudo-header and segment.
fn reference(pseudo: &[u8], segment: &[u8]) -> u16 {
    let mut all = pseudo.to_vec();
    all.extend_from_slice(segment);
    if all.len() % 2 == 1 {
        all.push(0);
    }
    let mut sum: u64 = 0;
    for w in all.chunks(2) {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp4_frame(payload: &[u8], pad: usize) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let total = 20 + 8 + payload.len();
    let mut ip = vec![
        0x45,
        0,
        0,
        0,
        0,
        1,
        0x40,
        0,
        64,
        IPPROTO_UDP,
        0,
        0,
        10,
        0,
        0,
        1,
        10,
        0,
        0,
        2,
    ];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = vec![0x30, 0x39, 0x00, 0x35, 0, 0, 0, 0];
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&udp);
    f.extend_from_slice(payload);
    f.extend(std::iter::repeat_n(0xee, pad));
    f
}

fn tcp6_frame(payload: &[u8], with_ext: bool) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
    let ext_len = if with_ext { 8 } else { 0 };
    let mut ip = vec![
        0x60,
        0,
        0,
        0,
        0,
        0,
        if with_ext { 0 } else { IPPROTO_TCP },
        64,
    ];
    ip[4..6].copy_from_slice(&((ext_len + 20 + payload.len()) as u16).to_be_bytes());
    ip.extend((0..16).map(|i| 0x20 + i as u8));
    ip.extend((0..16).map(|i| 0x40 + i as u8));
    f.extend_from_slice(&ip);
    if with_ext {
        f.extend_from_slice(&[IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
    }
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    f.extend_from_slice(&tcp);
    f.extend_from_slice(payload);
    f
}

#[test]
fn udp4_partial_then_complete_matches_reference() {
    let payload: Vec<u8> = (0..101u32).map(|i| (i * 7) as u8).collect();
    let mut f = udp4_frame(&payload, 0);
    let p = setup_partial(&mut f).unwrap();
    assert_eq!(
        p,
        Partial {
            start: 34,
            offset: 6
        }
    );
    assert!(complete_partial(&mut f, p, true));
    let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, IPPROTO_UDP];
    pseudo.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    let mut seg = f[34..].to_vec();
    seg[6] = 0;
    seg[7] = 0;
    assert_eq!(u16::from_be_bytes([f[40], f[41]]), reference(&pseudo, &seg));
    assert_eq!(verify_l4(&f), Some(true));
    f[50] ^= 1;
    assert_eq!(verify_l4(&f), Some(false));
}

#[test]
fn ethernet_padding_is_not_summed() {
    let mut f = udp4_frame(b"hi", 20);
    let p = setup_partial(&mut f).unwrap();
    assert!(complete_partial(&mut f, p, true));
    assert_eq!(verify_l4(&f), Some(true));
}

#[test]
fn tcp6_with_extension_header() {
    for ext in [false, true] {
        let mut f = tcp6_frame(b"hello, world", ext);
        let p = setup_partial(&mut f).unwrap();
        assert_eq!(p.start, 14 + 40 + if ext { 8 } else { 0 });
        assert_eq!(p.offset, 16);
        assert!(complete_partial(&mut f, p, false));
        assert_eq!(verify_l4(&f), Some(true));
    }
}

#[test]
fn fragments_and_other_protocols_are_not_set_up() {
    let mut f = udp4_frame(b"x", 0);
    f[14 + 6] = 0x20; // MF
    assert_eq!(setup_partial(&mut f), None);
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(setup_partial(&mut arp), None);
}

proptest! {
    #[test]
    fn arbitrary_frames_never_panic(mut frame in proptest::collection::vec(any::<u8>(), 0..200),
                                    start in 0usize..300, offset in 0usize..300) {
        let _ = locate_l4(&frame);
        let _ = verify_l4(&frame);
        let _ = setup_partial(&mut frame);
        let _ = complete_partial(&mut frame, Partial { start, offset }, false);
    }

    #[test]
    fn setup_then_complete_always_verifies(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut f = udp4_frame(&payload, 0);
        let p = setup_partial(&mut f).unwrap();
        prop_assert!(complete_partial(&mut f, p, true));
        prop_assert_eq!(verify_l4(&f), Some(true));
        let mut f = tcp6_frame(&payload, true);
        let p = setup_partial(&mut f).unwrap();
        prop_assert!(complete_partial(&mut f, p, false));
        prop_assert_eq!(verify_l4(&f), Some(true));
    }
}
