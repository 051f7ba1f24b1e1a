//! One frontend queue: a thread that moves frames between the guest's TAP queue and the
//! shared TX/RX rings, as Linux netfront does (a granted page per slot; RX buffers found by
//! ring position; extra-info slots for GSO).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tap::TapQueue;
use xen_abi::netif::{
    NetifExtraGso, NetifExtraInfo, NetifRxRequest, NetifRxResponse, NetifTxRequest,
    NetifTxResponse, NETIF_RSP_NULL, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED, NETRXF_EXTRA_INFO,
    NETRXF_MORE_DATA, NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO,
    NETTXF_MORE_DATA, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6,
};
use xen_abi::{Port, PAGE_SIZE};
use xen_evtchn::EventChannel;
use xen_grant::GrantedPages;
use xen_netif::csum::partial_of;
use xen_netif::vnet::{
    VirtioNetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN,
};
use xen_ring::{FrontRing, SharedMemory};
use zerocopy::{FromBytes, IntoBytes};

/// Slots of a one-page TX or RX ring.
pub const RING_SLOTS: usize = 256;

/// What was negotiated for the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Send and receive packets over several slots.
    pub sg: bool,
    /// Send GSO packets (the backend advertised it and we asked for it).
    pub gso_tx: bool,
}

/// The pages and ports of one queue.
pub struct QueueParts<P: GrantedPages, E: EventChannel> {
    /// TX ring.
    pub tx_ring: FrontRing<P, NetifTxRequest, NetifTxResponse>,
    /// RX ring.
    pub rx_ring: FrontRing<P, NetifRxRequest, NetifRxResponse>,
    /// One TX buffer page per ring slot.
    pub tx_pool: P,
    /// One RX buffer page per ring slot.
    pub rx_pool: P,
    /// Event channel handle.
    pub evtchn: E,
    /// Our TX port.
    pub tx_port: Port,
    /// Our RX port (the same as `tx_port` without split channels).
    pub rx_port: Port,
}

fn page_ptr(pool: &impl SharedMemory, index: usize) -> Option<*mut u8> {
    let offset = index.checked_mul(PAGE_SIZE)?;
    (offset + PAGE_SIZE <= pool.len()).then(|| pool.as_ptr().wrapping_add(offset))
}

pub(crate) fn write_page(
    pool: &impl SharedMemory,
    index: usize,
    offset: usize,
    data: &[u8],
) -> bool {
    if offset + data.len() > PAGE_SIZE {
        return false;
    }
    let Some(p) = page_ptr(pool, index) else {
        return false;
    };
    // SAFETY: `p` starts a whole page inside the granted region (checked above) and
    // `offset + data.len() <= PAGE_SIZE`.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.wrapping_add(offset), data.len()) };
    true
}

pub(crate) fn read_page(
    pool: &impl SharedMemory,
    index: usize,
    offset: usize,
    len: usize,
) -> Option<Vec<u8>> {
    if offset + len > PAGE_SIZE {
        return None;
    }
    let p = page_ptr(pool, index)?;
    let mut out = vec![0u8; len];
    // SAFETY: `offset + len <= PAGE_SIZE` within a page of the granted region.
    unsafe { std::ptr::copy_nonoverlapping(p.wrapping_add(offset), out.as_mut_ptr(), len) };
    Some(out)
}

/// The backend broke the protocol (a corrupt ring, a response for a buffer it does not hold).
struct BrokenBackend;

/// Pages a frame of up to 64 KiB can take.
const MAX_FRAME_PAGES: usize = 17;

/// A frame read from the TAP device straight into TX buffer pages, waiting for ring room.
struct Staged {
    /// Buffer pages holding the frame, in order.
    ids: Vec<u16>,
    /// Frame bytes.
    len: usize,
    /// The frame's virtio header.
    hdr: VirtioNetHdr,
}

