//! The whole backend on the simulated host: the toolstack attaches a disk as libxl does, the
//! Rust blkfront negotiates with blkback over xenstore, I/O flows, and the device is
//! hot-unplugged, reconnected, and refused when the frontend's keys are wrong.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use blkback::backend::Backend;
use blkback::device::BackendConfig;
use blkback::platform::SimPlatform;
use blkfront::xenbus::{connect, wait_state, FrontOptions};
use xen_abi::blkif::{VDISK_CDROM, VDISK_READONLY};
use xen_blkif::Abi;
use xen_sim::toolstack::{attach_device, request_detach, DeviceSpec};
use xen_sim::{Host, SimDomain};
use xen_store::XenbusState;

struct Rig {
    host: Host,
    dd: Arc<SimPlatform>,
    guest: SimDomain,
    dir: tempfile::TempDir,
    backend_task: tokio::task::JoinHandle<()>,
    stats: blkback::device::StatsRegistry,
}

async fn rig(config: BackendConfig) -> Rig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let host = Host::start(&dir.path().join("run")).await.unwrap();
    let dd = Arc::new(SimPlatform::new(SimDomain::new(
        host.create_domain("storage-dd", 64).unwrap(),
    )));
    let guest = SimDomain::new(host.create_domain("guest", 4096).unwrap());
    let xs = dd.domain().xenstore().await.unwrap();
    let backend = Backend::new(Arc::clone(&dd), xs, config);
    let stats = backend.stats();
    let backend_task = tokio::spawn(async move {
        let _ = backend.run().await;
    });
    Rig {
        host,
        dd,
        guest,
        dir,
        backend_task,
        stats,
    }
}

async fn attach(rig: &Rig, devid: u32, bytes: u64, mode: &str) -> String {
    attach_with(rig, devid, bytes, mode, &[], "disk").await
}

/// [`attach`] with more backend keys from the toolstack and the frontend's `device-type`.
async fn attach_with(
    rig: &Rig,
    devid: u32,
    bytes: u64,
    mode: &str,
    more: &[(&str, &str)],
    device_type: &str,
) -> String {
    let path = rig.dir.path().join(format!("disk{devid}.img"));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    let dom0 = rig.host.xenstored().dom0_client().unwrap();
    let spec = DeviceSpec {
        kind: "vbd".into(),
        backend: rig.dd.domain().domid(),
        frontend: rig.guest.domid(),
        devid,
        backend_keys: [
            ("params".into(), path.display().to_string()),
            ("mode".into(), mode.into()),
        ]
        .into_iter()
        .chain(more.iter().map(|&(k, v)| (k.into(), v.into())))
        .collect(),
        frontend_keys: vec![
            ("virtual-device".into(), devid.to_string()),
            ("device-type".into(), device_type.into()),
        ],
    };
    attach_device(&dom0, &spec).await.unwrap();
    xen_store::path::frontend_path(rig.guest.domid(), "vbd", devid)
}

/// A connected guest disk: the guest's xenstore connection, its frontend directory, the device.
type Connected = (
    xen_store::Xs,
    String,
    blkfront::xenbus::BlkDevice<xen_sim::domain::SimGrants, xen_sim::domain::SimEvtchn>,
);

/// Attaches a disk as the toolstack does and connects the guest's blkfront to it.
async fn attach_and_connect(
    rig: &Rig,
    devid: u32,
    bytes: u64,
    mode: &str,
    opts: FrontOptions,
) -> Connected {
    let fe_dir = attach(rig, devid, bytes, mode).await;
    let gxs = rig.guest.xenstore().await.unwrap();
    let dev = connect(&gxs, &fe_dir, opts, handles(&rig.guest))
        .await
        .unwrap();
    (gxs, fe_dir, dev)
}

