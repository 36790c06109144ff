//! A dynamic JSON document: parse any JSON text, read it, change it, write it back.
//!
//! Object members keep their order, and numbers keep their text, so integers beyond 2^53 (and any
//! other number) come back exactly as they came in. Strings are kept as UTF-8 bytes; an escaped
//! lone surrogate (`"\ud800"`, valid JSON that UTF-8 cannot carry) is kept in the 3-byte form
//! UTF-8 would give it and written back as the same escape, so such strings also round-trip.

use std::borrow::Cow;
use std::fmt;

/// The deepest a value may sit inside arrays and objects; deeper documents do not parse.
pub const MAX_DEPTH: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    // The number's text, as written.
    Number(String),
    String(Vec<u8>),
    Array(Vec<Json>),
    Object(Vec<(Vec<u8>, Json)>),
}

/// One JSON value of any kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Json(Value);

static NULL: Json = Json(Value::Null);

impl Default for Json {
    fn default() -> Json {
        Json::null()
    }
}

impl Json {
    pub fn null() -> Json {
        Json(Value::Null)
    }

    pub fn bool(value: bool) -> Json {
        Json(Value::Bool(value))
    }

    /// A number; NaN and the infinities, which JSON cannot write, give null (as JavaScript does).
    pub fn number(value: f64) -> Json {
        if value.is_finite() {
            Json(Value::Number(format_number(value)))
        } else {
            Json::null()
        }
    }

    pub fn integer(value: i64) -> Json {
        Json(Value::Number(value.to_string()))
    }

    /// A number written exactly as `text`; None when `text` is not a JSON number.
    pub fn number_text(text: &str) -> Option<Json> {
        let mut p = Parser { b: text.as_bytes(), pos: 0 };
        match p.number() {
            Some(v) if p.pos == text.len() => Some(v),
            _ => None,
        }
    }

    pub fn string(value: &str) -> Json {
        Json(Value::String(value.as_bytes().to_vec()))
    }

    /// A string from its UTF-8 bytes (taken as they are: give UTF-8, or the writer writes bytes
    /// that are not).
    pub fn string_bytes(value: Vec<u8>) -> Json {
        Json(Value::String(value))
    }

    pub fn array() -> Json {
        Json(Value::Array(Vec::new()))
    }

    pub fn object() -> Json {
        Json(Value::Object(Vec::new()))
    }

    /// Parses one JSON document (surrounding whitespace allowed); None when it is not valid JSON
    /// or nests deeper than MAX_DEPTH.
    pub fn parse(text: &[u8]) -> Option<Json> {
        let mut p = Parser { b: text, pos: 0 };
        let value = p.value(0)?;
        p.skip_space();
        if p.pos == text.len() {
            Some(value)
        } else {
            None
        }
    }

    pub fn parse_str(text: &str) -> Option<Json> {
        Json::parse(text.as_bytes())
    }

    pub fn kind(&self) -> Kind {
        match self.0 {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Number(_) => Kind::Number,
            Value::String(_) => Kind::String,
            Value::Array(_) => Kind::Array,
            Value::Object(_) => Kind::Object,
        }
    }

    pub fn is_null(&self) -> bool {
        self.kind() == Kind::Null
    }
    pub fn is_bool(&self) -> bool {
        self.kind() == Kind::Bool
    }
    pub fn is_number(&self) -> bool {
        self.kind() == Kind::Number
    }
    pub fn is_string(&self) -> bool {
        self.kind() == Kind::String
    }
    pub fn is_array(&self) -> bool {
        self.kind() == Kind::Array
    }
    pub fn is_object(&self) -> bool {
        self.kind() == Kind::Object
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.0 {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A number as f64 (beyond 2^53 rounded; out of range an infinity).
    pub fn as_f64(&self) -> Option<f64> {
        match &self.0 {
            Value::Number(text) => text.parse().ok(),
            _ => None,
        }
    }

    /// A number as an integer: exact when its text is an integer i64 holds (ids, nanosecond
    /// timestamps, counters beyond 2^53); otherwise through f64, truncated and saturated.
    pub fn as_i64(&self) -> Option<i64> {
        match &self.0 {
            Value::Number(text) => Some(text.parse::<i64>().unwrap_or_else(|_| text.parse::<f64>().map_or(0, |f| f as i64))),
            _ => None,
        }
    }

    /// A string's text; None for other kinds and for strings that are not valid UTF-8 (an escaped
    /// lone surrogate; `as_bytes` has those).
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// A string's UTF-8 bytes.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.0 {
            Value::String(b) => Some(b),
            _ => None,
        }
    }

