//! Just enough of a BTF reader to find struct member offsets in the running
//! kernel (`/sys/kernel/btf/vmlinux`). Rust eBPF gets no CO-RE relocations, so
//! the loader looks offsets up here and hands them to the kernel program.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (bad magic)")]
    Magic,
    #[error("BTF truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown BTF kind {0}")]
    Kind(u32),
}

#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    /// Referenced type for typedef/const/volatile/...
    target: u32,
    members: Vec<Member>,
}

/// Struct and union layouts of a BTF blob.
#[derive(Debug, Default)]
pub struct Btf {
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn u32(&self, at: usize) -> Result<u32, BtfError> {
        let b = self.bytes.get(at..at + 4).ok_or(BtfError::Truncated(at))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u16(&self, at: usize) -> Result<u16, BtfError> {
        let b = self.bytes.get(at..at + 2).ok_or(BtfError::Truncated(at))?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl Btf {
    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        let r = Reader { bytes };
        if r.u16(0)? != MAGIC {
            return Err(BtfError::Magic);
        }
        let hdr_len = r.u32(4)? as usize;
        let type_off = r.u32(8)? as usize;
        let type_len = r.u32(12)? as usize;
        let str_off = r.u32(16)? as usize;
        let str_len = r.u32(20)? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings_start = hdr_len + str_off;
        let strings = bytes
            .get(strings_start..strings_start + str_len)
            .ok_or(BtfError::Truncated(strings_start))?;
        let name = |off: u32| -> String {
            let tail = strings.get(off as usize..).unwrap_or(&[]);
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            String::from_utf8_lossy(&tail[..end]).into_owned()
        };

        // Type id 0 is "void".
        let mut btf = Btf {
            types: vec![Type {
                kind: 0,
                target: 0,
                members: Vec::new(),
            }],
            structs_by_name: HashMap::new(),
        };
        let mut at = types_start;
        while at < types_end {
            let name_off = r.u32(at)?;
            let info = r.u32(at + 4)?;
            let size_or_type = r.u32(at + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw_offset = r.u32(m + 8)?;
                        members.push(Member {
                            name: name(r.u32(m)?),
                            type_id: r.u32(m + 4)?,
                            // With kind_flag the top byte is a bitfield size.
                            bit_offset: if kind_flag {
                                raw_offset & 0x00ff_ffff
                            } else {
                                raw_offset
                            },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
                | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::Kind(other)),
            };
            at += extra;
            let id = btf.types.len() as u32;
            let type_name = name(name_off);
            if kind == KIND_STRUCT && !type_name.is_empty() {
                // Keep the first complete definition of a name.
                btf.structs_by_name.entry(type_name).or_insert(id);
            }
            btf.types.push(Type {
                kind,
                target: size_or_type,
                members,
            });
        }
        Ok(btf)
    }

    /// The running kernel's BTF; `None` on a kernel built without it.
    pub fn from_sys_fs() -> std::io::Result<Option<Btf>> {
        match std::fs::read("/sys/kernel/btf/vmlinux") {
            Ok(bytes) => Btf::parse(&bytes).map(Some).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions. `None` when absent or a bitfield.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let id = *self.structs_by_name.get(name)?;
        let bits = self.find_member(id, member, 0)?;
        (bits % 8 == 0).then_some(bits / 8)
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        let ty = self.types.get(id as usize)?;
        for m in &ty.members {
            if m.name == member {
                return Some(m.bit_offset);
            }
            if m.name.is_empty() && depth < 8 {
                let inner = self.resolve(m.type_id);
                let kind = self.types.get(inner as usize).map(|t| t.kind);
                if matches!(kind, Some(KIND_STRUCT | KIND_UNION))
                    && let Some(off) = self.find_member(inner, member, depth + 1)
                {
                    return Some(m.bit_offset + off);
                }
            }
        }
        None
    }

    /// Follows typedef/const/volatile/restrict/type-tag to the real type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.target
                }
                _ => break,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct inner { int a; int b; }` and
    /// `struct outer { int x; union { struct inner in; }; int y; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0in\0y\0";
        let off = |s: &str| -> u32 {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[off("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 }
        push(&[off("inner"), (KIND_STRUCT << 24) | 2, 8]);
        push(&[off("a"), 1, 0, off("b"), 1, 32]);
        // 3: anonymous union { struct inner in @0 }
        push(&[0, (KIND_UNION << 24) | 1, 8]);
        push(&[off("in"), 2, 0]);
        // 4: struct outer { x @0, <anon union> @64, y @128 }
        push(&[off("outer"), (KIND_STRUCT << 24) | 3, 20]);
        push(&[off("x"), 1, 0, 0, 3, 64, off("y"), 1, 128]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("inner", "b"), Some(4));
        assert_eq!(btf.member_offset("outer", "y"), Some(16));
        assert_eq!(btf.member_offset("outer", "in"), Some(8));
        assert_eq!(btf.member_offset("outer", "nope"), None);
        assert_eq!(btf.member_offset("nope", "x"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Btf::parse(&[0; 4]).unwrap_err(), BtfError::Magic);
        assert!(matches!(
            Btf::parse(&blob()[..30]),
            Err(BtfError::Truncated(_))
        ));
    }

    #[test]
    fn reads_the_running_kernels_tcp_sock_when_present() {
        // A kernel without BTF has nothing to check; one with it must parse.
        let Some(btf) = Btf::from_sys_fs().expect("the kernel's BTF parses") else {
            return;
        };
        let rcv_nxt = btf.member_offset("tcp_sock", "rcv_nxt").unwrap();
        let copied = btf.member_offset("tcp_sock", "copied_seq").unwrap();
        assert!(rcv_nxt > 0 && copied > 0 && rcv_nxt != copied);
        assert!(btf.member_offset("task_struct", "exit_code").is_some());
    }
}
