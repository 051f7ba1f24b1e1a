//! blkback's storage engine as a vhost-user-blk device, driven the way a VMM and a guest's
//! virtio-blk driver drive it: the vhost-user handshake over the socket, guest memory in a
//! shared memfd, split virtqueues with real descriptor chains, kicks and calls on eventfds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use blkback::storage::raw::{RawDisk, RawOptions};
use blkback::vhost_user::frontend::{
    self, header, Connection, GuestMemory, Virtqueue, F_EVENT_IDX,
};
use blkback::vhost_user::{serve, DeviceSpec, Served};
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;

const DISK_BYTES: u64 = 8 << 20;
const MEM_SIZE: usize = 64 << 20;
const QUEUE_SIZE: u16 = 128;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const WAIT: Duration = Duration::from_secs(10);
const ALL: u64 = u64::MAX;

type Guest = GuestMemory;
type Vq = Virtqueue;

fn new_guest(queues: usize) -> Guest {
    GuestMemory::new(MEM_SIZE, queues).unwrap()
}

fn connect(socket: &std::path::Path, guest: &Guest, queues: usize, mask: u64) -> Connection {
    frontend::connect(socket, guest, queues, QUEUE_SIZE, mask, WAIT).unwrap()
}

/// A block request made in guest memory: its chain's head, its status byte and its data.
struct Request {
    head: u16,
    status: u64,
    data: u64,
}

/// Builds and publishes a request of `kind` at `sector` with `len` bytes of data (written from
/// `payload` for writes and discards; device-writable for reads and GET_ID).
fn request(
    guest: &mut Guest,
    vq: &mut Vq,
    kind: u32,
    sector: u64,
    len: u32,
    payload: Option<&[u8]>,
) -> Request {
    let hdr = guest.alloc(16).unwrap();
    guest.write(hdr, &header(kind, sector)).unwrap();
    let status = guest.alloc(1).unwrap();
    guest.write(status, &[0xff]).unwrap();
    let mut chain = vec![(hdr, 16, false)];
    let data = if len > 0 {
        guest.alloc(u64::from(len)).unwrap()
    } else {
        0
    };
    if len > 0 {
        if let Some(p) = payload {
            guest.write(data, p).unwrap();
        }
        chain.push((data, len, payload.is_none()));
    }
    chain.push((status, 1, true));
    let head = vq.add(guest, &chain).unwrap();
    Request { head, status, data }
}

fn status(guest: &Guest, r: &Request) -> u8 {
    guest.read(r.status, 1).unwrap()[0]
}

fn read(guest: &Guest, gpa: u64, len: usize) -> Vec<u8> {
    guest.read(gpa, len).unwrap()
}

fn wait_used(guest: &Guest, vq: &mut Vq, want: usize, timeout: Duration) -> Vec<(u16, u32)> {
    vq.wait_used(guest, want, timeout).unwrap()
}

struct Rig {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    disk: PathBuf,
    spec: DeviceSpec,
    server: Option<JoinHandle<Result<Served, String>>>,
}

/// A disk file and a server on a fresh socket that serves `connections` frontends.
fn rig(queues: u16, read_only: bool, connections: u64) -> Rig {
    rig_with(
        queues,
        RawOptions {
            read_only,
            ..RawOptions::default()
        },
        connections,
    )
}

fn rig_with(queues: u16, options: RawOptions, connections: u64) -> Rig {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; DISK_BYTES as usize]).unwrap();
    let socket = dir.path().join("vhost.sock");
    let raw = RawDisk::open(&disk, options).unwrap();
    let spec = DeviceSpec::new(Arc::new(raw), queues, "blkback-test-serial".into());
    let stats = spec.clone();
    let path = socket.clone();
    let server = std::thread::spawn(move || {
        serve(&path, &spec, Some(connections)).map_err(|e| e.to_string())
    });
    Rig {
        _dir: dir,
        socket,
        disk,
        spec: stats,
        server: Some(server),
    }
}