    /// A number's text, as written.
    pub fn number_text_of(&self) -> Option<&str> {
        match &self.0 {
            Value::Number(t) => Some(t),
            _ => None,
        }
    }

    /// A string's text, or a number's text (config values written either way, `port: 80`).
    pub fn as_text(&self) -> Option<&str> {
        self.as_str().or_else(|| self.number_text_of())
    }

    /// Elements of an array, members of an object; 0 for other kinds.
    pub fn len(&self) -> usize {
        match &self.0 {
            Value::Array(items) => items.len(),
            Value::Object(members) => members.len(),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The array element (or object member value) at `index`.
    pub fn at(&self, index: usize) -> Option<&Json> {
        match &self.0 {
            Value::Array(items) => items.get(index),
            Value::Object(members) => members.get(index).map(|m| &m.1),
            _ => None,
        }
    }

    /// Array elements, or object member values, in order.
    pub fn values(&self) -> impl Iterator<Item = &Json> {
        (0..self.len()).map(move |i| &self[i])
    }

    /// Object members in order (none for other kinds); names that are not UTF-8 read with U+FFFD.
    pub fn entries(&self) -> impl Iterator<Item = (Cow<'_, str>, &Json)> {
        self.members_bytes().map(|(k, v)| (String::from_utf8_lossy(k), v))
    }

    /// Object members in order with their names' exact bytes (see `set_bytes`).
    pub fn members_bytes(&self) -> impl Iterator<Item = (&[u8], &Json)> {
        let members: &[(Vec<u8>, Json)] = match &self.0 {
            Value::Object(m) => m,
            _ => &[],
        };
        members.iter().map(|(k, v)| (k.as_slice(), v))
    }

    /// Object member names in order.
    pub fn keys(&self) -> impl Iterator<Item = Cow<'_, str>> {
        self.entries().map(|(k, _)| k)
    }

    fn members(&self) -> Option<&Vec<(Vec<u8>, Json)>> {
        match &self.0 {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    fn index_of(&self, key: &[u8]) -> Option<usize> {
        self.members()?.iter().position(|(k, _)| k == key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.index_of(key.as_bytes()).is_some()
    }

    /// Member `key` of an object; None when absent or when this is not an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.index_of(key.as_bytes()).map(|i| &self[i])
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        let i = self.index_of(key.as_bytes())?;
        match &mut self.0 {
            Value::Object(m) => Some(&mut m[i].1),
            _ => None,
        }
    }

    /// Member `key` as text (a string, or a number's text); `fallback` otherwise.
    pub fn get_str<'a>(&'a self, key: &str, fallback: &'a str) -> &'a str {
        self.get(key).and_then(Json::as_text).unwrap_or(fallback)
    }

    pub fn get_f64(&self, key: &str, fallback: f64) -> f64 {
        self.get(key).and_then(Json::as_f64).unwrap_or(fallback)
    }

    pub fn get_i64(&self, key: &str, fallback: i64) -> i64 {
        self.get(key).and_then(Json::as_i64).unwrap_or(fallback)
    }

    pub fn get_bool(&self, key: &str, fallback: bool) -> bool {
        self.get(key).and_then(Json::as_bool).unwrap_or(fallback)
    }

    /// A list of strings (`["a", "b"]`): each element's text ("" for elements that have none);
    /// empty when absent or not a list.
    pub fn get_strings(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(list) if list.is_array() => list.values().map(|v| v.as_text().unwrap_or("").to_string()).collect(),
            _ => Vec::new(),
        }
    }

    fn object_members(&mut self, operation: &str) -> &mut Vec<(Vec<u8>, Json)> {
        match &mut self.0 {
            Value::Object(m) => m,
            _ => panic!("Json::{} on a value that is not an object", operation),
        }
    }

    /// Sets member `key` (keeping its position when present). Panics when this is not an object.
    pub fn set(&mut self, key: &str, value: impl Into<Json>) -> &mut Json {
        self.set_bytes(key.as_bytes(), value)
    }

    /// `set` with a name of exact bytes (an escaped lone surrogate in a parsed name, say).
    pub fn set_bytes(&mut self, key: &[u8], value: impl Into<Json>) -> &mut Json {
        self.set_bytes_key(key, value.into());
        self
    }

    fn set_bytes_key(&mut self, key: &[u8], value: Json) {
        let members = self.object_members("set");
        match members.iter_mut().find(|(k, _)| k == key) {
            Some(member) => member.1 = value,
            None => members.push((key.to_vec(), value)),
        }
    }

    /// Appends to an array. Panics when this is not an array.
    pub fn push(&mut self, value: impl Into<Json>) -> &mut Json {
        match &mut self.0 {
            Value::Array(items) => items.push(value.into()),
            _ => panic!("Json::push on a value that is not an array"),
        }
        self
    }

    /// Removes member `key` and returns its value; None when it was not there.
    pub fn remove(&mut self, key: &str) -> Option<Json> {
        let i = self.index_of(key.as_bytes())?;
        Some(self.object_members("remove").remove(i).1)
    }

    /// Renames member `from` to `to` in place (replacing an existing `to`); false when `from` is
    /// absent.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        let i = match self.index_of(from.as_bytes()) {
            Some(i) => i,
            None => return false,
        };
        if from == to {
            return true;
        }
        let j = self.index_of(to.as_bytes());
        let members = self.object_members("rename");
        members[i].0 = to.as_bytes().to_vec();
        if let Some(j) = j {
            members.remove(j);
        }
        true
    }

