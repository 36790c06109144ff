// Standard base64 (RFC 4648, with padding), as proto3 JSON writes `bytes` fields.

use crate::json::Sink;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn encode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity((b.len() + 2) / 3 * 4);
    encode_to(&mut out, b);
    // Only alphabet bytes were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Writes the base64 of `b` to `out` a block at a time, so a large body needs no encoded copy.
pub(crate) fn encode_to<S: Sink + ?Sized>(out: &mut S, b: &[u8]) {
    let mut block = [0u8; 1024];
    for part in b.chunks(768) {
        let mut n = 0;
        for chunk in part.chunks(3) {
            let v = (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
            block[n] = ALPHABET[(v >> 18) as usize];
            block[n + 1] = ALPHABET[(v >> 12 & 63) as usize];
            block[n + 2] = if chunk.len() > 1 { ALPHABET[(v >> 6 & 63) as usize] } else { b'=' };
            block[n + 3] = if chunk.len() > 2 { ALPHABET[(v & 63) as usize] } else { b'=' };
            n += 4;
        }
        out.put(&block[..n]);
    }
}

fn sextet(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(v as u32)
}

/// None when `s` is not padded base64 of the standard alphabet.
pub fn decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 4 != 0 {
        return None;
    }
    let pad = s.iter().rev().take(2).take_while(|&&c| c == b'=').count();
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, quad) in s.chunks(4).enumerate() {
        let mut acc = 0u32;
        for (j, &c) in quad.iter().enumerate() {
            let padding = c == b'=' && i * 4 + j >= s.len() - pad;
            acc = acc << 6 | if padding { 0 } else { sextet(c)? };
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..]);
    }
    out.truncate(out.len() - pad);
    Some(out)
}