impl Rig {
    fn finish(mut self) -> Served {
        self.server.take().unwrap().join().unwrap().unwrap()
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Publishes every request, kicks once, waits for all of them and checks their statuses.
fn run_all(guest: &mut Guest, vq: &mut Vq, reqs: &[Request], want_status: u8) -> Vec<(u16, u32)> {
    vq.notify().unwrap();
    let used = wait_used(guest, vq, reqs.len(), WAIT);
    assert_eq!(used.len(), reqs.len(), "every request is answered");
    for r in reqs {
        assert_eq!(status(guest, r), want_status, "request at head {}", r.head);
    }
    used
}

#[test]
fn a_vmm_negotiates_and_the_guest_reads_back_what_it_wrote() {
    let rig = rig(2, false, 1);
    let mut guest = new_guest(2);
    let mut dev = connect(&rig.socket, &guest, 2, ALL);
    assert_ne!(dev.features & F_EVENT_IDX, 0);
    for bit in [9, 12, 13, 14, 6, 2] {
        assert_ne!(dev.features & 1 << bit, 0, "feature bit {bit} offered");
    }
    assert_eq!(dev.frontend.get_queue_num().unwrap(), 2);
    let (_, config) = dev
        .frontend
        .get_config(0, 60, VhostUserConfigFlags::empty(), &[0u8; 60])
        .unwrap();
    assert_eq!(config[..8], (DISK_BYTES / 512).to_le_bytes());
    assert_eq!(config[20..24], 512u32.to_le_bytes());
    assert_eq!(config[34..36], 2u16.to_le_bytes());

    // Writes of several sizes on both queues at once, then a flush on each.
    let mut written = Vec::new();
    for (q, vq) in dev.queues.iter_mut().enumerate() {
        let mut reqs = Vec::new();
        for i in 0..24u64 {
            let len = 512 * (1 + (i % 8)) as u32;
            let sector = (q as u64 * 4096) + i * 16;
            let data = pattern(q as u64 * 100 + i, len as usize);
            reqs.push(request(&mut guest, vq, T_OUT, sector, len, Some(&data)));
            written.push((q, sector, data));
        }
        vq.notify().unwrap();
        let used = wait_used(&guest, vq, reqs.len(), WAIT);
        assert_eq!(used.len(), reqs.len());
        assert!(
            used.iter().all(|&(_, len)| len == 1),
            "writes put only the status"
        );
        assert!(reqs.iter().all(|r| status(&guest, r) == 0));
        let flush = request(&mut guest, vq, T_FLUSH, 0, 0, None);
        run_all(&mut guest, vq, &[flush], 0);
    }
    // Read everything back, on the other queue than it was written on.
    for (q, sector, data) in &written {
        let vq = &mut dev.queues[1 - q];
        let r = request(&mut guest, vq, T_IN, *sector, data.len() as u32, None);
        let used = run_all(&mut guest, vq, std::slice::from_ref(&r), 0);
        assert_eq!(
            used[0].1 as usize,
            data.len() + 1,
            "a read puts data and status"
        );
        assert_eq!(&read(&guest, r.data, data.len()), data, "sector {sector}");
    }
    // The file holds it too.
    let file = std::fs::read(&rig.disk).unwrap();
    let (_, sector, data) = &written[5];
    let at = *sector as usize * 512;
    assert_eq!(&file[at..at + data.len()], &data[..]);

    // GET_ID answers the serial.
    let vq = &mut dev.queues[0];
    let id = request(&mut guest, vq, T_GET_ID, 0, 20, None);
    run_all(&mut guest, vq, std::slice::from_ref(&id), 0);
    assert_eq!(&read(&guest, id.data, 20)[..19], b"blkback-test-serial");

    // Discard punches a hole that reads back as zeros.
    let mut range = [0u8; 16];
    range[..8].copy_from_slice(&16u64.to_le_bytes());
    range[8..12].copy_from_slice(&16u32.to_le_bytes());
    let d = request(&mut guest, vq, T_DISCARD, 0, 16, Some(&range));
    run_all(&mut guest, vq, std::slice::from_ref(&d), 0);
    let r = request(&mut guest, vq, T_IN, 16, 8192, None);
    run_all(&mut guest, vq, std::slice::from_ref(&r), 0);
    assert!(read(&guest, r.data, 8192).iter().all(|&b| b == 0));

    // Write zeroes, keeping the space (unmap 0) and then letting it go (unmap 1).
    let data = pattern(4242, 16384);
    let w = request(&mut guest, vq, T_OUT, 64, 16384, Some(&data));
    run_all(&mut guest, vq, std::slice::from_ref(&w), 0);
    let zero_range = |sector: u64, sectors: u32, flags: u32| {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&sectors.to_le_bytes());
        r[12..].copy_from_slice(&flags.to_le_bytes());
        r
    };
    let z = request(
        &mut guest,
        vq,
        T_WRITE_ZEROES,
        0,
        16,
        Some(&zero_range(64, 8, 0)),
    );
    run_all(&mut guest, vq, std::slice::from_ref(&z), 0);
    let r = request(&mut guest, vq, T_IN, 64, 16384, None);
    run_all(&mut guest, vq, std::slice::from_ref(&r), 0);
    let back = read(&guest, r.data, 16384);
    assert!(back[..4096].iter().all(|&b| b == 0), "zeroed");
    assert_eq!(back[4096..], data[4096..], "the rest untouched");
    let z = request(
        &mut guest,
        vq,
        T_WRITE_ZEROES,
        0,
        16,
        Some(&zero_range(72, 24, 1)),
    );
    run_all(&mut guest, vq, std::slice::from_ref(&z), 0);
    let r = request(&mut guest, vq, T_IN, 64, 16384, None);
    run_all(&mut guest, vq, std::slice::from_ref(&r), 0);
    assert!(read(&guest, r.data, 16384).iter().all(|&b| b == 0));

    // The counters saw all of it.
    let q: Vec<_> = rig.spec.snapshot();
    let sum = |f: fn(&blkback::stats::QueueSnapshot) -> u64| q.iter().map(f).sum::<u64>();
    assert_eq!(sum(|s| s.writes), 49);
    assert_eq!(sum(|s| s.reads), 48 + 3);
    assert_eq!(sum(|s| s.flushes), 2);
    assert_eq!((sum(|s| s.discards), sum(|s| s.write_zeroes)), (1, 2));
    let written: u64 = written.iter().map(|(_, _, d)| d.len() as u64 / 512).sum();
    assert_eq!(sum(|s| s.sectors_written), written + 32);
    assert_eq!((sum(|s| s.errors), sum(|s| s.in_flight)), (0, 0));
    assert_eq!(sum(|s| s.latency.iter().sum()), 49 + 51 + 2 + 3);
    drop(dev);
    assert_eq!(rig.finish().connections, 1);
}

#[test]
fn queues_in_flight_at_once_answer_on_their_own_rings() {
    let rig = rig(2, false, 1);
    let mut guest = new_guest(2);
    let mut dev = connect(&rig.socket, &guest, 2, ALL);
    for round in 0..10u64 {
        let mut sent = Vec::new();
        for (q, vq) in dev.queues.iter_mut().enumerate() {
            let reqs: Vec<Request> = (0..16u64)
                .map(|i| {
                    let sector = (q as u64 * 4096) + (round * 16 + i) * 8;
                    request(&mut guest, vq, T_IN, sector, 4096, None)
                })
                .collect();
            sent.push(reqs);
        }
        for vq in &mut dev.queues {
            vq.notify().unwrap();
        }
        for (vq, reqs) in dev.queues.iter_mut().zip(&sent) {
            let mut used: Vec<u16> = wait_used(&guest, vq, reqs.len(), WAIT)
                .iter()
                .map(|&(head, _)| head)
                .collect();
            let mut heads: Vec<u16> = reqs.iter().map(|r| r.head).collect();
            used.sort_unstable();
            heads.sort_unstable();
            assert_eq!(
                used, heads,
                "each queue answers its own requests, round {round}"
            );
            assert!(reqs.iter().all(|r| status(&guest, r) == 0));
        }
    }
    drop(dev);
    rig.finish();
}

#[test]
fn without_event_idx_every_completion_is_signalled() {
    let rig = rig(1, false, 1);
    let mut guest = new_guest(2);
    let mut dev = connect(&rig.socket, &guest, 1, ALL & !F_EVENT_IDX);
    assert_eq!(dev.features & F_EVENT_IDX, 0);
    let vq = &mut dev.queues[0];
    for i in 0..40u64 {
        let data = pattern(i, 4096);
        let w = request(&mut guest, vq, T_OUT, i * 8, 4096, Some(&data));
        run_all(&mut guest, vq, std::slice::from_ref(&w), 0);
        let r = request(&mut guest, vq, T_IN, i * 8, 4096, None);
        run_all(&mut guest, vq, std::slice::from_ref(&r), 0);
        assert_eq!(read(&guest, r.data, 4096), data);
    }
    drop(dev);
    rig.finish();
}

#[test]
fn hostile_chains_get_an_error_and_the_device_keeps_serving() {
    let rig = rig(2, false, 1);
    let mut guest = new_guest(2);
    let mut dev = connect(&rig.socket, &guest, 2, ALL);
    let (q0, rest) = dev.queues.split_at_mut(1);
    let vq = &mut q0[0];
    let outside = MEM_SIZE as u64 + 4096;

    // Data outside guest memory, past the disk's end, unaligned, unknown type.
    let reqs = [
        {
            let hdr = guest.alloc(16).unwrap();
            guest.write(hdr, &header(T_IN, 0)).unwrap();
            let st = guest.alloc(1).unwrap();
            let head = vq
                .add(
                    &guest,
                    &[(hdr, 16, false), (outside, 4096, true), (st, 1, true)],
                )
                .unwrap();
            (
                Request {
                    head,
                    status: st,
                    data: 0,
                },
                1u8,
            )
        },
        (
            request(&mut guest, vq, T_IN, DISK_BYTES / 512 - 1, 4096, None),
            1,
        ),
        (request(&mut guest, vq, T_OUT, 0, 100, Some(&[7; 100])), 1),
        (request(&mut guest, vq, 0x1234, 0, 0, None), 2),
    ];
    vq.notify().unwrap();
    assert_eq!(wait_used(&guest, vq, reqs.len(), WAIT).len(), reqs.len());
    for (r, want) in &reqs {
        assert_eq!(status(&guest, r), *want);
    }

    // No status byte at all: returned unanswered (used length 0); a descriptor that loops
    // onto itself is cut at the queue size.
    let hdr = guest.alloc(16).unwrap();
    guest.write(hdr, &header(T_IN, 0)).unwrap();
    let head = vq.add(&guest, &[(hdr, 16, false)]).unwrap();
    vq.notify().unwrap();
    assert_eq!(wait_used(&guest, vq, 1, WAIT), vec![(head, 0)]);
    let looped = vq
        .add(&guest, &[(hdr, 16, false), (hdr, 16, false)])
        .unwrap();
    let second = vq.next_of(looped).unwrap();
    // The second descriptor: NEXT, pointing to itself.
    vq.write_descriptor(&guest, second, (hdr, 16, 1, second))
        .unwrap();
    vq.notify().unwrap();
    let used = wait_used(&guest, vq, 1, WAIT);
    assert_eq!(used, vec![(looped, 0)]);

    // Good requests still work on this queue.
    let data = pattern(9, 4096);
    let w = request(&mut guest, vq, T_OUT, 64, 4096, Some(&data));
    run_all(&mut guest, vq, std::slice::from_ref(&w), 0);

    // An available index more than a ring ahead: the queue is unusable, the device lives.
    vq.set_avail_idx(&guest, 5000).unwrap();
    vq.notify().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // The other queue keeps serving, and reads what the first wrote.
    let other = &mut rest[0];
    let r = request(&mut guest, other, T_IN, 64, 4096, None);
    run_all(&mut guest, other, std::slice::from_ref(&r), 0);
    assert_eq!(read(&guest, r.data, 4096), data);
    drop(dev);
    rig.finish();
}

#[test]
fn indirect_tables_carry_requests_and_bad_ones_are_refused() {
    let rig = rig(1, false, 1);
    let mut guest = new_guest(1);
    let mut dev = connect(&rig.socket, &guest, 1, ALL);
    assert_ne!(dev.features & 1 << 28, 0, "VIRTIO_RING_F_INDIRECT_DESC");
    let vq = &mut dev.queues[0];
    let data = pattern(77, 8192);
    let (hdr, buf, st, table) = (
        guest.alloc(16).unwrap(),
        guest.alloc(8192).unwrap(),
        guest.alloc(1).unwrap(),
        guest.alloc(4096).unwrap(),
    );
    // A write whose data is split over two table entries, then a read of it the same way.
    guest.write(hdr, &header(T_OUT, 40)).unwrap();
    guest.write(buf, &data).unwrap();
    let chain = [
        (hdr, 16, false),
        (buf, 4096, false),
        (buf + 4096, 4096, false),
        (st, 1, true),
    ];
    vq.add_indirect(&guest, table, &chain).unwrap();
    vq.notify().unwrap();
    assert_eq!(wait_used(&guest, vq, 1, WAIT).len(), 1);
    assert_eq!(read(&guest, st, 1), [0]);
    guest.write(buf, &[0; 8192]).unwrap();
    guest.write(hdr, &header(T_IN, 40)).unwrap();
    let chain = [
        (hdr, 16, false),
        (buf, 4096, true),
        (buf + 4096, 4096, true),
        (st, 1, true),
    ];
    vq.add_indirect(&guest, table, &chain).unwrap();
    vq.notify().unwrap();
    let used = wait_used(&guest, vq, 1, WAIT);
    assert_eq!(used[0].1, 8193);
    assert_eq!(read(&guest, buf, 8192), data);

    // A table whose length is not whole descriptors, one outside guest memory, and one that
    // nests another indirect table: nothing can be read from them, so they come back unanswered.
    let bad = [
        (table, 20, 4u16),
        ((MEM_SIZE as u64) << 2, 48, 4),
        (table, 16, 4),
    ];
    guest
        .write(table, &{
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&table.to_le_bytes());
            d[8..12].copy_from_slice(&16u32.to_le_bytes());
            d[12..14].copy_from_slice(&4u16.to_le_bytes());
            d
        })
        .unwrap();
    for (i, &(addr, len, flags)) in bad.iter().enumerate() {
        let head = 100 + i as u16;
        vq.write_descriptor(&guest, head, (addr, len, flags, 0))
            .unwrap();
        vq.publish(&guest, head).unwrap();
    }
    vq.notify().unwrap();
    let used = wait_used(&guest, vq, bad.len(), WAIT);
    assert_eq!(used, vec![(100, 0), (101, 0), (102, 0)]);