fn handles(
    guest: &SimDomain,
) -> impl FnMut() -> (xen_sim::domain::SimGrants, xen_sim::domain::SimEvtchn) + '_ {
    move || (guest.grants().unwrap(), guest.evtchn().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_negotiate_io_and_hot_unplug() {
    let rig = rig(BackendConfig::default()).await;
    let opts = FrontOptions {
        queues: 2,
        ring_pages: 4,
        abi: Abi::X86_64,
        persistent: true,
        indirect_segments: 256,
    };
    let (gxs, _fe_dir, mut dev) = attach_and_connect(&rig, 51712, 16 << 20, "w", opts).await;
    assert_eq!((dev.sectors, dev.sector_size, dev.info), (32768, 512, 0));
    assert_eq!(dev.queues.len(), 2);
    assert_eq!(dev.queues[0].ring_size(), 128, "4-page rings");
    let be = dev.backend_dir.clone();
    for (k, v) in [
        ("feature-persistent", "1"),
        ("feature-max-indirect-segments", "256"),
        ("max-ring-page-order", "4"),
        ("multi-queue-max-queues", "4"),
        ("feature-flush-cache", "1"),
        ("feature-discard", "1"),
    ] {
        assert_eq!(
            gxs.read_string(&format!("{be}/{k}")).await.unwrap(),
            v,
            "{k}"
        );
    }
    for (q, front) in dev.queues.iter_mut().enumerate() {
        let data = vec![q as u8 + 1; 64 * 1024];
        front.write(q as u64 * 2048, &data).unwrap();
        assert_eq!(front.read(q as u64 * 2048, 64 * 1024).unwrap(), data);
    }
    // Counters are visible to the supervisor.
    let counted: u64 = rig
        .stats
        .lock()
        .unwrap()
        .values()
        .flatten()
        .map(|q| q.snapshot().writes)
        .sum();
    assert_eq!(counted, 2);
    let refs: Vec<u32> = dev.queues[0].ring_refs().to_vec();
    let port = dev.queues[0].port();
    // Hot-unplug, as `xl block-detach`: the frontend follows the backend's Closing.
    let dom0 = rig.host.xenstored().dom0_client().unwrap();
    request_detach(
        &dom0,
        "vbd",
        rig.dd.domain().domid(),
        rig.guest.domid(),
        51712,
    )
    .await
    .unwrap();
    wait_state(&gxs, &format!("{be}/state"), Duration::from_secs(10), |s| {
        s == XenbusState::Closing
    })
    .await
    .unwrap();
    dev.close(&gxs).await.unwrap();
    let hv = rig.host.hypervisor();
    for r in refs {
        assert_ne!(
            hv.grant_in_use(rig.guest.domid(), r),
            Some(true),
            "the backend unmapped ring ref {r}"
        );
    }
    assert_ne!(
        hv.port_bound(rig.guest.domid(), port),
        Some(true),
        "the backend unbound its port"
    );
    wait_removed(&gxs, &be).await;
    rig.backend_task.abort();
}

/// Waits until the backend directory is gone: in a driver domain blkback removes it once the
/// device is closed and offline, as `xl devd` would (libxl in dom0 waits for that).
async fn wait_removed(xs: &xen_store::Xs, dir: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while xs.exists(dir).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "{dir} was not removed after the device closed offline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_disk_and_reconnect_with_new_rings() {
    let rig = rig(BackendConfig::default()).await;
    let (gxs, fe_dir, mut dev) =
        attach_and_connect(&rig, 51728, 4 << 20, "r", FrontOptions::default()).await;
    assert_eq!(dev.info, VDISK_READONLY);
    assert!(
        dev.queues[0].write(0, &[1u8; 4096]).is_err(),
        "writes to a read-only disk fail"
    );
    assert_eq!(dev.queues[0].read(0, 4096).unwrap(), vec![0u8; 4096]);
    assert_eq!(
        gxs.read_string(&format!("{}/feature-discard", dev.backend_dir))
            .await
            .unwrap(),
        "0"
    );
    // The frontend closes and comes back with new rings (a guest driver reload).
    let old_refs = dev.queues[0].ring_refs().to_vec();
    dev.close(&gxs).await.unwrap();
    gxs.write_state(&format!("{fe_dir}/state"), XenbusState::Initialising)
        .await
        .unwrap();
    let opts = FrontOptions {
        abi: Abi::X86_32,
        ring_pages: 2,
        ..FrontOptions::default()
    };
    let mut dev = connect(&gxs, &fe_dir, opts, handles(&rig.guest))
        .await
        .unwrap();
    assert_ne!(dev.queues[0].ring_refs(), &old_refs[..]);
    assert_eq!(dev.queues[0].read(8, 512).unwrap(), vec![0u8; 512]);
    rig.backend_task.abort();
}

/// Online resize, as Linux blkback's `xen_vbd_resize`: the backing file grows while the guest
/// is connected; blkback writes the new `sectors` and writes `state` again in one transaction
/// (what Linux blkfront reacts to), the frontend takes the new size, and the new sectors serve
/// I/O. Shrunk again, what lies past the new end is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resized_disk_is_announced_and_served_online() {
    let rig = rig(BackendConfig::default()).await;
    let (gxs, _fe_dir, mut dev) =
        attach_and_connect(&rig, 51744, 4 << 20, "w", FrontOptions::default()).await;
    let image = rig.dir.path().join("disk51744.img");
    let resize = |bytes: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(bytes)
            .unwrap();
    };
    let (old_end, new_end) = (8192u64, 16384u64);
    assert_eq!(dev.sectors, old_end);
    assert!(
        dev.queues[0].write(old_end, &[7u8; 4096]).is_err(),
        "past the end of the disk"
    );
    // The guest watches the backend's state as blkfront does; the first event is the watch's.
    let state_path = format!("{}/state", dev.backend_dir);
    let mut watch = gxs.watch(&state_path).await.unwrap();
    watch.next().await.unwrap();
    resize(8 << 20);
    tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("blkback writes its state again after a resize")
        .unwrap();
    assert_eq!(
        gxs.read_string(&format!("{}/sectors", dev.backend_dir))
            .await
            .unwrap(),
        new_end.to_string(),
        "the new size is there when the state event arrives (one transaction)"
    );
    assert_eq!(
        gxs.read_state(&state_path).await.unwrap(),
        XenbusState::Connected
    );
    assert_eq!(
        dev.wait_for_resize(&gxs, Duration::from_secs(5))
            .await
            .unwrap(),
        new_end
    );
    dev.queues[0].write(old_end, &[7u8; 4096]).unwrap();
    dev.queues[0].write(new_end - 8, &[9u8; 4096]).unwrap();
    assert_eq!(dev.queues[0].read(old_end, 4096).unwrap(), vec![7u8; 4096]);
    assert_eq!(
        dev.queues[0].read(new_end - 8, 4096).unwrap(),
        vec![9u8; 4096]
    );
    assert!(
        dev.queues[0].read(new_end, 512).is_err(),
        "past the new end"
    );
    // Shrunk back: the old size is announced and the sectors past it are refused.
    resize(4 << 20);
    assert_eq!(
        dev.wait_for_resize(&gxs, Duration::from_secs(5))
            .await
            .unwrap(),
        old_end
    );
    assert!(dev.queues[0].read(old_end, 4096).is_err());
    assert_eq!(dev.queues[0].read(0, 4096).unwrap(), vec![0u8; 4096]);
    rig.backend_task.abort();
}

