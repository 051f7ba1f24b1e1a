//! The frontend ring in either ABI.

use xen_abi::blkif::*;
use xen_abi::GrantRef;
use xen_blkif::Abi;
use xen_grant::GrantedPages;
use xen_ring::{FrontRing, RingError};
use zerocopy::IntoBytes;

pub(crate) enum FrontRingAny<P> {
    Native(
        FrontRing<P, [u8; BLKIF_NATIVE_SLOT_SIZE], BlkifResponse>,
        Vec<GrantRef>,
    ),
    X86_32(
        FrontRing<P, [u8; BLKIF_X86_32_SLOT_SIZE], BlkifX86_32Response>,
        Vec<GrantRef>,
    ),
}

fn slot<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = bytes.len().min(N);
    if let (Some(dst), Some(src)) = (out.get_mut(..n), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
    out
}

impl<P: GrantedPages> FrontRingAny<P> {
    pub(crate) fn init(abi: Abi, pages: P) -> Result<Self, RingError> {
        let refs = pages.refs().to_vec();
        Ok(match abi {
            Abi::X86_64 => Self::Native(FrontRing::init(pages)?, refs),
            Abi::X86_32 => Self::X86_32(FrontRing::init(pages)?, refs),
        })
    }

    pub(crate) fn refs(&self) -> &[GrantRef] {
        match self {
            Self::Native(_, r) | Self::X86_32(_, r) => r,
        }
    }

    pub(crate) fn memory(&self) -> &P {
        match self {
            Self::Native(r, _) => r.memory(),
            Self::X86_32(r, _) => r.memory(),
        }
    }

    pub(crate) fn size(&self) -> u32 {
        match self {
            Self::Native(r, _) => r.size(),
            Self::X86_32(r, _) => r.size(),
        }
    }

    pub(crate) fn free(&self) -> u32 {
        match self {
            Self::Native(r, _) => r.free_requests(),
            Self::X86_32(r, _) => r.free_requests(),
        }
    }

    /// Pushes raw slot bytes (a well-formed request, or a hostile one in tests).
    pub(crate) fn push_raw(&mut self, bytes: &[u8]) -> Result<(), RingError> {
        match self {
            Self::Native(r, _) => r.push_request(&slot(bytes)),
            Self::X86_32(r, _) => r.push_request(&slot(bytes)),
        }
    }

    pub(crate) fn abi(&self) -> Abi {
        match self {
            Self::Native(..) => Abi::X86_64,
            Self::X86_32(..) => Abi::X86_32,
        }
    }

    pub(crate) fn push_rw(
        &mut self,
        id: u64,
        operation: u8,
        sector: u64,
        segs: &[BlkifRequestSegment],
    ) -> Result<(), RingError> {
        let bytes = match self.abi() {
            Abi::X86_64 => {
                let mut r = BlkifRequest {
                    operation,
                    nr_segments: segs.len() as u8,
                    id,
                    sector_number: sector,
                    ..Default::default()
                };
                for (d, s) in r.seg.iter_mut().zip(segs) {
                    *d = *s;
                }
                r.as_bytes().to_vec()
            }
            Abi::X86_32 => {
                let mut r = BlkifX86_32Request {
                    operation,
                    nr_segments: segs.len() as u8,
                    id: id.to_le_bytes(),
                    sector_number: sector.to_le_bytes(),
                    ..Default::default()
                };
                for (d, s) in r.seg.iter_mut().zip(segs) {
                    d.copy_from_slice(s.as_bytes());
                }
                r.as_bytes().to_vec()
            }
        };
        self.push_raw(&bytes)
    }

    pub(crate) fn push_indirect(
        &mut self,
        id: u64,
        indirect_op: u8,
        sector: u64,
        nr: u16,
        pages: &[GrantRef],
    ) -> Result<(), RingError> {
        let bytes = match self.abi() {
            Abi::X86_64 => {
                let mut r = BlkifRequestIndirect {
                    operation: BLKIF_OP_INDIRECT,
                    indirect_op,
                    nr_segments: nr,
                    id,
                    sector_number: sector,
                    ..Default::default()
                };
                for (d, g) in r.indirect_grefs.iter_mut().zip(pages) {
                    *d = *g;
                }
                r.as_bytes().to_vec()
            }
            Abi::X86_32 => {
                let mut r = BlkifX86_32RequestIndirect {
                    operation: BLKIF_OP_INDIRECT,
                    indirect_op,
                    nr_segments: nr.to_le_bytes(),
                    id: id.to_le_bytes(),
                    sector_number: sector.to_le_bytes(),
                    ..Default::default()
                };
                for (d, g) in r.indirect_grefs.iter_mut().zip(pages) {
                    *d = g.to_le_bytes();
                }
                r.as_bytes().to_vec()
            }
        };
        self.push_raw(&bytes)
    }

    pub(crate) fn push_discard(
        &mut self,
        id: u64,
        sector: u64,
        nr_sectors: u64,
        secure: bool,
    ) -> Result<(), RingError> {
        let flag = if secure { BLKIF_DISCARD_SECURE } else { 0 };
        let bytes = match self.abi() {
            Abi::X86_64 => BlkifRequestDiscard {
                operation: BLKIF_OP_DISCARD,
                flag,
                id,
                sector_number: sector,
                nr_sectors,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
            Abi::X86_32 => BlkifX86_32RequestDiscard {
                operation: BLKIF_OP_DISCARD,
                flag,
                id: id.to_le_bytes(),
                sector_number: sector.to_le_bytes(),
                nr_sectors: nr_sectors.to_le_bytes(),
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        };
        self.push_raw(&bytes)
    }

    pub(crate) fn publish(&mut self) -> bool {
        match self {
            Self::Native(r, _) => r.push_requests_and_check_notify(),
            Self::X86_32(r, _) => r.push_requests_and_check_notify(),
        }
    }

    /// The next response: (id, operation, status).
    pub(crate) fn pop(&mut self) -> Result<Option<(u64, u8, i16)>, RingError> {
        Ok(match self {
            Self::Native(r, _) => r.pop_response()?.map(|x| (x.id, x.operation, x.status)),
            Self::X86_32(r, _) => r.pop_response()?.map(|x| {
                (
                    u64::from_le_bytes(x.id),
                    x.operation,
                    i16::from_le_bytes(x.status),
                )
            }),
        })
    }

    pub(crate) fn final_check(&mut self) -> Result<bool, RingError> {
        match self {
            Self::Native(r, _) => r.final_check_for_responses(),
            Self::X86_32(r, _) => r.final_check_for_responses(),
        }
    }
}
