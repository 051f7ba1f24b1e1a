//! The hypercall channel between a domain's processes and the simulated hypervisor: framed
//! `bincode` messages over a unix stream socket, with file descriptors (memory, eventfds)
//! passed alongside as `SCM_RIGHTS`.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use bincode::Options;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use xen_abi::{DomId, GrantRef, Port};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 4 << 20;
/// Most descriptors one frame carries.
const MAX_FDS: usize = 8;

/// The authentication a connection opens with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The domain the process belongs to.
    pub domid: DomId,
    /// The domain's secret, handed to its processes by whoever started them.
    pub token: String,
    /// The domain's own life is bound to this connection: when it closes, the domain crashed.
    pub primary: bool,
}

/// One side of a grant copy, as sent to the hypervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CopySegment {
    /// Read `len` bytes from a granted page.
    FromGrant {
        /// Granting domain.
        domid: DomId,
        /// The grant.
        gref: GrantRef,
        /// Offset in the page.
        offset: u16,
        /// Bytes.
        len: u16,
    },
    /// Write `data` into a granted page.
    ToGrant {
        /// Granting domain.
        domid: DomId,
        /// The grant.
        gref: GrantRef,
        /// Offset in the page.
        offset: u16,
        /// The bytes.
        data: ByteBuf,
    },
}

/// One grant-copy segment through the connection's copy buffer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct BufferedSegment {
    /// Granting domain.
    pub domid: DomId,
    /// The grant.
    pub gref: GrantRef,
    /// Offset in the granted page.
    pub offset: u16,
    /// Bytes.
    pub len: u16,
    /// Copy into the granted page (else out of it).
    pub to_grant: bool,
    /// Where the bytes are (or go) in the copy buffer.
    pub at: u32,
}

/// One trapped access of an HVM guest's vCPU.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Access {
    /// The vCPU.
    pub vcpu: u32,
    /// Port I/O (else memory).
    pub pio: bool,
    /// Port or guest-physical address.
    pub addr: u64,
    /// Bytes per element.
    pub size: u32,
    /// Repetitions (rep string instructions).
    pub count: u32,
    /// A write (else a read).
    pub write: bool,
    /// The value written, or with `data_is_ptr` the guest-physical address of the data.
    pub data: u64,
    /// `data` is a guest-physical address.
    pub data_is_ptr: bool,
    /// The direction flag (addresses go down).
    pub df: bool,
}

/// An interrupt a device model raised in an HVM guest.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Interrupt {
    /// `XEN_DMOP_inject_msi`.
    Msi {
        /// MSI address.
        addr: u64,
        /// MSI data.
        data: u32,
    },
    /// `XEN_DMOP_set_pci_intx_level`.
    Intx {
        /// Segment, bus, device, function.
        sbdf: u32,
        /// Pin (0 = INTA).
        pin: u8,
        /// Level.
        level: u8,
    },
}

/// A device-model operation (`XEN_DMOP_*`, and the memory ops a device model uses).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DmOp {
    /// `create_ioreq_server`.
    CreateServer {
        /// `HVM_IOREQSRV_BUFIOREQ_*`.
        bufioreq: u8,
    },
    /// `get_ioreq_server_info`.
    ServerInfo {
        /// Server.
        id: u16,
    },
    /// `map_io_range_to_ioreq_server`.
    MapRange {
        /// Server.
        id: u16,
        /// `XEN_DMOP_IO_RANGE_*`.
        kind: u32,
        /// First.
        start: u64,
        /// Last (inclusive).
        end: u64,
    },
    /// `unmap_io_range_from_ioreq_server`.
    UnmapRange {
        /// Server.
        id: u16,
        /// `XEN_DMOP_IO_RANGE_*`.
        kind: u32,
        /// First.
        start: u64,
        /// Last (inclusive).
        end: u64,
    },
    /// `set_ioreq_server_state`.
    SetState {
        /// Server.
        id: u16,
        /// Enabled.
        enabled: bool,
    },
    /// `destroy_ioreq_server`.
    Destroy {
        /// Server.
        id: u16,
    },
    /// `inject_msi`.
    InjectMsi {
        /// Address.
        addr: u64,
        /// Data.
        data: u32,
    },
    /// `set_pci_intx_level`.
    SetPciIntx {
        /// Segment, bus, device, function.
        sbdf: u32,
        /// Pin.
        pin: u8,
        /// Level.
        level: u8,
    },
    /// `nr_vcpus`.
    NrVcpus,
    /// `XENMEM_populate_physmap` on the target.
    Populate {
        /// Where.
        gfns: Vec<u64>,
    },
    /// `relocate_memory`.
    Relocate {
        /// First source frame.
        src: u64,
        /// First destination frame.
        dst: u64,
        /// Frames.
        count: u32,
    },
}