    /// Array elements, or object member values, to change in place.
    pub fn values_mut(&mut self) -> Vec<&mut Json> {
        match &mut self.0 {
            Value::Array(items) => items.iter_mut().collect(),
            Value::Object(members) => members.iter_mut().map(|m| &mut m.1).collect(),
            _ => Vec::new(),
        }
    }

    /// Takes the value out, leaving null (moves a large string or body out without a copy).
    pub fn take(&mut self) -> Json {
        std::mem::take(self)
    }

    /// A string value's bytes, moved out; None for other kinds.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self.0 {
            Value::String(b) => Some(b),
            _ => None,
        }
    }

    /// The document as JSON text (no whitespace, members in order, non-ASCII as UTF-8).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Measured first: a large document (a body) then takes one allocation of its size, not a
        // doubling series whose last step briefly holds three times the text.
        let mut counter = Counter(0);
        self.write_json(&mut counter);
        let mut out = Vec::with_capacity(counter.0);
        self.write_json(&mut out);
        out
    }

    /// Appends the JSON text to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.write_json(out);
    }

    pub(crate) fn write_json<S: Sink + ?Sized>(&self, out: &mut S) {
        match &self.0 {
            Value::Null => out.put(b"null"),
            Value::Bool(true) => out.put(b"true"),
            Value::Bool(false) => out.put(b"false"),
            Value::Number(text) => out.put(text.as_bytes()),
            Value::String(bytes) => write_string(out, bytes),
            Value::Array(items) => {
                out.put(b"[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.put(b",");
                    }
                    item.write_json(out);
                }
                out.put(b"]");
            }
            Value::Object(members) => {
                out.put(b"{");
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.put(b",");
                    }
                    write_string(out, key);
                    out.put(b":");
                    value.write_json(out);
                }
                out.put(b"}");
            }
        }
    }
}

impl std::ops::Index<usize> for Json {
    type Output = Json;

    /// The element (or member value) at `index`; null when there is none.
    fn index(&self, index: usize) -> &Json {
        self.at(index).unwrap_or(&NULL)
    }
}

impl std::ops::Index<&str> for Json {
    type Output = Json;

    /// Member `key`; null when absent, so `doc["a"]["b"]` never panics.
    fn index(&self, key: &str) -> &Json {
        self.get(key).unwrap_or(&NULL)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::string(s)
    }
}

impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::string_bytes(s.into_bytes())
    }
}

impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::bool(b)
    }
}

impl From<i64> for Json {
    fn from(n: i64) -> Json {
        Json::integer(n)
    }
}

impl From<f64> for Json {
    fn from(n: f64) -> Json {
        Json::number(n)
    }
}

/// `s` as a JSON string literal.
pub fn quote(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    write_string(&mut out, s.as_bytes());
    // Escaping only adds ASCII to UTF-8 input.
    String::from_utf8(out).unwrap_or_default()
}

// --- numbers ------------------------------------------------------------------------------------

