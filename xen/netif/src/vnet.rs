//! The `virtio_net_hdr` that a TAP device opened with `IFF_VNET_HDR` puts before every frame
//! (`include/uapi/linux/virtio_net.h`, legacy 10-byte form, native byte order), and its mapping
//! to netif's checksum and GSO flags.

use xen_abi::netif::{
    NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::tx::{Gso, GsoKind};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum from `csum_start`, stored at `+csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum is known good.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP`.
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN` (a flag on the type).
pub const GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr` (10 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VirtioNetHdr {
    /// `F_*`.
    pub flags: u8,
    /// `GSO_*`.
    pub gso_type: u8,
    /// Length of the headers (a hint).
    pub hdr_len: u16,
    /// Segment payload size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

/// Bytes of the header.
pub const VNET_HDR_LEN: usize = core::mem::size_of::<VirtioNetHdr>();

/// Segmentation the host asks the guest to receive, if netif can express it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostGso {
    /// No segmentation.
    None,
    /// TCP segmentation netif can carry.
    Tcp(Gso),
    /// Something netif cannot carry (UDP fragmentation, ECN, an unknown type).
    Unsupported,
}

impl VirtioNetHdr {
    /// The GSO request of a frame read from the TAP device.
    pub fn gso(&self) -> HostGso {
        let kind = match self.gso_type {
            GSO_NONE => return HostGso::None,
            GSO_TCPV4 => GsoKind::TcpV4,
            GSO_TCPV6 => GsoKind::TcpV6,
            _ => return HostGso::Unsupported,
        };
        if self.gso_size == 0 {
            return HostGso::Unsupported;
        }
        HostGso::Tcp(Gso {
            kind,
            size: self.gso_size,
        })
    }

    /// The `NETRXF_*` checksum flags for a frame read from the TAP device.
    pub fn rx_flags(&self) -> u16 {
        if self.flags & F_NEEDS_CSUM != 0 {
            NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED
        } else if self.flags & F_DATA_VALID != 0 {
            NETRXF_DATA_VALIDATED
        } else {
            0
        }
    }
}

/// The netif GSO type of a [`GsoKind`].
pub fn netif_gso_type(kind: GsoKind) -> u8 {
    match kind {
        GsoKind::TcpV4 => XEN_NETIF_GSO_TYPE_TCPV4,
        GsoKind::TcpV6 => XEN_NETIF_GSO_TYPE_TCPV6,
    }
}

/// The virtio GSO type of a [`GsoKind`].
pub fn virtio_gso_type(kind: GsoKind) -> u8 {
    match kind {
        GsoKind::TcpV4 => GSO_TCPV4,
        GsoKind::TcpV6 => GSO_TCPV6,
    }
}
