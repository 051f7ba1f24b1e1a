//! What the vhost-user-blk device offers: its virtio feature bits and its configuration space
//! (`struct virtio_blk_config` of the virtio 1.2 specification, §5.2.4), built from the disk.

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{Immutable, IntoBytes, KnownLayout};

use crate::storage::DiskInfo;

/// Data segments one request may carry (`seg_max`): what Linux's virtio-blk then never exceeds.
/// Each segment is one `iovec`, and a chain also holds a header and a status descriptor.
pub const SEG_MAX: u32 = 254;

/// Largest discard or write-zeroes range, in 512-byte sectors (`max_discard_sectors`,
/// `max_write_zeroes_sectors`): 2 GiB, as QEMU offers.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;

/// Discard or write-zeroes ranges per request (`max_discard_seg`, `max_write_zeroes_seg`).
pub const MAX_DISCARD_SEG: u32 = 1;

/// The device's configuration space, little-endian, byte-packed as the specification lays it
/// out (96 bytes with the zoned characteristics, which stay zero: the device is not zoned).
#[derive(Debug, Default, Clone, Copy, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct BlkConfig {
    /// Size in 512-byte sectors.
    pub capacity: U64,
    /// Largest segment (`VIRTIO_BLK_F_SIZE_MAX`, not offered).
    pub size_max: U32,
    /// Most segments per request.
    pub seg_max: U32,
    /// Legacy geometry: cylinders, heads, sectors (not offered).
    pub geometry: [u8; 4],
    /// Logical block size in bytes.
    pub blk_size: U32,
    /// log2(physical block / logical block).
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block.
    pub alignment_offset: u8,
    /// Suggested minimum I/O size, in logical blocks.
    pub min_io_size: U16,
    /// Optimal I/O size, in logical blocks.
    pub opt_io_size: U32,
    /// Write-back cache flag (`VIRTIO_BLK_F_CONFIG_WCE`, not offered).
    pub wce: u8,
    /// Reserved.
    pub unused0: u8,
    /// Number of request queues (`VIRTIO_BLK_F_MQ`).
    pub num_queues: U16,
    /// Largest discard, in 512-byte sectors.
    pub max_discard_sectors: U32,
    /// Discard ranges per request.
    pub max_discard_seg: U32,
    /// Discard alignment, in 512-byte sectors.
    pub discard_sector_alignment: U32,
    /// Largest write-zeroes range, in 512-byte sectors.
    pub max_write_zeroes_sectors: U32,
    /// Write-zeroes ranges per request.
    pub max_write_zeroes_seg: U32,
    /// Write zeroes may deallocate (with its unmap flag).
    pub write_zeroes_may_unmap: u8,
    /// Reserved.
    pub unused1: [u8; 3],
    /// Secure-erase limits (not offered).
    pub secure_erase: [U32; 3],
    /// Zoned characteristics (not offered).
    pub zoned: [u8; 24],
}

impl BlkConfig {
    /// The configuration of a device serving `info` with `queues` request queues.
    pub fn new(info: &DiskInfo, queues: u16) -> Self {
        let exp = (info.physical_sector_size / info.sector_size.max(1)).trailing_zeros();
        let block = info.sector_size.max(512);
        Self {
            capacity: info.sectors.into(),
            seg_max: SEG_MAX.into(),
            blk_size: block.into(),
            physical_block_exp: exp as u8,
            min_io_size: 1.into(),
            num_queues: queues.into(),
            max_discard_sectors: MAX_DISCARD_SECTORS.into(),
            max_discard_seg: MAX_DISCARD_SEG.into(),
            discard_sector_alignment: (block.max(4096) / 512).into(),
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS.into(),
            max_write_zeroes_seg: MAX_DISCARD_SEG.into(),
            write_zeroes_may_unmap: u8::from(info.discard),
            ..Self::default()
        }
    }

    /// Bytes `offset..offset + size` of the configuration space, or nothing when the range
    /// leaves it (the frontend asked for something this device does not have).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.as_bytes();
        let start = offset as usize;
        start
            .checked_add(size as usize)
            .and_then(|end| bytes.get(start..end))
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }
}

/// The virtio features a device serving `info` offers.
pub fn features(info: &DiskInfo) -> u64 {
    let mut bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_MQ,
    ]
    .iter()
    .fold(0u64, |acc, bit| acc | 1 << bit);
    if info.read_only {
        bits |= 1 << VIRTIO_BLK_F_RO;
    } else {
        bits |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if info.discard {
            bits |= 1 << VIRTIO_BLK_F_DISCARD;
        }
    }
    bits | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use virtio_bindings::virtio_blk::virtio_blk_config;

    use super::*;

    #[test]
    fn layout_matches_the_linux_header() {
        assert_eq!(size_of::<BlkConfig>(), size_of::<virtio_blk_config>());
        assert_eq!(
            offset_of!(BlkConfig, blk_size),
            offset_of!(virtio_blk_config, blk_size)
        );
        assert_eq!(
            offset_of!(BlkConfig, num_queues),
            offset_of!(virtio_blk_config, num_queues)
        );
        assert_eq!(
            offset_of!(BlkConfig, discard_sector_alignment),
            offset_of!(virtio_blk_config, discard_sector_alignment)
        );
        assert_eq!(
            offset_of!(BlkConfig, secure_erase),
            offset_of!(virtio_blk_config, max_secure_erase_sectors)
        );
        assert_eq!(
            offset_of!(BlkConfig, zoned),
            offset_of!(virtio_blk_config, zoned)
        );
    }

    fn info(sector_size: u32, physical: u32, read_only: bool) -> DiskInfo {
        DiskInfo {
            sectors: 2048,
            sector_size,
            physical_sector_size: physical,
            read_only,
            discard: !read_only,
            buffered: false,
        }
    }

    #[test]
    fn values_come_from_the_disk() {
        let c = BlkConfig::new(&info(4096, 4096, false), 3);
        assert_eq!(c.read(0, 8), 2048u64.to_le_bytes());
        assert_eq!(c.read(20, 4), 4096u32.to_le_bytes());
        assert_eq!(c.read(34, 2), 3u16.to_le_bytes());
        assert_eq!(c.read(44, 4), 8u32.to_le_bytes());
        assert_eq!(c.read(48, 4), (1u32 << 22).to_le_bytes());
        assert_eq!(c.read(56, 1), [1]);
        let c = BlkConfig::new(&info(512, 4096, false), 1);
        assert_eq!(c.read(24, 1), [3]);
        assert_eq!(c.read(44, 4), 8u32.to_le_bytes());
        assert!(c.read(90, 10).is_empty());
        assert!(c.read(u32::MAX, 2).is_empty());
    }

    #[test]
    fn read_only_disks_offer_no_discard_and_no_write_zeroes() {
        let rw = features(&info(512, 512, false));
        let ro = features(&info(512, 512, true));
        assert_ne!(rw & 1 << VIRTIO_BLK_F_DISCARD, 0);
        assert_eq!(rw & 1 << VIRTIO_BLK_F_RO, 0);
        assert_eq!(ro & 1 << VIRTIO_BLK_F_DISCARD, 0);
        assert_ne!(ro & 1 << VIRTIO_BLK_F_RO, 0);
        assert_ne!(rw & 1 << VIRTIO_BLK_F_WRITE_ZEROES, 0);
        assert_eq!(ro & 1 << VIRTIO_BLK_F_WRITE_ZEROES, 0);
    }
}
