//! Label values: codes known at compile time, and values from the kernel
//! or from processes (process names, units, reasons), interned.
//!
//! Interning is what keeps counting a finished socket free of allocation:
//! a value seen before is found by `&str` in a set of `Arc<str>` and its
//! `Arc` cloned (a reference count, no copy); only a value seen for the
//! first time is copied, once. A label set is then an array of
//! `(&'static str, Value)` pairs built on the stack, which prometheus-client
//! looks up in its family's map without allocating either.
//!
//! Each [`Bounded`] set holds at most its own number of values: past it,
//! values are counted under `other`, so that no process can make tcptrace's
//! series (or its memory) grow by picking new names.

use std::{
    collections::HashSet,
    hash::{Hash, Hasher},
    sync::Arc,
};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// The value given to everything past a label's bound.
pub const OTHER: &str = "other";
/// The value for a socket with no known owner (or no reason, no state).
pub const UNKNOWN: &str = "unknown";

/// A label value: a code, or an interned string.
#[derive(Clone, Debug)]
pub enum Value {
    Code(&'static str),
    Interned(Arc<str>),
}

impl Value {
    pub fn as_str(&self) -> &str {
        match self {
            Value::Code(s) => s,
            Value::Interned(s) => s,
        }
    }
}

// Equal by text: a process really named `other` and the overflow value are
// one series, never two series with the same labels (which a scraper
// rejects).
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

/// Escaped by prometheus-client's encoders as the exposition formats
/// require (`\\`, `\"`, `\n`); every other byte is kept, so that a label
/// matches the name the kernel gave the process.
impl EncodeLabelValue for Value {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// One label, a set of them.
pub type Labels<const N: usize> = [(&'static str, Value); N];

/// The values one label may take: the first `max` seen, then `other`.
#[derive(Debug)]
pub struct Bounded {
    /// Looked up for every label of every finished socket: foldhash.
    values: HashSet<Arc<str>, foldhash::fast::FixedState>,
    max: usize,
}

impl Bounded {
    pub fn new(max: usize) -> Bounded {
        Bounded {
            values: HashSet::with_capacity_and_hasher(max.min(1024), Default::default()),
            max,
        }
    }

    /// `value`'s label, and whether it went to `other` (the set was full).
    pub fn get(&mut self, value: &str) -> (Value, bool) {
        if let Some(v) = self.values.get(value) {
            return (Value::Interned(v.clone()), false);
        }
        if self.values.len() >= self.max {
            return (Value::Code(OTHER), true);
        }
        let v: Arc<str> = Arc::from(value);
        self.values.insert(v.clone());
        (Value::Interned(v), false)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// `prefix` and `n` in decimal, in `buf`, without allocating (an RST
/// reason the kernel gave a number but no name: `code_77`).
pub fn numbered<'a>(buf: &'a mut [u8; 32], prefix: &str, n: u32) -> &'a str {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let prefix = &prefix.as_bytes()[..prefix.len().min(buf.len() - digits.len())];
    let len = prefix.len() + digits.len() - i;
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..len].copy_from_slice(&digits[i..]);
    // Only ASCII digits were added to a str prefix cut at a byte count
    // that is ASCII here (callers pass ASCII prefixes).
    std::str::from_utf8(&buf[..len]).unwrap_or(UNKNOWN)
}
