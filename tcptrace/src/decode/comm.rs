//! A task's name as the kernel gave it: untrusted bytes, held inline.

use serde::Serialize;
use tcptrace_common::COMM_LEN;

/// A task's name, inline: the kernel's bytes up to the first NUL, as UTF-8
/// (bytes that are not valid UTF-8 become U+FFFD, as
/// [`String::from_utf8_lossy`] does). `Copy`, so that records and the rows
/// made of them never allocate for names; derefs to `&str`.
///
/// Eight-byte aligned, the name first: a Comm is copied with every record
/// and row, and with the name at an odd offset those copies were loads
/// straddling the narrower stores that built it (no store forwarding: a
/// stall each). The size is the same (56 bytes).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Comm {
    /// UTF-8; room for every byte of a raw name replaced by U+FFFD.
    bytes: [u8; Comm::CAPACITY],
    len: u8,
}

impl Comm {
    /// Most bytes a name holds: [`COMM_LEN`] invalid bytes, 3 bytes each.
    pub const CAPACITY: usize = 3 * COMM_LEN;

    /// The name in a kernel `comm` buffer: up to the first NUL and at most
    /// [`COMM_LEN`] bytes, lossy UTF-8.
    pub fn from_raw(raw: &[u8]) -> Comm {
        let raw = &raw[..raw.len().min(COMM_LEN)];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let raw = &raw[..end];
        // Names are nearly always ASCII: copy them whole.
        if raw.is_ascii() {
            let mut c = Comm::default();
            c.bytes[..raw.len()].copy_from_slice(raw);
            c.len = raw.len() as u8;
            return c;
        }
        match std::str::from_utf8(raw) {
            Ok(s) => Comm::truncated(s),
            Err(_) => {
                let mut c = Comm::default();
                for chunk in raw.utf8_chunks() {
                    c.push(chunk.valid());
                    if !chunk.invalid().is_empty() {
                        c.push(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
                    }
                }
                c
            }
        }
    }

    /// [`Comm::from_raw`] of a whole kernel buffer, with a fast path for the
    /// usual ASCII name: the bytes are looked at as one 128-bit word.
    pub(super) fn from_task_comm(raw: &[u8; COMM_LEN]) -> Comm {
        const LO: u128 = u128::from_le_bytes([0x01; COMM_LEN]);
        const HI: u128 = u128::from_le_bytes([0x80; COMM_LEN]);
        let word = u128::from_le_bytes(*raw);
        // The lowest flagged byte is the first NUL (flags above it can be false).
        let zeros = word.wrapping_sub(LO) & !word & HI;
        let len = (zeros.trailing_zeros() / 8) as usize;
        let name = match len {
            COMM_LEN => word,
            n => word & ((1u128 << (n * 8)) - 1),
        };
        if name & HI != 0 {
            return Comm::from_raw(&raw[..]);
        }
        let mut c = Comm::default();
        c.bytes[..COMM_LEN].copy_from_slice(&name.to_le_bytes());
        c.len = len as u8;
        c
    }

    /// `s`, cut at a character boundary to [`Comm::CAPACITY`] bytes.
    fn truncated(s: &str) -> Comm {
        let mut c = Comm::default();
        c.push(s);
        c
    }

    /// Appends what fits of `s` (whole characters only).
    fn push(&mut self, s: &str) {
        let len = usize::from(self.len);
        let mut n = s.len().min(Comm::CAPACITY - len);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.bytes[len..len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n as u8;
    }

    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..usize::from(self.len)];
        // SAFETY: only UTF-8 is ever copied in below `len`: ASCII names
        // (`from_raw`, `from_task_comm`) or whole characters (`push`).
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl Default for Comm {
    fn default() -> Self {
        Comm {
            len: 0,
            bytes: [0; Comm::CAPACITY],
        }
    }
}

/// For names that do not come from the kernel (tests, fixtures): cut at a
/// character boundary to [`Comm::CAPACITY`] bytes.
impl From<&str> for Comm {
    fn from(s: &str) -> Comm {
        Comm::truncated(s)
    }
}

impl std::ops::Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Comm {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Comm {
    fn eq(&self, other: &Comm) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Comm {}

impl std::hash::Hash for Comm {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Comm {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Comm> for str {
    fn eq(&self, other: &Comm) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Comm> for &str {
    fn eq(&self, other: &Comm) -> bool {
        *self == other.as_str()
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.as_str(), f)
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
