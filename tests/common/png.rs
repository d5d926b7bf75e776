//! PNG files built by hand: whole, cut to their header, split into parts, animated.

#![allow(dead_code)]

pub fn png_bytes(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend(crc.sum().to_be_bytes());
}

/// A PNG whose header says `width`×`height`, with no image data after it.
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Split a PNG into (IHDR chunk data, concatenated IDAT data).
pub fn png_parts(png: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut ihdr, mut idat) = (Vec::new(), Vec::new());
    let mut i = 8;
    while i + 8 <= png.len() {
        let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
        let kind = &png[i + 4..i + 8];
        let data = &png[i + 8..i + 8 + len];
        match kind {
            b"IHDR" => ihdr = data.to_vec(),
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        i += 12 + len;
    }
    (ihdr, idat)
}

/// An animated PNG (APNG) of two frames: `first` (also the default image) then `second`.
pub fn apng(first: &[u8], second: &[u8]) -> Vec<u8> {
    let (ihdr, idat1) = png_parts(first);
    let (_, idat2) = png_parts(second);
    let (w, h) = (&ihdr[0..4], &ihdr[4..8]);
    let fctl = |seq: u32| {
        let mut f = seq.to_be_bytes().to_vec();
        f.extend_from_slice(w);
        f.extend_from_slice(h);
        f.extend([0u8; 8]); // x, y offsets
        f.extend([0, 1, 0, 10, 0, 0]); // delay 1/10 s, dispose none, blend source
        f
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    let mut actl = 2u32.to_be_bytes().to_vec();
    actl.extend(0u32.to_be_bytes());
    chunk(&mut out, b"acTL", &actl);
    chunk(&mut out, b"fcTL", &fctl(0));
    chunk(&mut out, b"IDAT", &idat1);
    chunk(&mut out, b"fcTL", &fctl(1));
    let mut fdat = 2u32.to_be_bytes().to_vec();
    fdat.extend_from_slice(&idat2);
    chunk(&mut out, b"fdAT", &fdat);
    chunk(&mut out, b"IEND", &[]);
    out
}
