//! The other side of a vhost-user-blk device, for the tests and the benchmark: guest memory in a
//! memfd shared with the backend, a vhost-user connection set up as QEMU sets one up, and a
//! split-virtqueue driver (descriptor table, available and used rings in that memory, event
//! index both ways) that puts any chain on the ring, well-formed or not.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// Bytes of guest memory each queue's rings take (at `q * RING_STRIDE`).
pub const RING_STRIDE: u64 = 0x1_0000;
/// Largest queue that fits [`RING_STRIDE`].
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// What went wrong on the frontend's side.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// No backend answered on the socket.
    #[error("cannot connect to {path}: {reason}")]
    Connect {
        /// The socket.
        path: String,
        /// The last error.
        reason: String,
    },
    /// The backend refused or broke a vhost-user request.
    #[error("vhost-user: {0}")]
    Protocol(#[from] vhost::Error),
    /// Guest memory could not be made or reached.
    #[error("guest memory: {0}")]
    Memory(String),
    /// An eventfd or memfd failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The virtqueue has too few free descriptors for the chain.
    #[error("the virtqueue is full")]
    Full,
}

type Result<T> = std::result::Result<T, FrontendError>;

fn memory_error(e: impl std::fmt::Display) -> FrontendError {
    FrontendError::Memory(e.to_string())
}

/// Guest memory shared with the backend: one region from guest address 0, with a bump
/// allocator above the rings of `queues` queues.
pub struct GuestMemory {
    mem: GuestMemoryMmap<()>,
    host_base: u64,
    fd: i32,
    size: u64,
    next: u64,
}

impl GuestMemory {
    /// `size` bytes of guest memory with room for the rings of `queues` queues.
    pub fn new(size: usize, queues: usize) -> Result<Self> {
        // SAFETY: a plain memfd_create with a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"vhost-user-guest".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: the descriptor was just created and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64)?;
        let fd = file.as_raw_fd();
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            size,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(memory_error)?;
        let host_base = mem
            .get_host_address(GuestAddress(0))
            .map_err(memory_error)? as u64;
        Ok(Self {
            mem,
            host_base,
            fd,
            size: size as u64,
            next: queues as u64 * RING_STRIDE,
        })
    }

    /// `len` bytes of guest memory, 4 KiB aligned.
    pub fn alloc(&mut self, len: u64) -> Result<u64> {
        let at = self.next;
        let end = at
            .checked_add(len)
            .and_then(|e| e.checked_add(4095))
            .map(|e| e & !4095)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| memory_error("guest memory exhausted"))?;
        self.next = end;
        Ok(at)
    }

    /// Writes `data` at guest address `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(memory_error)
    }

    /// Reads `len` bytes from guest address `gpa`.
    pub fn read(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0; len];
        self.mem
            .read_slice(&mut v, GuestAddress(gpa))
            .map_err(memory_error)?;
        Ok(v)
    }

    fn read_u16(&self, gpa: u64) -> Result<u16> {
        self.mem
            .load(GuestAddress(gpa), Ordering::Acquire)
            .map_err(memory_error)
    }

    fn store_u16(&self, gpa: u64, value: u16) -> Result<()> {
        self.mem
            .store(value, GuestAddress(gpa), Ordering::Release)
            .map_err(memory_error)
    }

    fn host(&self, gpa: u64) -> u64 {
        self.host_base + gpa
    }
}

/// One split virtqueue driven from the guest's side.
pub struct Virtqueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    kick: EventFd,
    call: EventFd,
    free: Vec<u16>,
    /// Next descriptor of each descriptor's chain, as this driver wrote it.
    next: Vec<Option<u16>>,
    avail_idx: u16,
    kicked_idx: u16,
    last_used: u16,
    event_idx: bool,
}

/// A connected device: the vhost-user connection and its queues.
pub struct Connection {
    /// The vhost-user connection (for requests the tests send themselves).
    pub frontend: Frontend,
    /// The virtqueues.
    pub queues: Vec<Virtqueue>,
    /// The virtio features acknowledged.
    pub features: u64,
}

