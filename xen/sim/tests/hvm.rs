//! HVM guests on the simulated host: who may act as a guest's device model, what unclaimed
//! accesses return, the PCI configuration latch, RAM population and relocation, and a vCPU
//! released when the server it waits on goes away.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use xen_devicemodel::{BufIoreq, DeviceModel, IoRange, IoRangeKind};
use xen_sim::{Host, SimDomain};

struct World {
    host: Host,
    dir: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn world() -> World {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xen-sim-hvm-{}-{n}", std::process::id()));
    let host = Host::start(&dir).await.unwrap();
    World { host, dir }
}

fn refused(r: xen_devicemodel::Result<impl std::fmt::Debug>, why: &str) {
    let e = r.expect_err(why);
    assert!(e.to_string().contains(why), "{e} (expected: {why})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_dom0_and_the_designated_device_model_may_emulate() {
    let w = world().await;
    let dd = SimDomain::new(w.host.create_domain("gpu-dd", 16).unwrap());
    let guest = SimDomain::new(w.host.create_hvm_domain("hvm", 256, 1).unwrap());
    let other = SimDomain::new(w.host.create_hvm_domain("hvm2", 256, 1).unwrap());
    let dm = dd.device_model(guest.domid()).unwrap();
    refused(
        dm.create_ioreq_server(BufIoreq::Off),
        "is not the device model",
    );
    w.host.set_device_model(dd.domid(), guest.domid()).unwrap();
    let id = dm.create_ioreq_server(BufIoreq::Atomic).unwrap();
    assert_eq!(dm.nr_vcpus().unwrap(), 1);
    assert!(dm.ioreq_server_info(id).unwrap().bufioreq_port.is_some());
    refused(
        dm.for_target(other.domid()).nr_vcpus(),
        "is not the device model",
    );
    refused(dm.for_target(dd.domid()).nr_vcpus(), "is not an HVM guest");
    // dom0 may operate on any HVM guest.
    let dom0 = SimDomain::new(w.host.dom0().clone());
    assert_eq!(
        dom0.device_model(other.domid())
            .unwrap()
            .nr_vcpus()
            .unwrap(),
        1
    );
    // Once restricted, the handle reaches its guest only, even one it may otherwise emulate.
    w.host.set_device_model(dd.domid(), other.domid()).unwrap();
    assert_eq!(dm.for_target(other.domid()).nr_vcpus().unwrap(), 1);
    dm.restrict().unwrap();
    refused(dm.for_target(other.domid()).nr_vcpus(), "restricted");
    assert_eq!(dm.nr_vcpus().unwrap(), 1);
    // The server's pages belong to the domain that created it.
    let dom0_dm = dom0.device_model(guest.domid()).unwrap();
    assert!(dom0_dm.map_ioreq_pages(id, true, 1).is_err());
    dm.destroy_ioreq_server(id).unwrap();
    refused(dm.destroy_ioreq_server(id), "no ioreq server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_accesses_read_all_ones_and_ram_is_ram() {
    let w = world().await;
    let guest = SimDomain::new(w.host.create_hvm_domain("hvm", 1024, 2).unwrap());
    let mut cpu = guest.vcpu(1).unwrap();
    assert_eq!(cpu.pio_read(0x80, 1).unwrap(), 0xff);
    assert_eq!(cpu.pio_read(0x80, 2).unwrap(), 0xffff);
    assert_eq!(cpu.pio_read(0x80, 4).unwrap(), 0xffff_ffff);
    cpu.pio_write(0x80, 1, 0x12).unwrap();
    assert_eq!(
        cpu.pci_read(0x0008, 0, 4).unwrap(),
        0xffff_ffff,
        "no device"
    );
    cpu.pio_write(0xcf8, 4, 0x8000_1234).unwrap();
    assert_eq!(cpu.pio_read(0xcf8, 4).unwrap(), 0x8000_1234, "the latch");
    assert_eq!(cpu.mmio_read(0xfed0_0000, 4).unwrap(), 0xffff_ffff);
    // MMIO to populated RAM is RAM.
    cpu.mmio_write(0x1000, 8, 0x0102_0304_0506_0708).unwrap();
    assert_eq!(cpu.mmio_read(0x1000, 8).unwrap(), 0x0102_0304_0506_0708);
    assert_eq!(
        cpu.read_ram(0x1000, 8).unwrap(),
        [8, 7, 6, 5, 4, 3, 2, 1].to_vec()
    );
    // The legacy VGA hole is not RAM.
    assert!(cpu.read_ram(0xa_0000, 4).is_err());
    assert_eq!(cpu.mmio_read(0xa_0000, 1).unwrap(), 0xff);
    // A PV domain has no vCPU accesses; a vCPU index past the guest's is refused.
    let pv = SimDomain::new(w.host.create_domain("pv", 16).unwrap());
    assert!(pv.vcpu(0).unwrap().pio_read(0x80, 1).is_err());
    assert!(guest.vcpu(2).unwrap().pio_read(0x80, 1).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_populated_and_relocated_as_xen_does() {
    let w = world().await;
    let guest = SimDomain::new(w.host.create_hvm_domain("hvm", 1024, 1).unwrap());
    let dom0 = SimDomain::new(w.host.dom0().clone());
    let dm = dom0.device_model(guest.domid()).unwrap();
    let home: Vec<u64> = (0x10_0000..0x10_0004).collect();
    dm.populate_ram(&home).unwrap();
    refused(dm.populate_ram(&home[..1]), "is taken");
    refused(dm.populate_ram(&[5]), "is taken");
    let mut cpu = guest.vcpu(0).unwrap();
    cpu.write_ram(0x10_0000 << 12, b"vram").unwrap();
    let mapped = dm.map_foreign(&home, true).unwrap();
    // SAFETY: 4 bytes at the start of a 4-page mapping that lives to the end of the test.
    let seen = unsafe { std::slice::from_raw_parts(xen_ring::SharedMemory::as_ptr(&mapped), 4) };
    assert_eq!(seen, b"vram");
    dm.relocate_memory(0x10_0000, 0xe_0000, 4).unwrap();
    assert_eq!(cpu.read_ram(0xe000_0000, 4).unwrap(), b"vram".to_vec());
    assert!(cpu.read_ram(0x10_0000 << 12, 4).is_err(), "moved away");
    // A relocation with an unpopulated source fails as a whole.
    refused(dm.relocate_memory(0xe_0002, 0xd_0000, 4), "not populated");
    assert_eq!(cpu.read_ram(0xe000_0000, 4).unwrap(), b"vram".to_vec());
    // The mapping made before the move still shows the same memory.
    cpu.write_ram(0xe000_0000, b"moved").unwrap();
    // SAFETY: as above.
    let seen = unsafe { std::slice::from_raw_parts(xen_ring::SharedMemory::as_ptr(&mapped), 5) };
    assert_eq!(seen, b"moved");
    assert!(dm.map_foreign(&[0xf_0000], false).is_err(), "unpopulated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_vcpu_is_released_when_its_server_goes_away() {
    let w = world().await;
    let guest = SimDomain::new(w.host.create_hvm_domain("hvm", 256, 1).unwrap());
    let dom0 = SimDomain::new(w.host.dom0().clone());
    let dm = dom0.device_model(guest.domid()).unwrap();
    let id = dm.create_ioreq_server(BufIoreq::Off).unwrap();
    let port = IoRange {
        kind: IoRangeKind::Port,
        start: 0x500,
        end: 0x503,
    };
    dm.map_io_range(id, port).unwrap();
    refused(dm.map_io_range(id, port), "overlaps");
    // Not enabled yet: the access is unclaimed.
    let cpu = guest.vcpu(0).unwrap();
    assert_eq!(cpu.pio_read(0x500, 1).unwrap(), 0xff);
    dm.set_ioreq_server_state(id, true).unwrap();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || cpu.pio_read(0x501, 2).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished(), "the vCPU waits for its emulator");
    dm.destroy_ioreq_server(id).unwrap();
    assert_eq!(waiter.join().unwrap(), 0xffff);
    assert!(started.elapsed() < Duration::from_secs(5));
}
