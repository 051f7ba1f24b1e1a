//! A guest's TX slot chains, judged as Linux netback judges them (`xenvif_tx_build_gops`,
//! `xenvif_get_extras`, `xenvif_count_requests`, `xenvif_set_skb_gso`).
//!
//! A packet is a first slot (whose `size` is the whole packet's length), optionally followed
//! by a chain of extra-info slots (when the first has `NETTXF_extra_info`), then by fragments
//! while `NETTXF_more_data` is set. [`parse_tx`] pops the slots it needs through a callback
//! that hands out private copies of ring slots and returns `None` when the frontend has
//! produced no more; it never reads a slot twice. Every slot it pops must be answered: the
//! returned [`TxItem`] lists them, and [`TxItem::responses`] writes one response per slot
//! (`NETIF_RSP_NULL` for extra-info slots, as Linux does).

use xen_abi::netif::{
    NetifExtraGso, NetifExtraInfo, NetifTxRequest, NetifTxResponse, NETIF_RSP_NULL,
    NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
    XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_EXTRA_TYPE_NONE,
    XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6, XEN_NETIF_NR_SLOTS_MIN,
};
use xen_abi::{GrantRef, PAGE_SIZE};
use zerocopy::{FromBytes, IntoBytes};

use crate::ETH_HLEN;

/// Fragments after the first slot at which a packet is dropped (Linux: `XEN_NETBK_LEGACY_SLOTS_MAX`).
pub const DROP_FOLLOWING_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN;
/// Fragments after the first slot at which the frontend is deemed malicious (Linux:
/// `fatal_skb_slots`, default 20).
pub const FATAL_FOLLOWING_SLOTS: usize = 20;

/// A piece of a packet in a granted page. `offset + len` never exceeds the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxFragment {
    /// The grant of the page.
    pub gref: GrantRef,
    /// Offset in the page.
    pub offset: u16,
    /// Bytes.
    pub len: u16,
}

/// Which TCP flavour a GSO packet segments into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4.
    TcpV4,
    /// TCP over IPv6.
    TcpV6,
}

/// Segmentation offload of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// TCP flavour.
    pub kind: GsoKind,
    /// Segment payload size (MSS), never 0.
    pub size: u16,
}

/// Which GSO kinds the backend advertised (`feature-gso-tcpv4`, `feature-gso-tcpv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxFeatures {
    /// `feature-gso-tcpv4` advertised.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6` advertised.
    pub gso_tcpv6: bool,
}

/// A packet ready to copy: fragments in order, the first holding at least an Ethernet header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    /// The fragments, in order; zero-length fragments are left out (they carry nothing).
    pub fragments: Vec<TxFragment>,
    /// Total bytes (the first slot's `size`).
    pub len: usize,
    /// `NETTXF_csum_blank`: the L4 checksum is to be filled in.
    pub csum_blank: bool,
    /// `NETTXF_data_validated`: the checksum is known good.
    pub data_validated: bool,
    /// Segmentation offload requested by a GSO extra.
    pub gso: Option<Gso>,
}

/// A multicast-control request carried in a TX extra (`feature-multicast-control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McastOp {
    /// `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`.
    Add([u8; 6]),
    /// `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`.
    Del([u8; 6]),
}

/// Why the interface must be disabled (Linux `xenvif_fatal_tx_err`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxFatal {
    /// An extra-info chain ran past what the frontend produced.
    MissingExtraInfo,
    /// Extra-info type 0 or beyond the last known type.
    InvalidExtraType(u8),
    /// A fragment chain ran past what the frontend produced (never terminated).
    UnterminatedChain,
    /// More than [`FATAL_FOLLOWING_SLOTS`] fragments.
    TooManySlots,
    /// A fragment crosses its page.
    CrossPage {
        /// The fragment's offset.
        offset: u16,
        /// The fragment's size.
        size: u16,
    },
    /// A GSO extra with segment size 0.
    ZeroGsoSize,
    /// A GSO extra of a type we do not know or did not advertise.
    BadGsoType(u8),
}