/// A received packet being assembled from its slots (its bytes stay in the RX buffer pages
/// until it is written to the TAP device, unless the pages must be posted again first).
struct RxPartial {
    /// Bytes already taken out of reposted pages.
    owned: Vec<u8>,
    /// (buffer page, offset, length) of the slots still in their pages.
    slots: Vec<(usize, usize, usize)>,
    hdr: VirtioNetHdr,
    extras_pending: bool,
    more_data: bool,
    bad: bool,
}

struct Queue<P: GrantedPages, E: EventChannel> {
    parts: QueueParts<P, E>,
    tap: TapQueue,
    negotiated: Negotiated,
    tx_free: Vec<u16>,
    /// TX buffer ids the backend holds (requests without a response yet).
    tx_in_flight: Vec<bool>,
    tx_pending: Option<Staged>,
    rx_req_prod: u32,
    rx_cons: u32,
    rx_partial: Option<RxPartial>,
}

/// Runs a queue until `stop` is readable.
pub(crate) fn run_queue<P, E>(
    parts: QueueParts<P, E>,
    tap: TapQueue,
    negotiated: Negotiated,
    stop: Arc<OwnedFd>,
) where
    P: GrantedPages,
    E: EventChannel,
{
    let mut q = Queue {
        parts,
        tap,
        negotiated,
        tx_free: (0..RING_SLOTS as u16).rev().collect(),
        tx_in_flight: vec![false; RING_SLOTS],
        tx_pending: None,
        rx_req_prod: 0,
        rx_cons: 0,
        rx_partial: None,
    };
    let Ok(epoll) = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) else {
        return;
    };
    for (fd, token) in [
        (q.parts.evtchn.readiness_fd(), 0u64),
        (q.tap.as_raw_fd(), 1),
        (stop.as_raw_fd(), 2),
    ] {
        // SAFETY: the descriptors belong to `q` and `stop`, which outlive `epoll`.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        if epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .is_err()
        {
            return;
        }
    }
    q.post_rx();
    let mut events = [EpollEvent::empty(); 3];
    // The TAP queue leaves the epoll set while no frame can be taken from it (no ring room or
    // buffers: Linux netfront stops its transmit queue), or a frame waiting there would wake
    // the loop again at once; the backend's responses bring it back.
    let mut tap_stopped = false;
    loop {
        let wait = if q.tx_pending.is_some() {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(500)
        };
        let n = match epoll.wait(
            &mut events,
            EpollTimeout::try_from(wait).unwrap_or(EpollTimeout::ZERO),
        ) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        };
        if events.iter().take(n).any(|e| e.data() == 2) {
            break;
        }
        let mut fired = Vec::new();
        while let Ok(Some(p)) = q.parts.evtchn.pending() {
            fired.push(p);
            if fired.len() > 2 {
                break;
            }
        }
        if q.tx_complete().is_err() || q.rx_receive().is_err() {
            tracing::warn!("netfront: the backend corrupted a ring; queue stopped");
            break;
        }
        q.tx_send();
        let stop_tap = q.tx_blocked();
        if stop_tap != tap_stopped {
            let flags = if stop_tap {
                EpollFlags::empty()
            } else {
                EpollFlags::EPOLLIN
            };
            // SAFETY: the TAP queue belongs to `q`, which outlives `epoll`.
            let fd = unsafe { BorrowedFd::borrow_raw(q.tap.as_raw_fd()) };
            if epoll.modify(fd, &mut EpollEvent::new(flags, 1)).is_ok() {
                tap_stopped = stop_tap;
            }
        }
        for p in fired {
            let _ = q.parts.evtchn.unmask(p);
        }
    }
    let _ = q.parts.evtchn.unbind(q.parts.tx_port);
    if q.parts.rx_port != q.parts.tx_port {
        let _ = q.parts.evtchn.unbind(q.parts.rx_port);
    }
}

impl<P: GrantedPages, E: EventChannel> Queue<P, E> {
    fn post_rx(&mut self) {
        let mut pushed = false;
        while self.parts.rx_ring.free_requests() > 0 {
            let index = (self.rx_req_prod as usize) % RING_SLOTS;
            let Some(&gref) = self.parts.rx_pool.refs().get(index) else {
                break;
            };
            let req = NetifRxRequest {
                id: index as u16,
                _pad: 0,
                gref,
            };
            if self.parts.rx_ring.push_request(&req).is_err() {
                break;
            }
            self.rx_req_prod = self.rx_req_prod.wrapping_add(1);
            pushed = true;
        }
        if pushed && self.parts.rx_ring.push_requests_and_check_notify() {
            let _ = self.parts.evtchn.notify(self.parts.rx_port);
        }
    }

