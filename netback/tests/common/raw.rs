//! A misbehaving guest's tools and the witnesses that watch it: a raw netif frontend driven
//! slot by slot, an injector TAP on the driver domain's bridge that sends frames toward the
//! guests and captures what they send, and a well-behaved pair of guests whose TCP traffic
//! must keep flowing (and hashing equal) whatever the bad guest does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netfront::negotiate::FrontendKeys;
use netfront::queue::QueueParts;
use netfront::raw::{connect_raw, RawVif};
use netfront::NetfrontOptions;
use tap::{Tap, TapQueue};
use xen_abi::netif::{
    NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse, NETTXF_MORE_DATA,
};
use xen_netif::vnet::{VirtioNetHdr, VNET_HDR_LEN};
use xen_sim::domain::{SimEvtchn, SimGrantedPages};
use xen_store::XenbusState;
use zerocopy::IntoBytes;

use netback::device::NetbackConfig;
use netback::stats::QueueSnapshot;
use xen_abi::netif::NETIF_RSP_OKAY;
use xen_backend::Platform;
use xen_ring::SharedMemory;

use super::{attach, mac_of, rig, Rig};

/// A raw frontend on the simulated host.
pub type RawSimVif = RawVif<SimGrantedPages, SimEvtchn>;
/// One of its queues.
pub type RawQueue = QueueParts<SimGrantedPages, SimEvtchn>;

/// The address the injector sends from and receives for: a station beyond the bridge. (Not
/// the injector device's own address: the bridge keeps its ports' addresses for itself.)
pub const INJECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
/// The injector device's own address.
const INJECTOR_PORT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// The Ethernet type of test frames (IEEE local experimental).
pub const ETHERTYPE_TEST: u16 = 0x88b5;

/// Guest `i`'s MAC address as bytes.
pub fn mac(i: usize) -> [u8; 6] {
    let text = mac_of(i);
    let mut out = [0u8; 6];
    for (b, part) in out.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    out
}

/// A test frame of `len` bytes: Ethernet header, the marker, then a pattern derived from it.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], marker: u32, len: usize) -> Vec<u8> {
    assert!(len >= 18);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    f.extend_from_slice(&marker.to_le_bytes());
    f.extend((18..len).map(|k| (k as u32 * 13 + marker) as u8));
    f
}

fn marker_of(frame: &[u8]) -> Option<u32> {
    if frame.get(12..14)? != ETHERTYPE_TEST.to_be_bytes() {
        return None;
    }
    Some(u32::from_le_bytes(frame.get(14..18)?.try_into().ok()?))
}

impl Rig {
    /// Connects guest `i`'s vif `devid` with a raw frontend; `edit` may change its keys.
    pub async fn connect_raw(
        &self,
        i: usize,
        devid: u32,
        opts: NetfrontOptions,
        ctrl_ring: bool,
        edit: &mut dyn FnMut(&mut FrontendKeys),
    ) -> netfront::Result<RawSimVif> {
        let g = &self.guests[i];
        let xs = g.domain.xenstore().await.unwrap();
        let dir = xen_store::path::frontend_path(g.domain.domid(), "vif", devid);
        let grants = g.domain.grants().unwrap();
        let domain = &g.domain;
        connect_raw(
            &xs,
            &dir,
            &grants,
            || {
                domain
                    .evtchn()
                    .map_err(|e| std::io::Error::other(e.to_string()))
            },
            opts,
            ctrl_ring,
            edit,
        )
        .await
    }

    /// Connects guest `i`'s vif `devid` with a raw frontend asking for the defaults.
    pub async fn raw_vif(&self, i: usize, devid: u32) -> RawSimVif {
        self.connect_raw(i, devid, NetfrontOptions::default(), false, &mut |_| {})
            .await
            .expect("the raw frontend connects")
    }

    /// The backend state of guest `i`'s vif `devid`.
    pub async fn backend_state(&self, i: usize, devid: u32) -> Option<XenbusState> {
        let xs = self.host_xs().await;
        let path = format!(
            "{}/state",
            xen_store::path::backend_path(
                self.dd.domid(),
                "vif",
                self.guests[i].domain.domid(),
                devid
            )
        );
        xs.read_state(&path).await.ok()
    }

