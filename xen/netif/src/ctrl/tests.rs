use super::*;

fn req(type_: u16, data: [u32; 3]) -> NetifCtrlRequest {
    NetifCtrlRequest { id: 7, type_, data }
}

/// A fake granted page: gref 5 holds `page`, anything else fails.
fn run(r: NetifCtrlRequest, cfg: &mut HashConfig, queues: u32, page: &[u8]) -> NetifCtrlResponse {
    handle(&r, cfg, queues, &mut |gref, dst: &mut [u8]| {
        if gref != 5 || dst.len() > page.len() {
            return false;
        }
        dst.copy_from_slice(&page[..dst.len()]);
        true
    })
}

#[test]
fn key_flags_algorithm() {
    let mut cfg = HashConfig::default();
    let page: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    let r = run(req(ctrl_type::SET_HASH_KEY, [5, 40, 0]), &mut cfg, 4, &page);
    assert_eq!((r.id, r.type_, r.status), (7, ctrl_type::SET_HASH_KEY, 0));
    assert_eq!(&cfg.key[..], &page[..40]);
    // A shorter key is zero-padded.
    run(req(ctrl_type::SET_HASH_KEY, [5, 4, 0]), &mut cfg, 4, &page);
    assert_eq!(&cfg.key[..6], &[0, 1, 2, 3, 0, 0]);
    let r = run(req(ctrl_type::SET_HASH_KEY, [5, 41, 0]), &mut cfg, 4, &page);
    assert_eq!(r.status, XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW);
    let r = run(req(ctrl_type::SET_HASH_KEY, [6, 8, 0]), &mut cfg, 4, &page);
    assert_eq!(r.status, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
    let r = run(req(ctrl_type::GET_HASH_FLAGS, [0; 3]), &mut cfg, 4, &page);
    assert_eq!((r.status, r.data), (0, SUPPORTED_TYPES));
    let r = run(
        req(ctrl_type::SET_HASH_FLAGS, [1 << 4, 0, 0]),
        &mut cfg,
        4,
        &page,
    );
    assert_eq!(r.status, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
    let r = run(
        req(ctrl_type::SET_HASH_ALGORITHM, [2, 0, 0]),
        &mut cfg,
        4,
        &page,
    );
    assert_eq!(r.status, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
    let r = run(
        req(ctrl_type::SET_HASH_ALGORITHM, [1, 0, 0]),
        &mut cfg,
        4,
        &page,
    );
    assert_eq!(r.status, 0);
    assert_eq!(cfg.algorithm, 1);
}

#[test]
fn mapping_is_validated_on_a_private_copy() {
    let mut cfg = HashConfig::default();
    let r = run(
        req(ctrl_type::SET_HASH_MAPPING_SIZE, [129, 0, 0]),
        &mut cfg,
        4,
        &[],
    );
    assert_eq!(r.status, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
    let r = run(
        req(ctrl_type::GET_HASH_MAPPING_SIZE, [0; 3]),
        &mut cfg,
        4,
        &[],
    );
    assert_eq!(r.data, MAX_MAPPING_SIZE);
    run(
        req(ctrl_type::SET_HASH_MAPPING_SIZE, [8, 0, 0]),
        &mut cfg,
        4,
        &[],
    );
    assert_eq!(cfg.mapping, vec![0; 8]);
    let entries: Vec<u8> = [3u32, 2, 1, 0]
        .iter()
        .flat_map(|e| e.to_ne_bytes())
        .collect();
    let r = run(
        req(ctrl_type::SET_HASH_MAPPING, [5, 4, 2]),
        &mut cfg,
        4,
        &entries,
    );
    assert_eq!(r.status, 0);
    assert_eq!(cfg.mapping, vec![0, 0, 3, 2, 1, 0, 0, 0]);
    // An entry naming a queue that does not exist: refused, table unchanged.
    let r = run(
        req(ctrl_type::SET_HASH_MAPPING, [5, 4, 0]),
        &mut cfg,
        3,
        &entries,
    );
    assert_eq!(r.status, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
    assert_eq!(cfg.mapping, vec![0, 0, 3, 2, 1, 0, 0, 0]);
    // Offset + length overflowing or past the table.
    for data in [[5, 4, 6], [5, 2, u32::MAX], [5, u32::MAX, 2], [5, 1025, 0]] {
        let r = run(
            req(ctrl_type::SET_HASH_MAPPING, data),
            &mut cfg,
            4,
            &entries,
        );
        assert_eq!(
            r.status, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
            "{data:?}"
        );
    }
    assert_eq!(cfg.queue_of(2, 4), 3);
    assert_eq!(HashConfig::default().queue_of(7, 4), 3);
}

#[test]
fn unknown_and_staging_grant_requests_are_not_supported() {
    let mut cfg = HashConfig::default();
    for t in [
        0,
        ctrl_type::ADD_GREF_MAPPING,
        ctrl_type::GET_GREF_MAPPING_SIZE,
        99,
    ] {
        let r = run(req(t, [0; 3]), &mut cfg, 1, &[]);
        assert_eq!(r.status, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED);
    }
}
