//! The `demu` program as a GPU driver domain runs it: started for a guest, it answers the
//! guest's vGPU, writes screenshots on SIGUSR1 and counters once a second, refuses bad
//! arguments with one sentence, and on SIGTERM destroys its ioreq server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn demu(rig: &Rig) -> tokio::process::Command {
    let mut cmd = Host::command(rig.gpu_dd.credentials(), env!("CARGO_BIN_EXE_demu"));
    cmd.kill_on_drop(true);
    cmd
}

/// SIGTERM, then a successful exit within 10 s.
async fn stop_cleanly(child: &mut tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demu_serves_screenshots_and_stops_cleanly() {
    let rig = rig(1).await;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let shots = dir.path().join("shots");
    let stats = dir.path().join("stats.json");
    let guest = rig.guests[0].domid();
    let mut child = demu(&rig)
        .arg("--vgpu")
        .arg(format!("domid={guest},bdf=00:02.0,weight=2"))
        .arg("--screenshot-dir")
        .arg(&shots)
        .arg("--stats-file")
        .arg(&stats)
        .spawn()
        .unwrap();
    let drv = Driver { cpu: rig.vcpu(0) };
    eventually("the vGPU to answer", || {
        drv.cfg_read(0x00, 4) == 0x1111_1234
    })
    .await;
    drv.enable(FB_BAR, MMIO_BAR);
    drv.set_mode(640, 480, 32);
    let mut ram = rig.vcpu(0);
    ram.write_ram(FB_BAR, &pattern(640, 480, 2560)).unwrap();

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    let png = shots.join(format!("vgpu-{guest}.png"));
    eventually("the screenshot", || png.exists()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut reader = png::Decoder::new(std::fs::File::open(&png).unwrap())
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (640, 480));
    for (x, y) in [(0, 0), (639, 0), (17, 300), (639, 479)] {
        let at = (y * 640 + x) as usize * 3;
        assert_eq!((buf[at], buf[at + 1], buf[at + 2]), pattern_pixel(x, y));
    }
    eventually("the stats file", || {
        std::fs::read_to_string(&stats)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v[0]["requests"].as_u64().unwrap_or(0) > 10)
    })
    .await;

    stop_cleanly(&mut child).await;
    assert_eq!(drv.cfg_read(0x00, 4), 0xffff_ffff, "the device is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_get_one_clear_sentence() {
    let rig = rig(1).await;
    for (args, needle) in [
        (vec!["--vgpu", "domid=x"], "is not a domain id"),
        (vec!["--vgpu", "domid=3,bdf=zz"], "is not a PCI address"),
        (
            vec!["--platform", "kvm", "--vgpu", "domid=3"],
            "choose sim or xen",
        ),
        (vec!["--vgpu", "domid=99"], "domain 99"),
    ] {
        let out = demu(&rig).args(&args).output().await.unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
    }
}

/// `demu --serve` as a GPU driver domain runs it: the toolstack attaches a vGPU by writing its
/// backend directory; demu emulates it and reports `hotplug-status`; a directory it cannot
/// serve gets `error` and a sentence; `online` = 0 takes the vGPU away again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_vgpus_the_toolstack_attaches_through_xenstore() {
    use xen_sim::toolstack::{attach_device, request_detach, DeviceSpec};
    let rig = rig(1).await;
    let guest = rig.guests[0].domid();
    let dd = rig.gpu_dd.domid();
    let xs = SimDomain::new(rig.host.dom0().clone())
        .xenstore()
        .await
        .unwrap();
    let mut child = demu(&rig).arg("--serve").spawn().unwrap();
    let drv = Driver { cpu: rig.vcpu(0) };
    assert_eq!(drv.cfg_read(0x00, 4), 0xffff_ffff, "nothing attached yet");

    let spec = |devid: u32, bdf: &str| DeviceSpec {
        kind: "vgpu".into(),
        backend: dd,
        frontend: guest,
        devid,
        backend_keys: vec![("bdf".into(), bdf.into()), ("weight".into(), "2".into())],
        frontend_keys: vec![],
    };
    let be = |devid: u32| format!("/local/domain/{dd}/backend/vgpu/{guest}/{devid}");
    let status = |devid: u32| {
        let xs = xs.clone();
        async move {
            xs.read_opt(&format!("{}/hotplug-status", be(devid)))
                .await
                .unwrap()
        }
    };
    attach_device(&xs, &spec(0, "00:02.0")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(0).await.as_deref() != Some(b"connected".as_slice()) {
        assert!(Instant::now() < deadline, "no hotplug-status");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(drv.cfg_read(0x00, 4), 0x1111_1234);
    drv.enable(FB_BAR, MMIO_BAR);
    assert_eq!(drv.dispi_read(0), 0xb0c5);

    // A directory demu cannot serve: an error and one sentence, the other vGPU untouched.
    attach_device(&xs, &spec(1, "zz")).await.unwrap();
    while status(1).await.as_deref() != Some(b"error".as_slice()) {
        assert!(Instant::now() < deadline, "no error status");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let why = xs
        .read_string(&format!("{}/hotplug-error", be(1)))
        .await
        .unwrap();
    assert!(why.contains("is not a PCI address"), "{why}");
    assert_eq!(drv.dispi_read(0), 0xb0c5);

    // Detach: the ioreq server goes, the function reads all-ones again.
    request_detach(&xs, "vgpu", dd, guest, 0).await.unwrap();
    eventually("the vGPU to go away", || {
        drv.cfg_read(0x00, 4) == 0xffff_ffff
    })
    .await;

    // Attached again under a new id, then demu stops while it is attached.
    attach_device(&xs, &spec(2, "00:02.0")).await.unwrap();
    while status(2).await.as_deref() != Some(b"connected".as_slice()) {
        assert!(Instant::now() < deadline, "no hotplug-status");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(drv.cfg_read(0x00, 4), 0x1111_1234);
    stop_cleanly(&mut child).await;
    assert_eq!(drv.cfg_read(0x00, 4), 0xffff_ffff, "the device is gone");
}