    // Still serving.
    let r = request(&mut guest, vq, T_IN, 40, 8192, None);
    run_all(&mut guest, vq, std::slice::from_ref(&r), 0);
    assert_eq!(read(&guest, r.data, 8192), data);
    drop(dev);
    rig.finish();
}

#[test]
fn a_disk_of_4096_byte_sectors_takes_only_whole_sectors() {
    let rig = rig_with(
        1,
        RawOptions {
            sector_size: Some(4096),
            ..RawOptions::default()
        },
        1,
    );
    let mut guest = new_guest(1);
    let mut dev = connect(&rig.socket, &guest, 1, ALL);
    let (_, config) = dev
        .frontend
        .get_config(0, 60, VhostUserConfigFlags::empty(), &[0u8; 60])
        .unwrap();
    assert_eq!(config[20..24], 4096u32.to_le_bytes(), "blk_size");
    let vq = &mut dev.queues[0];
    let data = pattern(5, 8192);
    let w = request(&mut guest, vq, T_OUT, 16, 8192, Some(&data));
    run_all(&mut guest, vq, std::slice::from_ref(&w), 0);
    let r = request(&mut guest, vq, T_IN, 16, 8192, None);
    run_all(&mut guest, vq, std::slice::from_ref(&r), 0);
    assert_eq!(read(&guest, r.data, 8192), data);
    // Sector counts stay in 512-byte units; a start or a length that is not a whole 4 KiB
    // sector is refused.
    let bad = [
        request(&mut guest, vq, T_IN, 17, 4096, None),
        request(&mut guest, vq, T_IN, 16, 512, None),
        request(&mut guest, vq, T_OUT, 8, 1024, Some(&[1; 1024])),
    ];
    run_all(&mut guest, vq, &bad, 1);
    drop(dev);
    rig.finish();
}

