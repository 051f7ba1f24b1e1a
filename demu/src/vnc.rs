//! A VNC server (RFB 3.8, also 3.3 and 3.7 clients) for one vGPU's screen: no
//! authentication (bind it to a trusted address), raw encoding in any true-colour pixel format
//! the client asks for, incremental updates of the 16-line bands that changed, and the
//! DesktopSize pseudo-encoding when the guest changes mode. Keyboard and pointer events are
//! read and dropped (the vGPU has no input device).
//!
//! Every client message is bounded (a cut-text length past [`MAX_CUT_TEXT`] or an unknown
//! message type closes that connection), so a hostile client can only lose its own session.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::display::Screen;

/// Where a VNC session gets the screen from (`None` while the display is off).
pub type FrameSource = Arc<dyn Fn() -> Option<Screen> + Send + Sync>;

/// Largest client cut-text the server reads (and discards).
pub const MAX_CUT_TEXT: u32 = 1 << 20;
/// How often a pending incremental request looks for changes.
const POLL: Duration = Duration::from_millis(40);
/// Lines per band compared for incremental updates.
const BAND: u32 = 16;
/// `DesktopSize` pseudo-encoding.
const ENCODING_DESKTOP_SIZE: i32 = -223;
/// Shown while the guest's display is off.
const BLANK: (u32, u32) = (640, 480);

/// A client's pixel format (true colour only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PixelFormat {
    bytes: usize,
    big_endian: bool,
    max: [u16; 3],
    shift: [u8; 3],
}

impl PixelFormat {
    /// What the server announces: 32-bit XRGB, little-endian.
    const SERVER: Self = Self {
        bytes: 4,
        big_endian: false,
        max: [255, 255, 255],
        shift: [16, 8, 0],
    };

    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = (self.bytes * 8) as u8;
        b[1] = 24;
        b[2] = u8::from(self.big_endian);
        b[3] = 1;
        let [r, g, bl] = self.max.map(u16::to_be_bytes);
        b[4] = r[0];
        b[5] = r[1];
        b[6] = g[0];
        b[7] = g[1];
        b[8] = bl[0];
        b[9] = bl[1];
        b[10..13].copy_from_slice(&self.shift);
        b
    }

    /// Parses a client's format; `None` for palette formats or odd sizes.
    fn decode(b: &[u8; 16]) -> Option<Self> {
        let bytes = match b[0] {
            8 => 1,
            16 => 2,
            32 => 4,
            _ => return None,
        };
        if b[3] == 0 {
            return None; // colour maps are not supported
        }
        let max = [
            u16::from_be_bytes([b[4], b[5]]),
            u16::from_be_bytes([b[6], b[7]]),
            u16::from_be_bytes([b[8], b[9]]),
        ];
        let shift = [b[10], b[11], b[12]];
        if shift.iter().any(|&s| u32::from(s) >= bytes as u32 * 8) {
            return None;
        }
        Some(Self {
            bytes,
            big_endian: b[2] != 0,
            max,
            shift,
        })
    }

    fn put(&self, out: &mut Vec<u8>, rgb: &[u8]) {
        let mut v = 0u32;
        for ((c, max), shift) in rgb.iter().zip(self.max).zip(self.shift) {
            let scaled = u32::from(*c) * u32::from(max) / 255;
            v |= scaled << shift;
        }
        let bytes = v.to_le_bytes();
        let used = bytes.get(..self.bytes).unwrap_or(&bytes);
        if self.big_endian {
            out.extend(used.iter().rev());
        } else {
            out.extend_from_slice(used);
        }
    }
}

