//! Strict RFC 8259 JSON validator that accepts exactly what orjson 3.13.0 `loads` accepts
//! (for input that is already valid UTF-8), and extracts the tunnel-envelope fields of a
//! top-level object on the way.
//!
//! orjson behaviour matched here (see docs/codec.md):
//! * whitespace is only space, tab, LF, CR; anything else (incl. a BOM, form feed, NUL) is an error;
//!   an empty or whitespace-only document is an error; trailing whitespace is fine, trailing content is not;
//! * at most 1024 nested arrays/objects;
//! * no NaN/Infinity, no leading zeros, no `+`, no `.5`/`1.`; a number whose IEEE-754 double value
//!   (correctly rounded) is infinite is an error, anything else (huge integers, underflow to 0) is fine;
//! * strings: raw control characters (< 0x20) are errors, 0x7F is fine; escapes are the RFC 8259 set;
//!   `\uD800`-`\uDBFF` must be followed immediately by a `\uDC00`-`\uDFFF` escape; a lone low surrogate
//!   escape is an error;
//! * duplicate keys are allowed, the last one wins.

use std::borrow::Cow;

/// orjson's nesting limit: 1024 containers deep is accepted, 1025 is not.
pub const MAX_DEPTH: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError;

/// A top-level field of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field<'a> {
    Absent,
    NotStr,
    Str(Cow<'a, str>),
}

/// The envelope fields of a top-level JSON object (last duplicate wins). `data` is only read by
/// `parse_with_data` (the rare path that splits a device's oversized output); `parse` leaves it
/// `Absent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub operation_type: Field<'a>,
    pub tunnel_service_type: Field<'a>,
    pub request_id: Field<'a>,
    pub data: Field<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doc<'a> {
    Object(Envelope<'a>),
    NotObject,
}

// byte classes for the scalar string scanner: 1 = stop ('"', '\\' or a control character)
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

// string scanner stops: STOP plus every non-ASCII byte (validated as UTF-8 runs)
static STR_STOP: [bool; 256] = {
    let mut t = STOP;
    let mut i = 0x80;
    while i < 256 {
        t[i] = true;
        i += 1;
    }
    t
};

/// Index of the first byte at or after `i` that is '"', '\\' or < 0x20 (or `b.len()`).
#[inline(always)]
fn find_stop(b: &[u8], mut i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        i = unsafe { find_stop_sse2(b, i) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        i = find_stop_swar(b, i);
    }
    while i < b.len() && !STOP[b[i] as usize] {
        i += 1;
    }
    i
}

/// SSE2 scan; returns a position whose byte is a stop byte, or where fewer than 16 bytes remain.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
unsafe fn find_stop_sse2(b: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::*;
    let q = _mm_set1_epi8(b'"' as i8);
    let bs = _mm_set1_epi8(b'\\' as i8);
    let c1f = _mm_set1_epi8(0x1f);
    let p = b.as_ptr();
    while i + 16 <= b.len() {
        // SAFETY: i + 16 <= len, unaligned load
        let v = _mm_loadu_si128(p.add(i) as *const __m128i);
        let ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, c1f), v);
        let m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, bs)), ctl);
        let mask = _mm_movemask_epi8(m) as u32;
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    i
}

/// For the 32 bytes at `p`: (bit k set when `p[k]` is '"', '\\' or a control character,
/// bit k set when `p[k]` is not ASCII). SSE2 (x86_64 baseline).
///
/// # Safety
/// `p..p+32` must be readable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn string_masks32(p: *const u8) -> (u32, u32) {
    use std::arch::x86_64::*;
    let q = _mm_set1_epi8(b'"' as i8);
    let bs = _mm_set1_epi8(b'\\' as i8);
    let c1f = _mm_set1_epi8(0x1f);
    let v0 = _mm_loadu_si128(p as *const __m128i);
    let v1 = _mm_loadu_si128(p.add(16) as *const __m128i);
    let m0 = _mm_or_si128(
        _mm_or_si128(_mm_cmpeq_epi8(v0, q), _mm_cmpeq_epi8(v0, bs)),
        _mm_cmpeq_epi8(_mm_min_epu8(v0, c1f), v0),
    );
    let m1 = _mm_or_si128(
        _mm_or_si128(_mm_cmpeq_epi8(v1, q), _mm_cmpeq_epi8(v1, bs)),
        _mm_cmpeq_epi8(_mm_min_epu8(v1, c1f), v1),
    );
    let stop = (_mm_movemask_epi8(m0) as u32 & 0xffff) | ((_mm_movemask_epi8(m1) as u32) << 16);
    let high = (_mm_movemask_epi8(v0) as u32 & 0xffff) | ((_mm_movemask_epi8(v1) as u32) << 16);
    (stop, high)
}

