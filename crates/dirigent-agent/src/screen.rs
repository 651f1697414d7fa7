//! The screen of a graphical session: its root window's pixels read over the X protocol (with
//! the session's own cookie) and encoded as PNG; and an operator's mouse and keyboard sent to
//! it through XTEST.

use std::os::unix::net::UnixStream;

use dirigent_proto::session::InputEvent;
use x11rb::{
    connection::Connection,
    protocol::{
        xproto::{
            BUTTON_PRESS_EVENT, BUTTON_RELEASE_EVENT, ConnectionExt, ImageFormat, ImageOrder,
            KEY_PRESS_EVENT, KEY_RELEASE_EVENT, MOTION_NOTIFY_EVENT,
        },
        xtest::ConnectionExt as _,
    },
    rust_connection::{DefaultStream, RustConnection},
};

/// The X keysym of the left Shift key.
const SHIFT_L: u32 = 0xffe1;

/// A connection to display `:display` with its cookie.
fn connect(display: u32, cookie: &[u8]) -> Result<RustConnection, String> {
    let failed = |what: &str, err: &dyn std::fmt::Display| format!("{what} :{display}: {err}");
    let stream = UnixStream::connect(format!("/tmp/.X11-unix/X{display}"))
        .map_err(|err| failed("cannot reach the X server of", &err))?;
    let (stream, _) = DefaultStream::from_unix_stream(stream)
        .map_err(|err| failed("cannot reach the X server of", &err))?;
    RustConnection::connect_to_stream_with_auth_info(
        stream,
        0,
        b"MIT-MAGIC-COOKIE-1".to_vec(),
        cookie.to_vec(),
    )
    .map_err(|err| failed("the X server refused", &err))
}

/// Sends an operator's input to display `:display`, in order, and waits until the X server
/// has taken it.
pub fn send_input(display: u32, cookie: &[u8], events: &[InputEvent]) -> Result<(), String> {
    let connection = connect(display, cookie)?;
    let failed = |err: &dyn std::fmt::Display| format!("sending input to :{display}: {err}");
    let root = connection
        .setup()
        .roots
        .first()
        .map(|screen| screen.root)
        .ok_or_else(|| format!("the X server of :{display} has no screen"))?;
    let keyboard = Keyboard::read(&connection).map_err(|err| failed(&err))?;
    let fake = |kind: u8, detail: u8, x: i16, y: i16| {
        connection
            .xtest_fake_input(kind, detail, 0, root, x, y, 0)
            .map(|_| ())
            .map_err(|err| failed(&err))
    };
    let press = |keysym: u32| -> Result<(), String> {
        let (keycode, shifted) = keyboard.keycode(keysym).ok_or_else(|| {
            format!("the keyboard of :{display} has no key for keysym {keysym:#x}")
        })?;
        let shift = keyboard.keycode(SHIFT_L).map(|(code, _)| code);
        if let (true, Some(shift)) = (shifted, shift) {
            fake(KEY_PRESS_EVENT, shift, 0, 0)?;
        }
        fake(KEY_PRESS_EVENT, keycode, 0, 0)?;
        fake(KEY_RELEASE_EVENT, keycode, 0, 0)?;
        if let (true, Some(shift)) = (shifted, shift) {
            fake(KEY_RELEASE_EVENT, shift, 0, 0)?;
        }
        Ok(())
    };
    for event in events {
        match event {
            InputEvent::Move { x, y } => {
                let x = i16::try_from(*x).unwrap_or(i16::MAX);
                let y = i16::try_from(*y).unwrap_or(i16::MAX);
                fake(MOTION_NOTIFY_EVENT, 0, x, y)?;
            }
            InputEvent::Click { button } => {
                fake(BUTTON_PRESS_EVENT, *button, 0, 0)?;
                fake(BUTTON_RELEASE_EVENT, *button, 0, 0)?;
            }
            InputEvent::Text { text } => {
                for character in text.chars() {
                    press(char_keysym(character))?;
                }
            }
            InputEvent::Key { key } => {
                press(named_keysym(key).ok_or_else(|| format!("no key is named {key:?}"))?)?
            }
        }
    }
    // A round trip: everything sent has been taken.
    connection
        .get_input_focus()
        .map_err(|err| failed(&err))?
        .reply()
        .map_err(|err| failed(&err))?;
    Ok(())
}

