//! A virtio-blk request, parsed from one descriptor chain (virtio 1.2 §5.2.6): a device-readable
//! 16-byte header (type, reserved, sector), the data, and a device-writable status byte at the
//! very end. Everything here is the guest's and is checked before use: descriptor order, the
//! header's place, lengths, alignment to the logical block, the disk's end, and what a
//! read-only disk refuses. Pure: memory is read through a closure, so tests need none.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};

use super::config::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEG};

/// Bytes of the request header.
pub const HEADER_LEN: usize = 16;

/// Bytes of one discard range (`struct virtio_blk_discard_write_zeroes`).
const RANGE_LEN: usize = 16;

/// Most data segments one request may use: one `iovec` each, and `readv`/`writev` take at most
/// `IOV_MAX` (1024).
pub const MAX_SEGMENTS: usize = 1024;

/// One guest buffer: a guest-physical address and a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
}

/// What the disk allows, as the request is checked against it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical block size in bytes.
    pub block: u32,
    /// Writes and discards are refused.
    pub read_only: bool,
    /// Discard is offered.
    pub discard: bool,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes from byte `offset` into `segments`.
    Read {
        /// Byte offset on the disk.
        offset: u64,
        /// Device-writable guest buffers.
        segments: Vec<Segment>,
        /// Their total length.
        len: u64,
    },
    /// Write `segments` at byte `offset`.
    Write {
        /// Byte offset on the disk.
        offset: u64,
        /// Device-readable guest buffers.
        segments: Vec<Segment>,
        /// Their total length.
        len: u64,
    },
    /// Make completed writes stable.
    Flush,
    /// Answer the device's identity into `segments` (at most 20 bytes are written).
    GetId {
        /// Device-writable guest buffers.
        segments: Vec<Segment>,
    },
    /// Discard `len` bytes from byte `offset`.
    Discard {
        /// Byte offset on the disk.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Make `len` bytes from byte `offset` read as zeros; `unmap`: the space may be freed.
    WriteZeroes {
        /// Byte offset on the disk.
        offset: u64,
        /// Bytes.
        len: u64,
        /// The driver allows deallocation.
        unmap: bool,
    },
}

/// A parsed chain: where its status byte is, and the request or the status to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Guest-physical address of the status byte.
    pub status: u64,
    /// The request, or the status it is refused with (`VIRTIO_BLK_S_IOERR`/`_UNSUPP`).
    pub request: Result<Request, u8>,
}

/// Parses one chain, given as (address, length, device-writable) in chain order; `read` fills a
/// buffer from guest memory and says whether it could. `None`: the chain has no device-writable
/// byte for a status, so it cannot be answered (it is returned to the guest unanswered).
pub fn parse(
    chain: &[(u64, u32, bool)],
    read: impl Fn(u64, &mut [u8]) -> bool,
    limits: &Limits,
) -> Option<Parsed> {
    let (readable, mut writable) = split_by_direction(chain);
    let status = take_last_byte(&mut writable)?;
    let request = match readable {
        Some(readable) => check(readable, writable, &read, limits),
        // A readable descriptor after a writable one: the specification forbids it.
        None => Err(VIRTIO_BLK_S_IOERR as u8),
    };
    Some(Parsed { status, request })
}

/// Readable segments (`None` when one follows a writable one) and writable segments.
fn split_by_direction(chain: &[(u64, u32, bool)]) -> (Option<Vec<Segment>>, Vec<Segment>) {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut ordered = true;
    for &(addr, len, device_writes) in chain {
        if len == 0 {
            continue;
        }
        let s = Segment { addr, len };
        if device_writes {
            writable.push(s);
        } else {
            ordered &= writable.is_empty();
            readable.push(s);
        }
    }
    (ordered.then_some(readable), writable)
}

/// Removes the last byte of `writable` and returns its address.
fn take_last_byte(writable: &mut Vec<Segment>) -> Option<u64> {
    let last = writable.last_mut()?;
    let addr = last.addr.checked_add(u64::from(last.len) - 1)?;
    last.len -= 1;
    if last.len == 0 {
        writable.pop();
    }
    Some(addr)
}

