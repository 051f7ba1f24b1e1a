//! The receive side of a queue (host to guest): read frames from the TAP queue into a bounded
//! queue (filtering multicast, steering by the guest's hash mapping, finishing checksums the
//! guest cannot take), and deliver each frame when the guest has posted enough buffers for it:
//! grant-copy the data into those buffers in batches and answer each consumed request in its
//! own slot. A guest that posts nothing for the stall timeout gets its queue dropped and the
//! carrier lowered until it posts again; frames older than the drain timeout are dropped.

use std::sync::atomic::Ordering;
use std::time::Instant;

use xen_abi::grant_table::status::OKAY;
use xen_abi::netif::{NetifRxRequest, NETIF_RSP_ERROR, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED};
use xen_abi::DomId;
use xen_evtchn::EventChannel;
use xen_grant::{CopyOp, GrantMapper, GrantPtr};
use xen_netif::csum::{complete_partial, locate_l4, Partial, IPPROTO_UDP, L3};
use xen_netif::rx::{layout, response, slots_needed, RxMeta, RxSlot};
use xen_netif::tx::GsoKind;
use xen_netif::vnet::{HostGso, VirtioNetHdr, F_DATA_VALID, F_NEEDS_CSUM, VNET_HDR_LEN};
use zerocopy::{FromBytes, IntoBytes};

use crate::framebuf::FrameBuf;
use crate::queue::{Fatal, Worker, READ_BUF_LEN};
use crate::shared::RxFrame;
use crate::stats::{add, bump, set};

/// Frames read from the TAP queue per wake-up.
const RX_READ_BUDGET: usize = 128;
/// Frames delivered per grant-copy call.
const RX_BATCH: usize = 64;
/// Frames at least this large move in the read buffer they were read into.
const LARGE_FRAME: usize = 16 << 10;
/// Read buffers a queue keeps for reuse.
const RX_SPARE_BUFFERS: usize = 8;

/// Frames taken for delivery, each with the slots it fills and the guest's requests for them.
pub(crate) type RxBatch = Vec<(RxFrame, Vec<RxSlot>, Vec<NetifRxRequest>)>;

/// The grant copies that fill a batch's buffers: one per data slot, in batch order.
pub(crate) fn rx_copy_ops(frontend: DomId, batch: &RxBatch) -> Vec<CopyOp<'_>> {
    let mut ops = Vec::new();
    for (frame, slots, requests) in batch {
        let data = frame.buf.get(VNET_HDR_LEN..).unwrap_or_default();
        for (slot, req) in slots.iter().zip(requests) {
            if let RxSlot::Data { from, len, .. } = *slot {
                ops.push(CopyOp::ToGrant {
                    src: data.get(from..from + len).unwrap_or_default(),
                    dst: GrantPtr {
                        domid: frontend,
                        gref: req.gref,
                        offset: 0,
                    },
                });
            }
        }
    }
    ops
}

fn header(buf: &[u8]) -> VirtioNetHdr {
    VirtioNetHdr::read_from_prefix(buf)
        .map(|(h, _)| h)
        .unwrap_or_default()
}

impl<G: GrantMapper, E: EventChannel> Worker<G, E> {
    /// Reads waiting frames from the TAP queue.
    pub(crate) fn rx_read_tap(&mut self, now: Instant) {
        for _ in 0..RX_READ_BUDGET {
            if self.rx_queue_full() {
                break;
            }
            match self.tap.read(&mut self.read_buf) {
                Ok(n) if n > VNET_HDR_LEN + xen_netif::ETH_HLEN => {
                    let buf = self.take_read(n);
                    self.rx_admit(buf, now);
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(queue = self.spec.index, "TAP read failed: {e}");
                    break;
                }
            }
        }
    }

    /// The `n` bytes just read: a large frame keeps the read buffer itself (a spare takes its
    /// place), a small one is copied out at its own size.
    fn take_read(&mut self, n: usize) -> FrameBuf {
        if n < LARGE_FRAME {
            return self.read_buf.get(..n).unwrap_or_default().to_vec().into();
        }
        let spare = self
            .rx_spare
            .pop()
            .unwrap_or_else(|| FrameBuf::new(&*self.grants, READ_BUF_LEN));
        let mut buf = std::mem::replace(&mut self.read_buf, spare);
        buf.set_len(n);
        buf
    }

