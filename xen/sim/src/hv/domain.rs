//! One domain as the hypervisor holds it: memory, grant table, ports, its primary process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;

use memmap2::MmapRaw;
use xen_abi::{DomId, GrantRef, Port, PAGE_SIZE};

use super::proto::DomainInfo;
use super::ConnId;

/// Grant-table frames of every domain (Xen's default `max_grant_frames` is 64).
pub(crate) const GNTTAB_FRAMES: usize = 32;
/// Grant entries in the table.
pub(crate) const GNTTAB_ENTRIES: u32 = (GNTTAB_FRAMES * PAGE_SIZE / 8) as u32;
/// Bytes of a domain's active words: one per grant entry and a status word, in whole pages.
pub(crate) const ACTIVE_BYTES: usize =
    ((GNTTAB_ENTRIES as usize + 1) * 8).div_ceil(PAGE_SIZE) * PAGE_SIZE;
/// Refs Linux keeps for the toolstack (console, xenstore); never handed out.
const GNTTAB_RESERVED: u32 = 8;
/// Most vCPUs of an HVM guest.
pub(crate) const MAX_VCPUS: u32 = 128;
/// Highest event channel port (2-level ABI on 64-bit: 4096 ports).
pub(crate) const MAX_PORTS: Port = 4096;

/// How to build a domain.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// Its name (`/local/domain/<id>/name`).
    pub name: String,
    /// Memory in 4 KiB pages.
    pub mem_pages: u32,
    /// `Some(vcpus)` for an HVM guest (its accesses to ports, MMIO and PCI config space go
    /// to ioreq servers), `None` for a PV domain.
    pub hvm_vcpus: Option<u32>,
}

/// What an event channel port is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortKind {
    /// Waiting for `remote` to bind.
    Unbound { remote: DomId },
    /// Connected to `remote`'s `remote_port`.
    Interdomain { remote: DomId, remote_port: Port },
}

/// A port: its connection and its eventfd pair. `rx` fires when the peer notifies; `tx` is the
/// peer's `rx`. The pair belongs to the port for its whole life, so a peer that closes and
/// re-binds (a restarted backend) reaches the same descriptors.
pub(crate) struct PortState {
    pub(crate) owner: ConnId,
    pub(crate) kind: PortKind,
    pub(crate) rx: Arc<OwnedFd>,
    pub(crate) tx: Arc<OwnedFd>,
}

/// Pin counts of one of our grants mapped by others.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pin {
    pub(crate) readers: u32,
    pub(crate) writers: u32,
}

/// Pin counts by grant reference: a flat table (references are below `GNTTAB_ENTRIES`),
/// allocated at the first pin, so that the copy path pins and unpins without hashing.
#[derive(Debug, Default)]
pub(crate) struct PinTable {
    counts: Vec<Pin>,
}

impl PinTable {
    /// The counts of `gref`, created at zero if need be; `None` beyond the table.
    pub(crate) fn entry(&mut self, gref: GrantRef) -> Option<&mut Pin> {
        if gref >= GNTTAB_ENTRIES {
            return None;
        }
        if self.counts.is_empty() {
            self.counts = vec![Pin::default(); GNTTAB_ENTRIES as usize];
        }
        self.counts.get_mut(gref as usize)
    }

    /// The counts of `gref` if it is pinned.
    pub(crate) fn pinned(&mut self, gref: GrantRef) -> Option<&mut Pin> {
        self.counts
            .get_mut(gref as usize)
            .filter(|p| p.readers > 0 || p.writers > 0)
    }
}

