use std::sync::Mutex;

use super::*;

fn screen(w: u32, h: u32, seed: u8) -> Screen {
    let rgb = (0..w * h * 3)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    Screen {
        width: w,
        height: h,
        rgb,
    }
}

struct Client {
    s: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr, version: &[u8; 12]) -> (Self, u16, u16) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut v = [0u8; 12];
        s.read_exact(&mut v).unwrap();
        assert_eq!(&v, b"RFB 003.008\n");
        s.write_all(version).unwrap();
        if version == b"RFB 003.003\n" {
            let mut t = [0u8; 4];
            s.read_exact(&mut t).unwrap();
            assert_eq!(u32::from_be_bytes(t), 1);
        } else {
            let mut types = [0u8; 2];
            s.read_exact(&mut types).unwrap();
            assert_eq!(types, [1, 1]);
            s.write_all(&[1]).unwrap();
            if version == b"RFB 003.008\n" {
                let mut r = [0u8; 4];
                s.read_exact(&mut r).unwrap();
                assert_eq!(r, [0; 4]);
            }
        }
        s.write_all(&[1]).unwrap();
        let mut init = [0u8; 24];
        s.read_exact(&mut init).unwrap();
        let (w, h) = (
            u16::from_be_bytes([init[0], init[1]]),
            u16::from_be_bytes([init[2], init[3]]),
        );
        assert_eq!(&init[4..8], &[32, 24, 0, 1], "32-bit true colour");
        let len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let mut name = vec![0u8; len as usize];
        s.read_exact(&mut name).unwrap();
        assert_eq!(name, b"vgpu");
        (Self { s }, w, h)
    }

    fn request(&mut self, incremental: bool, w: u16, h: u16) {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend_from_slice(&w.to_be_bytes());
        m.extend_from_slice(&h.to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    /// Reads one FramebufferUpdate: (x, y, w, h, encoding, pixel bytes) per rectangle.
    fn update(&mut self, bytes_per_pixel: usize) -> Vec<(u16, u16, u16, u16, i32, Vec<u8>)> {
        let mut head = [0u8; 4];
        self.s.read_exact(&mut head).unwrap();
        assert_eq!(head[0], 0);
        let n = u16::from_be_bytes([head[2], head[3]]);
        (0..n)
            .map(|_| {
                let mut r = [0u8; 12];
                self.s.read_exact(&mut r).unwrap();
                let f = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
                let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
                let len = if enc == 0 {
                    f(4) as usize * f(6) as usize * bytes_per_pixel
                } else {
                    0
                };
                let mut px = vec![0u8; len];
                self.s.read_exact(&mut px).unwrap();
                (f(0), f(2), f(4), f(6), enc, px)
            })
            .collect()
    }
}

fn server(frames: FrameSource) -> VncServer {
    VncServer::start("127.0.0.1:0".parse().unwrap(), "vgpu", frames).unwrap()
}

#[test]
fn full_and_incremental_updates_in_the_servers_format() {
    let current = Arc::new(Mutex::new(screen(64, 40, 0)));
    let c = Arc::clone(&current);
    let vnc = server(Arc::new(move || Some(c.lock().unwrap().clone())));
    let (mut client, w, h) = Client::connect(vnc.local_addr(), b"RFB 003.008\n");
    assert_eq!((w, h), (64, 40));
    client.request(false, 64, 40);
    let rects = client.update(4);
    let rows: u32 = rects.iter().map(|r| u32::from(r.3)).sum();
    assert_eq!(rows, 40);
    let s = current.lock().unwrap().clone();
    let (_, y, _, _, enc, px) = &rects[0];
    assert_eq!((*y, *enc), (0, 0));
    // XRGB little-endian: B, G, R, 0.
    assert_eq!(&px[..4], &[s.rgb[2], s.rgb[1], s.rgb[0], 0]);
    // Only the band that changed comes back.
    current.lock().unwrap().rgb[(20 * 64 + 3) * 3] ^= 0xff;
    client.request(true, 64, 40);
    let rects = client.update(4);
    assert_eq!(rects.len(), 1);
    assert_eq!((rects[0].1, rects[0].3), (16, 16));
}

#[test]
fn other_pixel_formats_and_old_clients() {
    let fixed = screen(8, 4, 3);
    let f = fixed.clone();
    let vnc = server(Arc::new(move || Some(f.clone())));
    let (mut client, ..) = Client::connect(vnc.local_addr(), b"RFB 003.003\n");
    // RGB565 big-endian.
    let mut m = vec![0u8, 0, 0, 0, 16, 16, 1, 1];
    m.extend_from_slice(&31u16.to_be_bytes());
    m.extend_from_slice(&63u16.to_be_bytes());
    m.extend_from_slice(&31u16.to_be_bytes());
    m.extend_from_slice(&[11, 5, 0, 0, 0, 0]);
    client.s.write_all(&m).unwrap();
    client.request(false, 8, 4);
    let rects = client.update(2);
    let px = &rects[0].5;
    let (r, g, b) = (
        u16::from(fixed.rgb[0]),
        u16::from(fixed.rgb[1]),
        u16::from(fixed.rgb[2]),
    );
    let want = ((r * 31 / 255) << 11) | ((g * 63 / 255) << 5) | (b * 31 / 255);
    assert_eq!(&px[..2], &want.to_be_bytes());
    let (_c37, ..) = Client::connect(vnc.local_addr(), b"RFB 003.007\n");
}

#[test]
fn a_mode_change_is_announced_with_desktop_size() {
    let current = Arc::new(Mutex::new(screen(32, 16, 0)));
    let c = Arc::clone(&current);
    let vnc = server(Arc::new(move || Some(c.lock().unwrap().clone())));
    let (mut client, ..) = Client::connect(vnc.local_addr(), b"RFB 003.008\n");
    let mut m = vec![2u8, 0, 0, 2];
    m.extend_from_slice(&0i32.to_be_bytes());
    m.extend_from_slice(&(-223i32).to_be_bytes());
    client.s.write_all(&m).unwrap();
    *current.lock().unwrap() = screen(48, 8, 1);
    client.request(true, 32, 16);
    let rects = client.update(4);
    assert_eq!(rects[0].4, -223);
    assert_eq!((rects[0].2, rects[0].3), (48, 8));
}

#[test]
fn hostile_clients_lose_only_their_own_session() {
    let vnc = server(Arc::new(|| None));
    // Not RFB at all.
    let mut junk = TcpStream::connect(vnc.local_addr()).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    // A cut text of 4 GiB.
    let (mut greedy, w, h) = Client::connect(vnc.local_addr(), b"RFB 003.008\n");
    assert_eq!((w, h), (640, 480), "display off: a blank screen");
    greedy
        .s
        .write_all(&[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let mut b = [0u8; 1];
    greedy
        .s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(greedy.s.read(&mut b).unwrap_or(0), 0, "closed");
    // An unknown message type.
    let (mut odd, ..) = Client::connect(vnc.local_addr(), b"RFB 003.008\n");
    odd.s.write_all(&[200]).unwrap();
    assert_eq!(odd.s.read(&mut b).unwrap_or(0), 0, "closed");
    // Others are served as before.
    let (mut fine, ..) = Client::connect(vnc.local_addr(), b"RFB 003.008\n");
    fine.request(false, 640, 480);
    let rows: u32 = fine.update(4).iter().map(|r| u32::from(r.3)).sum();
    assert_eq!(rows, 480);
}