/// A CD-ROM (the toolstack writes `device-type` = `cdrom` in the frontend directory, as libxl
/// does for `devtype=cdrom`): `info` carries `VDISK_CDROM` with `VDISK_READONLY`, as Linux
/// blkback sets them, and the medium reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdrom_is_announced_as_one() {
    let rig = rig(BackendConfig::default()).await;
    let fe_dir = attach_with(&rig, 5632, 1 << 20, "r", &[], "cdrom").await;
    let gxs = rig.guest.xenstore().await.unwrap();
    let mut dev = connect(&gxs, &fe_dir, FrontOptions::default(), handles(&rig.guest))
        .await
        .unwrap();
    assert_eq!(dev.info, VDISK_CDROM | VDISK_READONLY);
    assert_eq!(dev.queues[0].read(0, 2048).unwrap(), vec![0u8; 2048]);
    rig.backend_task.abort();
}

/// Windows PV blkfront writes `feature-large-sector-size` and counts every sector in units of
/// `sector-size`; blkif counts 512-byte units. On a disk with 4096-byte sectors that frontend
/// is refused with an error naming the cause (it would read and write the wrong places);
/// without the node, or on a disk with 512-byte sectors, where both units agree, it connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_counting_large_sectors_is_refused_only_where_units_differ() {
    let rig = rig(BackendConfig::default()).await;
    let gxs = rig.guest.xenstore().await.unwrap();
    let large_sectors = [("sector-size-hint", "4096")];
    // 4096-byte sectors and the node: refused, with the reason.
    let fe_dir = attach_with(&rig, 1, 1 << 20, "w", &large_sectors, "disk").await;
    gxs.write(&format!("{fe_dir}/feature-large-sector-size"), b"1")
        .await
        .unwrap();
    let err = connect(&gxs, &fe_dir, FrontOptions::default(), handles(&rig.guest))
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("feature-large-sector-size"),
        "{err}"
    );
    // 4096-byte sectors without the node (Linux): served.
    let fe_dir = attach_with(&rig, 2, 1 << 20, "w", &large_sectors, "disk").await;
    let mut dev = connect(&gxs, &fe_dir, FrontOptions::default(), handles(&rig.guest))
        .await
        .unwrap();
    assert_eq!(dev.sector_size, 4096);
    dev.queues[0].write(8, &[3u8; 4096]).unwrap();
    // 512-byte sectors with the node: both units agree, served.
    let fe_dir = attach(&rig, 3, 1 << 20, "w").await;
    gxs.write(&format!("{fe_dir}/feature-large-sector-size"), b"1")
        .await
        .unwrap();
    let mut dev = connect(&gxs, &fe_dir, FrontOptions::default(), handles(&rig.guest))
        .await
        .unwrap();
    dev.queues[0].write(1, &[4u8; 512]).unwrap();
    rig.backend_task.abort();
}