pub(crate) struct Domain {
    pub(crate) name: String,
    pub(crate) token: String,
    pub(crate) mem_pages: u32,
    /// The memfd and its mapping (shared, so that a copy in progress outside the hypervisor's
    /// lock keeps the pages mapped even if the memory is grown and remapped meanwhile).
    pub(crate) memory: Option<(File, Arc<MmapRaw>)>,
    pub(crate) gnttab: Option<(File, MmapRaw)>,
    /// The active words of the grant table (`crate::active`), shared with callers that copy
    /// grants on their own threads.
    pub(crate) active: Option<(File, MmapRaw)>,
    pub(crate) free_pages: std::collections::BTreeSet<u32>,
    pub(crate) free_refs: Vec<GrantRef>,
    /// Grants made through `GrantPages`: ref → frame.
    pub(crate) granted: HashMap<GrantRef, u32>,
    pub(crate) pins: PinTable,
    pub(crate) deferred_end: HashSet<GrantRef>,
    pub(crate) ports: BTreeMap<Port, PortState>,
    pub(crate) primary: Option<(ConnId, Option<i32>)>,
    pub(crate) hvm: Option<super::hvm::Hvm>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn memfd(name: &str, bytes: usize) -> std::io::Result<(File, MmapRaw)> {
    let fd = nix::sys::memfd::memfd_create(
        &std::ffi::CString::new(name).map_err(std::io::Error::other)?,
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    let file = File::from(fd);
    file.set_len(bytes as u64)?;
    let map = MmapRaw::map_raw(&file)?;
    Ok((file, map))
}

impl Domain {
    pub(crate) fn dom0(token: String) -> Self {
        Self {
            name: "Domain-0".into(),
            token,
            mem_pages: 0,
            memory: None,
            gnttab: None,
            active: None,
            free_pages: std::collections::BTreeSet::new(),
            free_refs: Vec::new(),
            granted: HashMap::new(),
            pins: PinTable::default(),
            deferred_end: HashSet::new(),
            ports: BTreeMap::new(),
            primary: None,
            hvm: None,
        }
    }

    pub(crate) fn create(domid: DomId, config: &DomainConfig) -> std::io::Result<Self> {
        let memory = memfd(
            &format!("xen-sim-d{domid}-memory"),
            config.mem_pages as usize * PAGE_SIZE,
        )?;
        let gnttab = memfd(
            &format!("xen-sim-d{domid}-gnttab"),
            GNTTAB_FRAMES * PAGE_SIZE,
        )?;
        let active = memfd(&format!("xen-sim-d{domid}-active"), ACTIVE_BYTES)?;
        Ok(Self {
            name: config.name.clone(),
            token: random_token(),
            mem_pages: config.mem_pages,
            memory: Some((memory.0, Arc::new(memory.1))),
            gnttab: Some(gnttab),
            active: Some(active),
            free_pages: (0..config.mem_pages).collect(),
            free_refs: (GNTTAB_RESERVED..GNTTAB_ENTRIES).rev().collect(),
            granted: HashMap::new(),
            pins: PinTable::default(),
            deferred_end: HashSet::new(),
            ports: BTreeMap::new(),
            primary: None,
            hvm: config
                .hvm_vcpus
                .map(|v| super::hvm::Hvm::new(v.clamp(1, MAX_VCPUS), config.mem_pages)),
        })
    }

    /// Adds `pages` pages at the end of the domain's memory (`populate_physmap`).
    pub(crate) fn grow_memory(&mut self, pages: u32) -> std::io::Result<()> {
        let Some((file, _)) = self.memory.take() else {
            return Err(std::io::Error::other("the domain has no memory"));
        };
        let total = self
            .mem_pages
            .checked_add(pages)
            .ok_or_else(|| std::io::Error::other("too much memory"))?;
        let grown = file
            .set_len(u64::from(total) * PAGE_SIZE as u64)
            .and_then(|()| MmapRaw::map_raw(&file));
        match grown {
            Ok(map) => {
                self.memory = Some((file, Arc::new(map)));
                self.mem_pages = total;
                Ok(())
            }
            Err(e) => {
                let map = MmapRaw::map_raw(&file)?;
                self.memory = Some((file, Arc::new(map)));
                Err(e)
            }
        }
    }

    pub(crate) fn token_matches(&self, token: &str) -> bool {
        // Constant-time compare: the token is a credential.
        self.token.len() == token.len()
            && self
                .token
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    pub(crate) fn info(&self, domid: DomId) -> DomainInfo {
        DomainInfo {
            domid,
            name: self.name.clone(),
            mem_pages: self.mem_pages,
            running: domid == 0 || self.primary.is_some(),
        }
    }

    /// The `{flags, domid}` word of grant entry `gref` (atomic), if in range.
    pub(crate) fn grant_word(&self, gref: GrantRef) -> Option<&AtomicU32> {
        let (_, map) = self.gnttab.as_ref()?;
        if gref >= GNTTAB_ENTRIES {
            return None;
        }
        let offset = gref as usize * 8;
        // SAFETY: `offset + 8 <= GNTTAB_FRAMES * PAGE_SIZE` (gref < GNTTAB_ENTRIES), the map is
        // page-aligned so the word is 4-aligned, and it lives as long as `self`. The domain
        // writes the entry concurrently; all our accesses are atomic.
        Some(unsafe { AtomicU32::from_ptr(map.as_mut_ptr().add(offset).cast::<u32>()) })
    }

    /// The `frame` word of grant entry `gref`.
    pub(crate) fn grant_frame(&self, gref: GrantRef) -> Option<&AtomicU32> {
        let (_, map) = self.gnttab.as_ref()?;
        if gref >= GNTTAB_ENTRIES {
            return None;
        }
        // SAFETY: as in `grant_word`, for the second word of the 8-byte entry.
        Some(unsafe {
            AtomicU32::from_ptr(map.as_mut_ptr().add(gref as usize * 8 + 4).cast::<u32>())
        })
    }

    /// The active word of grant entry `gref` (`crate::active`), if in range.
    pub(crate) fn active_word(&self, gref: GrantRef) -> Option<&AtomicU64> {
        if gref >= GNTTAB_ENTRIES {
            return None;
        }
        self.active_at(gref as usize)
    }

    /// The domain's status word (`crate::active::DEAD`).
    pub(crate) fn status_word(&self) -> Option<&AtomicU64> {
        self.active_at(GNTTAB_ENTRIES as usize)
    }

    fn active_at(&self, index: usize) -> Option<&AtomicU64> {
        let (_, map) = self.active.as_ref()?;
        if (index + 1) * 8 > map.len() {
            return None;
        }
        // SAFETY: the word lies inside the mapping (checked), which is page-aligned so the
        // word is 8-aligned, and lives as long as `self`. Other processes change it
        // concurrently; all accesses are atomic.
        Some(unsafe { AtomicU64::from_ptr(map.as_mut_ptr().add(index * 8).cast::<u64>()) })
    }

    /// The mapping of the domain's memory, to keep it alive across a copy.
    pub(crate) fn memory_map(&self) -> Option<Arc<MmapRaw>> {
        self.memory.as_ref().map(|(_, map)| Arc::clone(map))
    }

    /// Pointer to page `frame` of the domain's memory, if in range.
    pub(crate) fn page(&self, frame: u32) -> Option<*mut u8> {
        let (_, map) = self.memory.as_ref()?;
        if frame >= self.mem_pages {
            return None;
        }
        // SAFETY: frame < mem_pages, so the page lies inside the mapping of the memfd.
        Some(unsafe { map.as_mut_ptr().add(frame as usize * PAGE_SIZE) })
    }

    /// Lowest free port number (port 0 is never used, as in Xen).
    pub(crate) fn free_port(&self) -> Option<Port> {
        (1..MAX_PORTS).find(|p| !self.ports.contains_key(p))
    }
}