/// Validate the run of non-ASCII bytes starting at `b[k]` as UTF-8 (RFC 3629: no overlongs, no
/// surrogates, nothing above U+10FFFF); returns the index of the first ASCII byte after it (or the end).
/// Runs are bounded by ASCII bytes, so checking every run checks the whole input.
#[inline]
fn utf8_run(b: &[u8], mut k: usize) -> Result<usize, JsonError> {
    while k < b.len() {
        let c = b[k];
        if c < 0x80 {
            return Ok(k);
        }
        let (n, lo, hi) = match c {
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return Err(JsonError),
        };
        let c1 = *b.get(k + 1).ok_or(JsonError)?;
        if c1 < lo || c1 > hi {
            return Err(JsonError);
        }
        for t in 2..=n {
            if *b.get(k + t).ok_or(JsonError)? & 0xC0 != 0x80 {
                return Err(JsonError);
            }
        }
        k += n + 1;
    }
    Ok(k)
}

/// Portable SWAR scan (8 bytes per step).
#[cfg(not(target_arch = "x86_64"))]
fn find_stop_swar(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while i + 8 <= b.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        let x = u64::from_le_bytes(w);
        let zq = x ^ (LO * b'"' as u64);
        let zb = x ^ (LO * b'\\' as u64);
        // exact for the lowest flagged byte: borrows only start at a true hit
        let m = ((zq.wrapping_sub(LO) & !zq) | (zb.wrapping_sub(LO) & !zb) | (x.wrapping_sub(LO * 0x20) & !x)) & HI;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i
}

#[inline(always)]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

#[inline(always)]
fn hex_val(c: u8) -> Option<u32> {
    match c {
        b'0'..=b'9' => Some((c - b'0') as u32),
        b'a'..=b'f' => Some((c - b'a' + 10) as u32),
        b'A'..=b'F' => Some((c - b'A' + 10) as u32),
        _ => None,
    }
}

#[inline]
fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i + 4)?;
    Some((hex_val(s[0])? << 12) | (hex_val(s[1])? << 8) | (hex_val(s[2])? << 4) | hex_val(s[3])?)
}

const FIELD_NONE: u8 = 0;
const FIELD_OP: u8 = 1;
const FIELD_SERVICE: u8 = 2;
const FIELD_RID: u8 = 3;
const FIELD_DATA: u8 = 4;

fn field_of<const DATA: bool>(key: &str) -> u8 {
    field_of_raw::<DATA>(key.as_bytes())
}

