//! Just enough of a BTF reader to find struct member offsets in the running
//! kernel (`/sys/kernel/btf/vmlinux`). Rust eBPF gets no CO-RE relocations, so
//! the loader looks offsets up here and hands them to the kernel program.

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
const KIND_FUNC: u32 = 12;
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

/// Where one type's record starts in the blob, with its decoded header.
#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    /// Byte offset of the member array (just past the 12-byte header).
    members_at: u32,
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    vlen: u16,
    /// Referenced type, for typedef/const/volatile/...
    target: u32,
}

/// A raw tracepoint argument's type, as far as tcptrace cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgType {
    /// A pointer to `struct <name>`.
    StructPtr(String),
    /// An integer, enum or bool.
    Integer,
    Other,
}

/// Struct and union layouts of a BTF blob. Names stay in the blob's string
/// section and are compared in place: vmlinux has ~100k types, and building
/// strings for all of them costs megabytes the tracer keeps for its lifetime.
#[derive(Debug, Default)]
pub struct Btf {
    bytes: Vec<u8>,
    strings_at: usize,
    strings_len: usize,
    /// Index = type id; id 0 is void.
    types: Vec<TypeEntry>,
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, BtfError> {
    let b = bytes.get(at..at + 4).ok_or(BtfError::Truncated(at))?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Btf {
    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        Btf::from_vec(bytes.to_vec())
    }

    fn from_vec(bytes: Vec<u8>) -> Result<Btf, BtfError> {
        let magic = bytes.get(0..2).ok_or(BtfError::Truncated(0))?;
        if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
            return Err(BtfError::Magic);
        }
        let hdr_len = u32_at(&bytes, 4)? as usize;
        let types_start = hdr_len + u32_at(&bytes, 8)? as usize;
        let types_end = types_start + u32_at(&bytes, 12)? as usize;
        let strings_at = hdr_len + u32_at(&bytes, 16)? as usize;
        let strings_len = u32_at(&bytes, 20)? as usize;
        if bytes.len() < strings_at + strings_len || bytes.len() < types_end {
            return Err(BtfError::Truncated(bytes.len()));
        }
        let void = TypeEntry {
            members_at: 0,
            name_off: 0,
            kind: 0,
            kind_flag: false,
            vlen: 0,
            target: 0,
        };
        let mut types = vec![void];
        let mut at = types_start;
        while at < types_end {
            let name_off = u32_at(&bytes, at)?;
            let info = u32_at(&bytes, at + 4)?;
            let target = u32_at(&bytes, at + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC
                | 16 | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::Kind(other)),
            };
            types.push(TypeEntry {
                members_at: (at + 12) as u32,
                name_off,
                kind: kind as u8,
                kind_flag: info >> 31 == 1,
                vlen: vlen as u16,
                target,
            });
            at += 12 + extra;
        }
        Ok(Btf {
            bytes,
            strings_at,
            strings_len,
            types,
        })
    }

    /// The running kernel's BTF; `None` on a kernel built without it.
    pub fn from_sys_fs() -> std::io::Result<Option<Btf>> {
        match std::fs::read("/sys/kernel/btf/vmlinux") {
            Ok(bytes) => Btf::from_vec(bytes)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn name(&self, off: u32) -> &[u8] {
        let strings = &self.bytes[self.strings_at..self.strings_at + self.strings_len];
        let tail = strings.get(off as usize..).unwrap_or(&[]);
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        &tail[..end]
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions. `None` when absent or a bitfield.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        self.member(name, member).map(|(offset, _)| offset)
    }

    /// The first type of `kind` named `name` (structs: one with members,
    /// not a forward declaration).
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| {
                u32::from(t.kind) == kind
                    && (kind != KIND_STRUCT || t.vlen > 0)
                    && self.name(t.name_off) == name.as_bytes()
            })
            .map(|id| id as u32)
    }

    /// Offset of per-CPU variable `name` in the per-CPU area (its place in
    /// the `.data..percpu` section), when it is `size` bytes wide.
    pub fn percpu_offset(&self, name: &str, size: u32) -> Option<u32> {
        let var = self.find(KIND_VAR, name)?;
        let section = self.find(KIND_DATASEC, ".data..percpu")?;
        let sec = self.types[section as usize];
        (0..usize::from(sec.vlen)).find_map(|i| {
            // Each member: the VAR's type id, its offset, its size.
            let at = sec.members_at as usize + i * 12;
            let ty = u32_at(&self.bytes, at).ok()?;
            let offset = u32_at(&self.bytes, at + 4).ok()?;
            let width = u32_at(&self.bytes, at + 8).ok()?;
            (ty == var && width == size).then_some(offset)
        })
    }

    /// Size in bytes of `struct name`.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        let id = self.find(KIND_STRUCT, name)?;
        Some(self.types[id as usize].target)
    }

    /// Byte offset and size of `member` in `struct name` (looking through
    /// anonymous structs and unions); `None` when absent or a bitfield.
    pub fn member(&self, name: &str, member: &str) -> Option<(u32, u32)> {
        let id = self.find(KIND_STRUCT, name)?;
        let (bits, type_id) = self.find_member_typed(id, member.as_bytes(), 0)?;
        let size = self.size_of(type_id)?;
        (bits % 8 == 0).then_some((bits / 8, size))
    }

    fn find_member_typed(&self, id: u32, member: &[u8], depth: u32) -> Option<(u32, u32)> {
        let ty = *self.types.get(id as usize)?;
        if !matches!(u32::from(ty.kind), KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..usize::from(ty.vlen) {
            let at = ty.members_at as usize + i * 12;
            let name_off = u32_at(&self.bytes, at).ok()?;
            let type_id = u32_at(&self.bytes, at + 4).ok()?;
            let raw = u32_at(&self.bytes, at + 8).ok()?;
            let (bit_offset, bitfield) = if ty.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            let name = self.name(name_off);
            if name == member {
                return (!bitfield).then_some((bit_offset, type_id));
            }
            if name.is_empty()
                && depth < 8
                && let Some((off, t)) =
                    self.find_member_typed(self.resolve(type_id), member, depth + 1)
            {
                return Some((bit_offset + off, t));
            }
        }
        None
    }

    /// Size in bytes of a type (ints, pointers, enums, structs, arrays).
    fn size_of(&self, id: u32) -> Option<u32> {
        let id = self.resolve(id);
        let t = self.types.get(id as usize)?;
        match u32::from(t.kind) {
            KIND_INT | KIND_ENUM | KIND_ENUM64 | KIND_STRUCT | KIND_UNION => Some(t.target),
            2 => Some(8), // pointer (64-bit kernels only)
            KIND_ARRAY => {
                let at = t.members_at as usize;
                let elem = u32_at(&self.bytes, at).ok()?;
                let count = u32_at(&self.bytes, at + 8).ok()?;
                Some(self.size_of(elem)?.checked_mul(count)?)
            }
            _ => None,
        }
    }

    /// The arguments of raw tracepoint `name` (its `TP_PROTO`), from the
    /// kernel's `btf_trace_<name>` typedef: a pointer to a function whose
    /// first parameter is the tracepoint's private data, then the rest.
    /// `None` when this kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<Vec<ArgType>> {
        let typedef = self.find(KIND_TYPEDEF, &format!("btf_trace_{name}"))?;
        let ptr = self
            .types
            .get(self.types[typedef as usize].target as usize)?;
        let proto = self.types.get(ptr.target as usize)?;
        if u32::from(proto.kind) != KIND_FUNC_PROTO || proto.vlen == 0 {
            return None;
        }
        let mut args = Vec::with_capacity(usize::from(proto.vlen));
        for i in 1..usize::from(proto.vlen) {
            let type_id = u32_at(&self.bytes, proto.members_at as usize + i * 8 + 4).ok()?;
            args.push(self.arg_type(type_id));
        }
        Some(args)
    }

    fn arg_type(&self, id: u32) -> ArgType {
        let id = self.resolve(id);
        let Some(t) = self.types.get(id as usize) else {
            return ArgType::Other;
        };
        match u32::from(t.kind) {
            KIND_INT | KIND_ENUM | KIND_ENUM64 => ArgType::Integer,
            2 => {
                let pointee = self.resolve(t.target);
                match self.types.get(pointee as usize) {
                    Some(p) if u32::from(p.kind) == KIND_STRUCT => ArgType::StructPtr(
                        String::from_utf8_lossy(self.name(p.name_off)).into_owned(),
                    ),
                    _ => ArgType::Other,
                }
            }
            _ => ArgType::Other,
        }
    }

    /// The type id of function `name` (a kfunc's id is how a program calls it).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.find(KIND_FUNC, name)
    }

    /// The enumerators of `enum name`, by value.
    pub fn enum_values(&self, name: &str) -> Vec<(u32, String)> {
        let Some(id) = self.find(KIND_ENUM, name) else {
            return Vec::new();
        };
        let t = self.types[id as usize];
        (0..usize::from(t.vlen))
            .filter_map(|i| {
                let at = t.members_at as usize + i * 8;
                let name_off = u32_at(&self.bytes, at).ok()?;
                let value = u32_at(&self.bytes, at + 4).ok()?;
                Some((
                    value,
                    String::from_utf8_lossy(self.name(name_off)).into_owned(),
                ))
            })
            .collect()
    }

    /// Follows typedef/const/volatile/restrict/type-tag to the real type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        u32::from(t.kind),
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
