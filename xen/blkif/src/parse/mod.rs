//! Request parsing and validation.

#[cfg(test)]
mod tests;

use xen_abi::blkif::*;
use zerocopy::FromBytes;

use crate::abi::Abi;

/// What the disk offers, against which requests are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Disk size in 512-byte sectors (the `sectors` key).
    pub sectors: u64,
    /// Logical sector size in bytes (`sector-size`: 512 or a larger power of two).
    pub sector_size: u32,
    /// The disk is read-only (`mode` = r): writes, flushes and discards are refused.
    pub read_only: bool,
    /// `feature-max-indirect-segments` as advertised (0: INDIRECT not offered).
    pub max_indirect_segments: u16,
    /// `feature-flush-cache` advertised.
    pub flush: bool,
    /// `feature-barrier` advertised.
    pub barrier: bool,
    /// `feature-discard` advertised, with its parameters.
    pub discard: Option<DiscardLimits>,
}

/// Discard parameters as advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardLimits {
    /// `discard-granularity` in bytes.
    pub granularity: u32,
    /// `discard-alignment` in bytes.
    pub alignment: u32,
    /// `discard-secure` advertised.
    pub secure: bool,
}

/// One validated data segment: a granted frame and a 512-byte-sector range within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The grant of the data frame.
    pub gref: u32,
    /// First sector within the frame (0..=7).
    pub first_sect: u8,
    /// Last sector within the frame, inclusive (`first_sect..=7`).
    pub last_sect: u8,
}

impl Segment {
    /// Byte offset of the data within the frame.
    pub fn offset(&self) -> usize {
        usize::from(self.first_sect) * 512
    }

    /// Bytes of data.
    pub fn len(&self) -> usize {
        self.sectors() as usize * 512
    }

    /// Whether the segment is empty (never, once validated).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// 512-byte sectors of data.
    pub fn sectors(&self) -> u64 {
        u64::from(self.last_sect - self.first_sect) + 1
    }

    /// Checks a raw segment against the frame and the logical sector size.
    fn validate(
        gref: u32,
        first_sect: u8,
        last_sect: u8,
        limits: &Limits,
    ) -> Result<Self, &'static str> {
        if last_sect >= SECTORS_PER_PAGE {
            return Err("segment ends beyond its page");
        }
        if first_sect > last_sect {
            return Err("segment starts after it ends");
        }
        let per_sector = (limits.sector_size / 512).max(1);
        if u32::from(first_sect) % per_sector != 0 || (u32::from(last_sect) + 1) % per_sector != 0 {
            return Err("segment is not aligned to the logical sector size");
        }
        Ok(Self {
            gref,
            first_sect,
            last_sect,
        })
    }
}

/// Where a read or write finds its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentList {
    /// In the request itself (1..=11), already validated.
    Direct(Vec<Segment>),
    /// In indirect pages: `nr_segments` descriptors spread over the granted `pages`, to be
    /// read and checked with [`parse_indirect_page`] and [`check_extent`].
    Indirect {
        /// Segments in total.
        nr_segments: u16,
        /// Grants of the indirect pages (`ceil(nr_segments / 512)` of them).
        pages: Vec<u32>,
    },
}

/// Direction of a data transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwOp {
    /// Disk to guest.
    Read,
    /// Guest to disk.
    Write,
}

/// A request that passed every check that can be made on the slot alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A data transfer (`READ`, `WRITE`, `INDIRECT`, or `FLUSH_DISKCACHE`/`WRITE_BARRIER` with
    /// data, which Linux blkfront sends for FUA writes).
    ReadWrite {
        /// Echoed in the response.
        id: u64,
        /// The operation byte to echo (for INDIRECT, the indirect operation, as Linux does).
        operation: u8,
        /// Direction.
        op: RwOp,
        /// First 512-byte sector.
        sector: u64,
        /// The data.
        segments: SegmentList,
        /// Make the data stable before answering (FLUSH_DISKCACHE with data).
        flush_after: bool,
        /// Barrier semantics: everything before completes (and is flushed) first.
        barrier: bool,
    },
    /// A cache flush without data (`FLUSH_DISKCACHE`, or `WRITE_BARRIER` with no segments).
    Flush {
        /// Echoed in the response.
        id: u64,
        /// The operation byte to echo.
        operation: u8,
    },
    /// A discard of `nr_sectors` 512-byte sectors from `sector`.
    Discard {
        /// Echoed in the response.
        id: u64,
        /// First 512-byte sector.
        sector: u64,
        /// Length in 512-byte sectors.
        nr_sectors: u64,
        /// Secure erase asked for (only if advertised).
        secure: bool,
    },
}

impl Request {
    /// The request's id.
    pub fn id(&self) -> u64 {
        match self {
            Self::ReadWrite { id, .. } | Self::Flush { id, .. } | Self::Discard { id, .. } => *id,
        }
    }

