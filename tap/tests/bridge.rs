//! TAP devices in a private network namespace, bridged: a frame written into one port comes out
//! of the other with its virtio header.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::IoSlice;
use std::process::Command;
use std::time::{Duration, Instant};

use tap::{netns_path, Link, Tap};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("taptest-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Self(name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn bridged_taps_carry_frames_with_virtio_headers() {
    let ns = Netns::new("br");
    let path = netns_path(&ns.0);
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["link", "set", "br0", "up"]);
    let mut a = Tap::create("vif1.0", 2, Some(&path)).unwrap();
    let mut b = Tap::create("vif2.0", 1, Some(&path)).unwrap();
    assert_eq!(a.name(), "vif1.0");
    assert_eq!(a.queues().len(), 2);
    for t in [&a, &b] {
        let link = t.link();
        link.set_mtu(1400).unwrap();
        link.set_mac([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
        link.add_to_bridge("br0").unwrap();
        link.set_up(true).unwrap();
    }
    let shown = ns.ip(&["link", "show", "vif1.0"]);
    assert!(
        shown.contains("mtu 1400") && shown.contains("master br0"),
        "{shown}"
    );
    assert!(shown.contains("fe:ff:ff:ff:ff:ff"), "{shown}");
    // Not visible in our own namespace.
    assert!(Link::new("vif1.0", None).index().is_err());

    let qa = a.take_queues();
    let qb = b.take_queues();
    Tap::set_offload(&qb[0], tap::TUN_F_CSUM).unwrap();
    // Wait for the bridge ports to forward (no STP: immediately after up).
    let vnet = [0u8; 10];
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&0x88b5u16.to_be_bytes()); // local experimental ethertype
    frame.extend_from_slice(&[0x5a; 46]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 2048];
    loop {
        qa[1]
            .write(&[IoSlice::new(&vnet), IoSlice::new(&frame)])
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut got = None;
        while let Ok(n) = qb[0].read(&mut buf) {
            if buf[10..n] == frame[..] {
                got = Some(n);
            }
        }
        if let Some(n) = got {
            assert_eq!(n, 10 + frame.len());
            assert_eq!(&buf[..2], &[0, 0], "no offload flags on a plain frame");
            break;
        }
        assert!(Instant::now() < deadline, "frame never crossed the bridge");
    }
    Tap::set_carrier(&qb[0], false).unwrap();
    let shown = ns.ip(&["link", "show", "vif2.0"]);
    assert!(shown.contains("NO-CARRIER"), "{shown}");
}

#[test]
fn a_detached_queue_keeps_the_device_and_queues_can_be_added() {
    let ns = Netns::new("mq");
    let path = netns_path(&ns.0);
    let mut anchor = Tap::create("vif9.0", 1, Some(&path)).unwrap();
    let anchor_q = anchor.take_queues();
    Tap::detach(&anchor_q[0]).unwrap();
    assert!(
        anchor.link().index().is_ok(),
        "device alive with only a detached queue"
    );
    let mut more = Tap::create("vif9.0", 2, Some(&path)).unwrap();
    let qs = more.take_queues();
    assert_eq!(qs.len(), 2);
    drop(qs);
    assert!(
        anchor.link().index().is_ok(),
        "device outlives its working queues"
    );
    drop(anchor_q);
    // The kernel removes the device when the last reference to its queue goes; a process this
    // test binary forks meanwhile (the other test runs `ip`) holds a copy of every descriptor
    // until it execs, so allow that moment to pass.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Link::new("vif9.0", Some(&path)).index().is_ok() {
        assert!(Instant::now() < deadline, "device gone with its last queue");
        std::thread::sleep(Duration::from_millis(10));
    }
}