#[test]
fn read_only_disks_refuse_writes_and_discards() {
    let rig = rig(1, true, 1);
    let mut guest = new_guest(2);
    let mut dev = connect(&rig.socket, &guest, 1, ALL);
    assert_ne!(dev.features & 1 << 5, 0, "VIRTIO_BLK_F_RO");
    assert_eq!(dev.features & 1 << 13, 0, "no discard");
    let vq = &mut dev.queues[0];
    let w = request(&mut guest, vq, T_OUT, 0, 512, Some(&[1; 512]));
    run_all(&mut guest, vq, std::slice::from_ref(&w), 1);
    let d = request(&mut guest, vq, T_DISCARD, 0, 16, Some(&[0; 16]));
    run_all(&mut guest, vq, std::slice::from_ref(&d), 2);
    assert_eq!(dev.features & 1 << 14, 0, "no write zeroes");
    let z = request(&mut guest, vq, T_WRITE_ZEROES, 0, 16, Some(&[0; 16]));
    run_all(&mut guest, vq, std::slice::from_ref(&z), 1);
    let r = request(&mut guest, vq, T_IN, 0, 512, None);
    run_all(&mut guest, vq, std::slice::from_ref(&r), 0);
    drop(dev);
    assert!(
        std::fs::read(&rig.disk).unwrap().iter().all(|&b| b == 0),
        "nothing written"
    );
    rig.finish();
}