/// Connects to `socket` (retrying until `timeout` while the backend starts), acknowledges the
/// offered features that are in `mask`, and sets up `queues` virtqueues of `size` entries in
/// `mem`, as a VMM does.
pub fn connect(
    socket: &Path,
    mem: &GuestMemory,
    queues: usize,
    size: u16,
    mask: u64,
    timeout: Duration,
) -> Result<Connection> {
    let deadline = Instant::now() + timeout;
    let mut frontend = loop {
        match Frontend::connect(socket, queues as u64) {
            Ok(f) => break f,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(FrontendError::Connect {
                    path: socket.display().to_string(),
                    reason: e.to_string(),
                })
            }
        }
    };
    let size = size.clamp(1, MAX_QUEUE_SIZE);
    frontend.set_owner()?;
    let features = frontend.get_features()? & mask;
    frontend.set_features(features)?;
    let proto = frontend.get_protocol_features()?;
    frontend.set_protocol_features(
        proto & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ),
    )?;
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: mem.size,
        userspace_addr: mem.host(0),
        mmap_offset: 0,
        mmap_handle: mem.fd,
    };
    frontend.set_mem_table(&[region])?;
    let event_idx = features & F_EVENT_IDX != 0;
    let mut connection = Connection {
        frontend,
        queues: Vec::new(),
        features,
    };
    for q in 0..queues {
        let base = q as u64 * RING_STRIDE;
        mem.write(base, &vec![0; RING_STRIDE as usize])?;
        connection.queues.push(Virtqueue {
            size,
            desc: base,
            avail: base + 16 * u64::from(MAX_QUEUE_SIZE),
            used: base + 16 * u64::from(MAX_QUEUE_SIZE) + 0x1000,
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            call: EventFd::new(libc::EFD_NONBLOCK)?,
            free: (0..size).rev().collect(),
            next: vec![None; usize::from(size)],
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            event_idx,
        });
        connection.start(mem, q, 0)?;
    }
    Ok(connection)
}

impl Connection {
    /// Starts queue `q` at index `base` (again, after `GET_VRING_BASE` stopped it, as QEMU
    /// does when a paused VM resumes).
    pub fn start(&mut self, mem: &GuestMemory, q: usize, base: u16) -> Result<()> {
        let Some(vq) = self.queues.get(q) else {
            return Err(memory_error(format!("no queue {q}")));
        };
        let config = VringConfigData {
            queue_max_size: vq.size,
            queue_size: vq.size,
            flags: 0,
            desc_table_addr: mem.host(vq.desc),
            used_ring_addr: mem.host(vq.used),
            avail_ring_addr: mem.host(vq.avail),
            log_addr: None,
        };
        self.frontend.set_vring_num(q, vq.size)?;
        self.frontend.set_vring_addr(q, &config)?;
        self.frontend.set_vring_base(q, base)?;
        self.frontend.set_vring_kick(q, &vq.kick)?;
        self.frontend.set_vring_call(q, &vq.call)?;
        self.frontend.set_vring_enable(q, true)?;
        Ok(())
    }
}

impl Virtqueue {
    /// Descriptors not on the ring.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Puts a chain of (guest address, length, device-writable) on the available ring;
    /// returns its head. Nothing is published when the ring lacks room.
    pub fn add(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> Result<u16> {
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return Err(FrontendError::Full);
        }
        let at = self.free.len() - bufs.len();
        let ids: Vec<u16> = self.free.drain(at..).rev().collect();
        for (i, (&(addr, len, writable), &id)) in bufs.iter().zip(&ids).enumerate() {
            let next = ids.get(i + 1).copied();
            let flags = u16::from(writable) * 2 + u16::from(next.is_some());
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
            mem.write(self.desc + u64::from(id) * 16, &d)?;
            if let Some(slot) = self.next.get_mut(usize::from(id)) {
                *slot = next;
            }
        }
        let head = ids.first().copied().ok_or(FrontendError::Full)?;
        self.publish(mem, head)?;
        Ok(head)
    }