/// A request ("hypercall").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// First message of every connection.
    Hello(Hello),
    /// dom0: create a domain with `mem_pages` pages of memory.
    CreateDomain {
        /// Its name.
        name: String,
        /// Memory size in 4 KiB pages.
        mem_pages: u32,
    },
    /// dom0: destroy a domain (its primary process is killed).
    DestroyDomain {
        /// The domain.
        domid: DomId,
    },
    /// dom0: the live domains.
    ListDomains,
    /// This domain's memory and grant table (descriptors in the reply).
    OwnMemory,
    /// Map grants of `granter` (grantee side).
    MapGrants {
        /// The granting domain.
        granter: DomId,
        /// The grants.
        refs: Vec<GrantRef>,
        /// Write access.
        writable: bool,
    },
    /// Undo a `MapGrants`.
    UnmapGrants {
        /// The handle the map returned.
        handle: u64,
    },
    /// Grant copy.
    CopyGrants {
        /// The segments.
        segments: Vec<CopySegment>,
    },
    /// Share a copy buffer (a memfd sealed against shrinking, passed with the request) for
    /// `CopyGrantsBuffered` on this connection.
    RegisterCopyBuffer {
        /// Its size in bytes.
        len: u64,
    },
    /// Grant copy through the connection's copy buffer.
    CopyGrantsBuffered {
        /// The segments.
        segments: Vec<BufferedSegment>,
    },
    /// A copy slot for grant copies on the caller's thread (`crate::active`); the records'
    /// descriptor comes with the reply.
    AcquireCopySlot,
    /// A granter's memory, grant table and active words, for grant copies on the caller's
    /// thread (their descriptors come with the reply, in that order).
    OpenGrantCopy {
        /// The granting domain.
        domid: DomId,
    },
    /// The caller dropped the last pin of a grant whose end-access was deferred.
    FinishDeferredEnd {
        /// The granting domain.
        domid: DomId,
        /// The grant.
        gref: GrantRef,
    },
    /// Allocate pages of our memory and grant them to `remote` (the guest kernel's job).
    GrantPages {
        /// The grantee.
        remote: DomId,
        /// Pages.
        count: u32,
        /// Write access for the grantee.
        writable: bool,
    },
    /// End foreign access to our grants and free their pages (deferred while mapped).
    EndAccess {
        /// The grants.
        refs: Vec<GrantRef>,
    },
    /// `EVTCHNOP_alloc_unbound`.
    AllocUnbound {
        /// The domain that may bind it.
        remote: DomId,
    },
    /// `EVTCHNOP_bind_interdomain`.
    BindInterdomain {
        /// The remote domain.
        remote: DomId,
        /// Its unbound port.
        remote_port: Port,
    },
    /// `EVTCHNOP_close` of a port bound on this connection.
    Unbind {
        /// The port.
        port: Port,
    },
    /// Only bind to this domain from now on (`IOCTL_EVTCHN_RESTRICT_DOMID`).
    RestrictEvtchn {
        /// The domain.
        domid: DomId,
    },
    /// dom0: create an HVM guest with `vcpus` vCPUs.
    CreateHvmDomain {
        /// Its name.
        name: String,
        /// RAM in 4 KiB pages.
        mem_pages: u32,
        /// vCPUs.
        vcpus: u32,
    },
    /// dom0: make `dm` the device model of HVM guest `target` (`XEN_DOMCTL_set_target`).
    SetTarget {
        /// The device-model domain.
        dm: DomId,
        /// The guest.
        target: DomId,
    },
    /// A device-model operation on `target`.
    DmOp {
        /// The guest.
        target: DomId,
        /// The operation.
        op: DmOp,
    },
    /// Map an ioreq server's pages (descriptor in the reply).
    MapIoreqPages {
        /// The guest.
        target: DomId,
        /// The server.
        id: u16,
    },
    /// Foreign mapping of `target`'s gfns: their frames and the guest's memory descriptor.
    MapForeign {
        /// The guest.
        target: DomId,
        /// The frames.
        gfns: Vec<u64>,
    },
    /// Operate on no guest but this one from now on (`IOCTL_PRIVCMD_RESTRICT`).
    RestrictPrivcmd {
        /// The guest.
        domid: DomId,
    },
    /// A vCPU of this HVM guest accesses a port, MMIO or RAM.
    Access(Access),
    /// This HVM guest's frames behind `gfns` (its own RAM, for bulk access).
    Translate {
        /// The frames.
        gfns: Vec<u64>,
    },
    /// Wait up to `timeout_ms` for an interrupt a device model raised in this guest.
    WaitInterrupt {
        /// Milliseconds.
        timeout_ms: u32,
    },
    /// dom0, for robustness tests: write `raw` (32 bytes) into vCPU `vcpu`'s slot of server
    /// `id` of `target` as it stands (state byte last), notify the vCPU's port, and wait up to
    /// `wait_ms` for the emulator's answer. Replies with the slot's bytes afterwards.
    InjectIoreq {
        /// The guest.
        target: DomId,
        /// The server.
        id: u16,
        /// The slot.
        vcpu: u32,
        /// The slot's new bytes.
        raw: ByteBuf,
        /// How long to wait for `STATE_IORESP_READY`.
        wait_ms: u32,
    },
    /// dom0, for robustness tests: write `slots` (index, raw 8 bytes) into the buffered ring
    /// of server `id` of `target`, then set its pointers and notify its port.
    InjectBuffered {
        /// The guest.
        target: DomId,
        /// The server.
        id: u16,
        /// Slot index and raw value.
        slots: Vec<(u32, u64)>,
        /// New read pointer, if any.
        read_pointer: Option<u32>,
        /// New write pointer.
        write_pointer: u32,
    },
}

