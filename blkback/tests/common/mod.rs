//! Helpers shared by the data-path tests: a simulated host with a driver domain and a guest,
//! and a queue worker connected to a Rust frontend.

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

/// `connect_with` mapping non-persistent grants (not copying).
pub fn connect(
    rig: &Rig,
    disk: &dyn Disk,
    config: FrontConfig,
    max_indirect: u16,
) -> (Front, RingHandle, Arc<QueueStats>) {
    connect_with(rig, disk, config, max_indirect, false)
}
