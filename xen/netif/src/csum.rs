//! Checksum offload on Ethernet frames: find the L4 header, seed a partial checksum with the
//! pseudo-header sum (what `skb_checksum_setup` does for a frontend's `csum_blank` packets), and
//! complete a partial checksum in software (for a guest that cannot take blank checksums).
//!
//! Every offset comes from the frame itself and is checked against its length; a frame that
//! cannot be parsed yields `None`, never a panic.

use crate::ETH_HLEN;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: u16 = 0x8100;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Most IPv6 extension headers walked before giving up.
const MAX_IPV6_EXTENSIONS: usize = 8;

/// Network-layer addresses of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// IPv4 source and destination.
    V4([u8; 4], [u8; 4]),
    /// IPv6 source and destination.
    V6([u8; 16], [u8; 16]),
}

/// Where a frame's transport header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4 {
    /// Addresses.
    pub l3: L3,
    /// Transport protocol (`IPPROTO_*`).
    pub proto: u8,
    /// Offset of the transport header in the frame.
    pub offset: usize,
    /// Bytes from `offset` to the end of the IP payload (bounded by the frame).
    pub len: usize,
}

impl L4 {
    /// Offset of the checksum field within the transport header, for TCP and UDP.
    pub fn csum_field(&self) -> Option<usize> {
        match self.proto {
            IPPROTO_TCP => Some(16),
            IPPROTO_UDP => Some(6),
            _ => None,
        }
    }
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    let b = frame.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

fn array<const N: usize>(frame: &[u8], at: usize) -> Option<[u8; N]> {
    frame.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Parses Ethernet (one optional 802.1Q tag), IPv4 or IPv6 (walking hop-by-hop, routing and
/// destination-option headers) and returns where the transport header starts. Fragments yield
/// `None`: their checksum cannot be set up.
pub fn locate_l4(frame: &[u8]) -> Option<L4> {
    let mut l3_at = ETH_HLEN;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16)?;
        l3_at += 4;
    }
    match ethertype {
        ETHERTYPE_IPV4 => {
            let vihl = *frame.get(l3_at)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return None;
            }
            let total = usize::from(be16(frame, l3_at + 2)?);
            let frag = be16(frame, l3_at + 6)?;
            if frag & 0x3fff != 0 {
                return None; // MF set or a non-zero fragment offset
            }
            let proto = *frame.get(l3_at + 9)?;
            let src = array::<4>(frame, l3_at + 12)?;
            let dst = array::<4>(frame, l3_at + 16)?;
            let offset = l3_at + ihl;
            let end = (l3_at + total).min(frame.len());
            Some(L4 {
                l3: L3::V4(src, dst),
                proto,
                offset,
                len: end.checked_sub(offset)?,
            })
        }
        ETHERTYPE_IPV6 => {
            if *frame.get(l3_at)? >> 4 != 6 {
                return None;
            }
            let payload = usize::from(be16(frame, l3_at + 4)?);
            let mut next = *frame.get(l3_at + 6)?;
            let src = array::<16>(frame, l3_at + 8)?;
            let dst = array::<16>(frame, l3_at + 24)?;
            let end = (l3_at + 40 + payload).min(frame.len());
            let mut offset = l3_at + 40;
            for _ in 0..MAX_IPV6_EXTENSIONS {
                match next {
                    0 | 43 | 60 => {
                        let hdr_len = (usize::from(*frame.get(offset + 1)?) + 1) * 8;
                        next = *frame.get(offset)?;
                        offset = offset.checked_add(hdr_len)?;
                    }
                    44 => return None, // fragment header
                    proto => {
                        return Some(L4 {
                            l3: L3::V6(src, dst),
                            proto,
                            offset,
                            len: end.checked_sub(offset)?,
                        })
                    }
                }
            }
            None
        }
        _ => None,
    }
}

/// One's-complement sum of `data` as big-endian 16-bit words, added to `sum`.
pub fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        if let [a, b] = pair {
            sum = sum.wrapping_add(u32::from(u16::from_be_bytes([*a, *b])));
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    (sum & 0xffff) + (sum >> 16)
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The folded pseudo-header sum of `l4` (addresses, protocol, transport length).
pub fn pseudo_header_sum(l4: &L4) -> u16 {
    let len = l4.len as u32;
    let mut sum = match l4.l3 {
        L3::V4(s, d) => ones_sum(ones_sum(0, &s), &d),
        L3::V6(s, d) => ones_sum(ones_sum(0, &s), &d),
    };
    sum = sum.wrapping_add(len >> 16).wrapping_add(len & 0xffff);
    sum = sum.wrapping_add(u32::from(l4.proto));
    fold(sum)
}

/// A partial checksum: the transport checksum is computed from `start` to the frame's end and
/// stored at `start + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    /// Where summing starts (the transport header).
    pub start: usize,
    /// Offset of the checksum field from `start`.
    pub offset: usize,
}

/// Sets a TCP or UDP frame up for checksum offload: writes the pseudo-header sum into its
/// checksum field and returns where the checksum goes. `None` for anything else.
pub fn setup_partial(frame: &mut [u8]) -> Option<Partial> {
    let l4 = locate_l4(frame)?;
    let offset = l4.csum_field()?;
    let at = l4.offset.checked_add(offset)?;
    if at + 2 > l4.offset + l4.len {
        return None;
    }
    let seed = pseudo_header_sum(&l4).to_be_bytes();
    frame.get_mut(at..at + 2)?.copy_from_slice(&seed);
    Some(Partial {
        start: l4.offset,
        offset,
    })
}

/// Where a TCP or UDP frame's checksum goes, leaving the frame as it is (its checksum field
/// already holds the pseudo-header sum, as a peer that offloads checksums leaves it). `frame`
/// may be only the frame's first bytes, as long as they hold the headers.
pub fn partial_of(frame: &[u8]) -> Option<Partial> {
    let l4 = locate_l4(frame)?;
    let offset = l4.csum_field()?;
    let at = l4.offset.checked_add(offset)?;
    (at + 2 <= frame.len()).then_some(Partial {
        start: l4.offset,
        offset,
    })
}

/// Completes a partial checksum in software: sums from `start` to the end of the frame (the
/// field holds the pseudo-header seed) and stores the complement. False if out of bounds.
pub fn complete_partial(frame: &mut [u8], partial: Partial, udp: bool) -> bool {
    let Some(at) = partial.start.checked_add(partial.offset) else {
        return false;
    };
    // Sum to the end of the IP payload, not into Ethernet padding.
    let end = locate_l4(frame)
        .filter(|l4| l4.offset == partial.start)
        .map_or(frame.len(), |l4| l4.offset + l4.len);
    let (Some(body), true) = (frame.get(partial.start..end), at + 2 <= end) else {
        return false;
    };
    let mut csum = !fold(ones_sum(0, body));
    if udp && csum == 0 {
        csum = 0xffff;
    }
    match frame.get_mut(at..at + 2) {
        Some(field) => {
            field.copy_from_slice(&csum.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Whether the transport checksum of a TCP or UDP frame verifies (for tests and diagnostics).
pub fn verify_l4(frame: &[u8]) -> Option<bool> {
    let l4 = locate_l4(frame)?;
    l4.csum_field()?;
    let body = frame.get(l4.offset..l4.offset + l4.len)?;
    let sum = ones_sum(u32::from(pseudo_header_sum(&l4)), body);
    Some(fold(sum) == 0xffff)
}

#[cfg(test)]
mod tests;
