//! The transmit side of a queue (guest to host): judge each slot chain from private copies,
//! grant-copy a batch of packets into backend buffers in one call, set up the virtio header
//! (partial checksum, segmentation) from the copied headers — never from the guest's pages —
//! answer every slot, and write the frames to the TAP device.

use std::io::IoSlice;
use std::time::Instant;

use xen_abi::grant_table::status::OKAY;
use xen_abi::netif::{NETIF_RSP_ERROR, NETIF_RSP_OKAY};
use xen_evtchn::EventChannel;
use xen_grant::{CopyOp, GrantMapper, GrantPtr};
use xen_netif::csum::setup_partial;
use xen_netif::tx::{parse_tx, TxDrop, TxItem, TxPacket, TxVerdict};
use xen_netif::vnet::{virtio_gso_type, VirtioNetHdr, F_DATA_VALID, F_NEEDS_CSUM, VNET_HDR_LEN};
use zerocopy::IntoBytes;

use crate::framebuf::FrameBuf;
use crate::queue::{Fatal, Worker};
use crate::rx::{rx_copy_ops, RxBatch};
use crate::stats::{add, bump, set};

/// Packets taken in one batch (one grant-copy call).
const TX_BATCH: usize = 64;
/// Packets per wake-up before the loop yields to the RX side.
const TX_BUDGET: usize = 256;
/// Packet buffers a queue keeps for reuse between batches.
const TX_SPARE_BUFFERS: usize = 16;

/// The virtio header of a copied packet; `None` if its offload metadata cannot be set up.
fn virtio_header(pkt: &TxPacket, frame: &mut [u8]) -> Option<VirtioNetHdr> {
    let mut hdr = VirtioNetHdr::default();
    if pkt.csum_blank || pkt.gso.is_some() {
        // A GSO packet is always checksummed by the segmenter, whatever the frontend said
        // (Linux netback fixes up frontends that forget `csum_blank` on GSO packets).
        let partial = setup_partial(frame)?;
        hdr.flags = F_NEEDS_CSUM;
        hdr.csum_start = u16::try_from(partial.start).ok()?;
        hdr.csum_offset = u16::try_from(partial.offset).ok()?;
        if let Some(gso) = pkt.gso {
            // Only TCP segments (its checksum field is at 16).
            let tcp_at = partial.start;
            if partial.offset != 16 {
                return None;
            }
            let doff = usize::from(*frame.get(tcp_at + 12)? >> 4) * 4;
            hdr.gso_type = virtio_gso_type(gso.kind);
            hdr.gso_size = gso.size;
            hdr.hdr_len = u16::try_from(tcp_at + doff).ok()?;
        }
    } else if pkt.data_validated {
        hdr.flags = F_DATA_VALID;
    }
    Some(hdr)
}

impl<G: GrantMapper, E: EventChannel> Worker<G, E> {
    /// Runs TX passes until the ring is idle or the budget is spent; true if work remains.
    ///
    /// `rx` is an RX batch whose grant copies ride along with the first TX batch's (one
    /// hypervisor call for both directions); its statuses, if they were copied, are put in
    /// `rx_status`.
    pub(crate) fn tx_pass(
        &mut self,
        now: Instant,
        mut rx: Option<&RxBatch>,
        rx_status: &mut Option<Vec<i16>>,
    ) -> Result<bool, Fatal> {
        if self.throttled_until.is_some_and(|t| now < t) {
            return Ok(false);
        }
        self.throttled_until = None;
        let mut done = 0;
        loop {
            let avail = self.tx.begin_pass(u32::MAX)?;
            set(&self.stats.tx_ring_pending, u64::from(avail));
            if avail == 0 && self.deferred.is_none() {
                if self.tx.final_check_for_requests()? {
                    continue;
                }
                return Ok(false);
            }
            let mut batch: Vec<TxItem> = Vec::new();
            while batch.len() < TX_BATCH {
                let item = match self.deferred.take() {
                    Some(item) => item,
                    None => {
                        let Some(first) = self.tx.pop_request() else {
                            break;
                        };
                        let tx = &mut self.tx;
                        parse_tx(first, &mut || tx.pop_request(), self.spec.advertised)
                    }
                };
                match &item.verdict {
                    TxVerdict::Packet(p) => {
                        if let Err(retry) = self.credit.take(p.len as u64, now) {
                            bump(&self.stats.tx_throttled);
                            self.deferred = Some(item);
                            self.throttled_until = Some(retry);
                            break;
                        }
                        batch.push(item);
                    }
                    // Answered in ring order with the packets around them (see `tx_send`).
                    TxVerdict::Mcast(_) | TxVerdict::Drop(_) => batch.push(item),
                    TxVerdict::Fatal(why) => return Err(Fatal(why.to_string())),
                }
            }
            let n = batch.len();
            let (notify, copied) = self.tx_send(batch, rx.take())?;
            if copied.is_some() {
                *rx_status = copied;
            }
            if notify {
                self.notify(self.local_tx);
            }
            done += n;
            if self.throttled_until.is_some() {
                return Ok(false);
            }
            if done >= TX_BUDGET {
                return Ok(true);
            }
        }
    }

