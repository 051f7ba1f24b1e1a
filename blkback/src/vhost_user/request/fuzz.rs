//! The fuzz harness of [`super::parse`] (`fuzz/fuzz_targets/virtio_blk_parse.rs` calls it; the
//! property tests run it on random input, so CI exercises it on stable): the input becomes the
//! disk's knobs, a chain of up to 15 descriptors and 64 KiB of guest memory; an accepted
//! request must stay inside the disk and inside the chain's own buffers.

use super::{parse, Limits, Parsed, Request};

/// Guest memory the input fills: 64 KiB from address 0.
const MEM: usize = 65536;

/// Parses the chain `data` describes and checks what comes out; panics on a violation.
pub fn run(data: &[u8]) {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        sectors: 1 << 16,
        block: if knobs & 1 == 0 { 512 } else { 4096 },
        read_only: knobs & 2 != 0,
        discard: knobs & 4 == 0,
    };
    // Up to 16 descriptors of 13 bytes (address, length, direction), then guest memory.
    let count = usize::from(knobs >> 4);
    let (table, memory) = rest.split_at(rest.len().min(count * 13));
    let chain: Vec<(u64, u32, bool)> = table
        .chunks_exact(13)
        .filter_map(|d| {
            let (addr, rest) = d.split_first_chunk::<8>()?;
            let (len, rest) = rest.split_first_chunk::<4>()?;
            let flags = *rest.first()?;
            let addr = u64::from_le_bytes(*addr);
            // Mostly inside the memory, sometimes anywhere.
            let addr = if flags & 2 == 0 {
                addr % MEM as u64
            } else {
                addr
            };
            let len = u32::from_le_bytes(*len) % (2 * MEM as u32);
            Some((addr, len, flags & 1 == 1))
        })
        .collect();
    let read = |addr: u64, out: &mut [u8]| -> bool {
        let start = addr as usize;
        match start
            .checked_add(out.len())
            .filter(|&end| end <= MEM && addr < MEM as u64)
        {
            Some(end) => {
                for (i, b) in out.iter_mut().enumerate() {
                    *b = memory.get(start + i).copied().unwrap_or(0);
                }
                end <= MEM
            }
            None => false,
        }
    };
    let in_chain = |addr: u64, len: u32| {
        let (addr, end) = (u128::from(addr), u128::from(addr) + u128::from(len));
        chain
            .iter()
            .any(|&(a, l, _)| addr >= u128::from(a) && end <= u128::from(a) + u128::from(l))
    };
    if let Some(Parsed { status, request }) = parse(&chain, read, &limits) {
        assert!(in_chain(status, 1), "the status byte lies in a descriptor");
        let disk = limits.sectors * 512;
        match request {
            Ok(
                Request::Read {
                    offset,
                    segments,
                    len,
                }
                | Request::Write {
                    offset,
                    segments,
                    len,
                },
            ) => {
                assert!(offset + len <= disk);
                assert_eq!(segments.iter().map(|s| u64::from(s.len)).sum::<u64>(), len);
                assert!(segments.iter().all(|s| in_chain(s.addr, s.len)));
            }
            Ok(Request::Discard { offset, len } | Request::WriteZeroes { offset, len, .. }) => {
                assert!(offset + len <= disk)
            }
            Ok(Request::GetId { segments }) => {
                assert!(segments.iter().all(|s| in_chain(s.addr, s.len)))
            }
            Ok(Request::Flush) | Err(_) => {}
        }
    }
}
