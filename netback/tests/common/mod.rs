//! A network driver domain and two guests on the simulated host: each guest's Rust netfront
//! exposes `eth0` in the guest's own network namespace; netback bridges their vifs on `xenbr0`
//! inside the driver domain's namespace.

#![allow(dead_code)]

pub mod raw;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use netback::backend::Backend;
use netback::device::{NetbackConfig, StatsRegistry};
use netfront::{Netfront, NetfrontOptions};
use xen_backend::{Platform, SimPlatform};
use xen_sim::toolstack::{attach_device, DeviceSpec};
use xen_sim::{Host, SimDomain};

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("nb-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        tap::netns_path(&self.name)
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
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

    /// Runs a command inside the namespace; returns (success, output).
    pub fn exec(&self, cmd: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub struct Guest {
    pub domain: SimDomain,
    pub ns: Netns,
    pub front: Option<Netfront>,
    pub ipv4: String,
    pub ipv6: String,
}

pub struct Rig {
    pub host: Host,
    pub dd: Arc<SimPlatform>,
    pub dd_creds: xen_sim::Credentials,
    pub dd_ns: Netns,
    pub guests: Vec<Guest>,
    pub stats: StatsRegistry,
    pub backend_task: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

pub fn mac_of(i: usize) -> String {
    format!("00:16:3e:00:00:{:02x}", i + 1)
}

/// A host, a network driver domain running netback in its own namespace with a bridge, and
/// `guests` guests with their namespaces (not yet attached).
pub async fn rig(tag: &str, guests: usize, config: NetbackConfig) -> Rig {
    let mut rig = bare_rig(tag, guests).await;
    let xs = rig.dd.domain().xenstore().await.unwrap();
    let config = NetbackConfig {
        netns: Some(rig.dd_ns.path()),
        ..config
    };
    let backend = Backend::new(Arc::clone(&rig.dd), xs, config);
    rig.stats = backend.stats();
    rig.backend_task = Some(tokio::spawn(async move {
        let _ = backend.run().await;
    }));
    rig
}

/// [`rig`] without a backend: the test runs netback itself (as a process of the driver domain).
pub async fn bare_rig(tag: &str, guests: usize) -> Rig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let host = Host::start(&dir.path().join("run")).await.unwrap();
    let dd_ns = Netns::new(&format!("{tag}-dd"));
    dd_ns.ip(&["link", "add", "xenbr0", "type", "bridge"]);
    dd_ns.ip(&["link", "set", "xenbr0", "up"]);
    let dd_creds = host.create_domain("network-dd", 64).unwrap();
    // The driver domain lives on (its supervisor is this test) whatever its processes do.
    let mut domain = SimDomain::new(dd_creds.clone());
    domain.boot().unwrap();
    let dd = Arc::new(SimPlatform::new(domain));
    let guests = (0..guests)
        .map(|i| Guest {
            domain: SimDomain::new(host.create_domain(&format!("guest{i}"), 4096).unwrap()),
            ns: Netns::new(&format!("{tag}-g{i}")),
            front: None,
            ipv4: format!("10.9.0.{}", i + 1),
            ipv6: format!("fd00:9::{}", i + 1),
        })
        .collect();
    Rig {
        host,
        dd,
        dd_creds,
        dd_ns,
        guests,
        stats: StatsRegistry::default(),
        backend_task: None,
        dir,
    }
}

/// The toolstack attaches guest `i`'s vif 0 (bridge `xenbr0`) as libxl does.
pub async fn attach(rig: &Rig, i: usize, extra_backend_keys: &[(&str, &str)]) {
    attach_vif(rig, i, 0, extra_backend_keys).await;
}

/// The toolstack attaches guest `i`'s vif `devid` (bridge `xenbr0`) as libxl does.
pub async fn attach_vif(rig: &Rig, i: usize, devid: u32, extra_backend_keys: &[(&str, &str)]) {
    let xs = rig.host_xs().await;
    let g = &rig.guests[i];
    let mut backend_keys = vec![
        ("mac".to_string(), mac_of(i)),
        ("bridge".to_string(), "xenbr0".to_string()),
        ("script".to_string(), "vif-bridge".to_string()),
    ];
    backend_keys.extend(
        extra_backend_keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    attach_device(
        &xs,
        &DeviceSpec {
            kind: "vif".into(),
            backend: rig.dd.domid(),
            frontend: g.domain.domid(),
            devid,
            backend_keys,
            frontend_keys: vec![
                ("mac".into(), mac_of(i)),
                ("handle".into(), devid.to_string()),
            ],
        },
    )
    .await
    .unwrap();
}

impl Rig {
    pub async fn host_xs(&self) -> xen_store::Xs {
        xen_store::Xs::connect_unix(&self.host.xenstored_socket())
            .await
            .unwrap()
    }

    /// Connects guest `i`'s netfront and configures its addresses.
    pub async fn connect(&mut self, i: usize, opts: NetfrontOptions) {
        let g = &mut self.guests[i];
        let xs = g.domain.xenstore().await.unwrap();
        let dir = xen_store::path::frontend_path(g.domain.domid(), "vif", 0);
        let grants = g.domain.grants().unwrap();
        let domain = &g.domain;
        let front = netfront::connect(
            &xs,
            &dir,
            &grants,
            || {
                domain
                    .evtchn()
                    .map_err(|e| std::io::Error::other(e.to_string()))
            },
            "eth0",
            Some(&g.ns.path()),
            opts,
        )
        .await
        .unwrap();
        g.ns.ip(&["addr", "add", &format!("{}/24", g.ipv4), "dev", "eth0"]);
        g.ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", g.ipv6),
            "dev",
            "eth0",
            "nodad",
        ]);
        g.front = Some(front);
    }
}

/// Pings `to` from the namespace until one answer comes (the bridge learns, ARP/ND resolve),
/// then requires `count` answers in a row.
pub fn ping(from: &Netns, to: &str, count: u32) {
    let v6 = to.contains(':');
    let mut last = String::new();
    for _ in 0..20 {
        let mut cmd = vec!["ping", "-c", "1", "-W", "1"];
        if v6 {
            cmd.insert(1, "-6");
        }
        cmd.push(to);
        let (ok, out) = from.exec(&cmd);
        if ok {
            let count = count.to_string();
            let mut cmd = vec!["ping", "-c", &count, "-i", "0.2", "-W", "2"];
            if v6 {
                cmd.insert(1, "-6");
            }
            cmd.push(to);
            let (ok, out) = from.exec(&cmd);
            assert!(ok, "ping {to} from {}: {out}", from.name);
            return;
        }
        last = out;
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no answer to ping {to} from {}: {last}", from.name);
}

/// 64-bit FNV-1a.
pub fn fnv(data: &[u8], mut h: u64) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Sends `bytes` of a pattern over TCP from `from` to `to_addr:port` (a listener in `to`) and
/// returns (sent hash, received hash, bytes received).
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    to_addr: &str,
    port: u16,
    bytes: usize,
) -> (u64, u64, usize) {
    tcp_transfer_between(&from.path(), &to.path(), to_addr, port, bytes)
}

/// [`tcp_transfer`] between namespaces given by path.
pub fn tcp_transfer_between(
    from: &std::path::Path,
    to: &std::path::Path,
    to_addr: &str,
    port: u16,
    bytes: usize,
) -> (u64, u64, usize) {
    tcp_transfer_counted(from, to, to_addr, port, bytes, None)
}

/// [`tcp_transfer_between`], counting received bytes into `progress` as they arrive.
pub fn tcp_transfer_counted(
    from: &std::path::Path,
    to: &std::path::Path,
    to_addr: &str,
    port: u16,
    bytes: usize,
    progress: Option<Arc<std::sync::atomic::AtomicUsize>>,
) -> (u64, u64, usize) {
    let addr: SocketAddr = if to_addr.contains(':') {
        format!("[{to_addr}]:{port}")
    } else {
        format!("{to_addr}:{port}")
    }
    .parse()
    .unwrap();
    let listener = tap::in_netns(Some(to), || TcpListener::bind(addr)).unwrap();
    // (Port 0 picks a free port.)
    let addr = listener.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut h = FNV_START;
        let mut total = 0;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h = fnv(&buf[..n], h);
            total += n;
            if let Some(p) = &progress {
                p.store(total, std::sync::atomic::Ordering::Release);
            }
        }
        (h, total)
    });
    let stream = tap::in_netns(Some(from), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
    })
    .unwrap();
    let mut stream = stream;
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 4096) as u8).collect();
    let sent = fnv(&data, FNV_START);
    for chunk in data.chunks(100_000) {
        stream.write_all(chunk).unwrap();
    }
    drop(stream);
    let (received, total) = receiver.join().unwrap();
    (sent, received, total)
}