impl std::fmt::Display for TxFatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingExtraInfo => write!(f, "missing extra info"),
            Self::InvalidExtraType(t) => write!(f, "invalid extra type {t}"),
            Self::UnterminatedChain => write!(f, "fragment chain never terminated"),
            Self::TooManySlots => write!(f, "malicious frontend using too many slots"),
            Self::CrossPage { offset, size } => {
                write!(
                    f,
                    "fragment crosses a page boundary (offset {offset}, size {size})"
                )
            }
            Self::ZeroGsoSize => write!(f, "GSO size must not be zero"),
            Self::BadGsoType(t) => write!(f, "bad GSO type {t}"),
        }
    }
}

/// Why a packet was refused without disabling the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxDrop {
    /// More than [`DROP_FOLLOWING_SLOTS`] fragments.
    TooManySlots,
    /// The later fragments add up to more than the packet's declared size.
    BiggerThanFrame,
    /// The first fragment holds less than an Ethernet header.
    RuntHeader,
}

/// What a slot chain turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxVerdict {
    /// A packet to copy and forward; answer `NETIF_RSP_OKAY` once copied.
    Packet(TxPacket),
    /// A multicast-control request; answer OKAY or ERROR per its outcome. No packet.
    Mcast(McastOp),
    /// A malformed packet; answer `NETIF_RSP_ERROR` to every slot.
    Drop(TxDrop),
    /// A malicious chain: disable the interface. The slots need no answers.
    Fatal(TxFatal),
}

/// One popped slot that needs a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Data(u16),
    Extra,
}

/// A judged slot chain and the slots it consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxItem {
    /// What the chain is.
    pub verdict: TxVerdict,
    slots: Vec<Slot>,
}

impl TxItem {
    /// Ring slots consumed.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// One response per consumed slot, in ring order: `status` for data slots (with their id),
    /// `NETIF_RSP_NULL` for extra-info slots.
    pub fn responses(&self, status: i16) -> impl Iterator<Item = NetifTxResponse> + '_ {
        self.slots.iter().map(move |slot| match *slot {
            Slot::Data(id) => NetifTxResponse { id, status },
            Slot::Extra => NetifTxResponse {
                id: 0,
                status: NETIF_RSP_NULL,
            },
        })
    }
}

/// The extra-info view of a TX slot (the union overlays the request).
pub fn extra_of(slot: &NetifTxRequest) -> NetifExtraInfo {
    let mut extra = NetifExtraInfo::default();
    let src = slot.as_bytes();
    let dst = extra.as_mut_bytes();
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
    extra
}

fn gso_of(extra: &NetifExtraInfo, features: TxFeatures) -> Result<Gso, TxFatal> {
    let gso = NetifExtraGso::read_from_bytes(&extra.u).unwrap_or_default();
    if gso.size == 0 {
        return Err(TxFatal::ZeroGsoSize);
    }
    let kind = match gso.type_ {
        XEN_NETIF_GSO_TYPE_TCPV4 if features.gso_tcpv4 => GsoKind::TcpV4,
        XEN_NETIF_GSO_TYPE_TCPV6 if features.gso_tcpv6 => GsoKind::TcpV6,
        other => return Err(TxFatal::BadGsoType(other)),
    };
    Ok(Gso {
        kind,
        size: gso.size,
    })
}

fn fatal(verdict: TxFatal, slots: Vec<Slot>) -> TxItem {
    TxItem {
        verdict: TxVerdict::Fatal(verdict),
        slots,
    }
}

fn mac_of(extra: &NetifExtraInfo) -> [u8; 6] {
    extra.u
}

