//! The ABIs a frontend may speak (the `protocol` key) and their response layouts.

use xen_abi::blkif::*;
use zerocopy::IntoBytes;

/// A frontend's request/response layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    /// 64-bit x86 (the native layout of this backend): 112-byte requests, 16-byte responses.
    X86_64,
    /// 32-bit x86 (`x86_32-abi`): packed, 108-byte requests, 11-byte responses.
    X86_32,
}

/// The `protocol` key named an ABI this backend does not serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProtocol(pub String);

impl std::fmt::Display for UnknownProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frontend asked for unsupported block protocol {:?}",
            self.0
        )
    }
}

impl std::error::Error for UnknownProtocol {}

impl Abi {
    /// The ABI a frontend asked for: no `protocol` key means the backend's native one.
    pub fn from_protocol(value: Option<&[u8]>) -> Result<Self, UnknownProtocol> {
        let Some(raw) = value else {
            return Ok(Self::X86_64);
        };
        let text = std::str::from_utf8(raw)
            .map_err(|_| UnknownProtocol(String::from_utf8_lossy(raw).into_owned()))?;
        match text.trim_end_matches('\0') {
            XEN_IO_PROTO_ABI_X86_64 => Ok(Self::X86_64),
            XEN_IO_PROTO_ABI_X86_32 => Ok(Self::X86_32),
            other => Err(UnknownProtocol(other.to_string())),
        }
    }

    /// Bytes of one ring slot (the request/response union).
    pub fn slot_size(self) -> usize {
        match self {
            Self::X86_64 => BLKIF_NATIVE_SLOT_SIZE,
            Self::X86_32 => BLKIF_X86_32_SLOT_SIZE,
        }
    }

    /// Bytes of one response.
    pub fn response_size(self) -> usize {
        match self {
            Self::X86_64 => core::mem::size_of::<BlkifResponse>(),
            Self::X86_32 => core::mem::size_of::<BlkifX86_32Response>(),
        }
    }

    /// Slots in a ring of `pages` pages.
    pub fn ring_slots(self, pages: usize) -> u32 {
        xen_abi::ring::ring_size(pages * xen_abi::PAGE_SIZE, self.slot_size())
    }
}

/// Writes a complete response for `abi` into `out` (which must hold `abi.response_size()`
/// bytes); returns the bytes written.
pub fn encode_response(abi: Abi, id: u64, operation: u8, status: i16, out: &mut [u8]) -> usize {
    fn put(bytes: &[u8], out: &mut [u8]) -> usize {
        let n = bytes.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        n
    }
    match abi {
        Abi::X86_64 => put(
            BlkifResponse {
                id,
                operation,
                _pad: 0,
                status,
                _pad1: 0,
            }
            .as_bytes(),
            out,
        ),
        Abi::X86_32 => put(
            BlkifX86_32Response {
                id: id.to_le_bytes(),
                operation,
                status: status.to_le_bytes(),
            }
            .as_bytes(),
            out,
        ),
    }
}