/// A guest that kexecs (or whose driver crashed) starts over without closing: its frontend
/// jumps from `Connected` to `Initialising`. The backend releases the old rings, walks through
/// `Closed` to `InitWait` (Linux netback's `set_backend_state`), and the new driver connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_that_starts_over_without_closing_reconnects() {
    let rig = rig(BackendConfig::default()).await;
    let (gxs, fe_dir, mut dev) =
        attach_and_connect(&rig, 51712, 4 << 20, "w", FrontOptions::default()).await;
    dev.queues[0].write(0, &[7u8; 4096]).unwrap();
    let be = dev.backend_dir.clone();
    let old_refs = dev.queues[0].ring_refs().to_vec();
    gxs.write_state(&format!("{fe_dir}/state"), XenbusState::Initialising)
        .await
        .unwrap();
    wait_state(&gxs, &format!("{be}/state"), Duration::from_secs(10), |s| {
        s == XenbusState::InitWait
    })
    .await
    .unwrap();
    let hv = rig.host.hypervisor();
    assert!(
        old_refs
            .iter()
            .all(|&r| hv.grant_in_use(rig.guest.domid(), r) != Some(true)),
        "the old rings were released"
    );
    drop(dev);
    let mut dev = connect(&gxs, &fe_dir, FrontOptions::default(), handles(&rig.guest))
        .await
        .unwrap();
    assert_eq!(dev.queues[0].read(0, 4096).unwrap(), vec![7u8; 4096]);
    rig.backend_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frontend_keys_are_refused() {
    let rig = rig(BackendConfig {
        max_queues: 2,
        max_ring_page_order: 1,
        ..BackendConfig::default()
    })
    .await;
    let gxs = rig.guest.xenstore().await.unwrap();
    let cases: [(&str, Vec<(&str, &str)>); 8] = [
        (
            "ring-page-order above the maximum",
            vec![
                ("ring-page-order", "2"),
                ("ring-ref0", "8"),
                ("ring-ref1", "9"),
                ("ring-ref2", "10"),
                ("ring-ref3", "11"),
                ("event-channel", "1"),
            ],
        ),
        (
            "zero queues",
            vec![
                ("multi-queue-num-queues", "0"),
                ("ring-ref", "8"),
                ("event-channel", "1"),
            ],
        ),
        (
            "too many queues",
            vec![
                ("multi-queue-num-queues", "3"),
                ("ring-ref", "8"),
                ("event-channel", "1"),
            ],
        ),
        (
            "missing ring-ref1",
            vec![
                ("ring-page-order", "1"),
                ("ring-ref0", "8"),
                ("event-channel", "1"),
            ],
        ),
        (
            "duplicated ring-ref",
            vec![
                ("ring-page-order", "1"),
                ("ring-ref0", "8"),
                ("ring-ref1", "8"),
                ("event-channel", "1"),
            ],
        ),
        (
            "unknown protocol",
            vec![
                ("protocol", "arm-abi"),
                ("ring-ref", "8"),
                ("event-channel", "1"),
            ],
        ),
        // Grants the guest never made, and a port it never allocated.
        (
            "ring grant not granted",
            vec![("ring-ref", "4000"), ("event-channel", "1")],
        ),
        (
            "event channel not offered",
            vec![("ring-ref", "9"), ("event-channel", "999")],
        ),
    ];
    // The guest grants one page, so that the unbound-port case has a valid ring.
    let _granted = xen_grant::GrantAllocator::grant_pages(
        &rig.guest.grants().unwrap(),
        rig.dd.domain().domid(),
        2,
        true,
    )
    .unwrap();
    for (devid, (what, keys)) in (1u32..).zip(cases) {
        let fe_dir = attach(&rig, devid, 1 << 20, "w").await;
        let be =
            xen_store::path::backend_path(rig.dd.domain().domid(), "vbd", rig.guest.domid(), devid);
        wait_state(&gxs, &format!("{be}/state"), Duration::from_secs(10), |s| {
            s == XenbusState::InitWait
        })
        .await
        .unwrap();
        for (k, v) in keys {
            gxs.write(&format!("{fe_dir}/{k}"), v.as_bytes())
                .await
                .unwrap();
        }
        gxs.write_state(&format!("{fe_dir}/state"), XenbusState::Initialised)
            .await
            .unwrap();
        let s = wait_state(&gxs, &format!("{be}/state"), Duration::from_secs(10), |s| {
            s != XenbusState::InitWait
        })
        .await
        .unwrap();
        assert_eq!(s, XenbusState::Closing, "{what}");
        let error = gxs.read_string(&format!("{be}/error")).await.unwrap();
        assert!(!error.is_empty(), "{what}: the backend says why");
    }
    // The backend still serves a well-behaved frontend.
    let fe_dir = attach(&rig, 99, 1 << 20, "w").await;
    let mut dev = connect(&gxs, &fe_dir, FrontOptions::default(), handles(&rig.guest))
        .await
        .unwrap();
    dev.queues[0].write(0, &[7u8; 512]).unwrap();
    rig.backend_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_unplug_with_io_in_flight_answers_everything_first() {
    let rig = rig(BackendConfig::default()).await;
    let opts = FrontOptions {
        persistent: false,
        ..FrontOptions::default()
    };
    let (gxs, fe_dir, mut dev) = attach_and_connect(&rig, 51712, 16 << 20, "w", opts).await;
    let be = dev.backend_dir.clone();
    let front = &mut dev.queues[0];
    let n = front.ring_size() as u64;
    for k in 0..n {
        front.submit_write(k * 64, &[k as u8; 32 * 1024]).unwrap();
    }
    front.kick().unwrap();
    // The toolstack unplugs the disk at once; the frontend follows.
    let dom0 = rig.host.xenstored().dom0_client().unwrap();
    request_detach(
        &dom0,
        "vbd",
        rig.dd.domain().domid(),
        rig.guest.domid(),
        51712,
    )
    .await
    .unwrap();
    gxs.write_state(&format!("{fe_dir}/state"), XenbusState::Closing)
        .await
        .unwrap();
    // The backend reports Closing only after its queues stopped: every request was answered.
    wait_state(&gxs, &format!("{be}/state"), Duration::from_secs(10), |s| {
        s >= XenbusState::Closing
    })
    .await
    .unwrap();
    let mut answered = 0;
    while answered < n {
        let batch =
            tokio::task::block_in_place(|| dev.queues[0].poll(Duration::from_millis(200))).unwrap();
        assert!(
            !batch.is_empty(),
            "all {n} requests answered before the backend closed ({answered} so far)"
        );
        answered += batch.len() as u64;
    }
    let refs = dev.queues[0].ring_refs().to_vec();
    let hv = rig.host.hypervisor();
    assert!(
        refs.iter()
            .all(|&r| hv.grant_in_use(rig.guest.domid(), r) == Some(false)),
        "ring unmapped"
    );
    gxs.write_state(&format!("{fe_dir}/state"), XenbusState::Closed)
        .await
        .unwrap();
    wait_removed(&gxs, &be).await;
    rig.backend_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_state_toggling_leaks_nothing() {
    let rig = rig(BackendConfig::default()).await;
    let (gxs, fe_dir, mut dev) =
        attach_and_connect(&rig, 51712, 16 << 20, "w", FrontOptions::default()).await;
    let be = dev.backend_dir.clone();
    for k in 0..8u64 {
        dev.queues[0].submit_write(k * 8, &[1u8; 4096]).unwrap();
    }
    dev.queues[0].kick().unwrap();
    let cycle = [
        XenbusState::Closing,
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closed,
        XenbusState::Initialising,
    ];
    for i in 0..60 {
        gxs.write_state(&format!("{fe_dir}/state"), cycle[i % cycle.len()])
            .await
            .unwrap();
    }
    gxs.write_state(&format!("{fe_dir}/state"), XenbusState::Closed)
        .await
        .unwrap();
    wait_state(&gxs, &format!("{be}/state"), Duration::from_secs(10), |s| {
        s == XenbusState::Closed
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hv = rig.host.hypervisor();
    let refs = dev.queues[0].ring_refs().to_vec();
    assert!(
        refs.iter()
            .all(|&r| hv.grant_in_use(rig.guest.domid(), r) == Some(false)),
        "nothing left mapped"
    );
    // The backend still serves: a second disk connects and works.
    let fe2 = attach(&rig, 51728, 4 << 20, "w").await;
    let mut dev2 = connect(&gxs, &fe2, FrontOptions::default(), handles(&rig.guest))
        .await
        .unwrap();
    dev2.queues[0].write(0, &[9u8; 4096]).unwrap();
    assert_eq!(dev2.queues[0].read(0, 4096).unwrap(), vec![9u8; 4096]);
    rig.backend_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_key_floods_do_not_disturb_a_connected_device() {
    let rig = rig(BackendConfig::default()).await;
    let (gxs, fe_dir, mut dev) =
        attach_and_connect(&rig, 51712, 8 << 20, "w", FrontOptions::default()).await;
    // The guest rewrites its keys (state included, to the same value) as fast as it can.
    let flood = {
        let gxs = gxs.clone();
        let fe_dir = fe_dir.clone();
        tokio::spawn(async move {
            for i in 0..2000u32 {
                let key =
                    ["ring-ref", "event-channel", "feature-persistent", "state"][i as usize % 4];
                let value = if key == "state" {
                    "4".to_string()
                } else {
                    i.to_string()
                };
                gxs.write(&format!("{fe_dir}/{key}"), value.as_bytes())
                    .await
                    .unwrap();
            }
        })
    };
    for k in 0..50u64 {
        let data = vec![k as u8; 4096];
        tokio::task::block_in_place(|| {
            dev.queues[0].write(k * 8, &data).unwrap();
            assert_eq!(dev.queues[0].read(k * 8, 4096).unwrap(), data);
        });
    }
    flood.await.unwrap();
    let be = dev.backend_dir.clone();
    assert_eq!(
        gxs.read_state(&format!("{be}/state")).await.unwrap(),
        XenbusState::Connected,
        "still connected"
    );
    tokio::task::block_in_place(|| dev.queues[0].write(0, &[1u8; 512])).unwrap();
    rig.backend_task.abort();
}