/// Judges the slot chain that starts with `first` (already popped), popping its extra-info
/// slots and fragments through `next`.
pub fn parse_tx(
    first: NetifTxRequest,
    next: &mut dyn FnMut() -> Option<NetifTxRequest>,
    features: TxFeatures,
) -> TxItem {
    let mut slots = vec![Slot::Data(first.id)];
    // Extra-info slots, by type (the last of each type wins, as in Linux).
    let mut gso_extra: Option<NetifExtraInfo> = None;
    let mut mcast: Option<McastOp> = None;
    if first.flags & NETTXF_EXTRA_INFO != 0 {
        loop {
            let Some(slot) = next() else {
                return fatal(TxFatal::MissingExtraInfo, slots);
            };
            slots.push(Slot::Extra);
            let extra = extra_of(&slot);
            match extra.type_ {
                XEN_NETIF_EXTRA_TYPE_NONE => {
                    return fatal(TxFatal::InvalidExtraType(extra.type_), slots)
                }
                t if t >= XEN_NETIF_EXTRA_TYPE_MAX => {
                    return fatal(TxFatal::InvalidExtraType(t), slots)
                }
                XEN_NETIF_EXTRA_TYPE_GSO => gso_extra = Some(extra),
                XEN_NETIF_EXTRA_TYPE_MCAST_ADD => mcast = Some(McastOp::Add(mac_of(&extra))),
                XEN_NETIF_EXTRA_TYPE_MCAST_DEL => mcast = Some(McastOp::Del(mac_of(&extra))),
                _ => {} // HASH: a hint we do not need on the transmit side.
            }
            if extra.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
                break;
            }
        }
    }
    // A multicast-control "packet" is only its first slot and extras (Linux answers it before
    // counting fragments).
    if let Some(op) = mcast {
        return TxItem {
            verdict: TxVerdict::Mcast(op),
            slots,
        };
    }
    let mut drop: Option<TxDrop> = None;
    let mut remaining = first.size;
    let mut fragments = Vec::new();
    let mut following = 0usize;
    let mut more = first.flags & NETTXF_MORE_DATA != 0;
    while more {
        if following >= FATAL_FOLLOWING_SLOTS {
            return fatal(TxFatal::TooManySlots, slots);
        }
        if drop.is_none() && following >= DROP_FOLLOWING_SLOTS {
            drop = Some(TxDrop::TooManySlots);
        }
        let Some(slot) = next() else {
            return fatal(TxFatal::UnterminatedChain, slots);
        };
        slots.push(Slot::Data(slot.id));
        following += 1;
        if drop.is_none() && slot.size > remaining {
            drop = Some(TxDrop::BiggerThanFrame);
        }
        remaining = remaining.wrapping_sub(slot.size);
        if usize::from(slot.offset) + usize::from(slot.size) > PAGE_SIZE {
            return fatal(
                TxFatal::CrossPage {
                    offset: slot.offset,
                    size: slot.size,
                },
                slots,
            );
        }
        more = slot.flags & NETTXF_MORE_DATA != 0;
        if drop.is_none() && slot.size > 0 {
            fragments.push(TxFragment {
                gref: slot.gref,
                offset: slot.offset,
                len: slot.size,
            });
        }
    }
    if let Some(why) = drop {
        return TxItem {
            verdict: TxVerdict::Drop(why),
            slots,
        };
    }
    // `remaining` is now the first fragment's own size.
    if usize::from(remaining) < ETH_HLEN {
        return TxItem {
            verdict: TxVerdict::Drop(TxDrop::RuntHeader),
            slots,
        };
    }
    if usize::from(first.offset) + usize::from(remaining) > PAGE_SIZE {
        return fatal(
            TxFatal::CrossPage {
                offset: first.offset,
                size: remaining,
            },
            slots,
        );
    }
    let gso = match gso_extra.map(|e| gso_of(&e, features)).transpose() {
        Ok(g) => g,
        Err(f) => return fatal(f, slots),
    };
    fragments.insert(
        0,
        TxFragment {
            gref: first.gref,
            offset: first.offset,
            len: remaining,
        },
    );
    TxItem {
        verdict: TxVerdict::Packet(TxPacket {
            fragments,
            len: usize::from(first.size),
            csum_blank: first.flags & NETTXF_CSUM_BLANK != 0,
            data_validated: first.flags & NETTXF_DATA_VALIDATED != 0,
            gso,
        }),
        slots,
    }
}

#[cfg(test)]
mod tests;