    /// Keeps a delivered or dropped frame's buffer for a later read, if it is a read buffer.
    pub(crate) fn recycle(&mut self, mut buf: FrameBuf) {
        if buf.capacity() >= READ_BUF_LEN && self.rx_spare.len() < RX_SPARE_BUFFERS {
            buf.set_len(READ_BUF_LEN);
            self.rx_spare.push(buf);
        }
    }

    /// Takes frames other queues steered here.
    pub(crate) fn rx_take_inbox(&mut self, now: Instant) {
        let index = self.spec.index as usize;
        let frames = match self.shared.inboxes.get(index) {
            Some(inbox) => inbox.drain(),
            None => return,
        };
        for f in frames {
            self.rx_enqueue(f, now);
        }
    }

    /// Filters, fixes up and steers one frame read from the TAP device.
    fn rx_admit(&mut self, mut buf: FrameBuf, now: Instant) {
        let frame = buf.get(VNET_HDR_LEN..).unwrap_or_default();
        if !self.shared.mcast_passes(frame.get(..6).unwrap_or_default()) {
            bump(&self.stats.rx_drop_mcast);
            return;
        }
        let mut hdr = header(&buf);
        if hdr.flags & F_NEEDS_CSUM != 0 && !self.guest_takes_partial(frame) {
            if hdr.gso() != HostGso::None {
                bump(&self.stats.rx_drop_unfit);
                return;
            }
            let partial = Partial {
                start: usize::from(hdr.csum_start),
                offset: usize::from(hdr.csum_offset),
            };
            let udp = locate_l4(frame).is_some_and(|l4| l4.proto == IPPROTO_UDP);
            let Some(frame) = buf.get_mut(VNET_HDR_LEN..) else {
                return;
            };
            if !complete_partial(frame, partial, udp) {
                bump(&self.stats.rx_drop_unfit);
                return;
            }
            hdr.flags = F_DATA_VALID;
            if let Some(h) = buf.get_mut(..VNET_HDR_LEN) {
                h.copy_from_slice(hdr.as_bytes());
            }
        }
        // The guest's hash, once per frame: it picks the queue and goes to the guest as an
        // extra-info slot.
        let queues = self.shared.queues();
        let (hash, target) = {
            let config = self
                .shared
                .hash
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let hash = config.hash(buf.get(VNET_HDR_LEN..).unwrap_or_default());
            (hash, hash.map(|h| config.queue_of(h.value, queues)))
        };
        let frame = RxFrame {
            buf,
            hash,
            queued_at: now,
        };
        match target.filter(|&q| q != self.spec.index) {
            Some(q) => {
                let pushed = self
                    .shared
                    .inboxes
                    .get(q as usize)
                    .is_some_and(|inbox| inbox.push(frame).is_ok());
                if !pushed {
                    bump(&self.stats.rx_drop_queue_full);
                }
            }
            None => self.rx_enqueue(frame, now),
        }
    }

    /// Whether the guest accepts a blank checksum on this frame.
    fn guest_takes_partial(&self, frame: &[u8]) -> bool {
        match locate_l4(frame).map(|l4| l4.l3) {
            Some(L3::V6(..)) => self.spec.front.ipv6_csum,
            _ => self.spec.front.csum,
        }
    }

    fn rx_enqueue(&mut self, frame: RxFrame, now: Instant) {
        if self.stalled {
            bump(&self.stats.rx_drop_stalled);
            return;
        }
        if self.rx_queue.is_empty() && self.rx.unconsumed_requests().unwrap_or(0) > 0 {
            // Nothing was waiting and the guest has buffers: it has not been keeping anything
            // back. (Without buffers the stall clock runs from the last delivery, as Linux's
            // `last_rx_time`, even while the drain timeout empties the queue.)
            self.last_rx_progress = now;
        }
        if self.rx_queue_full() {
            bump(&self.stats.rx_drop_queue_full);
            return;
        }
        // Memory held, not bytes carried: a large frame keeps a whole read buffer.
        self.rx_queue_bytes += frame.buf.capacity();
        self.rx_queue.push_back(frame);
        set(&self.stats.rx_queue_len, self.rx_queue.len() as u64);
        set(&self.stats.rx_queue_bytes, self.rx_queue_bytes as u64);
    }

