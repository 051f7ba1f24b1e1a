//! Control-ring requests (`feature-ctrl-ring`), applied as Linux netback's `hash.c` applies
//! them: a Toeplitz key, the enabled hash types and a hash-to-queue mapping table.
//!
//! Guest data arrives in granted pages; [`handle`] reads it through a caller-supplied copy
//! function into a private buffer *before* validating it (the XSA-270 lesson: the mapping
//! entries were once checked in the shared page and then used), and commits only whole, valid
//! updates. Staging-grant requests (`*_GREF_MAPPING`) are answered `NOT_SUPPORTED`.

use xen_abi::netif::{
    ctrl_type, NetifCtrlRequest, NetifCtrlResponse, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ,
    XEN_NETIF_CTRL_HASH_TYPE_IPV4, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
    XEN_NETIF_CTRL_HASH_TYPE_IPV6, XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
    XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
    XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED, XEN_NETIF_CTRL_STATUS_SUCCESS,
};
use xen_abi::{GrantRef, PAGE_SIZE};

use crate::hash::{hash_frame, FrameHash, KEY_SIZE};

/// Largest mapping table (Linux: `XEN_NETBK_MAX_HASH_MAPPING_SIZE`).
pub const MAX_MAPPING_SIZE: u32 = 128;
/// `XEN_NETIF_CTRL_HASH_ALGORITHM_NONE`.
pub const ALGORITHM_NONE: u32 = 0;
/// Every hash type we support.
pub const SUPPORTED_TYPES: u32 = XEN_NETIF_CTRL_HASH_TYPE_IPV4
    | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP
    | XEN_NETIF_CTRL_HASH_TYPE_IPV6
    | XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP;

/// The frontend's hashing configuration, as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashConfig {
    /// `ALGORITHM_NONE` or Toeplitz.
    pub algorithm: u32,
    /// Enabled `XEN_NETIF_CTRL_HASH_TYPE_*` bits.
    pub flags: u32,
    /// The Toeplitz key (zero-padded).
    pub key: [u8; KEY_SIZE],
    /// Hash-to-queue table; every entry is below the queue count.
    pub mapping: Vec<u32>,
}

impl Default for HashConfig {
    fn default() -> Self {
        Self {
            algorithm: ALGORITHM_NONE,
            flags: 0,
            key: [0; KEY_SIZE],
            mapping: Vec::new(),
        }
    }
}

impl HashConfig {
    /// The frame's hash, if hashing is on and a type applies.
    pub fn hash(&self, frame: &[u8]) -> Option<FrameHash> {
        if self.algorithm != XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ {
            return None;
        }
        hash_frame(&self.key, self.flags, frame)
    }

    /// The queue a hashed frame belongs to (Linux `xenvif_select_queue`).
    pub fn queue_of(&self, hash: u32, queues: u32) -> u32 {
        if self.mapping.is_empty() {
            return hash % queues.max(1);
        }
        let slot = hash as usize % self.mapping.len();
        self.mapping.get(slot).copied().unwrap_or(0)
    }
}

/// Copies `dst.len()` bytes from offset 0 of the granted page `gref` into `dst`; false if the
/// grant could not be copied.
pub type CopyFromGrant<'a> = &'a mut dyn FnMut(GrantRef, &mut [u8]) -> bool;

fn answer(req: &NetifCtrlRequest, status: u32, data: u32) -> NetifCtrlResponse {
    NetifCtrlResponse {
        id: req.id,
        type_: req.type_,
        status,
        data,
    }
}

/// Applies one control request to `config` for an interface of `queues` queues.
pub fn handle(
    req: &NetifCtrlRequest,
    config: &mut HashConfig,
    queues: u32,
    copy: CopyFromGrant<'_>,
) -> NetifCtrlResponse {
    let [d0, d1, d2] = req.data;
    let ok = |data| answer(req, XEN_NETIF_CTRL_STATUS_SUCCESS, data);
    let invalid = answer(req, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER, 0);
    match req.type_ {
        ctrl_type::SET_HASH_ALGORITHM => match d0 {
            ALGORITHM_NONE | XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ => {
                config.algorithm = d0;
                ok(0)
            }
            _ => invalid,
        },
        ctrl_type::GET_HASH_FLAGS => ok(SUPPORTED_TYPES),
        ctrl_type::SET_HASH_FLAGS => {
            if d0 & !SUPPORTED_TYPES != 0 {
                return invalid;
            }
            config.flags = d0;
            ok(0)
        }
        ctrl_type::SET_HASH_KEY => {
            let len = d1 as usize;
            if len > KEY_SIZE {
                return answer(req, XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW, 0);
            }
            let mut key = [0u8; KEY_SIZE];
            if let Some(dst) = key.get_mut(..len) {
                if len > 0 && !copy(d0, dst) {
                    return invalid;
                }
            }
            config.key = key;
            ok(0)
        }
        ctrl_type::GET_HASH_MAPPING_SIZE => ok(MAX_MAPPING_SIZE),
        ctrl_type::SET_HASH_MAPPING_SIZE => {
            if d0 > MAX_MAPPING_SIZE {
                return invalid;
            }
            config.mapping = vec![0; d0 as usize];
            ok(0)
        }
        ctrl_type::SET_HASH_MAPPING => {
            let (gref, len, off) = (d0, d1 as usize, d2 as usize);
            let Some(end) = off.checked_add(len) else {
                return invalid;
            };
            if end > config.mapping.len() || len > PAGE_SIZE / 4 {
                return invalid;
            }
            // Copy the entries out of the guest's page first, then validate the copy.
            let mut raw = vec![0u8; len * 4];
            if len > 0 && !copy(gref, &mut raw) {
                return invalid;
            }
            let entries: Vec<u32> = raw
                .chunks_exact(4)
                .map(|c| u32::from_ne_bytes(c.try_into().unwrap_or([0xff; 4])))
                .collect();
            if entries.iter().any(|&q| q >= queues) {
                return invalid;
            }
            if let Some(dst) = config.mapping.get_mut(off..end) {
                dst.copy_from_slice(&entries);
            }
            ok(0)
        }
        _ => answer(req, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED, 0),
    }
}

#[cfg(test)]
mod tests;