    /// Puts a chain on the available ring through an indirect table written at guest address
    /// `table` (one ring descriptor, `VIRTQ_DESC_F_INDIRECT`); returns its head.
    pub fn add_indirect(
        &mut self,
        mem: &GuestMemory,
        table: u64,
        bufs: &[(u64, u32, bool)],
    ) -> Result<u16> {
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let more = i + 1 < bufs.len();
            let flags = u16::from(writable) * 2 + u16::from(more);
            let next = if more { i as u16 + 1 } else { 0 };
            self.write_descriptor_at(mem, table + 16 * i as u64, (addr, len, flags, next))?;
        }
        let head = self.free.pop().ok_or(FrontendError::Full)?;
        let len = 16 * bufs.len() as u32;
        self.write_descriptor(mem, head, (table, len, 4, 0))?;
        if let Some(slot) = self.next.get_mut(usize::from(head)) {
            *slot = None;
        }
        self.publish(mem, head)?;
        Ok(head)
    }

    /// Puts `head` on the available ring as it is (hostile tests publish what they like).
    pub fn publish(&mut self, mem: &GuestMemory, head: u16) -> Result<()> {
        let slot = self.avail + 4 + u64::from(self.avail_idx % self.size) * 2;
        mem.write(slot, &head.to_le_bytes())?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store_u16(self.avail + 2, self.avail_idx)
    }

    /// Sets the available index to anything (for hostile tests).
    pub fn set_avail_idx(&mut self, mem: &GuestMemory, idx: u16) -> Result<()> {
        self.avail_idx = idx;
        mem.store_u16(self.avail + 2, idx)
    }

    /// Writes a descriptor as it is (for hostile tests): address, length, flags, next.
    pub fn write_descriptor(
        &self,
        mem: &GuestMemory,
        id: u16,
        descriptor: (u64, u32, u16, u16),
    ) -> Result<()> {
        self.write_descriptor_at(mem, self.desc + u64::from(id) * 16, descriptor)
    }

    fn write_descriptor_at(
        &self,
        mem: &GuestMemory,
        gpa: u64,
        (addr, len, flags, next): (u64, u32, u16, u16),
    ) -> Result<()> {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.write(gpa, &d)
    }

    /// The descriptor after `id` in the chain this driver built.
    pub fn next_of(&self, id: u16) -> Option<u16> {
        self.next.get(usize::from(id)).copied().flatten()
    }

    /// Kicks the device unconditionally.
    pub fn notify(&mut self) -> Result<()> {
        self.kicked_idx = self.avail_idx;
        self.kick.write(1)?;
        Ok(())
    }

    /// Kicks the device if it asked to hear of what was published since the last kick (with
    /// event index: its `avail_event`; without: unless it set `VRING_USED_F_NO_NOTIFY`).
    pub fn notify_if_needed(&mut self, mem: &GuestMemory) -> Result<()> {
        fence(Ordering::SeqCst);
        let (old, new) = (self.kicked_idx, self.avail_idx);
        let needed = if self.event_idx {
            let event = mem.read_u16(self.used + 4 + 8 * u64::from(self.size))?;
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            mem.read_u16(self.used)? & 1 == 0
        };
        if needed {
            self.notify()?;
        }
        self.kicked_idx = new;
        Ok(())
    }

    /// Used entries (head, length) taken until `want` have arrived or `timeout` passes; their
    /// descriptors are free again.
    pub fn wait_used(
        &mut self,
        mem: &GuestMemory,
        want: usize,
        timeout: Duration,
    ) -> Result<Vec<(u16, u32)>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            self.take_used(mem, &mut out)?;
            if out.len() >= want {
                return Ok(out);
            }
            if self.event_idx {
                // used_event: notify at the next used entry; then look again, or an entry
                // added before the device saw it would wait for the timeout.
                mem.store_u16(self.avail + 4 + 2 * u64::from(self.size), self.last_used)?;
                fence(Ordering::SeqCst);
                if self.take_used(mem, &mut out)? > 0 {
                    continue;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 1000) as i32) };
            let _ = self.call.read();
        }
    }

    /// Moves the used entries published so far into `out`; returns how many.
    fn take_used(&mut self, mem: &GuestMemory, out: &mut Vec<(u16, u32)>) -> Result<usize> {
        let idx = mem.read_u16(self.used + 2)?;
        let mut taken = 0;
        while self.last_used != idx {
            let elem = mem.read(self.used + 4 + u64::from(self.last_used % self.size) * 8, 8)?;
            let word = |i: usize| {
                elem.get(i..i + 4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes)
                    .unwrap_or(0)
            };
            let head = u16::try_from(word(0)).unwrap_or(u16::MAX);
            self.release(head);
            out.push((head, word(4)));
            self.last_used = self.last_used.wrapping_add(1);
            taken += 1;
        }
        Ok(taken)
    }

    /// Returns the chain at `head` to the free list.
    fn release(&mut self, head: u16) {
        let mut id = Some(head);
        while let Some(i) = id {
            if usize::from(i) >= usize::from(self.size) || self.free.contains(&i) {
                return;
            }
            self.free.push(i);
            id = self.next.get_mut(usize::from(i)).and_then(Option::take);
        }
    }
}

/// A virtio-blk request header: type, reserved, sector.
pub fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}