    /// Whether the RX queue is at its byte limit (it may pass it by at most one frame).
    pub(crate) fn rx_queue_full(&self) -> bool {
        self.rx_queue_bytes >= self.spec.limits.queue_bytes
    }

    /// Drops the frame at the head of the queue; false if there was none.
    fn rx_discard(&mut self) -> bool {
        match self.rx_pop() {
            Some(f) => {
                self.recycle(f.buf);
                true
            }
            None => false,
        }
    }

    fn rx_pop(&mut self) -> Option<RxFrame> {
        let f = self.rx_queue.pop_front()?;
        self.rx_queue_bytes = self.rx_queue_bytes.saturating_sub(f.buf.capacity());
        set(&self.stats.rx_queue_len, self.rx_queue.len() as u64);
        set(&self.stats.rx_queue_bytes, self.rx_queue_bytes as u64);
        Some(f)
    }

    /// What the guest is told about a frame, or `None` if it cannot take it.
    fn rx_meta(&self, frame: &RxFrame) -> Option<RxMeta> {
        let hdr = header(&frame.buf);
        let front = self.spec.front;
        let gso = match hdr.gso() {
            HostGso::None => None,
            HostGso::Tcp(g) => {
                let ok = match g.kind {
                    GsoKind::TcpV4 => front.gso_tcpv4,
                    GsoKind::TcpV6 => front.gso_tcpv6,
                };
                if !ok {
                    return None;
                }
                Some(g)
            }
            HostGso::Unsupported => return None,
        };
        let csum_flags = hdr.rx_flags() & (NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED);
        Some(RxMeta {
            csum_flags,
            gso,
            hash: frame.hash,
        })
    }

    fn rx_stall_check(&mut self, now: Instant) {
        if !self.stalled
            && !self.rx_queue.is_empty()
            && now.saturating_duration_since(self.last_rx_progress)
                >= self.spec.limits.stall_timeout
        {
            self.stalled = true;
            bump(&self.stats.rx_stalls);
            while self.rx_discard() {
                bump(&self.stats.rx_drop_stalled);
            }
            if self.shared.stalled_queues.fetch_add(1, Ordering::AcqRel) == 0 {
                let _ = tap::Tap::set_carrier(&self.tap, false);
            }
            tracing::info!(
                frontend = self.spec.frontend,
                queue = self.spec.index,
                "guest RX ring stalled: dropping its traffic until it posts buffers"
            );
        }
    }

