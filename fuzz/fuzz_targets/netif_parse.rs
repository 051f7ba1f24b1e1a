//! Fuzzes netif TX chain parsing, control requests, checksum setup and hashing of frames.
//! Run: `cargo +nightly fuzz run netif_parse`.
#![no_main]

use xen_abi::netif::{NetifCtrlRequest, NetifTxRequest};
use xen_netif::ctrl::{handle, HashConfig};
use xen_netif::tx::{parse_tx, TxFeatures};
use zerocopy::FromBytes;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else { return };
    let features = TxFeatures { gso_tcpv4: knobs & 1 != 0, gso_tcpv6: knobs & 2 != 0 };
    let mut slots = rest.chunks_exact(12).filter_map(|c| NetifTxRequest::read_from_bytes(c).ok());
    if let Some(first) = slots.next() {
        let _ = parse_tx(first, &mut || slots.next(), features);
    }
    let mut config = HashConfig::default();
    for chunk in rest.chunks_exact(16) {
        if let Ok(req) = NetifCtrlRequest::read_from_bytes(chunk) {
            let _ = handle(&req, &mut config, u32::from(knobs >> 4), &mut |_, dst: &mut [u8]| {
                dst.iter_mut().zip(rest.iter().cycle()).for_each(|(d, s)| *d = *s);
                true
            });
        }
    }
    let mut frame = rest.to_vec();
    let _ = config.hash(&frame);
    if let Some(p) = xen_netif::csum::setup_partial(&mut frame) {
        let _ = xen_netif::csum::complete_partial(&mut frame, p, knobs & 4 != 0);
    }
});