    /// The operation byte the response echoes.
    pub fn operation(&self) -> u8 {
        match self {
            Self::ReadWrite { operation, .. } | Self::Flush { operation, .. } => *operation,
            Self::Discard { .. } => BLKIF_OP_DISCARD,
        }
    }
}

/// A slot that is answered without I/O: its id and operation, the status to answer with, and
/// why (for rate-limited logs). Guest fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The request's id (read from the slot whatever the operation).
    pub id: u64,
    /// The request's operation byte.
    pub operation: u8,
    /// `BLKIF_RSP_EOPNOTSUPP` or `BLKIF_RSP_ERROR`.
    pub status: i16,
    /// What was wrong.
    pub reason: &'static str,
}

/// The fields every layout shares, decoded from one ABI.
struct Common {
    operation: u8,
    id: u64,
}

fn u16_le(b: [u8; 2]) -> u16 {
    u16::from_le_bytes(b)
}
fn u64_le(b: [u8; 8]) -> u64 {
    u64::from_le_bytes(b)
}

fn common(abi: Abi, slot: &[u8]) -> Common {
    let operation = slot.first().copied().unwrap_or(0);
    // Every member of the union keeps `id` at the same offset (8 natively, 4 packed), so even
    // an unknown operation can be answered with its id (Linux: `u.other.id`).
    let at = match abi {
        Abi::X86_64 => 8,
        Abi::X86_32 => 4,
    };
    let id = slot
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes);
    Common { operation, id }
}

/// A raw segment: (gref, first_sect, last_sect), not yet validated.
type RawSegment = (u32, u8, u8);

/// A READ/WRITE/flush slot, decoded from either ABI: (nr_segments, sector, raw segments).
fn rw_fields(abi: Abi, slot: &[u8]) -> Option<(u8, u64, Vec<RawSegment>)> {
    match abi {
        Abi::X86_64 => {
            let (r, _) = BlkifRequest::read_from_prefix(slot).ok()?;
            let segs = r
                .seg
                .iter()
                .map(|s| (s.gref, s.first_sect, s.last_sect))
                .collect();
            Some((r.nr_segments, r.sector_number, segs))
        }
        Abi::X86_32 => {
            let (r, _) = BlkifX86_32Request::read_from_prefix(slot).ok()?;
            let segs = r
                .seg
                .iter()
                .map(|s| {
                    let gref = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    (gref, s[4], s[5])
                })
                .collect();
            Some((r.nr_segments, u64_le(r.sector_number), segs))
        }
    }
}

/// Checks that `[sector, sector + total)` is aligned to the logical sector size and lies
/// within the disk.
pub fn check_extent(sector: u64, total_sectors: u64, limits: &Limits) -> Result<(), &'static str> {
    let per_sector = u64::from((limits.sector_size / 512).max(1));
    if sector % per_sector != 0 {
        return Err("start sector is not aligned to the logical sector size");
    }
    let end = sector
        .checked_add(total_sectors)
        .ok_or("request overflows the sector count")?;
    if end > limits.sectors {
        return Err("request reaches beyond the end of the disk");
    }
    Ok(())
}

/// Reads `count` segment descriptors from the private copy of one indirect page.
pub fn parse_indirect_page(
    page: &[u8],
    count: usize,
    limits: &Limits,
) -> Result<Vec<Segment>, &'static str> {
    if count > SEGS_PER_INDIRECT_FRAME {
        return Err("too many segments for one indirect page");
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let raw = page
            .get(i * 8..i * 8 + 8)
            .ok_or("indirect page too short")?;
        let (s, _) =
            BlkifRequestSegment::read_from_prefix(raw).map_err(|_| "indirect page too short")?;
        out.push(Segment::validate(
            s.gref,
            s.first_sect,
            s.last_sect,
            limits,
        )?);
    }
    Ok(out)
}