    fn tx_complete(&mut self) -> Result<(), BrokenBackend> {
        loop {
            while let Some(rsp) = self
                .parts
                .tx_ring
                .pop_response()
                .map_err(|_| BrokenBackend)?
            {
                if rsp.status == NETIF_RSP_NULL {
                    continue;
                }
                // A response for a buffer the backend does not hold (a duplicate, or an id we
                // never used) is a broken backend, as Linux netfront judges it since XSA-391.
                match self.tx_in_flight.get_mut(usize::from(rsp.id)) {
                    Some(held) if *held => {
                        *held = false;
                        self.tx_free.push(rsp.id);
                    }
                    _ => return Err(BrokenBackend),
                }
            }
            // An event when half of what is outstanding is answered, not at every response:
            // the TX side wakes for frames from the TAP device anyway, and needs completions
            // only to get its buffers back.
            let batch = self.parts.tx_ring.outstanding() / 2;
            if !self
                .parts
                .tx_ring
                .final_check_for_responses_batched(batch)
                .map_err(|_| BrokenBackend)?
            {
                return Ok(());
            }
        }
    }

    /// Whether no frame can be taken from the TAP device until the backend answers: one waits
    /// for ring room, or too few buffers are free for the largest frame.
    fn tx_blocked(&self) -> bool {
        self.tx_pending.is_some() || self.tx_free.len() < MAX_FRAME_PAGES
    }

    /// Sends frames from the TAP device while buffers and slots last.
    fn tx_send(&mut self) {
        let mut pushed = false;
        for _ in 0..RING_SLOTS {
            if self.tx_pending.is_none() {
                match self.tx_read() {
                    Ok(Some(staged)) => self.tx_pending = Some(staged),
                    Ok(None) => continue,
                    Err(()) => break,
                }
            }
            let Some(staged) = self.tx_pending.take() else {
                break;
            };
            match self.tx_one(&staged) {
                Some(true) => pushed = true,
                Some(false) => self.tx_free.extend_from_slice(&staged.ids),
                None => {
                    self.tx_pending = Some(staged); // no room yet
                    break;
                }
            }
        }
        if pushed && self.parts.tx_ring.push_requests_and_check_notify() {
            let _ = self.parts.evtchn.notify(self.parts.tx_port);
        }
    }

    /// Reads one frame from the TAP device straight into free TX buffer pages: `Err` when
    /// there is no frame or no room, `Ok(None)` for a runt.
    fn tx_read(&mut self) -> Result<Option<Staged>, ()> {
        if self.tx_free.len() < MAX_FRAME_PAGES {
            return Err(());
        }
        let ids = self.tx_free.split_off(self.tx_free.len() - MAX_FRAME_PAGES);
        let mut hdr = VirtioNetHdr::default();
        let read = {
            let mut iov = Vec::with_capacity(MAX_FRAME_PAGES + 1);
            iov.push(std::io::IoSliceMut::new(hdr.as_mut_bytes()));
            for &id in &ids {
                match page_ptr(&self.parts.tx_pool, usize::from(id)) {
                    // SAFETY: a whole page of our TX pool that is free: no request names it,
                    // so the backend does not read it, and nothing else here refers to it.
                    Some(p) => iov.push(std::io::IoSliceMut::new(unsafe {
                        std::slice::from_raw_parts_mut(p, PAGE_SIZE)
                    })),
                    None => break,
                }
            }
            self.tap.read_vectored(&mut iov)
        };
        let n = match read {
            Ok(n) => n,
            Err(_) => {
                self.tx_free.extend_from_slice(&ids);
                return Err(());
            }
        };
        let len = n.saturating_sub(VNET_HDR_LEN);
        let used = len.div_ceil(PAGE_SIZE).min(ids.len());
        self.tx_free
            .extend_from_slice(ids.get(used..).unwrap_or_default());
        let ids = ids.get(..used).unwrap_or_default().to_vec();
        if len == 0 {
            self.tx_free.extend_from_slice(&ids);
            return Ok(None);
        }
        Ok(Some(Staged { ids, len, hdr }))
    }

