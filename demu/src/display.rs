//! Display output: the visible part of a vGPU's framebuffer as RGB pixels, and as a PNG.

use std::io::Write;

use xen_devicemodel::DeviceModel;

use crate::bochs::{Mode, Vgpu};
use crate::mux::Surface;

/// A captured screen: `width × height` pixels, 3 bytes (R, G, B) each, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screen {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// RGB bytes.
    pub rgb: Vec<u8>,
}

impl Screen {
    /// The pixel at (x, y) as (R, G, B).
    pub fn pixel(&self, x: u32, y: u32) -> Option<(u8, u8, u8)> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let at = (y as usize * self.width as usize + x as usize) * 3;
        match self.rgb.get(at..at + 3) {
            Some(&[r, g, b]) => Some((r, g, b)),
            _ => None,
        }
    }

    /// Encodes the screen as a PNG (8-bit RGB).
    pub fn write_png(&self, out: impl Write) -> Result<(), png::EncodingError> {
        let mut encoder = png::Encoder::new(out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header()?.write_image_data(&self.rgb)
    }
}

/// Converts one pixel of `bpp` bits (little-endian, as the bochs device stores them) to RGB.
fn to_rgb(bpp: u32, px: &[u8]) -> [u8; 3] {
    let word = px.iter().rev().fold(0u32, |v, b| (v << 8) | u32::from(*b));
    let expand =
        |v: u32, bits: u32| ((v << (8 - bits)) | (v >> (2 * bits).saturating_sub(8))) as u8;
    match bpp {
        32 | 24 => [(word >> 16) as u8, (word >> 8) as u8, word as u8],
        16 => [
            expand((word >> 11) & 0x1f, 5),
            expand((word >> 5) & 0x3f, 6),
            expand(word & 0x1f, 5),
        ],
        15 => [
            expand((word >> 10) & 0x1f, 5),
            expand((word >> 5) & 0x1f, 5),
            expand(word & 0x1f, 5),
        ],
        _ => [word as u8; 3], // 8 bpp: the palette index as grey
    }
}

/// Captures the visible screen of `vgpu`; `None` while the display is off.
pub fn capture<D: DeviceModel + 'static>(vgpu: &Vgpu<D>) -> Option<Screen> {
    let Mode {
        width,
        height,
        bpp,
        stride,
        offset,
    } = vgpu.mode()?;
    let bytes = bpp.div_ceil(8) as usize;
    let vram = vgpu.vram();
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    let mut line = vec![0u8; width as usize * bytes];
    for y in 0..height as usize {
        let start = offset as usize + y * stride as usize;
        if start + line.len() > vram.len() {
            return None;
        }
        // SAFETY: `start + line.len() <= vram.len()` (checked); the framebuffer is guest
        // memory the guest may be writing, copied bytewise into our buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(vram.ptr().add(start), line.as_mut_ptr(), line.len())
        };
        for px in line.chunks_exact(bytes) {
            rgb.extend_from_slice(&to_rgb(bpp, px));
        }
    }
    Some(Screen { width, height, rgb })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_formats() {
        assert_eq!(to_rgb(32, &[0x33, 0x22, 0x11, 0x00]), [0x11, 0x22, 0x33]);
        assert_eq!(to_rgb(24, &[0x33, 0x22, 0x11]), [0x11, 0x22, 0x33]);
        assert_eq!(to_rgb(16, &[0xff, 0xff]), [0xff, 0xff, 0xff]);
        assert_eq!(to_rgb(16, &[0x00, 0xf8]), [0xff, 0, 0]);
        assert_eq!(to_rgb(15, &[0x1f, 0x00]), [0, 0, 0xff]);
    }

    #[test]
    fn png_round_trip() {
        let screen = Screen {
            width: 2,
            height: 1,
            rgb: vec![1, 2, 3, 4, 5, 6],
        };
        let mut out = Vec::new();
        screen.write_png(&mut out).unwrap();
        let decoder = png::Decoder::new(&out[..]);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (2, 1));
        assert_eq!(&buf[..6], &screen.rgb[..]);
        assert_eq!(screen.pixel(1, 0), Some((4, 5, 6)));
        assert_eq!(screen.pixel(2, 0), None);
    }
}
