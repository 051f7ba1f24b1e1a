//! The Xen network protocol (`netif.h`) as data, and the packet metadata a backend needs to
//! move frames between a guest and a host network stack.
//!
//! Everything here is pure:
//! - [`tx`]: a guest's TX slot chain (first slot, extra-info slots, fragments) parsed from
//!   private copies of ring slots and judged exactly as Linux netback judges it: a packet, a
//!   multicast-control request, an error (answer every slot with `NETIF_RSP_ERROR`), or a fatal
//!   fault that disables the interface.
//! - [`rx`]: how one host frame is laid out over the guest's posted RX buffers (data slots and
//!   the GSO / hash extra-info slots in the places Linux netfront expects them).
//! - [`vnet`]: the `virtio_net_hdr` a TAP device with `IFF_VNET_HDR` speaks, and its mapping to
//!   netif's checksum and GSO flags.
//! - [`csum`]: locating the L4 header of a frame and setting up or completing a partial checksum.
//! - [`hash`]: Toeplitz hashing of IPv4/IPv6 (+TCP) flows, as the control ring configures it.
//! - [`ctrl`]: control-ring requests (hash algorithm, flags, key, mapping) applied to a private
//!   [`ctrl::HashConfig`], validating every guest value on a private copy (XSA-270).

pub mod csum;
pub mod ctrl;
pub mod hash;
pub mod rx;
pub mod tx;
pub mod vnet;

/// Length of an Ethernet header.
pub const ETH_HLEN: usize = 14;