/// JavaScript's number-to-text rules: integers below 2^53 in full, otherwise the shortest digits
/// that read back as the same f64, with an exponent below 1e-6 and from 1e21 on.
fn format_number(value: f64) -> String {
    if value == value.trunc() && value.abs() < 9007199254740992.0 {
        return (value as i64).to_string();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{:e}", value);
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exponent + 1; // the value is 0.DIGITS x 10^n
    let body = if k <= n && n <= 21 {
        format!("{}{}", digits, "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{}", "0".repeat((-n) as usize), digits)
    } else {
        let e = if n > 0 { format!("+{}", n - 1) } else { (n - 1).to_string() };
        if k == 1 {
            format!("{}e{}", digits, e)
        } else {
            format!("{}.{}e{}", &digits[..1], &digits[1..], e)
        }
    };
    format!("{}{}", sign, body)
}

// --- parsing ------------------------------------------------------------------------------------

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_space();
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(Json::string_bytes),
            b't' => self.literal(b"true", Json::bool(true)),
            b'f' => self.literal(b"false", Json::bool(false)),
            b'n' => self.literal(b"null", Json::null()),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8], value: Json) -> Option<Json> {
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            Some(value)
        } else {
            None
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Option<Json> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let int_len = self.digits();
        if int_len == 0 || (int_len > 1 && self.b[int_start] == b'0') {
            return None;
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        // Only ASCII digits, signs, '.' and 'e' were accepted.
        let text = String::from_utf8(self.b[start..self.pos].to_vec()).ok()?;
        Some(Json(Value::Number(text)))
    }

    /// The unescaped bytes of the string literal at `pos`; None when it is malformed.
    fn string(&mut self) -> Option<Vec<u8>> {
        self.pos += 1; // the opening quote
        let start = self.pos;
        self.pos = scan_plain(self.b, start, false);
        if self.peek() == Some(b'"') {
            self.pos += 1;
            return Some(self.b[start..self.pos - 1].to_vec());
        }
        // Sized for the whole literal, which its unescaped text never outgrows: a large string (a body
        // in the call input) then takes one allocation, not a doubling series.
        let mut out = Vec::with_capacity(literal_end(self.b, self.pos) - start);
        out.extend_from_slice(&self.b[start..self.pos]);
        loop {
            let c = self.peek()?;
            self.pos += 1;
            match c {
                b'"' => return Some(out),
                b'\\' => {
                    let e = self.peek()?;
                    self.pos += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xd800..0xdc00).contains(&cp) && self.b[self.pos..].starts_with(b"\\u") {
                                let save = self.pos;
                                self.pos += 2;
                                match self.hex4() {
                                    Some(low) if (0xdc00..0xe000).contains(&low) => {
                                        cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                                    }
                                    // Not a low surrogate: the high one stands alone and the next
                                    // escape is read on its own (and must be valid).
                                    _ => self.pos = save,
                                }
                            }
                            push_code_point(&mut out, cp);
                        }
                        _ => return None,
                    }
                }
                c if c < 0x20 => return None,
                _ => {
                    let run = self.pos - 1;
                    self.pos = scan_plain(self.b, self.pos, false);
                    out.extend_from_slice(&self.b[run..self.pos]);
                }
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.pos..self.pos + 4)?;
        let mut v = 0u32;
        for &c in digits {
            v = (v << 4) | (c as char).to_digit(16)?;
        }
        self.pos += 4;
        Some(v)
    }

    fn array(&mut self, depth: usize) -> Option<Json> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Some(Json(Value::Array(items)));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_space();
            let c = self.peek()?;
            self.pos += 1;
            match c {
                b']' => return Some(Json(Value::Array(items))),
                b',' => {}
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<Json> {
        self.pos += 1;
        let mut obj = Json::object();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Some(obj);
        }
        loop {
            self.skip_space();
            if self.peek() != Some(b'"') {
                return None;
            }
            let key = self.string()?;
            self.skip_space();
            if self.peek() != Some(b':') {
                return None;
            }
            self.pos += 1;
            let value = self.value(depth + 1)?;
            // A repeated name: the last value wins, at the first one's position.
            obj.set_bytes_key(&key, value);
            self.skip_space();
            let c = self.peek()?;
            self.pos += 1;
            match c {
                b'}' => return Some(obj),
                b',' => {}
                _ => return None,
            }
        }
    }
}

/// The index of the first quote, backslash or control byte at or after `from` (or the length);
/// with `stop_at_ed` also the first 0xED, which may start a surrogate's 3-byte form.
fn scan_plain(b: &[u8], from: usize, stop_at_ed: bool) -> usize {
    let extra = if stop_at_ed { 0xed } else { 0x100 };
    b[from..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20 || c as u32 == extra)
        .map_or(b.len(), |i| from + i)
}