/// Removes the first `n` bytes of `segments` into `out`; false if there are fewer.
fn take_front(
    segments: &mut Vec<Segment>,
    out: &mut [u8],
    read: impl Fn(u64, &mut [u8]) -> bool,
) -> bool {
    let mut filled = 0;
    let mut used = 0;
    for s in segments.iter_mut() {
        let Some(rest) = out.get_mut(filled..) else {
            break;
        };
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(s.len as usize);
        let Some(dst) = rest.get_mut(..n) else {
            return false;
        };
        if !read(s.addr, dst) {
            return false;
        }
        filled += n;
        s.addr = s.addr.wrapping_add(n as u64);
        s.len -= n as u32;
        if s.len == 0 {
            used += 1;
        }
    }
    segments.drain(..used);
    filled == out.len()
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// Byte offset of `sector` if `sector..sector + len` is block-aligned and inside the disk.
fn extent(sector: u64, len: u64, limits: &Limits) -> Option<u64> {
    let block = u64::from(limits.block.max(512));
    let offset = sector.checked_mul(512)?;
    let end = offset.checked_add(len)?;
    let aligned = offset % block == 0 && len % block == 0;
    (aligned && end <= limits.sectors.checked_mul(512)?).then_some(offset)
}

fn check(
    mut readable: Vec<Segment>,
    writable: Vec<Segment>,
    read: impl Fn(u64, &mut [u8]) -> bool,
    limits: &Limits,
) -> Result<Request, u8> {
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
    let mut header = [0u8; HEADER_LEN];
    if !take_front(&mut readable, &mut header, &read) {
        return Err(IOERR);
    }
    let (kind, sector) = match (header.first_chunk::<4>(), header.last_chunk::<8>()) {
        (Some(k), Some(s)) => (u32::from_le_bytes(*k), u64::from_le_bytes(*s)),
        _ => return Err(IOERR),
    };
    let data = |segments: Vec<Segment>| -> Result<(Vec<Segment>, u64), u8> {
        if segments.len() > MAX_SEGMENTS {
            return Err(IOERR);
        }
        let len = total(&segments);
        Ok((segments, len))
    };
    match kind {
        VIRTIO_BLK_T_IN => {
            let (segments, len) = data(writable)?;
            let offset = extent(sector, len, limits).ok_or(IOERR)?;
            Ok(Request::Read {
                offset,
                segments,
                len,
            })
        }
        VIRTIO_BLK_T_OUT if limits.read_only => Err(IOERR),
        VIRTIO_BLK_T_OUT => {
            let (segments, len) = data(readable)?;
            let offset = extent(sector, len, limits).ok_or(IOERR)?;
            Ok(Request::Write {
                offset,
                segments,
                len,
            })
        }
        VIRTIO_BLK_T_FLUSH => Ok(Request::Flush),
        VIRTIO_BLK_T_GET_ID => {
            if writable.is_empty() {
                return Err(IOERR);
            }
            Ok(Request::GetId { segments: writable })
        }
        VIRTIO_BLK_T_DISCARD if !limits.discard => Err(UNSUPP),
        VIRTIO_BLK_T_DISCARD if limits.read_only => Err(IOERR),
        VIRTIO_BLK_T_DISCARD => {
            let (offset, len, _) = range(readable, read, limits, false)?;
            Ok(Request::Discard { offset, len })
        }
        VIRTIO_BLK_T_WRITE_ZEROES if limits.read_only => Err(IOERR),
        VIRTIO_BLK_T_WRITE_ZEROES => {
            let (offset, len, unmap) = range(readable, read, limits, true)?;
            Ok(Request::WriteZeroes { offset, len, unmap })
        }
        _ => Err(UNSUPP),
    }
}

/// The one range of a discard or write-zeroes request: (byte offset, bytes, unmap). More than
/// [`MAX_DISCARD_SEG`] ranges, or a flag other than write-zeroes' unmap bit, is unsupported,
/// as the specification asks.
fn range(
    mut readable: Vec<Segment>,
    read: impl Fn(u64, &mut [u8]) -> bool,
    limits: &Limits,
    unmap_allowed: bool,
) -> Result<(u64, u64, bool), u8> {
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
    const UNMAP: u64 = 1;
    let len = total(&readable);
    if len == 0 || len % RANGE_LEN as u64 != 0 {
        return Err(IOERR);
    }
    if len / RANGE_LEN as u64 > u64::from(MAX_DISCARD_SEG) {
        return Err(UNSUPP);
    }
    let mut range = [0u8; RANGE_LEN];
    if !take_front(&mut readable, &mut range, &read) {
        return Err(IOERR);
    }
    let (Some(sector), Some(tail)) = (range.first_chunk::<8>(), range.last_chunk::<8>()) else {
        return Err(IOERR);
    };
    let sector = u64::from_le_bytes(*sector);
    let tail = u64::from_le_bytes(*tail);
    let (sectors, flags) = (tail & 0xffff_ffff, tail >> 32);
    let allowed = if unmap_allowed { UNMAP } else { 0 };
    if flags & !allowed != 0 {
        return Err(UNSUPP);
    }
    if sectors > u64::from(MAX_DISCARD_SECTORS) {
        return Err(IOERR);
    }
    let len = sectors * 512;
    let offset = extent(sector, len, limits).ok_or(IOERR)?;
    Ok((offset, len, flags & UNMAP != 0))
}

pub mod fuzz;
#[cfg(test)]
mod tests;
