//! Parser for tracefs `format` files: the layout of a tracepoint's record.
//!
//! ```text
//!     field:__u16 sport;  offset:24;  size:2;  signed:0;   (tab-separated)
//! print fmt: "...", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, ...)
//! ```

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The C declaration's type, e.g. `__u8` for `__u8 saddr[4]`.
    pub ctype: String,
    pub offset: u16,
    pub size: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub fields: BTreeMap<String, Field>,
    pub print_fmt: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("line {line}: malformed field description: {text:?}")]
    Field { line: usize, text: String },
    #[error("no fields found")]
    Empty,
}

impl Format {
    pub fn parse(text: &str) -> Result<Format, FormatError> {
        let mut format = Format::default();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if let Some(name) = trimmed.strip_prefix("name:") {
                format.name = name.trim().to_owned();
            } else if let Some(rest) = trimmed.strip_prefix("print fmt:") {
                format.print_fmt = rest.trim().to_owned();
            } else if trimmed.starts_with("field:") {
                let (name, field) = parse_field(trimmed).ok_or_else(|| FormatError::Field {
                    line: index + 1,
                    text: trimmed.to_owned(),
                })?;
                format.fields.insert(name, field);
            }
        }
        if format.fields.is_empty() {
            return Err(FormatError::Empty);
        }
        Ok(format)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    /// Offset of `name` if it exists with exactly `size` bytes; a field whose
    /// size changed is treated as absent rather than read wrongly.
    pub fn offset(&self, name: &str, size: u16) -> Option<u16> {
        self.field(name)
            .filter(|f| f.size == size)
            .map(|f| f.offset)
    }

    /// Bytes from the start of the record to the end of its last field.
    pub fn record_len(&self) -> u16 {
        self.fields
            .values()
            .map(|f| f.offset.saturating_add(f.size))
            .max()
            .unwrap_or(0)
    }

    /// The `{ value, "NAME" }` pairs of `__print_symbolic(REC-><field>, ...)`.
    /// Entries whose value is a symbol rather than a number are skipped.
    pub fn symbols(&self, field: &str) -> BTreeMap<u32, String> {
        let mut out = BTreeMap::new();
        let needle = format!("__print_symbolic(REC->{field},");
        let Some(start) = self.print_fmt.find(&needle) else {
            return out;
        };
        let mut rest = &self.print_fmt[start + needle.len()..];
        // Entries run until the closing parenthesis of __print_symbolic.
        while let Some(open) = rest.find('{') {
            if rest[..open].contains(')') {
                break;
            }
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let entry = &rest[open + 1..open + close];
            if let Some((value, name)) = entry.split_once(',') {
                let name = name.trim().trim_matches('"');
                if let Ok(value) = value.trim().parse::<u32>() {
                    out.insert(value, name.to_owned());
                }
            }
            rest = &rest[open + close + 1..];
        }
        out
    }
}

fn parse_field(line: &str) -> Option<(String, Field)> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    for part in line.split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d.trim());
        } else if let Some(o) = part.strip_prefix("offset:") {
            offset = o.trim().parse::<u16>().ok();
        } else if let Some(s) = part.strip_prefix("size:") {
            size = s.trim().parse::<u16>().ok();
        }
    }
    let decl = decl?;
    // "const void * skaddr", "__u8 saddr[4]", "enum sk_rst_reason reason"
    let (ctype, name) = decl.rsplit_once(|c: char| c.is_whitespace() || c == '*')?;
    let name = name.split('[').next()?.trim();
    if name.is_empty() {
        return None;
    }
    Some((
        name.to_owned(),
        Field {
            ctype: ctype.trim().to_owned(),
            offset: offset?,
            size: size?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_STATE: &str = include_str!("fixtures/6.18/inet_sock_set_state.format");
    const SEND_RESET: &str = include_str!("fixtures/6.18/tcp_send_reset.format");
    const SEND_RESET_OLD: &str = include_str!("fixtures/5.15/tcp_send_reset.format");

    #[test]
    fn parses_the_set_state_layout_of_this_kernel() {
        let f = Format::parse(SET_STATE).unwrap();
        assert_eq!(f.name, "inet_sock_set_state");
        assert_eq!(f.offset("skaddr", 8), Some(8));
        assert_eq!(f.offset("oldstate", 4), Some(16));
        assert_eq!(f.offset("protocol", 2), Some(30));
        assert_eq!(f.offset("saddr_v6", 16), Some(40));
        assert_eq!(f.field("saddr").unwrap().ctype, "__u8");
        assert_eq!(f.field("common_pid").unwrap().offset, 4);
        assert_eq!(f.record_len(), 72);
        let states = f.symbols("newstate");
        assert_eq!(
            states.get(&12).map(String::as_str),
            Some("TCP_NEW_SYN_RECV")
        );
        assert_eq!(states.len(), 12);
    }

    #[test]
    fn reads_reset_reasons_from_the_print_fmt() {
        let f = Format::parse(SEND_RESET).unwrap();
        let reasons = f.symbols("reason");
        assert_eq!(reasons.get(&1).map(String::as_str), Some("NO_SOCKET"));
        assert_eq!(
            reasons.get(&11).map(String::as_str),
            Some("TCP_ABORT_ON_CLOSE")
        );
        assert_eq!(reasons.get(&14).map(String::as_str), Some("TCP_STATE"));
        // `state` uses symbolic values (TCP_ESTABLISHED): none parse as numbers.
        assert!(f.symbols("state").is_empty());
        assert_eq!(f.offset("saddr", 28), Some(32));
    }

    #[test]
    fn an_older_layout_has_ports_and_no_reason() {
        let f = Format::parse(SEND_RESET_OLD).unwrap();
        assert_eq!(f.offset("sport", 2), Some(28));
        assert!(f.field("reason").is_none());
        assert!(f.symbols("reason").is_empty());
        assert_eq!(f.offset("saddr", 28), None);
        assert_eq!(f.offset("saddr", 4), Some(34));
    }

    #[test]
    fn a_changed_size_counts_as_absent() {
        let f = Format::parse(SET_STATE).unwrap();
        assert_eq!(f.offset("sport", 4), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Format::parse("name: x\n"), Err(FormatError::Empty));
        assert!(matches!(
            Format::parse("\tfield:int;\toffset:x;\tsize:4;\n"),
            Err(FormatError::Field { line: 1, .. })
        ));
    }
}