/// The keyboard mapping of an X server: which keycode gives which keysym, and with Shift.
struct Keyboard {
    min_keycode: u8,
    per_keycode: usize,
    keysyms: Vec<u32>,
}

impl Keyboard {
    fn read(connection: &RustConnection) -> Result<Keyboard, String> {
        let setup = connection.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let mapping = connection
            .get_keyboard_mapping(min, max - min + 1)
            .map_err(|err| err.to_string())?
            .reply()
            .map_err(|err| err.to_string())?;
        Ok(Keyboard {
            min_keycode: min,
            per_keycode: usize::from(mapping.keysyms_per_keycode).max(1),
            keysyms: mapping.keysyms,
        })
    }

    /// The keycode that gives `keysym`, and whether with Shift.
    fn keycode(&self, keysym: u32) -> Option<(u8, bool)> {
        self.keysyms
            .chunks(self.per_keycode)
            .enumerate()
            .find_map(|(index, syms)| {
                let column = syms.iter().take(2).position(|sym| *sym == keysym)?;
                let code = u8::try_from(usize::from(self.min_keycode) + index).ok()?;
                Some((code, column == 1))
            })
    }
}

/// The keysym of a character: Latin-1 characters are their own keysyms, the rest Unicode's.
fn char_keysym(character: char) -> u32 {
    let code = u32::from(character);
    match code {
        0x0a | 0x0d => 0xff0d,
        0x09 => 0xff09,
        0x20..=0x7e | 0xa0..=0xff => code,
        _ => 0x0100_0000 + code,
    }
}

/// The keysym of a key's X name.
fn named_keysym(name: &str) -> Option<u32> {
    let named = [
        ("Return", 0xff0d),
        ("Tab", 0xff09),
        ("Escape", 0xff1b),
        ("BackSpace", 0xff08),
        ("Delete", 0xffff),
        ("Home", 0xff50),
        ("Left", 0xff51),
        ("Up", 0xff52),
        ("Right", 0xff53),
        ("Down", 0xff54),
        ("End", 0xff57),
    ];
    if let Some((_, keysym)) = named.iter().find(|(key, _)| *key == name) {
        return Some(*keysym);
    }
    if let Some(number) = name.strip_prefix('F').and_then(|n| n.parse::<u32>().ok())
        && (1..=12).contains(&number)
    {
        return Some(0xffbe + number - 1);
    }
    let mut chars = name.chars();
    match (chars.next(), chars.next()) {
        (Some(character), None) => Some(char_keysym(character)),
        _ => None,
    }
}

/// A screenshot of display `:display` as PNG, no wider than `max_width` (scaled down by a
/// whole factor if need be); refused (with its size) when the screen holds more than
/// `max_pixels`.
pub fn screenshot(
    display: u32,
    cookie: &[u8],
    max_pixels: u64,
    max_width: u32,
) -> Result<Vec<u8>, String> {
    let connection = connect(display, cookie)?;
    let screen = Screen::of(&connection, display)?;
    let pixels = u64::from(screen.width) * u64::from(screen.height);
    if max_pixels < pixels {
        return Err(format!(
            "the screen is {}x{}, {pixels} pixels: more than the {max_pixels} a screenshot may \
             hold",
            screen.width, screen.height
        ));
    }
    let (width, height) = (u32::from(screen.width), u32::from(screen.height));
    let rgb = screen.read(&connection, 0, 0, screen.width, screen.height)?;
    let step = width.div_ceil(max_width.max(1)).max(1);
    if step == 1 {
        return encode_png(&rgb, width, height);
    }
    let (small, small_width, small_height) = shrink(&rgb, width, height, step);
    encode_png(&small, small_width, small_height)
}

/// A changed part of a screen, as PNG, and where it goes.
pub struct Region {
    pub x: u16,
    pub y: u16,
    pub png: Vec<u8>,
}

