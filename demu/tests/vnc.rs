//! A third-party VNC client (vncdotool, from PyPI) connects to demu's VNC server for a vGPU
//! and captures the guest's screen: every pixel is the one the guest drew, and equal to
//! demu's own PNG screenshot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use demu::display;
use demu::vnc::VncServer;

/// The `vncdo` program: `$VNCDO`, one on `PATH`, or one installed (once) into a virtual
/// environment under the target directory.
fn vncdo() -> PathBuf {
    if let Some(p) = std::env::var_os("VNCDO") {
        return p.into();
    }
    if let Ok(out) = std::process::Command::new("sh")
        .args(["-c", "command -v vncdo"])
        .output()
    {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !path.is_empty() {
            return path.into();
        }
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vncdo-venv");
    let bin = venv.join("bin/vncdo");
    if !bin.exists() {
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "vncdotool==1.4.2"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "this test needs vncdotool: install it (python3 -m venv V && V/bin/pip install \
             vncdotool) and set VNCDO=V/bin/vncdo, or give python3 with venv and PyPI access"
        );
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vncdotool_captures_exactly_the_guests_screen() {
    let vncdo = vncdo();
    let rig = rig(2).await;
    let demu = Arc::new(rig.start_demu());
    let drv = Driver { cpu: rig.vcpu(0) };
    drv.enable(FB_BAR, MMIO_BAR);
    drv.set_mode(800, 600, 32);
    let mut ram = rig.vcpu(1);
    ram.write_ram(FB_BAR, &pattern(800, 600, 3200)).unwrap();

    let source = Arc::clone(&demu);
    let vnc = VncServer::start(
        "127.0.0.1:0".parse().unwrap(),
        "hvm-guest0",
        Arc::new(move || source.with(|v, _| display::capture(v)).flatten()),
    )
    .unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let shot = dir.path().join("vnc.png");
    let server = format!("127.0.0.1::{}", vnc.local_addr().port());
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(&vncdo)
            .args(["-s", &server, "capture"])
            .arg(&shot)
            .output(),
    )
    .await
    .expect("vncdo finished")
    .unwrap();
    assert!(
        out.status.success(),
        "vncdo: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (800, 600));
    let channels = info.color_type.samples();
    let ours = demu.with(|v, _| display::capture(v)).unwrap().unwrap();
    for y in 0..600u32 {
        for x in 0..800u32 {
            let at = (y as usize * info.line_size) + x as usize * channels;
            let seen = (buf[at], buf[at + 1], buf[at + 2]);
            assert_eq!(seen, pattern_pixel(x, y), "VNC pixel ({x},{y})");
            assert_eq!(ours.pixel(x, y), Some(seen), "PNG screenshot ({x},{y})");
        }
    }
}