/// A live domain, as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DomainInfo {
    /// Its id.
    pub domid: DomId,
    /// Its name.
    pub name: String,
    /// Memory pages.
    pub mem_pages: u32,
    /// Whether its primary process is connected.
    pub running: bool,
}

/// A reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Success without data.
    Ok,
    /// Failure: a Linux errno and a sentence.
    Error {
        /// errno.
        errno: i32,
        /// What went wrong.
        message: String,
    },
    /// A grant operation failed with `GNTST_*`.
    GrantStatus {
        /// The status.
        status: i16,
        /// The failing ref.
        gref: GrantRef,
    },
    /// A domain was created.
    Created {
        /// Its id.
        domid: DomId,
        /// Its secret.
        token: String,
    },
    /// Domains.
    Domains(Vec<DomainInfo>),
    /// Our memory (descriptors: memory, grant table).
    Memory {
        /// Memory pages.
        mem_pages: u32,
        /// Grant-table entries.
        gnttab_entries: u32,
    },
    /// Grants mapped: the frames to map from the granter's memory (descriptor attached the
    /// first time this connection maps from that granter with that access).
    Mapped {
        /// Unmap handle.
        handle: u64,
        /// Page numbers in the granter's memory, one per ref.
        frames: Vec<u32>,
        /// Whether a memory descriptor is attached.
        fd_attached: bool,
    },
    /// Copy results: status per segment, data for the `FromGrant` ones (in order).
    Copied {
        /// `GNTST_*` per segment.
        status: Vec<i16>,
        /// Bytes read, per `FromGrant` segment.
        data: Vec<ByteBuf>,
    },
    /// Buffered copy results: `GNTST_*` per segment.
    CopiedBuffered {
        /// Status per segment.
        status: Vec<i16>,
    },
    /// `AcquireCopySlot`: the slot's number (its record is word `slot` of the descriptor).
    CopySlot {
        /// The slot.
        slot: u32,
    },
    /// `OpenGrantCopy`: the descriptors are attached.
    GrantCopyDomain {
        /// Entries in the grant table.
        gnttab_entries: u32,
    },
    /// Pages granted.
    Granted {
        /// The grants.
        refs: Vec<GrantRef>,
        /// The page numbers in our memory.
        frames: Vec<u32>,
    },
    /// `EndAccess` done; some grants were still mapped and will be freed when unmapped.
    Ended {
        /// Grants whose revocation was deferred.
        deferred: Vec<GrantRef>,
    },
    /// A port (descriptors: receive eventfd, notify eventfd).
    Port(Port),
    /// An ioreq server was created.
    ServerId(u16),
    /// `get_ioreq_server_info`.
    ServerInfo {
        /// The buffered ring's port in the guest, if any.
        bufioreq_port: Option<Port>,
    },
    /// A count (`nr_vcpus`).
    Count(u32),
    /// An ioreq server's pages (descriptor: buffered page first, then the slot pages).
    IoreqPages {
        /// Whether the server has a buffered ring.
        buffered: bool,
        /// Slot pages after the buffered page.
        sync_pages: u32,
    },
    /// Frames behind gfns (`None` where unpopulated); a memory descriptor may be attached.
    Frames(Vec<Option<u32>>),
    /// A vCPU access completed (`data` for a read).
    Accessed {
        /// The value read.
        data: u64,
    },
    /// An interrupt, or `None` after the timeout.
    Interrupt(Option<Interrupt>),
    /// Raw bytes (an ioreq slot).
    Raw(ByteBuf),
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_FRAME as u64)
}

/// Serialises a message.
pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    options().serialize(msg).map_err(io::Error::other)
}

/// Deserialises a message.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> io::Result<T> {
    options()
        .deserialize(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Sends one frame, with descriptors attached to its first byte.
pub fn send_frame(sock: &UnixStream, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if payload.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&buf)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    (&*sock).write_all(buf.get(sent..).unwrap_or_default())
}

/// Receives one frame and the descriptors that came with it.
pub fn recv_frame(sock: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut head = [0u8; 4];
    let mut got = 0;
    let mut fds = Vec::new();
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    while got < head.len() {
        let (bytes, received) = {
            let mut iov = [IoSliceMut::new(head.get_mut(got..).unwrap_or_default())];
            let msg = recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut received = Vec::new();
            for c in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(list) = c {
                    received.extend(list);
                }
            }
            (msg.bytes, received)
        };
        for fd in received {
            // SAFETY: the kernel just installed `fd` in our table for us (SCM_RIGHTS); nothing
            // else owns it.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "hypervisor connection closed",
            ));
        }
        got += bytes;
    }
    let len = u32::from_le_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut payload = vec![0u8; len];
    (&*sock).read_exact(&mut payload)?;
    Ok((payload, fds))
}
