//! Toeplitz hashing of flows (the RSS hash that netif's control ring configures), and which
//! bytes of a frame feed it for each enabled hash type.

use xen_abi::netif::{
    XEN_NETIF_CTRL_HASH_TYPE_IPV4, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
    XEN_NETIF_CTRL_HASH_TYPE_IPV6, XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
};

use crate::csum::{locate_l4, IPPROTO_TCP, L3};

/// Bytes of a Toeplitz key (Linux netback: `XEN_NETBK_MAX_HASH_KEY_SIZE`).
pub const KEY_SIZE: usize = 40;

/// The Toeplitz hash of `input` under `key`: for every set bit of the input (most significant
/// first), XOR in the 32 key bits that start at that bit position. Input beyond what the key
/// covers contributes nothing.
pub fn toeplitz(key: &[u8; KEY_SIZE], input: &[u8]) -> u32 {
    let mut result = 0u32;
    // The 64-bit window holds key bits [bit, bit + 64); its top 32 bits are the current window.
    let mut window = u64::from_be_bytes([
        key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
    ]);
    for (i, byte) in input.iter().enumerate() {
        if i + 4 > KEY_SIZE {
            break;
        }
        for b in 0..8 {
            if byte & (0x80 >> b) != 0 {
                result ^= (window >> 32) as u32;
            }
            window <<= 1;
        }
        window |= u64::from(key.get(i + 8).copied().unwrap_or(0));
    }
    result
}

/// The hash of a frame: the value and the `XEN_NETIF_CTRL_HASH_TYPE_*` bit number it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHash {
    /// Toeplitz value.
    pub value: u32,
    /// Bit number of the hash type (0 IPv4, 1 IPv4+TCP, 2 IPv6, 3 IPv6+TCP).
    pub type_bit: u8,
}

/// Hashes `frame` with the most specific type enabled in `flags`, or `None` when no enabled
/// type applies.
pub fn hash_frame(key: &[u8; KEY_SIZE], flags: u32, frame: &[u8]) -> Option<FrameHash> {
    let l4 = locate_l4(frame)?;
    let ports = if l4.proto == IPPROTO_TCP {
        frame.get(l4.offset..l4.offset + 4)
    } else {
        None
    };
    let mut input = [0u8; 36];
    let (addr_len, tcp_type, ip_type) = match l4.l3 {
        L3::V4(s, d) => {
            input[..4].copy_from_slice(&s);
            input[4..8].copy_from_slice(&d);
            (
                8,
                XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
                XEN_NETIF_CTRL_HASH_TYPE_IPV4,
            )
        }
        L3::V6(s, d) => {
            input[..16].copy_from_slice(&s);
            input[16..32].copy_from_slice(&d);
            (
                32,
                XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
                XEN_NETIF_CTRL_HASH_TYPE_IPV6,
            )
        }
    };
    let (len, type_) = match ports {
        Some(p) if flags & tcp_type != 0 => {
            if let Some(dst) = input.get_mut(addr_len..addr_len + 4) {
                dst.copy_from_slice(p);
            }
            (addr_len + 4, tcp_type)
        }
        _ if flags & ip_type != 0 => (addr_len, ip_type),
        _ => return None,
    };
    Some(FrameHash {
        value: toeplitz(key, input.get(..len)?),
        type_bit: type_.trailing_zeros() as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key and vectors of Microsoft's RSS verification suite.
    const KEY: [u8; KEY_SIZE] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    #[test]
    fn microsoft_ipv4_vectors() {
        // Source 66.9.149.187:2794, destination 161.142.100.80:1766.
        let mut input = vec![66, 9, 149, 187, 161, 142, 100, 80];
        assert_eq!(toeplitz(&KEY, &input), 0x323e8fc2);
        input.extend_from_slice(&2794u16.to_be_bytes());
        input.extend_from_slice(&1766u16.to_be_bytes());
        assert_eq!(toeplitz(&KEY, &input), 0x51ccc178);
    }

    #[test]
    fn frame_hash_uses_enabled_types() {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0];
        ip.extend_from_slice(&[66, 9, 149, 187, 161, 142, 100, 80]);
        f.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[..2].copy_from_slice(&2794u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&1766u16.to_be_bytes());
        f.extend_from_slice(&tcp);
        let all = XEN_NETIF_CTRL_HASH_TYPE_IPV4 | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
        assert_eq!(
            hash_frame(&KEY, all, &f),
            Some(FrameHash {
                value: 0x51ccc178,
                type_bit: 1
            })
        );
        assert_eq!(
            hash_frame(&KEY, XEN_NETIF_CTRL_HASH_TYPE_IPV4, &f),
            Some(FrameHash {
                value: 0x323e8fc2,
                type_bit: 0
            })
        );
        assert_eq!(hash_frame(&KEY, XEN_NETIF_CTRL_HASH_TYPE_IPV6, &f), None);
    }
}
