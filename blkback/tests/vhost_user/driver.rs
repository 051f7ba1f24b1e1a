//! The guest and VMM side for the vhost-user-blk tests: guest memory in a memfd shared with the
//! backend, a vhost-user frontend connection set up as QEMU sets one up, and a split virtqueue
//! driver (descriptor table, available and used rings in that memory) that builds virtio-blk
//! request chains, including malformed ones.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub const MEM_SIZE: usize = 64 << 20;
pub const QUEUE_SIZE: u16 = 128;
/// Rings of queue q live at q * RING_STRIDE.
const RING_STRIDE: u64 = 0x1_0000;
/// The bump allocator starts here (above every queue's rings).
const HEAP: u64 = 0x10_0000;

pub const F_EVENT_IDX: u64 = 1 << 29;
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;

/// Guest memory shared with the backend.
pub struct Guest {
    pub mem: GuestMemoryMmap<()>,
    host_base: u64,
    fd: i32,
    next: u64,
}

impl Guest {
    pub fn new() -> Self {
        // SAFETY: a plain memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"vhost-user-guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: the descriptor was just created and is owned here.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(MEM_SIZE as u64).unwrap();
        let raw = file.as_raw_fd();
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        let host_base = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        Self {
            mem,
            host_base,
            fd: raw,
            next: HEAP,
        }
    }

    /// `len` bytes of guest memory, 4 KiB aligned.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next;
        self.next = (at + len + 4095) & !4095;
        assert!(self.next <= MEM_SIZE as u64, "test guest memory exhausted");
        at
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(gpa)).unwrap();
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
        v
    }

    fn host(&self, gpa: u64) -> u64 {
        self.host_base + gpa
    }
}

/// One split virtqueue driven from the guest side.
pub struct Vq {
    pub index: usize,
    desc: u64,
    avail: u64,
    used: u64,
    pub kick: EventFd,
    pub call: EventFd,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    event_idx: bool,
}

/// A connected device: the frontend connection and its queues.
pub struct Device {
    pub frontend: Frontend,
    pub queues: Vec<Vq>,
    pub features: u64,
}

/// Connects to `socket` as a VMM does, acknowledging the offered features in `mask`, and sets
/// up `queues` virtqueues in `guest`'s memory.
pub fn connect(socket: &Path, guest: &Guest, queues: usize, mask: u64) -> Device {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut frontend = loop {
        match Frontend::connect(socket, queues as u64) {
            Ok(f) => break f,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot connect to {}: {e}", socket.display()),
        }
    };
    frontend.set_owner().unwrap();
    let offered = frontend.get_features().unwrap();
    let features = offered & mask;
    frontend.set_features(features).unwrap();
    let proto = frontend.get_protocol_features().unwrap();
    frontend
        .set_protocol_features(
            proto & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ),
        )
        .unwrap();
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: guest.host(0),
        mmap_offset: 0,
        mmap_handle: guest.fd,
    };
    frontend.set_mem_table(&[region]).unwrap();
    let event_idx = features & F_EVENT_IDX != 0;
    let mut vqs = Vec::new();
    for q in 0..queues {
        let base = q as u64 * RING_STRIDE;
        let vq = Vq {
            index: q,
            desc: base,
            avail: base + 0x1000 * 2,
            used: base + 0x1000 * 3,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            free: (0..QUEUE_SIZE).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            event_idx,
        };
        guest.write(base, &vec![0; RING_STRIDE as usize]);
        frontend.set_vring_num(q, QUEUE_SIZE).unwrap();
        let config = VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: guest.host(vq.desc),
            used_ring_addr: guest.host(vq.used),
            avail_ring_addr: guest.host(vq.avail),
            log_addr: None,
        };
        frontend.set_vring_addr(q, &config).unwrap();
        frontend.set_vring_base(q, 0).unwrap();
        frontend.set_vring_kick(q, &vq.kick).unwrap();
        frontend.set_vring_call(q, &vq.call).unwrap();
        frontend.set_vring_enable(q, true).unwrap();
        vqs.push(vq);
    }
    Device {
        frontend,
        queues: vqs,
        features,
    }
}

impl Device {
    /// Starts queue `q` again after `GET_VRING_BASE` stopped it (as QEMU does when a paused
    /// VM resumes): same rings, the device continues from `base`.
    pub fn restart(&mut self, guest: &Guest, q: usize, base: u16) {
        let vq = &self.queues[q];
        let config = VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: guest.host(vq.desc),
            used_ring_addr: guest.host(vq.used),
            avail_ring_addr: guest.host(vq.avail),
            log_addr: None,
        };
        self.frontend.set_vring_num(q, QUEUE_SIZE).unwrap();
        self.frontend.set_vring_addr(q, &config).unwrap();
        self.frontend.set_vring_base(q, base).unwrap();
        self.frontend.set_vring_kick(q, &vq.kick).unwrap();
        self.frontend.set_vring_call(q, &vq.call).unwrap();
        self.frontend.set_vring_enable(q, true).unwrap();
    }
}

