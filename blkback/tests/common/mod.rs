//! Helpers shared by the data-path tests: a simulated host with a driver domain and a guest,
//! and a queue worker connected to a Rust frontend; for the tests that run blkback as a
//! process, a disk attached as the toolstack attaches it and the guest's blkfront connected.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use blkback::stats::QueueStats;
use blkback::storage::Disk;
use blkback::worker::{start_ring, RingHandle, RingSpec};
use blkfront::{Blkfront, FrontConfig};
use xen_blkif::{DiscardLimits, Limits};
use xen_sim::domain::{SimEvtchn, SimGrants};
use xen_sim::{Host, SimDomain};

pub struct Rig {
    pub host: Host,
    pub backend: SimDomain,
    pub guest: SimDomain,
    pub dir: tempfile::TempDir,
}

pub async fn rig() -> Rig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let host = Host::start(&dir.path().join("run")).await.unwrap();
    let backend = SimDomain::new(host.create_domain("storage-dd", 64).unwrap());
    let guest = SimDomain::new(host.create_domain("guest", 4096).unwrap());
    Rig {
        host,
        backend,
        guest,
        dir,
    }
}

pub fn disk_file(rig: &Rig, name: &str, bytes: u64) -> PathBuf {
    let path = rig.dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    path
}

pub fn limits_for(disk: &dyn Disk, max_indirect: u16) -> Limits {
    let info = disk.info();
    Limits {
        sectors: info.sectors,
        sector_size: info.sector_size,
        read_only: info.read_only,
        max_indirect_segments: max_indirect,
        flush: true,
        barrier: true,
        discard: info.discard.then_some(DiscardLimits {
            granularity: info.sector_size,
            alignment: 0,
            secure: false,
        }),
    }
}

pub type Front = Blkfront<SimGrants, SimEvtchn>;

pub fn connect_with(
    rig: &Rig,
    disk: &dyn Disk,
    config: FrontConfig,
    max_indirect: u16,
    grant_copy: bool,
) -> (Front, RingHandle, Arc<QueueStats>) {
    let front = Blkfront::new(
        rig.guest.grants().unwrap(),
        rig.guest.evtchn().unwrap(),
        rig.backend.domid(),
        config,
    )
    .unwrap();
    let spec = RingSpec {
        frontend: rig.guest.domid(),
        ring_refs: front.ring_refs().to_vec(),
        port: front.port(),
        abi: config.abi,
        persistent: config.persistent,
        grant_copy,
        max_persistent_grants: blkback::MAX_PERSISTENT_GRANTS,
        limits: limits_for(disk, max_indirect),
        size: blkback::worker::LiveSize::new(disk.info().sectors),
        name: "blkback-test-q0".into(),
        reattach: false,
    };
    let stats = Arc::new(QueueStats::default());
    let handle = start_ring(
        spec,
        Arc::new(rig.backend.grants().unwrap()),
        rig.backend.evtchn().unwrap(),
        disk,
        Arc::clone(&stats),
    )
    .unwrap();
    (front, handle, stats)
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

/// The 4 KiB written at block `i` by the restart tests.
pub fn block(i: u64) -> Vec<u8> {
    pattern(i, 4096)
}

/// `connect_with` mapping non-persistent grants (not copying).
pub fn connect(
    rig: &Rig,
    disk: &dyn Disk,
    config: FrontConfig,
    max_indirect: u16,
) -> (Front, RingHandle, Arc<QueueStats>) {
    connect_with(rig, disk, config, max_indirect, false)
}

/// A host whose storage driver domain is booted (its supervisor is the test; blkback runs in
/// it as a process), and a guest.
pub struct ProcessRig {
    pub host: Host,
    pub dd_creds: xen_sim::Credentials,
    pub dd: SimDomain,
    pub guest: SimDomain,
    pub dir: tempfile::TempDir,
}

pub async fn process_rig() -> ProcessRig {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let host = Host::start(&dir.path().join("run")).await.unwrap();
    let dd_creds = host.create_domain("storage-dd", 64).unwrap();
    let mut dd = SimDomain::new(dd_creds.clone());
    dd.boot().unwrap();
    let guest = SimDomain::new(host.create_domain("guest", 4096).unwrap());
    ProcessRig {
        host,
        dd_creds,
        dd,
        guest,
        dir,
    }
}

/// A new `bytes`-long disk file at `path`, attached as the toolstack attaches it (the guest's
/// `vbd` 51712, served by domain `backend`), and the guest's blkfront connected to it.
pub async fn attach_disk_and_connect(
    host: &Host,
    backend: xen_abi::DomId,
    guest: &SimDomain,
    path: &std::path::Path,
    bytes: u64,
    options: blkfront::xenbus::FrontOptions,
) -> (
    xen_store::Xs,
    blkfront::xenbus::BlkDevice<SimGrants, SimEvtchn>,
) {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
    let dom0 = host.xenstored().dom0_client().unwrap();
    let device = xen_sim::toolstack::DeviceSpec {
        kind: "vbd".into(),
        backend,
        frontend: guest.domid(),
        devid: 51712,
        backend_keys: vec![
            ("params".into(), path.display().to_string()),
            ("mode".into(), "w".into()),
        ],
        frontend_keys: vec![("virtual-device".into(), "51712".into())],
    };
    xen_sim::toolstack::attach_device(&dom0, &device)
        .await
        .unwrap();
    let gxs = guest.xenstore().await.unwrap();
    let fe_dir = xen_store::path::frontend_path(guest.domid(), "vbd", 51712);
    let dev = blkfront::xenbus::connect(&gxs, &fe_dir, options, || {
        (guest.grants().unwrap(), guest.evtchn().unwrap())
    })
    .await
    .unwrap();
    (gxs, dev)
}