#[inline(always)]
fn field_of_raw<const DATA: bool>(key: &[u8]) -> u8 {
    match key {
        b"operation_type" => FIELD_OP,
        b"tunnel_service_type" => FIELD_SERVICE,
        b"request_id" => FIELD_RID,
        b"data" if DATA => FIELD_DATA,
        _ => FIELD_NONE,
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    #[inline(always)]
    fn skip_ws(&mut self) {
        while self.i < self.b.len() && is_ws(self.b[self.i]) {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Validate a string whose opening quote is at `self.i`; on return `self.i` is past the closing
    /// quote. Returns the raw content range and whether it contained an escape.
    ///
    /// Scans 32 bytes at a time for '"', '\\' and control characters; escapes found in a block are
    /// handled without leaving the block (command output has an escape every few dozen bytes).
    #[inline(always)]
    fn string(&mut self) -> Result<(usize, usize, bool), JsonError> {
        let b = self.b;
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        #[cfg(target_arch = "x86_64")]
        {
            'block: while i + 32 <= b.len() {
                // SAFETY: i + 32 <= b.len()
                let (mut m, mut h) = unsafe { string_masks32(b.as_ptr().add(i)) };
                while (m | h) != 0 {
                    let pm = m.trailing_zeros();
                    let ph = h.trailing_zeros();
                    if ph < pm {
                        // a run of non-ASCII bytes: validate it as UTF-8
                        let e = utf8_run(b, i + ph as usize)?;
                        let adv = e - i;
                        if adv >= 32 {
                            i = e;
                            continue 'block;
                        }
                        h &= !0u32 << adv;
                        continue;
                    }
                    let p = i + pm as usize;
                    match b[p] {
                        b'"' => {
                            self.i = p + 1;
                            return Ok((start, p, escaped));
                        }
                        b'\\' => {
                            escaped = true;
                            let j = Self::escape(b, p)?;
                            let adv = j - i;
                            if adv >= 32 {
                                i = j;
                                continue 'block;
                            }
                            m &= !0u32 << adv; // forget the escaped bytes (all ASCII)
                        }
                        _ => return Err(JsonError),
                    }
                }
                i += 32;
            }
        }
        loop {
            while i < b.len() && !STR_STOP[b[i] as usize] {
                i += 1;
            }
            match b.get(i) {
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok((start, i, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    i = Self::escape(b, i)?;
                }
                Some(0x80..=0xff) => i = utf8_run(b, i)?,
                _ => return Err(JsonError), // control character or end of input
            }
        }
    }

    /// Validate the escape at `b[i] == '\\'`, return the index after it.
    #[inline(always)]
    fn escape(b: &[u8], i: usize) -> Result<usize, JsonError> {
        match b.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
            Some(b'u') => {
                let u = hex4(b, i + 2).ok_or(JsonError)?;
                match u {
                    0xD800..=0xDBFF => {
                        if b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u') {
                            match hex4(b, i + 8) {
                                Some(0xDC00..=0xDFFF) => Ok(i + 12),
                                _ => Err(JsonError),
                            }
                        } else {
                            Err(JsonError)
                        }
                    }
                    0xDC00..=0xDFFF => Err(JsonError),
                    _ => Ok(i + 6),
                }
            }
            _ => Err(JsonError),
        }
    }

    /// Decoded string value for a validated raw range.
    fn decoded(&self, start: usize, end: usize, escaped: bool) -> Result<Cow<'a, str>, JsonError> {
        let raw = std::str::from_utf8(self.b.get(start..end).ok_or(JsonError)?).map_err(|_| JsonError)?;
        if !escaped {
            return Ok(Cow::Borrowed(raw));
        }
        let rb = raw.as_bytes();
        let mut out = String::with_capacity(raw.len());
        let mut i = 0;
        let mut run = 0;
        while i < rb.len() {
            if rb[i] != b'\\' {
                i += 1;
                continue;
            }
            out.push_str(raw.get(run..i).ok_or(JsonError)?);
            let c = *rb.get(i + 1).ok_or(JsonError)?;
            i += 2;
            let ch = match c {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let u = hex4(rb, i).ok_or(JsonError)?;
                    i += 4;
                    let cp = if (0xD800..=0xDBFF).contains(&u) {
                        let lo = hex4(rb, i + 2).ok_or(JsonError)?;
                        i += 6;
                        0x10000 + ((u - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
                    } else {
                        u
                    };
                    char::from_u32(cp).ok_or(JsonError)?
                }
                _ => return Err(JsonError),
            };
            out.push(ch);
            run = i;
        }
        out.push_str(raw.get(run..).ok_or(JsonError)?);
        Ok(Cow::Owned(out))
    }

    /// Validate a number starting at `self.i`.
    #[inline]
    fn number(&mut self) -> Result<(), JsonError> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_start = i;
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            _ => return Err(JsonError),
        }
        let int_digits = i - int_start;
        let mut exp = false;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let d = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == d {
                return Err(JsonError);
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            exp = true;
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let d = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == d {
                return Err(JsonError);
            }
        }
        self.i = i;
        // below 10^308 without an exponent the double is always finite
        if exp || int_digits > 308 {
            let text = std::str::from_utf8(&self.b[start..i]).map_err(|_| JsonError)?;
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => {}
                _ => return Err(JsonError),
            }
        }
        Ok(())
    }

    #[inline]
    fn literal(&mut self, lit: &[u8]) -> Result<(), JsonError> {
        if self.b.get(self.i..self.i + lit.len()) == Some(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(JsonError)
        }
    }

    /// Parse an object key (opening quote expected at `self.i` after whitespace) and the ':'.
    /// Returns the envelope field index for top-level keys.
    #[inline]
    fn key<const DATA: bool>(&mut self, top: bool) -> Result<u8, JsonError> {
        if self.peek() != Some(b'"') {
            return Err(JsonError);
        }
        let (s, e, esc) = self.string()?;
        let f = if !top {
            FIELD_NONE
        } else if !esc {
            field_of_raw::<DATA>(&self.b[s..e])
        } else {
            field_of::<DATA>(&self.decoded(s, e, esc)?)
        };
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(JsonError);
        }
        self.i += 1;
        Ok(f)
    }

    fn document<const DATA: bool>(&mut self) -> Result<Doc<'a>, JsonError> {
        // container stack as a bit set: 1 = object, 0 = array
        let mut stack = [0u64; MAX_DEPTH / 64];
        let mut depth = 0usize;
        let mut top_is_object = false;
        let mut env = Envelope {
            operation_type: Field::Absent,
            tunnel_service_type: Field::Absent,
            request_id: Field::Absent,
            data: Field::Absent,
        };
        // field being parsed as the value of a top-level key
        let mut pending_field = FIELD_NONE;
        'value: loop {
            self.skip_ws();
            let c = self.peek().ok_or(JsonError)?;
            let field = std::mem::replace(&mut pending_field, FIELD_NONE);
            if field != FIELD_NONE {
                let v = if c == b'"' {
                    let (s, e, esc) = self.string()?;
                    Field::Str(self.decoded(s, e, esc)?)
                } else {
                    Field::NotStr
                };
                match field {
                    FIELD_OP => env.operation_type = v,
                    FIELD_SERVICE => env.tunnel_service_type = v,
                    FIELD_DATA => env.data = v,
                    _ => env.request_id = v,
                }
            }
            match c {
                b'"' if field != FIELD_NONE => {} // already consumed
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    if depth == MAX_DEPTH {
                        return Err(JsonError);
                    }
                    let obj = c == b'{';
                    if depth == 0 {
                        top_is_object = obj;
                    }
                    if obj {
                        stack[depth / 64] |= 1 << (depth % 64);
                    } else {
                        stack[depth / 64] &= !(1 << (depth % 64));
                    }
                    depth += 1;
                    self.i += 1;
                    self.skip_ws();
                    let close = if obj { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                        depth -= 1;
                    } else {
                        if obj {
                            pending_field = self.key::<DATA>(depth == 1)?;
                        }
                        continue 'value;
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return Err(JsonError),
            }
            // after a complete value: close containers or go to the next element
            loop {
                if depth == 0 {
                    self.skip_ws();
                    if self.i != self.b.len() {
                        return Err(JsonError);
                    }
                    return Ok(if top_is_object { Doc::Object(env) } else { Doc::NotObject });
                }
                self.skip_ws();
                let obj = stack[(depth - 1) / 64] & (1 << ((depth - 1) % 64)) != 0;
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if obj {
                            self.skip_ws();
                            pending_field = self.key::<DATA>(depth == 1)?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if obj => {
                        self.i += 1;
                        depth -= 1;
                    }
                    Some(b']') if !obj => {
                        self.i += 1;
                        depth -= 1;
                    }
                    _ => return Err(JsonError),
                }
            }
        }
    }
}