/// Follows the screen of `:display` for someone watching it: the whole screen first, then,
/// checked every `every`, the part that changed (the bounding box of what XDAMAGE reports),
/// and nothing while nothing changes. Ends when `stop` is dropped (or told), when `send`
/// answers false, or when the X server goes away.
pub fn follow(
    display: u32,
    cookie: &[u8],
    every: std::time::Duration,
    stop: &std::sync::mpsc::Receiver<()>,
    mut send: impl FnMut(Region) -> bool,
) -> Result<(), String> {
    use x11rb::protocol::{Event, damage::ConnectionExt as _, damage::ReportLevel};
    let failed = |err: &dyn std::fmt::Display| format!("following :{display}: {err}");
    let connection = connect(display, cookie)?;
    let screen = Screen::of(&connection, display)?;
    connection
        .damage_query_version(1, 1)
        .map_err(|err| failed(&err))?
        .reply()
        .map_err(|err| failed(&err))?;
    let damage = connection.generate_id().map_err(|err| failed(&err))?;
    connection
        .damage_create(damage, screen.root, ReportLevel::BOUNDING_BOX)
        .map_err(|err| failed(&err))?;
    let region = |x: u16, y: u16, width: u16, height: u16| -> Result<Region, String> {
        let rgb = screen.read(&connection, x, y, width, height)?;
        let png = encode_png(&rgb, u32::from(width), u32::from(height))?;
        Ok(Region { x, y, png })
    };
    if !send(region(0, 0, screen.width, screen.height)?) {
        return Ok(());
    }
    loop {
        match stop.recv_timeout(every) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return Ok(()),
        }
        // The bounding box of everything that changed since the last look.
        let mut changed: Option<(u16, u16, u16, u16)> = None;
        while let Some(event) = connection.poll_for_event().map_err(|err| failed(&err))? {
            if let Event::DamageNotify(notice) = event {
                let area = notice.area;
                let (x0, y0) = (area.x.max(0).unsigned_abs(), area.y.max(0).unsigned_abs());
                let x1 = x0.saturating_add(area.width).min(screen.width);
                let y1 = y0.saturating_add(area.height).min(screen.height);
                changed = Some(match changed {
                    None => (x0, y0, x1, y1),
                    Some((a, b, c, d)) => (a.min(x0), b.min(y0), c.max(x1), d.max(y1)),
                });
            }
        }
        let Some((x0, y0, x1, y1)) = changed.filter(|(x0, y0, x1, y1)| x0 < x1 && y0 < y1) else {
            continue;
        };
        connection
            .damage_subtract(damage, x11rb::NONE, x11rb::NONE)
            .map_err(|err| failed(&err))?;
        if !send(region(x0, y0, x1 - x0, y1 - y0)?) {
            return Ok(());
        }
    }
}

/// The root window of a display's screen, as much as reading it needs.
struct Screen {
    display: u32,
    root: u32,
    width: u16,
    height: u16,
    /// Whether the server writes a pixel's least significant byte first.
    least_first: bool,
}

impl Screen {
    fn of(connection: &RustConnection, display: u32) -> Result<Screen, String> {
        let setup = connection.setup();
        let Some(screen) = setup.roots.first() else {
            return Err(format!("the X server of :{display} has no screen"));
        };
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
        Ok(Screen {
            display,
            root: screen.root,
            width: screen.width_in_pixels,
            height: screen.height_in_pixels,
            least_first: setup.image_byte_order == ImageOrder::LSB_FIRST,
        })
    }

    /// The pixels of a rectangle, as RGB.
    fn read(
        &self,
        connection: &RustConnection,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    ) -> Result<Vec<u8>, String> {
        let failed = |err: &dyn std::fmt::Display| {
            format!("cannot read the screen of :{}: {err}", self.display)
        };
        let x = i16::try_from(x).unwrap_or(i16::MAX);
        let y = i16::try_from(y).unwrap_or(i16::MAX);
        let image = connection
            .get_image(ImageFormat::Z_PIXMAP, self.root, x, y, width, height, !0)
            .map_err(|err| failed(&err))?
            .reply()
            .map_err(|err| failed(&err))?;
        // Each pixel is four bytes: blue, green, red and padding when the server writes the
        // least significant byte first; the other way round otherwise.
        Ok(image
            .data
            .chunks_exact(4)
            .flat_map(|pixel| match self.least_first {
                true => [pixel[2], pixel[1], pixel[0]],
                false => [pixel[1], pixel[2], pixel[3]],
            })
            .collect())
    }
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