    fn rx_unstall(&mut self) {
        if self.stalled {
            self.stalled = false;
            if self.shared.stalled_queues.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _ = tap::Tap::set_carrier(&self.tap, true);
            }
            tracing::info!(
                frontend = self.spec.frontend,
                queue = self.spec.index,
                "guest RX ring resumed"
            );
        }
    }

    /// Delivers waiting frames the guest has buffers for.
    pub(crate) fn rx_deliver(&mut self, now: Instant) -> Result<(), Fatal> {
        while let Some(batch) = self.rx_collect(now)? {
            let status = self.rx_copy(&batch);
            self.rx_finish(batch, status)?;
        }
        Ok(())
    }

    /// Takes the next batch of waiting frames the guest has posted buffers for (after dropping
    /// expired frames and checking for a stall); `None` when there is none.
    pub(crate) fn rx_collect(&mut self, now: Instant) -> Result<Option<RxBatch>, Fatal> {
        if self.stalled {
            if self.rx.unconsumed_requests()? > 0 {
                self.rx_unstall();
                self.last_rx_progress = now;
            } else {
                return Ok(None);
            }
        }
        while self.rx_queue.front().is_some_and(|f| {
            now.saturating_duration_since(f.queued_at) > self.spec.limits.drain_timeout
        }) {
            self.rx_discard();
            bump(&self.stats.rx_drop_expired);
        }
        let mut batch: RxBatch = Vec::new();
        while batch.len() < RX_BATCH {
            let Some(frame) = self.rx_queue.front() else {
                break;
            };
            let len = frame.buf.len().saturating_sub(VNET_HDR_LEN);
            let meta = self.rx_meta(frame);
            let needed = meta.map(|m| slots_needed(len, &m));
            let data_slots = len.div_ceil(xen_abi::PAGE_SIZE);
            let (Some(meta), Some(needed)) = (meta, needed) else {
                self.rx_discard();
                bump(&self.stats.rx_drop_unfit);
                continue;
            };
            if needed as u32 > self.rx.size() || (data_slots > 1 && !self.spec.front.sg) {
                self.rx_discard();
                bump(&self.stats.rx_drop_unfit);
                continue;
            }
            if !self.rx.requests_available_or_arm(needed as u32)? {
                break;
            }
            self.rx.begin_pass(needed as u32)?;
            let requests: Vec<NetifRxRequest> =
                std::iter::from_fn(|| self.rx.pop_request()).collect();
            let Some(frame) = self.rx_pop() else {
                break;
            };
            let slots = layout(len, &meta);
            batch.push((frame, slots, requests));
        }
        set(
            &self.stats.rx_ring_posted,
            u64::from(self.rx.unconsumed_requests()?),
        );
        if batch.is_empty() {
            // Stalled means no buffers at all (Linux `xenvif_rx_queue_stalled`): a guest
            // that posts fewer slots than the head frame needs is only waiting, and that
            // frame expires after the drain timeout.
            if self.rx.unconsumed_requests()? == 0 {
                self.rx_stall_check(now);
            }
            return Ok(None);
        }
        self.last_rx_progress = now;
        Ok(Some(batch))
    }

    /// Copies a batch into the guest's buffers on its own: one status per data slot.
    pub(crate) fn rx_copy(&self, batch: &RxBatch) -> Vec<i16> {
        let mut ops = rx_copy_ops(self.spec.frontend, batch);
        let mut status = vec![OKAY; ops.len()];
        if self.grants.copy(&mut ops, &mut status).is_err() {
            status.iter_mut().for_each(|s| *s = -1);
        }
        status
    }

    /// Answers a copied batch (`status`: one per data slot, in batch order), notifies the
    /// guest if it asked, and keeps the frames' buffers for reuse.
    pub(crate) fn rx_finish(&mut self, batch: RxBatch, status: Vec<i16>) -> Result<(), Fatal> {
        if self.rx_answer(&batch, status)? {
            self.notify(self.local_rx);
        }
        for (frame, _, _) in batch {
            self.recycle(frame.buf);
        }
        Ok(())
    }

    /// Answers every slot of a copied batch in ring order, each response published at once
    /// (as on the TX side, for restarts). True if the frontend wants an event.
    fn rx_answer(&mut self, batch: &RxBatch, status: Vec<i16>) -> Result<bool, Fatal> {
        let mut statuses = status.into_iter();
        let mut notify = false;
        for (frame, slots, requests) in batch {
            let mut failed = false;
            for (slot, req) in slots.iter().zip(requests) {
                let mut rsp = response(req.id, slot);
                if matches!(slot, RxSlot::Data { .. }) && statuses.next() != Some(OKAY) {
                    rsp.status = NETIF_RSP_ERROR;
                    failed = true;
                }
                self.rx.push_response(&rsp)?;
                notify |= self.rx.push_responses_and_check_notify();
            }
            if failed {
                bump(&self.stats.rx_copy_errors);
            } else {
                if slots.iter().any(|s| matches!(s, RxSlot::Extra(e) if e.type_ == xen_abi::netif::XEN_NETIF_EXTRA_TYPE_GSO)) {
                    bump(&self.stats.rx_gso_packets);
                }
                bump(&self.stats.rx_packets);
                add(
                    &self.stats.rx_bytes,
                    frame.buf.len().saturating_sub(VNET_HDR_LEN) as u64,
                );
            }
        }
        Ok(notify)
    }
}
