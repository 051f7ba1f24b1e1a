//! How one host frame is laid out over the guest's posted RX buffers (Linux netback's
//! `xenvif_rx_skb`): data is packed into whole pages from offset 0; the first data slot carries
//! the checksum flags; extra-info slots (GSO, then hash) follow the first data slot, chained
//! with `XEN_NETIF_EXTRA_FLAG_MORE`; every data slot but the last has `NETRXF_more_data`.
//!
//! Each layout slot consumes exactly one posted request and its response goes into that
//! request's slot (Linux netfront finds buffers by ring position, not by id).

use xen_abi::netif::{
    NetifExtraGso, NetifExtraHash, NetifExtraInfo, NetifRxResponse, NETRXF_EXTRA_INFO,
    NETRXF_MORE_DATA, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ, XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_HASH,
};
use xen_abi::PAGE_SIZE;
use zerocopy::{FromBytes, IntoBytes};

use crate::hash::FrameHash;
use crate::tx::Gso;
use crate::vnet::netif_gso_type;

/// One slot of a frame's RX layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxSlot {
    /// `len` bytes of the frame from `from`, copied to offset 0 of the posted page.
    Data {
        /// Offset in the frame.
        from: usize,
        /// Bytes (1..=4096).
        len: usize,
        /// `NETRXF_*`.
        flags: u16,
    },
    /// An extra-info slot written as the response.
    Extra(NetifExtraInfo),
}

/// What a frame carries besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxMeta {
    /// `NETRXF_csum_blank` / `NETRXF_data_validated` for the first slot.
    pub csum_flags: u16,
    /// Segmentation the guest is to be told about.
    pub gso: Option<Gso>,
    /// The flow hash to pass on (when the guest configured hashing).
    pub hash: Option<FrameHash>,
}

/// Slots a frame of `len` bytes needs.
pub fn slots_needed(len: usize, meta: &RxMeta) -> usize {
    len.div_ceil(PAGE_SIZE).max(1)
        + usize::from(meta.gso.is_some())
        + usize::from(meta.hash.is_some())
}

fn extra(type_: u8, more: bool, union: &[u8]) -> NetifExtraInfo {
    let mut u = [0u8; 6];
    for (d, s) in u.iter_mut().zip(union) {
        *d = *s;
    }
    NetifExtraInfo {
        type_,
        flags: if more { XEN_NETIF_EXTRA_FLAG_MORE } else { 0 },
        u,
    }
}

/// The slots of a frame of `len` (> 0) bytes.
pub fn layout(len: usize, meta: &RxMeta) -> Vec<RxSlot> {
    let mut slots = Vec::with_capacity(slots_needed(len, meta));
    let mut extras = Vec::new();
    if let Some(gso) = meta.gso {
        let g = NetifExtraGso {
            size: gso.size,
            type_: netif_gso_type(gso.kind),
            pad: 0,
            features: 0,
        };
        extras.push((XEN_NETIF_EXTRA_TYPE_GSO, g.as_bytes().to_vec()));
    }
    if let Some(h) = meta.hash {
        let hv = NetifExtraHash {
            type_: h.type_bit,
            algorithm: XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ as u8,
            value: h.value.to_le_bytes(),
        };
        extras.push((XEN_NETIF_EXTRA_TYPE_HASH, hv.as_bytes().to_vec()));
    }
    let mut from = 0;
    while from < len || from == 0 {
        let chunk = (len - from).min(PAGE_SIZE);
        let mut flags = if from == 0 { meta.csum_flags } else { 0 };
        if from == 0 && !extras.is_empty() {
            flags |= NETRXF_EXTRA_INFO;
        }
        if from + chunk < len {
            flags |= NETRXF_MORE_DATA;
        }
        slots.push(RxSlot::Data {
            from,
            len: chunk,
            flags,
        });
        if from == 0 {
            let n = extras.len();
            for (i, (t, u)) in extras.iter().enumerate() {
                slots.push(RxSlot::Extra(extra(*t, i + 1 < n, u)));
            }
        }
        from += chunk;
        if chunk == 0 {
            break;
        }
    }
    slots
}

/// The response for `slot`, answering the request `id`. Data responses carry their byte count
/// as status; extra-info slots overlay the response with the extra.
pub fn response(id: u16, slot: &RxSlot) -> NetifRxResponse {
    match slot {
        RxSlot::Data { len, flags, .. } => NetifRxResponse {
            id,
            offset: 0,
            flags: *flags,
            status: i16::try_from(*len).unwrap_or(i16::MAX),
        },
        RxSlot::Extra(e) => NetifRxResponse::read_from_bytes(e.as_bytes()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tx::GsoKind;
    use xen_abi::netif::{NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED};

    #[test]
    fn small_frame_is_one_slot() {
        let meta = RxMeta {
            csum_flags: NETRXF_DATA_VALIDATED,
            ..Default::default()
        };
        let l = layout(60, &meta);
        assert_eq!(
            l,
            vec![RxSlot::Data {
                from: 0,
                len: 60,
                flags: NETRXF_DATA_VALIDATED
            }]
        );
        assert_eq!(slots_needed(60, &meta), 1);
        let r = response(4, &l[0]);
        assert_eq!((r.id, r.offset, r.status), (4, 0, 60));
    }

    #[test]
    fn gso_frame_has_extras_after_first_slot() {
        let meta = RxMeta {
            csum_flags: NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED,
            gso: Some(Gso {
                kind: GsoKind::TcpV6,
                size: 1440,
            }),
            hash: Some(FrameHash {
                value: 0xdeadbeef,
                type_bit: 3,
            }),
        };
        let len = 3 * PAGE_SIZE + 10;
        let l = layout(len, &meta);
        assert_eq!(l.len(), slots_needed(len, &meta));
        assert_eq!(l.len(), 6);
        let RxSlot::Data {
            flags, len: first, ..
        } = l[0]
        else {
            panic!()
        };
        assert_eq!(first, PAGE_SIZE);
        assert_eq!(
            flags,
            NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED | NETRXF_EXTRA_INFO | NETRXF_MORE_DATA
        );
        let RxSlot::Extra(g) = l[1] else { panic!() };
        assert_eq!(
            (g.type_, g.flags),
            (XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_FLAG_MORE)
        );
        assert_eq!(&g.u[..3], &[0xa0, 0x05, 2]);
        let RxSlot::Extra(h) = l[2] else { panic!() };
        assert_eq!((h.type_, h.flags), (XEN_NETIF_EXTRA_TYPE_HASH, 0));
        assert_eq!(h.u, [3, 1, 0xef, 0xbe, 0xad, 0xde]);
        let RxSlot::Data {
            from,
            len: last,
            flags,
        } = l[5]
        else {
            panic!()
        };
        assert_eq!((from, last, flags), (3 * PAGE_SIZE, 10, 0));
        let total: usize = l
            .iter()
            .map(|s| match s {
                RxSlot::Data { len, .. } => *len,
                RxSlot::Extra(_) => 0,
            })
            .sum();
        assert_eq!(total, len);
        // The extra is written over the response slot byte for byte.
        assert_eq!(response(9, &l[1]).as_bytes(), g.as_bytes());
    }

    #[test]
    fn page_multiple_has_no_empty_tail() {
        let l = layout(2 * PAGE_SIZE, &RxMeta::default());
        assert_eq!(l.len(), 2);
    }
}