/// Parses the private copy of one ring slot.
pub fn parse_slot(abi: Abi, slot: &[u8], limits: &Limits) -> Result<Request, Rejection> {
    let Common { operation, id } = common(abi, slot);
    let reject = |status, reason| Rejection {
        id,
        operation,
        status,
        reason,
    };
    let error = |reason| reject(BLKIF_RSP_ERROR, reason);
    let unsupported = |reason| reject(BLKIF_RSP_EOPNOTSUPP, reason);
    match operation {
        BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_FLUSH_DISKCACHE | BLKIF_OP_WRITE_BARRIER => {
            let is_flush = operation == BLKIF_OP_FLUSH_DISKCACHE;
            let is_barrier = operation == BLKIF_OP_WRITE_BARRIER;
            if is_flush && !limits.flush {
                return Err(unsupported("flush not offered"));
            }
            if is_barrier && !limits.barrier {
                return Err(unsupported("barrier not offered"));
            }
            let writes = operation != BLKIF_OP_READ;
            if writes && limits.read_only {
                return Err(error("write to a read-only disk"));
            }
            let (nr, sector, raw) = rw_fields(abi, slot).ok_or_else(|| error("short slot"))?;
            if nr == 0 {
                if is_flush || is_barrier {
                    return Ok(Request::Flush { id, operation });
                }
                return Err(error("read or write without segments"));
            }
            if usize::from(nr) > BLKIF_MAX_SEGMENTS_PER_REQUEST {
                return Err(error("more than 11 segments in a direct request"));
            }
            let mut segments = Vec::with_capacity(usize::from(nr));
            for &(gref, first, last) in raw.iter().take(usize::from(nr)) {
                segments.push(Segment::validate(gref, first, last, limits).map_err(error)?);
            }
            let total: u64 = segments.iter().map(Segment::sectors).sum();
            check_extent(sector, total, limits).map_err(error)?;
            Ok(Request::ReadWrite {
                id,
                operation,
                op: if writes { RwOp::Write } else { RwOp::Read },
                sector,
                segments: SegmentList::Direct(segments),
                flush_after: is_flush,
                barrier: is_barrier,
            })
        }
        BLKIF_OP_DISCARD => {
            let Some(discard) = limits.discard else {
                return Err(unsupported("discard not offered"));
            };
            if limits.read_only {
                return Err(error("discard on a read-only disk"));
            }
            let (flag, sector, nr_sectors) = match abi {
                Abi::X86_64 => BlkifRequestDiscard::read_from_prefix(slot)
                    .ok()
                    .map(|(d, _)| (d.flag, d.sector_number, d.nr_sectors)),
                Abi::X86_32 => BlkifX86_32RequestDiscard::read_from_prefix(slot)
                    .ok()
                    .map(|(d, _)| (d.flag, u64_le(d.sector_number), u64_le(d.nr_sectors))),
            }
            .ok_or_else(|| error("short slot"))?;
            let secure = flag & BLKIF_DISCARD_SECURE != 0;
            if secure && !discard.secure {
                return Err(unsupported("secure discard not offered"));
            }
            check_extent(sector, nr_sectors, limits).map_err(error)?;
            let granularity = u64::from(discard.granularity.max(512));
            let (start, len) = (sector.saturating_mul(512), nr_sectors.saturating_mul(512));
            if start % granularity != 0 || len % granularity != 0 {
                return Err(error("discard not aligned to discard-granularity"));
            }
            Ok(Request::Discard {
                id,
                sector,
                nr_sectors,
                secure,
            })
        }
        BLKIF_OP_INDIRECT => {
            if limits.max_indirect_segments == 0 {
                return Err(unsupported("indirect descriptors not offered"));
            }
            let (indirect_op, nr, sector, grefs): (u8, u16, u64, Vec<u32>) = match abi {
                Abi::X86_64 => BlkifRequestIndirect::read_from_prefix(slot)
                    .ok()
                    .map(|(r, _)| {
                        (
                            r.indirect_op,
                            r.nr_segments,
                            r.sector_number,
                            r.indirect_grefs.to_vec(),
                        )
                    }),
                Abi::X86_32 => {
                    BlkifX86_32RequestIndirect::read_from_prefix(slot)
                        .ok()
                        .map(|(r, _)| {
                            let grefs = r
                                .indirect_grefs
                                .iter()
                                .map(|g| u32::from_le_bytes(*g))
                                .collect();
                            (
                                r.indirect_op,
                                u16_le(r.nr_segments),
                                u64_le(r.sector_number),
                                grefs,
                            )
                        })
                }
            }
            .ok_or_else(|| error("short slot"))?;
            // Linux blkback answers an indirect request with its indirect operation (its
            // `req_operation`), and Linux blkfront disables the disk on any other value.
            let error = |reason| Rejection {
                id,
                operation: indirect_op,
                status: BLKIF_RSP_ERROR,
                reason,
            };
            let op = match indirect_op {
                BLKIF_OP_READ => RwOp::Read,
                BLKIF_OP_WRITE => RwOp::Write,
                _ => return Err(error("indirect operation is neither read nor write")),
            };
            if op == RwOp::Write && limits.read_only {
                return Err(error("write to a read-only disk"));
            }
            if nr == 0 || nr > limits.max_indirect_segments {
                return Err(error(
                    "indirect segment count is zero or above the advertised maximum",
                ));
            }
            let pages = usize::from(nr).div_ceil(SEGS_PER_INDIRECT_FRAME);
            if pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
                return Err(error("too many indirect pages"));
            }
            check_extent(sector, 0, limits).map_err(error)?;
            Ok(Request::ReadWrite {
                id,
                operation: indirect_op,
                op,
                sector,
                segments: SegmentList::Indirect {
                    nr_segments: nr,
                    pages: grefs.into_iter().take(pages).collect(),
                },
                flush_after: false,
                barrier: false,
            })
        }
        _ => Err(unsupported("unknown operation")),
    }
}