/// The index of the closing quote of the string literal whose text continues at `from` (the length
/// when there is none).
fn literal_end(b: &[u8], mut from: usize) -> usize {
    while let Some(i) = b[from..].iter().position(|&c| c == b'"' || c == b'\\') {
        if b[from + i] == b'"' {
            return from + i;
        }
        from += i + 2;
        if from >= b.len() {
            break;
        }
    }
    b.len()
}

/// UTF-8 of `cp`; a lone surrogate gets the same 3-byte form as any code point of its range.
fn push_code_point(out: &mut Vec<u8>, cp: u32) {
    if cp < 0x80 {
        out.push(cp as u8);
    } else if cp < 0x800 {
        out.extend_from_slice(&[0xc0 | (cp >> 6) as u8, 0x80 | (cp & 0x3f) as u8]);
    } else if cp < 0x10000 {
        out.extend_from_slice(&[0xe0 | (cp >> 12) as u8, 0x80 | ((cp >> 6) & 0x3f) as u8, 0x80 | (cp & 0x3f) as u8]);
    } else {
        out.extend_from_slice(&[
            0xf0 | (cp >> 18) as u8,
            0x80 | ((cp >> 12) & 0x3f) as u8,
            0x80 | ((cp >> 6) & 0x3f) as u8,
            0x80 | (cp & 0x3f) as u8,
        ]);
    }
}

// --- writing ------------------------------------------------------------------------------------

/// Where written JSON goes: a `Vec`, a `Counter` that only measures it, or Extism memory (the
/// call's output, written in place).
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts the bytes written, keeping none.
pub(crate) struct Counter(pub usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn escape_unit<S: Sink + ?Sized>(out: &mut S, unit: u32) {
    let mut e = *b"\\u0000";
    for (i, shift) in [12, 8, 4, 0].into_iter().enumerate() {
        e[2 + i] = HEX[((unit >> shift) & 15) as usize];
    }
    out.put(&e);
}

/// A JSON string literal of UTF-8 bytes: escapes quote, backslash and control bytes, and writes
/// a surrogate's 3-byte form (from a lone `\ud800` escape) as that escape again.
pub(crate) fn write_string<S: Sink + ?Sized>(out: &mut S, b: &[u8]) {
    out.put(b"\"");
    let mut run = 0;
    let mut i = scan_plain(b, 0, true);
    while i < b.len() {
        let c = b[i];
        if c == 0xed {
            if i + 2 < b.len() && (0xa0..=0xbf).contains(&b[i + 1]) {
                out.put(&b[run..i]);
                escape_unit(out, 0xd000 | ((b[i + 1] as u32 & 0x3f) << 6) | (b[i + 2] as u32 & 0x3f));
                i += 2;
                run = i + 1;
            }
        } else {
            out.put(&b[run..i]);
            run = i + 1;
            match c {
                b'"' => out.put(b"\\\""),
                b'\\' => out.put(b"\\\\"),
                b'\n' => out.put(b"\\n"),
                b'\r' => out.put(b"\\r"),
                b'\t' => out.put(b"\\t"),
                _ => escape_unit(out, c as u32),
            }
        }
        i = scan_plain(b, i + 1, true);
    }
    out.put(&b[run..]);
    out.put(b"\"");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_like_javascript() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (0.1, "0.1"),
            (-123.456, "-123.456"),
            (9007199254740992.0, "9007199254740992"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (1e-7, "1e-7"),
            (1.25e-6, "0.00000125"),
            (5e-324, "5e-324"),
        ];
        for (value, text) in cases {
            assert_eq!(Json::number(value).to_string(), text);
        }
    }

    #[test]
    fn edits_keep_member_order() {
        let mut doc = Json::parse_str(r#"{"b":1,"a":[2,{"c":null}],"b":3}"#).unwrap();
        assert_eq!(doc.to_string(), r#"{"b":3,"a":[2,{"c":null}]}"#);
        assert!(doc.rename("b", "z"));
        doc.set("y", "\u{e9}\n");
        assert_eq!(doc.remove("a").map(|a| a.len()), Some(2));
        assert_eq!(doc.to_string(), "{\"z\":3,\"y\":\"\u{e9}\\n\"}");
        assert_eq!(doc["z"].as_i64(), Some(3));
        assert!(doc["missing"]["deeper"].is_null());
    }
}