    /// Queues one staged frame: `None` if there is no room now, `Some(false)` if it was
    /// dropped (its pages are then the caller's to free).
    fn tx_one(&mut self, staged: &Staged) -> Option<bool> {
        let hdr = staged.hdr;
        let gso = match hdr.gso_type & !xen_netif::vnet::GSO_ECN {
            GSO_NONE => None,
            GSO_TCPV4 if self.negotiated.gso_tx => Some(XEN_NETIF_GSO_TYPE_TCPV4),
            GSO_TCPV6 if self.negotiated.gso_tx => Some(XEN_NETIF_GSO_TYPE_TCPV6),
            _ => return Some(false),
        };
        let pages = staged.ids.len();
        if staged.len > xen_abi::netif::XEN_NETIF_MAX_TX_SIZE || (pages > 1 && !self.negotiated.sg)
        {
            return Some(false);
        }
        let slots = pages + usize::from(gso.is_some());
        if (self.parts.tx_ring.free_requests() as usize) < slots {
            return None;
        }
        let mut flags = 0;
        if hdr.flags & F_NEEDS_CSUM != 0 {
            flags |= NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED;
        } else if hdr.flags & F_DATA_VALID != 0 {
            flags |= NETTXF_DATA_VALIDATED;
        }
        for (i, &id) in staged.ids.iter().enumerate() {
            let gref = *self.parts.tx_pool.refs().get(usize::from(id))?;
            let mut f = if i == 0 { flags } else { 0 };
            if i + 1 < pages {
                f |= NETTXF_MORE_DATA;
            }
            if i == 0 && gso.is_some() {
                f |= NETTXF_EXTRA_INFO;
            }
            let size = if i == 0 {
                staged.len
            } else {
                (staged.len - i * PAGE_SIZE).min(PAGE_SIZE)
            };
            let req = NetifTxRequest {
                gref,
                offset: 0,
                flags: f,
                id,
                size: size as u16,
            };
            self.parts.tx_ring.push_request(&req).ok()?;
            if let Some(held) = self.tx_in_flight.get_mut(usize::from(id)) {
                *held = true;
            }
            if let (0, Some(t)) = (i, gso) {
                let g = NetifExtraGso {
                    size: hdr.gso_size,
                    type_: t,
                    pad: 0,
                    features: 0,
                };
                let mut u = [0u8; 6];
                u.copy_from_slice(g.as_bytes());
                let extra = NetifExtraInfo {
                    type_: XEN_NETIF_EXTRA_TYPE_GSO,
                    flags: 0,
                    u,
                };
                let mut slot = NetifTxRequest::default();
                for (d, s) in slot.as_mut_bytes().iter_mut().zip(extra.as_bytes()) {
                    *d = *s;
                }
                self.parts.tx_ring.push_request(&slot).ok()?;
            }
        }
        Some(true)
    }

    /// Takes received packets off the RX ring and writes them to the TAP device.
    fn rx_receive(&mut self) -> Result<(), xen_ring::RingError> {
        let mut consumed = false;
        loop {
            while let Some(rsp) = self.parts.rx_ring.pop_response()? {
                let index = (self.rx_cons as usize) % RING_SLOTS;
                self.rx_cons = self.rx_cons.wrapping_add(1);
                consumed = true;
                self.rx_slot(index, rsp);
            }
            if !self.parts.rx_ring.final_check_for_responses()? {
                break;
            }
        }
        if consumed {
            // A packet still arriving keeps its bytes: its pages are about to be posted again.
            if let Some(p) = self.rx_partial.as_mut() {
                for (index, offset, len) in p.slots.drain(..) {
                    match read_page(&self.parts.rx_pool, index, offset, len) {
                        Some(d) => p.owned.extend_from_slice(&d),
                        None => p.bad = true,
                    }
                }
            }
            self.post_rx();
        }
        Ok(())
    }

