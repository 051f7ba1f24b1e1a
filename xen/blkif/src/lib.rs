//! The Xen block protocol (`blkif.h`) as data: what a request slot means, whether it is valid
//! for a given disk, and how a response is laid out — for the native x86_64 ABI and the packed
//! `x86_32-abi` that 32-bit frontends use.
//!
//! Everything here is pure. [`parse_slot`] turns the private copy of one ring slot into a
//! [`Request`] or a [`Rejection`] that says which status to answer with (`EOPNOTSUPP` for
//! operations the disk does not offer, `ERROR` for malformed requests), always with the request's
//! `id`, so every slot is answered. Segment lists that live in indirect pages are checked by
//! [`parse_indirect_page`] and [`check_extent`] once those pages are read. [`encode_response`]
//! writes every byte of a response, padding included.

mod abi;
mod parse;

pub use abi::{encode_response, Abi, UnknownProtocol};
pub use parse::{
    check_extent, parse_indirect_page, parse_slot, DiscardLimits, Limits, Rejection, Request, RwOp,
    Segment, SegmentList,
};