/// Parse a document; `Doc::Object` carries the envelope fields of a top-level object.
///
/// UTF-8 is validated on the way (non-ASCII bytes are only legal inside strings, where each run of
/// them is checked), so `Ok` also means `b` is valid UTF-8. On `Err` the input is invalid JSON
/// *or* invalid UTF-8: callers that must tell them apart run `std::str::from_utf8` then.
pub fn parse(b: &[u8]) -> Result<Doc<'_>, JsonError> {
    let mut p = Parser { b, i: 0 };
    p.document::<false>()
}

/// `parse`, and the top-level `data` field too (decoded when it is a string).
pub fn parse_with_data(b: &[u8]) -> Result<Doc<'_>, JsonError> {
    let mut p = Parser { b, i: 0 };
    p.document::<true>()
}

/// True when `b` is valid UTF-8 and a JSON document orjson would accept.
pub fn is_valid(b: &[u8]) -> bool {
    parse(b).is_ok()
}

/// Append `s` as a JSON string exactly as `orjson.dumps(s)` encodes it.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let b = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        i = find_stop(b, i);
        if i >= b.len() {
            break;
        }
        out.extend_from_slice(&b[run..i]);
        let c = b[i];
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0A => out.extend_from_slice(b"\\n"),
            0x0C => out.extend_from_slice(b"\\f"),
            0x0D => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]),
        }
        i += 1;
        run = i;
    }
    out.extend_from_slice(&b[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &[u8]) -> bool {
        is_valid(s)
    }

    #[test]
    fn accepts_and_rejects_like_orjson() {
        let good: &[&[u8]] = &[
            b"{}", b" {} ", b"{} \n\t\r", b"[1]", b"\"s\"", b"1", b"-0", b"{\"a\":1e-400}",
            b"123456789012345678901234567890", b"18446744073709551616", b"1E+2", b"0.0e-0",
            b"\"\\ud800\\udc00\"", b"\"\\uDBFF\\uDFFF\"", b"\"\x7f\"", b"\"\\/\"", b"{\"a\":1,\"a\":2}",
            b"{\"a\" : 1 }", b"{\"a\":true,\"b\":false,\"c\":null}", b"1.7976931348623157e308",
            b"1.7976931348623158e308", b"4.9e-324", b"0e99999999999", b"1e-99999999999999", b"[ ]", b"{ }",
            b"\"\\u0000\"", b"[1e05]", b"[-0.5e-5]", b"\"\xc3\xa9\"",
        ];
        for g in good {
            assert!(ok(g), "should accept {:?}", String::from_utf8_lossy(g));
        }
        let bad: &[&[u8]] = &[
            b"\xef\xbb\xbf{}", b"{}x", b"{}\x0c", b"", b" ", b"NaN", b"[Infinity]", b"-Infinity", b"1e400",
            b"-1e400", b"01", b"1.", b".1", b"1e", b"+1", b"-", b"\"\\ud800\"", b"\"\\udc00\"",
            b"\"\\ud800x\"", b"\"\\ud800\\u0041\"", b"\"\\ud800\\ud800\"", b"\"\x00\"", b"\"\x1f\"", b"\"\t\"",
            b"\"\\x\"", b"\"\\u00\"", b"\"\\u00g0\"", b"\"\\U0041\"", b"{\"a\":1,}", b"[1,]", b"{,}", b"{'a':1}",
            b"tru", b"True", b"[1]\x00", b"{\x0b}", b"[1 2]", b"{\"a\"}", b"{1:2}", b"1.8e308",
            b"1.7976931348623159e308", b"[1]]", b"[[1]", b"{\"a\":1}}", b"[truefalse]", b"[1true]",
            b"[0e]", b"[-00]", b"[01.5]", b"\"abc", b"[", b"{", b"{\"a\":", b"{\"a\"", b"\"\\",
            b"\"\\u12", b"\"\xff\"",
        ];
        for b in bad {
            assert!(!ok(b), "should reject {:?}", String::from_utf8_lossy(b));
        }
        let mut big = b"9".repeat(309);
        assert!(!ok(&big));
        big.pop();
        assert!(ok(&big));
    }

    #[test]
    fn depth_limit() {
        for (d, want) in [(1023, true), (1024, true), (1025, false)] {
            let s = format!("{}{}", "[".repeat(d), "]".repeat(d));
            assert_eq!(ok(s.as_bytes()), want, "arrays {d}");
            let s = format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d));
            assert_eq!(ok(s.as_bytes()), want, "objects {d}");
        }
    }

    #[test]
    fn long_strings_cross_simd_blocks() {
        for n in 0..200 {
            for ins in [None, Some(b'\x01'), Some(b'"'), Some(b'\\')] {
                let mut body = vec![b'x'; n];
                if let Some(c) = ins {
                    if n > 0 {
                        body[n / 2] = c;
                    }
                }
                let mut s = vec![b'"'];
                s.extend_from_slice(&body);
                s.push(b'"');
                // a control char, a bare quote or a `\x` escape all make the string invalid
                let want = ins.is_none() || n == 0;
                assert_eq!(ok(&s), want, "n={n} ins={ins:?}");
            }
        }
    }

    #[test]
    fn envelope_fields() {
        let s = r#"{"operation_type":"connect","tunnel_service_type":"ssh","request_id":"r\u0031","data":{"x":[1,2]},"request_id":"r2"}"#;
        match parse(s.as_bytes()).unwrap() {
            Doc::Object(e) => {
                assert_eq!(e.operation_type, Field::Str("connect".into()));
                assert_eq!(e.tunnel_service_type, Field::Str("ssh".into()));
                assert_eq!(e.request_id, Field::Str("r2".into()));
            }
            _ => panic!(),
        }
        let s = r#"{"operation\u005ftype":1,"x":{"request_id":"nested"}}"#;
        match parse(s.as_bytes()).unwrap() {
            Doc::Object(e) => {
                assert_eq!(e.operation_type, Field::NotStr);
                assert_eq!(e.request_id, Field::Absent);
            }
            _ => panic!(),
        }
        assert_eq!(parse(b"[1]").unwrap(), Doc::NotObject);
        let s = r#"{"request_id":"\ud83d\ude00\n\"\\\/\b\f\r\t\u00e9"}"#;
        match parse(s.as_bytes()).unwrap() {
            Doc::Object(e) => assert_eq!(e.request_id, Field::Str("😀\n\"\\/\u{8}\u{c}\r\té".into())),
            _ => panic!(),
        }
    }

    #[test]
    fn write_str_like_orjson() {
        let mut out = Vec::new();
        let s: String = (0u8..0x21).map(|c| c as char).collect::<String>() + "\x7f\u{2028}/\"\\é😀";
        write_str(&mut out, &s);
        let want = "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f \x7f\u{2028}/\\\"\\\\é😀\"";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn utf8_checked_inside_strings() {
        // every 1-4 byte sequence prefix class, at every offset around the 32-byte blocks
        let seqs: &[&[u8]] = &[
            b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xf4\x8f\xbf\xbf", b"\xed\x9f\xbf",
            b"\xee\x80\x80", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf0\x80\x80\x80",
            b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\x80", b"\xc3", b"\xe2\x82", b"\xc3\xa9\xa9",
            b"\xe2\x82\xac\xe2\x82\xac\xc3\xa9",
        ];
        for seq in seqs {
            for pad in 0..70 {
                for tail in [0usize, 1, 40] {
                    let mut doc = b"{\"k\":\"".to_vec();
                    doc.extend(std::iter::repeat_n(b'a', pad));
                    doc.extend_from_slice(seq);
                    doc.extend(std::iter::repeat_n(b'b', tail));
                    doc.extend_from_slice(b"\"}");
                    let want = std::str::from_utf8(&doc).is_ok();
                    assert_eq!(is_valid(&doc), want, "{seq:?} pad {pad} tail {tail}");
                }
            }
        }
        // non-ASCII outside strings is never valid
        assert!(!is_valid("{\"a\":\u{e9}}".as_bytes()));
        assert!(!is_valid("\u{a0}{}".as_bytes()));
    }
}