impl Vq {
    /// Puts a chain of (guest address, length, device-writable) on the available ring;
    /// returns its head.
    pub fn add(&mut self, guest: &Guest, bufs: &[(u64, u32, bool)]) -> u16 {
        assert!(bufs.len() <= self.free.len(), "virtqueue full");
        let ids: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let mut flags = if writable { 2u16 } else { 0 };
            let next = ids.get(i + 1).copied().unwrap_or(0);
            if i + 1 < bufs.len() {
                flags |= 1;
            }
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            guest.write(self.desc + u64::from(ids[i]) * 16, &d);
        }
        let head = ids[0];
        self.publish(guest, head);
        head
    }

    /// Puts `head` on the available ring as it is (for hostile tests).
    pub fn publish(&mut self, guest: &Guest, head: u16) {
        let slot = self.avail + 4 + u64::from(self.avail_idx % QUEUE_SIZE) * 2;
        guest.write(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        guest
            .mem
            .store(
                self.avail_idx,
                GuestAddress(self.avail + 2),
                Ordering::Release,
            )
            .unwrap();
    }

    /// Sets the available index to anything (for hostile tests).
    pub fn set_avail_idx(&mut self, guest: &Guest, idx: u16) {
        self.avail_idx = idx;
        guest
            .mem
            .store(idx, GuestAddress(self.avail + 2), Ordering::Release)
            .unwrap();
    }

    pub fn notify(&self) {
        self.kick.write(1).unwrap();
    }

    /// Used entries (head, length) until `want` have arrived or `timeout` passes.
    pub fn wait_used(&mut self, guest: &Guest, want: usize, timeout: Duration) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let idx: u16 = guest
                .mem
                .load(GuestAddress(self.used + 2), Ordering::Acquire)
                .unwrap();
            while self.last_used != idx {
                let elem = self.used + 4 + u64::from(self.last_used % QUEUE_SIZE) * 8;
                let e = guest.read(elem, 8);
                let head = u16::try_from(u32::from_le_bytes(e[..4].try_into().unwrap())).unwrap();
                let len = u32::from_le_bytes(e[4..].try_into().unwrap());
                self.release(guest, head);
                out.push((head, len));
                self.last_used = self.last_used.wrapping_add(1);
            }
            if out.len() >= want || Instant::now() >= deadline {
                return out;
            }
            if self.event_idx {
                // used_event: tell the device to notify at the next used entry.
                let at = self.avail + 4 + u64::from(QUEUE_SIZE) * 2;
                guest.write(at, &self.last_used.to_le_bytes());
            }
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            let _ = self.call.read();
        }
    }

    /// Returns the chain at `head` to the free list (following its next links).
    fn release(&mut self, guest: &Guest, head: u16) {
        let mut id = head;
        for _ in 0..QUEUE_SIZE {
            if self.free.contains(&id) {
                return;
            }
            self.free.push(id);
            let d = guest.read(self.desc + u64::from(id) * 16, 16);
            let flags = u16::from_le_bytes([d[12], d[13]]);
            if flags & 1 == 0 {
                return;
            }
            id = u16::from_le_bytes([d[14], d[15]]);
        }
    }
}

/// A virtio-blk request header.
pub fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A block request made in guest memory: its chain's head and where its status byte is.
pub struct Request {
    pub head: u16,
    pub status: u64,
    pub data: u64,
}

/// Builds and publishes a request of `kind` at `sector` with `data` bytes of payload (written
/// from `payload` for writes and discards; device-writable for reads and GET_ID).
pub fn request(
    guest: &mut Guest,
    vq: &mut Vq,
    kind: u32,
    sector: u64,
    len: u32,
    payload: Option<&[u8]>,
) -> Request {
    let hdr = guest.alloc(16);
    guest.write(hdr, &header(kind, sector));
    let status = guest.alloc(1);
    guest.write(status, &[0xff]);
    let mut chain = vec![(hdr, 16, false)];
    let data = if len > 0 {
        guest.alloc(u64::from(len))
    } else {
        0
    };
    if len > 0 {
        let device_writes = payload.is_none();
        if let Some(p) = payload {
            guest.write(data, p);
        }
        chain.push((data, len, device_writes));
    }
    chain.push((status, 1, true));
    let head = vq.add(guest, &chain);
    Request { head, status, data }
}

/// The status byte of a request.
pub fn status(guest: &Guest, r: &Request) -> u8 {
    guest.read(r.status, 1)[0]
}