    /// Waits until guest `i`'s vif `devid` backend reaches `want` (10 s at most).
    pub async fn wait_backend_state(&self, i: usize, devid: u32, want: XenbusState) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.backend_state(i, devid).await == Some(want) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Waits until guest `i`'s vif `devid` has no backend directory: netback in a driver
    /// domain removes it once the device is closed and offline, as `xl devd` would.
    pub async fn wait_backend_removed(&self, i: usize, devid: u32) -> bool {
        let xs = self.host_xs().await;
        let dir = xen_store::path::backend_path(
            self.dd.domid(),
            "vif",
            self.guests[i].domain.domid(),
            devid,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(xs.exists(&dir).await, Ok(false)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The host-side device name of guest `i`'s vif `devid`.
    pub fn vif_name(&self, i: usize, devid: u32) -> String {
        format!("vif{}.{devid}", self.guests[i].domain.domid())
    }
}

/// A TAP device on the driver domain's bridge, standing in for the rest of the network.
pub struct Injector {
    _tap: Tap,
    queue: TapQueue,
}

impl Injector {
    /// Creates `inj0` on `xenbr0` in the driver domain's namespace.
    pub fn new(rig: &Rig) -> Self {
        let mut tap = Tap::create("inj0", 1, Some(&rig.dd_ns.path())).unwrap();
        let link = tap.link();
        link.set_mac(INJECTOR_PORT_MAC).unwrap();
        link.add_to_bridge("xenbr0").unwrap();
        link.set_up(true).unwrap();
        let queue = tap.take_queues().pop().unwrap();
        Self { _tap: tap, queue }
    }

    /// Sends one frame into the bridge.
    pub fn send(&self, frame: &[u8], hdr: VirtioNetHdr) {
        self.queue
            .write(&[
                std::io::IoSlice::new(hdr.as_bytes()),
                std::io::IoSlice::new(frame),
            ])
            .unwrap();
    }

    /// The test frames that reach the injector within `wait`, by marker order of arrival.
    pub fn collect(&self, wait: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 70_000];
        while Instant::now() < deadline {
            match self.queue.read(&mut buf) {
                Ok(n) => {
                    let frame = &buf[VNET_HDR_LEN.min(n)..n];
                    if marker_of(frame).is_some() {
                        out.push(frame.to_vec());
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        out
    }

    /// Waits (5 s at most) for the test frame with `marker`.
    pub fn expect(&self, marker: u32) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 70_000];
        while Instant::now() < deadline {
            match self.queue.read(&mut buf) {
                Ok(n) => {
                    let frame = &buf[VNET_HDR_LEN.min(n)..n];
                    if marker_of(frame) == Some(marker) {
                        return Some(frame.to_vec());
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        None
    }
}

/// Builds the TX slots of one packet whose fragments are `(offset, bytes)`, each in its own
/// buffer page starting at page `first_page`; the first slot's size is `total` (the packet's
/// length, as netif.h defines it). The caller may then corrupt any field.
pub fn tx_chain(
    q: &RawQueue,
    first_page: usize,
    fragments: &[(u16, &[u8])],
    total: u16,
) -> Vec<NetifTxRequest> {
    fragments
        .iter()
        .enumerate()
        .map(|(k, (offset, data))| {
            let page = (first_page + k) % netfront::queue::RING_SLOTS;
            if !data.is_empty() {
                assert!(q.write_tx_buffer(page, usize::from(*offset), data));
            }
            NetifTxRequest {
                gref: q.tx_gref(page).unwrap(),
                offset: *offset,
                flags: if k + 1 < fragments.len() {
                    NETTXF_MORE_DATA
                } else {
                    0
                },
                id: page as u16,
                size: if k == 0 { total } else { data.len() as u16 },
            }
        })
        .collect()
}

/// The slots of a well-formed one-slot packet carrying `frame`.
pub fn tx_simple(q: &RawQueue, page: usize, frame: &[u8]) -> Vec<NetifTxRequest> {
    tx_chain(q, page, &[(0, frame)], frame.len() as u16)
}

/// Puts `slots` on queue `q`'s TX ring and notifies.
pub fn push_tx(q: &mut RawQueue, slots: &[NetifTxRequest]) {
    for s in slots {
        q.tx_ring.push_request(s).unwrap();
    }
    q.tx_ring.push_requests_and_check_notify();
    q.notify_tx().unwrap();
}

/// Collects up to `n` responses from `pop` (5 s at most).
fn collect_responses<T>(n: usize, mut pop: impl FnMut() -> Option<T>) -> Vec<T> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < n && Instant::now() < deadline {
        match pop() {
            Some(r) => out.push(r),
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    out
}

/// Collects `n` TX responses (5 s at most).
pub fn tx_responses(q: &mut RawQueue, n: usize) -> Vec<NetifTxResponse> {
    collect_responses(n, || q.tx_ring.pop_response().unwrap())
}

/// Posts RX buffers for ring positions `from..from + n` (buffer page = position mod ring size).
pub fn post_rx(q: &mut RawQueue, from: u32, n: u32) {
    for pos in from..from + n {
        let page = pos as usize % netfront::queue::RING_SLOTS;
        q.rx_ring
            .push_request(&NetifRxRequest {
                id: page as u16,
                _pad: 0,
                gref: q.rx_gref(page).unwrap(),
            })
            .unwrap();
    }
    q.rx_ring.push_requests_and_check_notify();
    q.notify_rx().unwrap();
}

/// Collects `n` RX responses (5 s at most).
pub fn rx_responses(q: &mut RawQueue, n: usize) -> Vec<NetifRxResponse> {
    collect_responses(n, || q.rx_ring.pop_response().unwrap())
}

/// The good guests: TCP transfers from guest 0 to guest 1, hashed on both ends, in a loop.
pub struct GoodTraffic {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<u64>,
}

impl GoodTraffic {
    /// Starts the loop (guests 0 and 1 must be connected).
    pub fn start(rig: &Rig) -> Self {
        super::ping(&rig.guests[0].ns, &rig.guests[1].ipv4, 1);
        let from: PathBuf = rig.guests[0].ns.path();
        let to: PathBuf = rig.guests[1].ns.path();
        let addr = rig.guests[1].ipv4.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, r) = (Arc::clone(&stop), Arc::clone(&rounds));
        let thread = std::thread::spawn(move || {
            let bytes = 256 << 10;
            while !s.load(Ordering::Acquire) {
                let (sent, received, total) =
                    super::tcp_transfer_between(&from, &to, &addr, 0, bytes);
                assert_eq!(total, bytes, "the good guest's transfer was cut short");
                assert_eq!(sent, received, "the good guest's data differs");
                r.fetch_add(1, Ordering::AcqRel);
            }
            r.load(Ordering::Acquire)
        });
        Self {
            stop,
            rounds,
            thread,
        }
    }

    /// Requires `min` more verified transfers (within 20 s), then stops the loop.
    pub fn finish(self, min: u64) {
        let start = self.rounds.load(Ordering::Acquire);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.rounds.load(Ordering::Acquire) < start + min
            && Instant::now() < deadline
            && !self.thread.is_finished()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::Release);
        let rounds = self.thread.join().expect("the good guests' traffic");
        assert!(
            rounds >= start + min,
            "the good guests kept talking ({start} transfers before, {rounds} after)"
        );
    }
}

/// A backend, two good guests talking, an injector, and bad guests to come.
pub struct Scene {
    /// The host, driver domain and guests.
    pub rig: Rig,
    /// The injector on the bridge.
    pub inj: Injector,
    /// The good guests' traffic.
    pub good: GoodTraffic,
}

/// Guests 0 and 1 connected and talking; guests 2.. attached (vif 0) but not connected.
pub async fn scene(tag: &str, guests: usize, config: NetbackConfig) -> Scene {
    let mut rig = rig(tag, guests, config).await;
    for i in 0..guests {
        attach(&rig, i, &[]).await;
    }
    for i in 0..2 {
        rig.connect(i, NetfrontOptions::default()).await;
    }
    let inj = Injector::new(&rig);
    let good = GoodTraffic::start(&rig);
    Scene { rig, inj, good }
}

/// Queue 0's counters of guest `i`'s vif `devid`.
pub fn stats(rig: &Rig, i: usize, devid: u32) -> QueueSnapshot {
    let domid = rig.guests[i].domain.domid();
    netback::device::snapshot(&rig.stats)
        .into_iter()
        .find(|v| v.frontend == domid && v.devid == devid)
        .and_then(|v| v.queues.into_iter().next())
        .unwrap_or_default()
}

pub fn poke_u32(mem: &impl SharedMemory, offset: usize, value: u32) {
    assert!(offset + 4 <= mem.len());
    // SAFETY: a 4-aligned offset inside the ring page the bad frontend owns.
    unsafe { AtomicU32::from_ptr(mem.as_ptr().add(offset).cast()) }.store(value, Ordering::Release);
}

pub fn peek_u32(mem: &impl SharedMemory, offset: usize) -> u32 {
    assert!(offset + 4 <= mem.len());
    // SAFETY: as in `poke_u32`.
    unsafe { AtomicU32::from_ptr(mem.as_ptr().add(offset).cast()) }.load(Ordering::Acquire)
}

/// Sends a well-formed frame from the raw vif and requires it at the injector, byte for byte.
pub fn proves_alive(q: &mut RawQueue, inj: &Injector, from: usize, marker: u32, page: usize) {
    let frame = test_frame(INJECTOR_MAC, mac(from), marker, 300);
    push_tx(q, &tx_simple(q, page, &frame));
    let rsp = tx_responses(q, 1);
    assert_eq!(rsp.len(), 1, "a response for the good frame");
    assert_eq!(rsp[0].status, NETIF_RSP_OKAY);
    assert_eq!(
        inj.expect(marker).as_deref(),
        Some(&frame[..]),
        "frame {marker}"
    );
}

/// Reads single-slot RX responses (5 s at most) until one carries `frame`.
pub fn received(q: &mut RawQueue, frame: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for r in rx_responses(q, 1) {
            let Ok(len) = usize::try_from(r.status) else {
                continue;
            };
            if q.read_rx_buffer(usize::from(r.id), usize::from(r.offset), len)
                .as_deref()
                == Some(frame)
            {
                return true;
            }
        }
    }
    false
}

/// An extra-info slot (the union overlays a TX request).
pub fn extra_slot(type_: u8, flags: u8, u: [u8; 6]) -> NetifTxRequest {
    let extra = xen_abi::netif::NetifExtraInfo { type_, flags, u };
    let mut slot = NetifTxRequest::default();
    for (d, s) in slot.as_mut_bytes().iter_mut().zip(extra.as_bytes()) {
        *d = *s;
    }
    slot
}

/// The union bytes of a GSO extra.
pub fn gso_extra(size: u16, type_: u8) -> [u8; 6] {
    let g = xen_abi::netif::NetifExtraGso {
        size,
        type_,
        pad: 0,
        features: 0,
    };
    let mut u = [0u8; 6];
    u.copy_from_slice(g.as_bytes());
    u
}
