//! The screen of a graphical session: its root window's pixels read over the X protocol (with
//! the session's own cookie) and encoded as PNG.

use std::os::unix::net::UnixStream;

use x11rb::{
    connection::Connection,
    protocol::xproto::{ConnectionExt, ImageFormat, ImageOrder},
    rust_connection::{DefaultStream, RustConnection},
};

/// A screenshot of display `:display` as PNG, no wider than `max_width` (scaled down by a
/// whole factor if need be); refused (with its size) when the screen holds more than
/// `max_pixels`.
pub fn screenshot(
    display: u32,
    cookie: &[u8],
    max_pixels: u64,
    max_width: u32,
) -> Result<Vec<u8>, String> {
    let failed = |what: &str, err: &dyn std::fmt::Display| format!("{what} :{display}: {err}");
    let stream = UnixStream::connect(format!("/tmp/.X11-unix/X{display}"))
        .map_err(|err| failed("cannot reach the X server of", &err))?;
    let (stream, _) = DefaultStream::from_unix_stream(stream)
        .map_err(|err| failed("cannot reach the X server of", &err))?;
    let connection = RustConnection::connect_to_stream_with_auth_info(
        stream,
        0,
        b"MIT-MAGIC-COOKIE-1".to_vec(),
        cookie.to_vec(),
    )
    .map_err(|err| failed("the X server refused", &err))?;
    let setup = connection.setup();
    let Some(screen) = setup.roots.first() else {
        return Err(format!("the X server of :{display} has no screen"));
    };
    let (width, height) = (screen.width_in_pixels, screen.height_in_pixels);
    let pixels = u64::from(width) * u64::from(height);
    if max_pixels < pixels {
        return Err(format!(
            "the screen is {width}x{height}, {pixels} pixels: more than the {max_pixels} a \
             screenshot may hold"
        ));
    }
    let bits_per_pixel = setup
        .pixmap_formats
        .iter()
        .find(|format| format.depth == screen.root_depth)
        .map(|format| format.bits_per_pixel);
    if screen.root_depth != 24 || bits_per_pixel != Some(32) {
        return Err(format!(
            "the screen of :{display} has depth {} ({bits_per_pixel:?} bits per pixel); \
             screenshots take depth 24 at 32 bits",
            screen.root_depth
        ));
    }
    let image = connection
        .get_image(ImageFormat::Z_PIXMAP, screen.root, 0, 0, width, height, !0)
        .map_err(|err| failed("cannot read the screen of", &err))?
        .reply()
        .map_err(|err| failed("cannot read the screen of", &err))?;
    // Each pixel is four bytes: blue, green, red and padding when the server writes the
    // least significant byte first; the other way round otherwise.
    let least_first = setup.image_byte_order == ImageOrder::LSB_FIRST;
    let rgb: Vec<u8> = image
        .data
        .chunks_exact(4)
        .flat_map(|pixel| match least_first {
            true => [pixel[2], pixel[1], pixel[0]],
            false => [pixel[1], pixel[2], pixel[3]],
        })
        .collect();
    let (width, height) = (u32::from(width), u32::from(height));
    let step = width.div_ceil(max_width.max(1)).max(1);
    if step == 1 {
        return encode_png(&rgb, width, height);
    }
    let (small, small_width, small_height) = shrink(&rgb, width, height, step);
    encode_png(&small, small_width, small_height)
}

/// Keeps every `step`-th pixel of every `step`-th row: a thumbnail, fast and good enough to
/// recognise a screen.
fn shrink(rgb: &[u8], width: u32, height: u32, step: u32) -> (Vec<u8>, u32, u32) {
    let (small_width, small_height) = (width.div_ceil(step), height.div_ceil(step));
    let mut small = Vec::with_capacity((small_width * small_height * 3) as usize);
    for y in (0..height).step_by(step as usize) {
        for x in (0..width).step_by(step as usize) {
            let at = ((y * width + x) * 3) as usize;
            small.extend_from_slice(&rgb[at..at + 3]);
        }
    }
    (small, small_width, small_height)
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder
        .write_header()
        .map_err(|err| format!("encoding the screenshot: {err}"))?;
    writer
        .write_image_data(rgb)
        .map_err(|err| format!("encoding the screenshot: {err}"))?;
    writer
        .finish()
        .map_err(|err| format!("encoding the screenshot: {err}"))?;
    Ok(png)
}