    /// Answers every slot of `item`, publishing each response at once, so that a backend killed
    /// at any point leaves no written-but-unpublished response over a request a restarted
    /// backend would read again (its copy would answer twice, which Linux netfront treats as a
    /// broken backend). True if the frontend wants an event.
    fn respond(&mut self, item: &TxItem, status: i16) -> Result<bool, Fatal> {
        if status != NETIF_RSP_OKAY {
            add(&self.stats.tx_errors, item.slots() as u64);
        }
        let mut notify = false;
        for rsp in item.responses(status) {
            self.tx.push_response(&rsp)?;
            notify |= self.tx.push_responses_and_check_notify();
        }
        Ok(notify)
    }

    /// Answers a batch in ring order (so that the published `rsp_prod` always marks a prefix
    /// of the requests taken, which a restarted backend resumes after): copies its packets out
    /// of the guest and transmits them, applies its multicast requests, refuses its malformed
    /// packets. True if the frontend wants an event; with the statuses of `rx`'s copies,
    /// which go in the same call.
    fn tx_send(
        &mut self,
        batch: Vec<TxItem>,
        rx: Option<&RxBatch>,
    ) -> Result<(bool, Option<Vec<i16>>), Fatal> {
        if batch.is_empty() {
            return Ok((false, None));
        }
        let frontend = self.spec.frontend;
        let packets: Vec<&TxPacket> = batch
            .iter()
            .filter_map(|i| match &i.verdict {
                TxVerdict::Packet(p) => Some(p),
                _ => None,
            })
            .collect();
        // Reused buffers: only bytes beyond a buffer's earlier length are zeroed.
        let mut bufs: Vec<FrameBuf> = packets
            .iter()
            .map(|p| {
                let len = VNET_HDR_LEN + p.len;
                let mut buf = match self.tx_spare.pop() {
                    // A large packet's bytes go to copy memory if the mapper has some.
                    Some(spare) if !spare.is_copy() => {
                        FrameBuf::in_copy_buffer(&*self.grants, len).unwrap_or(spare)
                    }
                    Some(spare) => spare,
                    None => FrameBuf::new(&*self.grants, len),
                };
                buf.set_len(len);
                buf
            })
            .collect();
        let mut owner = Vec::new();
        let mut ok = vec![true; packets.len()];
        let rx_status;
        {
            let mut ops = Vec::new();
            for (i, (pkt, buf)) in packets.iter().zip(bufs.iter_mut()).enumerate() {
                let mut rest: &mut [u8] = buf.get_mut(VNET_HDR_LEN..).unwrap_or_default();
                for frag in &pkt.fragments {
                    let Some((head, tail)) =
                        std::mem::take(&mut rest).split_at_mut_checked(usize::from(frag.len))
                    else {
                        if let Some(o) = ok.get_mut(i) {
                            *o = false;
                        }
                        break;
                    };
                    ops.push(CopyOp::FromGrant {
                        src: GrantPtr {
                            domid: frontend,
                            gref: frag.gref,
                            offset: frag.offset,
                        },
                        dst: head,
                    });
                    owner.push(i);
                    rest = tail;
                }
            }
            let tx_ops = ops.len();
            if let Some(rx) = rx {
                ops.extend(rx_copy_ops(frontend, rx));
            }
            let mut status = vec![OKAY; ops.len()];
            if self.grants.copy(&mut ops, &mut status).is_err() {
                status.iter_mut().for_each(|s| *s = -1);
            }
            rx_status = rx.map(|_| status.split_off(tx_ops));
            for (s, &i) in status.iter().zip(&owner) {
                if *s != OKAY {
                    if let Some(o) = ok.get_mut(i) {
                        *o = false;
                    }
                }
            }
        }
        let mut p = 0;
        let mut notify = false;
        for item in &batch {
            let pkt = match &item.verdict {
                TxVerdict::Packet(pkt) => pkt,
                TxVerdict::Mcast(op) => {
                    bump(&self.stats.mcast_ops);
                    let ok = self.shared.mcast_apply(*op);
                    notify |=
                        self.respond(item, if ok { NETIF_RSP_OKAY } else { NETIF_RSP_ERROR })?;
                    continue;
                }
                TxVerdict::Drop(why) => {
                    let counter = match why {
                        TxDrop::TooManySlots => &self.stats.tx_drop_slots,
                        TxDrop::BiggerThanFrame | TxDrop::RuntHeader => &self.stats.tx_drop_size,
                    };
                    bump(counter);
                    notify |= self.respond(item, NETIF_RSP_ERROR)?;
                    continue;
                }
                TxVerdict::Fatal(_) => continue,
            };
            let (Some(buf), Some(&copied)) = (bufs.get_mut(p), ok.get(p)) else {
                break;
            };
            p += 1;
            if !copied {
                bump(&self.stats.tx_copy_errors);
                notify |= self.respond(item, NETIF_RSP_ERROR)?;
                continue;
            }
            let split = VNET_HDR_LEN.min(buf.len());
            let (head, frame) = buf.split_at_mut(split);
            let Some(hdr) = virtio_header(pkt, frame) else {
                bump(&self.stats.tx_drop_offload);
                notify |= self.respond(item, NETIF_RSP_ERROR)?;
                continue;
            };
            head.copy_from_slice(hdr.as_bytes());
            notify |= self.respond(item, NETIF_RSP_OKAY)?;
            match self.tap.write(&[IoSlice::new(buf)]) {
                Ok(_) => {
                    if pkt.gso.is_some() {
                        bump(&self.stats.tx_gso_packets);
                    }
                    bump(&self.stats.tx_packets);
                    add(&self.stats.tx_bytes, pkt.len as u64);
                }
                Err(e) => {
                    bump(&self.stats.tx_tap_errors);
                    tracing::debug!(queue = self.spec.index, "TAP write failed: {e}");
                }
            }
        }
        let room = TX_SPARE_BUFFERS.saturating_sub(self.tx_spare.len());
        self.tx_spare.extend(bufs.into_iter().take(room));
        Ok((notify, rx_status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_netif::tx::{Gso, GsoKind};

    fn tcp4_frame(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let total = (20 + 32 + payload) as u16;
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 32];
        tcp[12] = 8 << 4;
        f.extend_from_slice(&tcp);
        f.extend(std::iter::repeat_n(0x61, payload));
        f
    }

    fn packet(len: usize, csum_blank: bool, gso: Option<Gso>) -> TxPacket {
        TxPacket {
            fragments: Vec::new(),
            len,
            csum_blank,
            data_validated: csum_blank,
            gso,
        }
    }

    #[test]
    fn gso_packet_gets_partial_checksum_and_header_length() {
        let mut f = tcp4_frame(3000);
        let gso = Gso {
            kind: GsoKind::TcpV4,
            size: 1448,
        };
        let hdr = virtio_header(&packet(f.len(), false, Some(gso)), &mut f).unwrap();
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 16));
        assert_eq!(hdr.gso_type, xen_netif::vnet::GSO_TCPV4);
        assert_eq!((hdr.gso_size, hdr.hdr_len), (1448, 34 + 32));
    }

    #[test]
    fn plain_and_validated_packets() {
        let mut f = tcp4_frame(10);
        let hdr = virtio_header(&packet(f.len(), false, None), &mut f).unwrap();
        assert_eq!(hdr, VirtioNetHdr::default());
        let mut p = packet(f.len(), false, None);
        p.data_validated = true;
        assert_eq!(virtio_header(&p, &mut f).unwrap().flags, F_DATA_VALID);
        // A blank checksum on something that is not TCP or UDP cannot be set up.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(virtio_header(&packet(42, true, None), &mut arp), None);
    }
}