#[test]
fn stopping_a_ring_waits_for_its_requests_and_a_new_connection_sees_the_data() {
    let rig = rig(1, false, 2);
    let mut guest = new_guest(2);
    let mut dev = connect(&rig.socket, &guest, 1, ALL);
    let vq = &mut dev.queues[0];
    let mut reqs = Vec::new();
    for i in 0..32u64 {
        let data = pattern(1000 + i, 65536);
        reqs.push((
            request(&mut guest, vq, T_OUT, i * 128, 65536, Some(&data)),
            data,
        ));
    }
    let flush = request(&mut guest, vq, T_FLUSH, 0, 0, None);
    vq.notify().unwrap();
    // GET_VRING_BASE (the VM pauses): the ring stops where the device got to, and everything
    // it took off the ring is answered before the call returns.
    let base = dev.frontend.get_vring_base(0).unwrap();
    assert!(base <= 33, "{base}");
    let vq = &mut dev.queues[0];
    let used = wait_used(&guest, vq, 33, Duration::from_millis(200));
    assert_eq!(used.len(), base as usize, "taken means answered");
    // The VM resumes: the device continues from there.
    dev.start(&guest, 0, base as u16).unwrap();
    let vq = &mut dev.queues[0];
    vq.notify().unwrap();
    let rest = wait_used(&guest, vq, 33 - base as usize, WAIT);
    assert_eq!(rest.len(), 33 - base as usize);
    assert!(reqs.iter().all(|(r, _)| status(&guest, r) == 0));
    assert_eq!(status(&guest, &flush), 0);
    drop(dev);

    // The VMM comes back (a restarted QEMU, or the guest rebooted): fresh rings, same disk.
    let mut guest = new_guest(2);
    let mut dev = connect(&rig.socket, &guest, 1, ALL);
    let vq = &mut dev.queues[0];
    for (i, (_, data)) in reqs.iter().enumerate() {
        let r = request(&mut guest, vq, T_IN, i as u64 * 128, 65536, None);
        run_all(&mut guest, vq, std::slice::from_ref(&r), 0);
        assert_eq!(&read(&guest, r.data, 65536), data, "request {i}");
    }
    drop(dev);
    assert_eq!(rig.finish().connections, 2);
}

#[test]
fn the_command_names_a_disk_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blkback-vhost-user"))
        .args(["--socket"])
        .arg(dir.path().join("s"))
        .args(["--disk", "/nonexistent/disk.img"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the disk /nonexistent/disk.img: No such file"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