    fn rx_slot(&mut self, index: usize, rsp: NetifRxResponse) {
        if let Some(p) = self.rx_partial.as_mut().filter(|p| p.extras_pending) {
            let extra = NetifExtraInfo::read_from_bytes(rsp.as_bytes()).unwrap_or_default();
            if extra.type_ == XEN_NETIF_EXTRA_TYPE_GSO {
                let g = NetifExtraGso::read_from_bytes(&extra.u).unwrap_or_default();
                p.hdr.gso_size = g.size;
                p.hdr.gso_type = if g.type_ == XEN_NETIF_GSO_TYPE_TCPV6 {
                    GSO_TCPV6
                } else {
                    GSO_TCPV4
                };
            }
            p.extras_pending = extra.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
        } else {
            let p = self.rx_partial.get_or_insert_with(|| {
                let mut hdr = VirtioNetHdr::default();
                if rsp.flags & NETRXF_CSUM_BLANK != 0 {
                    hdr.flags = F_NEEDS_CSUM;
                } else if rsp.flags & NETRXF_DATA_VALIDATED != 0 {
                    hdr.flags = F_DATA_VALID;
                }
                RxPartial {
                    owned: Vec::new(),
                    slots: Vec::new(),
                    hdr,
                    extras_pending: rsp.flags & NETRXF_EXTRA_INFO != 0,
                    more_data: true,
                    bad: false,
                }
            });
            match usize::try_from(rsp.status) {
                Ok(len) if usize::from(rsp.offset) + len <= PAGE_SIZE => {
                    p.slots.push((index, usize::from(rsp.offset), len));
                }
                _ => p.bad = true,
            }
            p.more_data = rsp.flags & NETRXF_MORE_DATA != 0;
        }
        if self
            .rx_partial
            .as_ref()
            .is_some_and(|p| !p.extras_pending && !p.more_data)
        {
            if let Some(p) = self.rx_partial.take() {
                if !p.bad {
                    self.rx_deliver(p);
                }
            }
        }
    }

    /// Writes a received packet to the TAP device, straight from the RX buffer pages.
    fn rx_deliver(&mut self, p: RxPartial) {
        let pages: Vec<&[u8]> = p
            .slots
            .iter()
            .filter_map(|&(index, offset, len)| {
                let base = page_ptr(&self.parts.rx_pool, index)?;
                // SAFETY: `offset + len <= PAGE_SIZE` (checked when the slot arrived) within a
                // page of our RX pool, which is not posted again before this write returns.
                Some(unsafe { std::slice::from_raw_parts(base.wrapping_add(offset), len) })
            })
            .collect();
        let mut hdr = p.hdr;
        if hdr.flags & F_NEEDS_CSUM != 0 || hdr.gso_type != GSO_NONE {
            // The checksum field already holds the pseudo-header sum (Linux netfront's
            // `checksum_setup` without recalculation); find where it is from the headers.
            let head: &[u8] = if p.owned.is_empty() {
                pages.first().copied().unwrap_or_default()
            } else {
                &p.owned
            };
            let Some(partial) = partial_of(head) else {
                return;
            };
            hdr.flags = F_NEEDS_CSUM;
            hdr.csum_start = partial.start as u16;
            hdr.csum_offset = partial.offset as u16;
            if hdr.gso_type != GSO_NONE {
                let doff = head
                    .get(partial.start + 12)
                    .map_or(20, |b| usize::from(b >> 4) * 4);
                hdr.hdr_len = (partial.start + doff) as u16;
            }
        }
        let mut iov = Vec::with_capacity(pages.len() + 2);
        iov.push(std::io::IoSlice::new(hdr.as_bytes()));
        if !p.owned.is_empty() {
            iov.push(std::io::IoSlice::new(&p.owned));
        }
        iov.extend(pages.iter().map(|d| std::io::IoSlice::new(d)));
        let _ = self.tap.write(&iov);
    }
}