/// A running VNC server; stops accepting on drop (open sessions end with their client).
pub struct VncServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl VncServer {
    /// Listens on `addr` (port 0: any free port) and serves `frames` to every client; `name`
    /// is the desktop name clients show.
    pub fn start(addr: SocketAddr, name: &str, frames: FrameSource) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let name = name.to_string();
        let thread = std::thread::Builder::new()
            .name("vnc-accept".into())
            .spawn(move || accept_loop(&listener, &stopping, &name, &frames))?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for VncServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, name: &str, frames: &FrameSource) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let frames = Arc::clone(frames);
                let name = name.to_string();
                let spawned = std::thread::Builder::new()
                    .name("vnc-session".into())
                    .spawn(move || {
                        if let Err(e) = Session::run(stream, &name, frames) {
                            tracing::debug!(%peer, "VNC session ended: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("cannot start a VNC session: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => {
                tracing::warn!("VNC accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn blank() -> Screen {
    Screen {
        width: BLANK.0,
        height: BLANK.1,
        rgb: vec![0; (BLANK.0 * BLANK.1 * 3) as usize],
    }
}

struct Session {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    frames: FrameSource,
    format: PixelFormat,
    desktop_size: bool,
    /// The size the client knows, and what it was last sent.
    size: (u32, u32),
    last: Option<Screen>,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Session {
    fn run(stream: TcpStream, name: &str, frames: FrameSource) -> io::Result<()> {
        stream.set_nodelay(true)?;
        stream.set_nonblocking(false)?;
        let reader = BufReader::new(stream.try_clone()?);
        let writer = BufWriter::new(stream);
        let first = frames().unwrap_or_else(blank);
        let mut s = Self {
            reader,
            writer,
            frames,
            format: PixelFormat::SERVER,
            desktop_size: false,
            size: (first.width, first.height),
            last: None,
        };
        s.handshake(name)?;
        s.serve()
    }

    fn read_exact<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.reader.read_exact(&mut b)?;
        Ok(b)
    }

    fn handshake(&mut self, name: &str) -> io::Result<()> {
        self.writer.write_all(b"RFB 003.008\n")?;
        self.writer.flush()?;
        let version: [u8; 12] = self.read_exact()?;
        let minor = match &version {
            b"RFB 003.008\n" => 8,
            b"RFB 003.007\n" => 7,
            v if v.starts_with(b"RFB 003.") => 3, // 3.3 and the odd 3.x: the oldest dialect
            _ => return Err(invalid("not an RFB client")),
        };
        if minor >= 7 {
            self.writer.write_all(&[1, 1])?; // one security type: None
            self.writer.flush()?;
            let [chosen] = self.read_exact::<1>()?;
            if chosen != 1 {
                return Err(invalid("the client chose a security type we do not offer"));
            }
            if minor == 8 {
                self.writer.write_all(&0u32.to_be_bytes())?; // SecurityResult: OK
            }
        } else {
            self.writer.write_all(&1u32.to_be_bytes())?;
        }
        self.writer.flush()?;
        let _shared: [u8; 1] = self.read_exact()?;
        let mut init = Vec::with_capacity(24 + name.len());
        init.extend_from_slice(&(self.size.0 as u16).to_be_bytes());
        init.extend_from_slice(&(self.size.1 as u16).to_be_bytes());
        init.extend_from_slice(&PixelFormat::SERVER.encode());
        init.extend_from_slice(&(name.len() as u32).to_be_bytes());
        init.extend_from_slice(name.as_bytes());
        self.writer.write_all(&init)?;
        self.writer.flush()
    }

    fn serve(&mut self) -> io::Result<()> {
        loop {
            let [kind] = self.read_exact::<1>()?;
            match kind {
                0 => {
                    let b: [u8; 19] = self.read_exact()?;
                    let mut pf = [0u8; 16];
                    pf.copy_from_slice(b.get(3..19).unwrap_or(&[0; 16]));
                    self.format = PixelFormat::decode(&pf)
                        .ok_or_else(|| invalid("unsupported pixel format"))?;
                    self.last = None;
                }
                2 => {
                    let [_, hi, lo] = self.read_exact::<3>()?;
                    let count = u16::from_be_bytes([hi, lo]);
                    self.desktop_size = false;
                    for _ in 0..count {
                        let e = i32::from_be_bytes(self.read_exact::<4>()?);
                        self.desktop_size |= e == ENCODING_DESKTOP_SIZE;
                    }
                }
                3 => {
                    let [inc, x0, x1, y0, y1, w0, w1, h0, h1] = self.read_exact::<9>()?;
                    let v = |a: u8, b: u8| u32::from(u16::from_be_bytes([a, b]));
                    self.update(inc != 0, (v(x0, x1), v(y0, y1), v(w0, w1), v(h0, h1)))?;
                }
                4 => {
                    let _: [u8; 7] = self.read_exact()?;
                }
                5 => {
                    let _: [u8; 5] = self.read_exact()?;
                }
                6 => {
                    let b: [u8; 7] = self.read_exact()?;
                    let len = u32::from_be_bytes([b[3], b[4], b[5], b[6]]);
                    if len > MAX_CUT_TEXT {
                        return Err(invalid("cut text too long"));
                    }
                    io::copy(&mut (&mut self.reader).take(len.into()), &mut io::sink())?;
                }
                _ => return Err(invalid("unknown client message")),
            }
        }
    }

    /// Answers a FramebufferUpdateRequest for `area` (x, y, w, h).
    fn update(&mut self, incremental: bool, area: (u32, u32, u32, u32)) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let screen = (self.frames)().unwrap_or_else(blank);
            if (screen.width, screen.height) != self.size {
                self.size = (screen.width, screen.height);
                self.last = None;
                if self.desktop_size {
                    // Tell the client the new size; it asks again for the contents.
                    let mut msg = vec![0u8, 0, 0, 1];
                    push_rect(
                        &mut msg,
                        0,
                        0,
                        screen.width,
                        screen.height,
                        ENCODING_DESKTOP_SIZE,
                    );
                    self.writer.write_all(&msg)?;
                    return self.writer.flush();
                }
            }
            let (x, y, w, h) = clip(area, self.size);
            let bands = self.changed_bands(&screen, incremental, y, h);
            // An incremental request with nothing new waits (briefly) for a change.
            if !bands.is_empty()
                || !incremental
                || Instant::now() >= deadline
                || !self.reader.buffer().is_empty()
            {
                let mut msg = vec![0u8, 0];
                msg.extend_from_slice(&(bands.len() as u16).to_be_bytes());
                for (by, bh) in &bands {
                    push_rect(&mut msg, x, *by, w, *bh, 0);
                    for row in *by..by + bh {
                        let start = ((row * screen.width + x) * 3) as usize;
                        let line = screen
                            .rgb
                            .get(start..start + (w * 3) as usize)
                            .unwrap_or(&[]);
                        for px in line.chunks_exact(3) {
                            self.format.put(&mut msg, px);
                        }
                    }
                }
                self.writer.write_all(&msg)?;
                self.writer.flush()?;
                self.last = Some(screen);
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
    }

    /// The bands of rows `y..y+h` to send: all of them, or those that changed.
    fn changed_bands(&self, screen: &Screen, incremental: bool, y: u32, h: u32) -> Vec<(u32, u32)> {
        let mut bands = Vec::new();
        let mut row = y;
        while row < y + h {
            let bh = BAND.min(y + h - row);
            let range =
                ((row * screen.width * 3) as usize)..(((row + bh) * screen.width * 3) as usize);
            let changed = match (&self.last, incremental) {
                (Some(last), true) => last.rgb.get(range.clone()) != screen.rgb.get(range),
                _ => true,
            };
            if changed {
                bands.push((row, bh));
            }
            row += bh;
        }
        bands
    }
}

fn clip((x, y, w, h): (u32, u32, u32, u32), (sw, sh): (u32, u32)) -> (u32, u32, u32, u32) {
    let x = x.min(sw);
    let y = y.min(sh);
    (x, y, w.min(sw - x), h.min(sh - y))
}

fn push_rect(msg: &mut Vec<u8>, x: u32, y: u32, w: u32, h: u32, encoding: i32) {
    for v in [x, y, w, h] {
        msg.extend_from_slice(&(v as u16).to_be_bytes());
    }
    msg.extend_from_slice(&encoding.to_be_bytes());
}

#[cfg(test)]
mod tests;
