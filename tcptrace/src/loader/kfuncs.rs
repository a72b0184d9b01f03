//! The kernel object calls `bpf_rdonly_cast` by a marker helper id
//! ([`RDONLY_CAST_MARKER`]): the Rust toolchain emits no kfunc relocation,
//! and aya resolves none. Before load, each such call is rewritten into a
//! kfunc call of the running kernel's `bpf_rdonly_cast` (its BTF id), or,
//! on a kernel without it, into a plain helper that no path reaches (the
//! programs read with `bpf_probe_read_kernel` there:
//! [`tcptrace_common::ReadConfig`]).

use object::{Object, ObjectSection, SectionKind};
use tcptrace_common::RDONLY_CAST_MARKER;

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `src_reg` of a kfunc call (`BPF_PSEUDO_KFUNC_CALL`), in the register byte.
const KFUNC_CALL_REGS: u8 = 2 << 4;
/// `BPF_FUNC_get_prandom_u32`: valid in every program type, harmless.
const UNREACHED_HELPER: i32 = 7;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("the kernel object is not a readable ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("the kernel object's section {0} lies outside the file")]
    Section(String),
}

/// A copy of `object` whose marker calls call `kfunc` (a BTF id), or the
/// unreached helper when `None`. Also returns how many calls it rewrote.
pub fn with_rdonly_cast(object: &[u8], kfunc: Option<u32>) -> Result<(Vec<u8>, usize), PatchError> {
    let elf = object::File::parse(object)?;
    let mut patched = object.to_vec();
    let mut calls = 0;
    for section in elf.sections().filter(|s| s.kind() == SectionKind::Text) {
        let Some((start, size)) = section.file_range() else {
            continue;
        };
        let name = || section.name().unwrap_or("?").to_string();
        let start = usize::try_from(start).map_err(|_| PatchError::Section(name()))?;
        let end = usize::try_from(size)
            .ok()
            .and_then(|size| start.checked_add(size))
            .filter(|&end| end <= patched.len())
            .ok_or_else(|| PatchError::Section(name()))?;
        // Instructions are 8 bytes from the section's start; the second
        // half of a 16-byte ld_imm64 has opcode 0, never CALL.
        for insn in patched[start..end].chunks_exact_mut(8) {
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            if insn[0] != CALL || insn[1] != 0 || imm != RDONLY_CAST_MARKER {
                continue;
            }
            let (regs, imm) = match kfunc {
                // The kfunc's BTF id; offset 0: vmlinux's BTF.
                Some(id) => (KFUNC_CALL_REGS, id as i32),
                None => (0, UNREACHED_HELPER),
            };
            insn[1] = regs;
            insn[2..4].copy_from_slice(&0i16.to_le_bytes());
            insn[4..8].copy_from_slice(&imm.to_le_bytes());
            calls += 1;
        }
    }
    Ok((patched, calls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker_calls(object: &[u8]) -> usize {
        let marker = RDONLY_CAST_MARKER.to_le_bytes();
        object
            .chunks_exact(8)
            .filter(|i| i[0] == CALL && i[1] == 0 && i[4..8] == marker)
            .count()
    }

    #[test]
    fn every_marker_call_becomes_a_kfunc_call() {
        let object = super::super::KERNEL_OBJECT;
        let before = marker_calls(object);
        assert!(
            before > 0,
            "the kernel object calls no bpf_rdonly_cast marker"
        );
        let (patched, calls) = with_rdonly_cast(object, Some(4242)).unwrap();
        assert_eq!(calls, before);
        assert_eq!(marker_calls(&patched), 0);
        let kfunc = [CALL, KFUNC_CALL_REGS, 0, 0, 0x92, 0x10, 0, 0];
        let kfunc_calls = patched.chunks_exact(8).filter(|i| *i == kfunc).count();
        assert_eq!(kfunc_calls, before);
    }

    #[test]
    fn without_the_kfunc_marker_calls_become_a_plain_helper() {
        let (patched, calls) = with_rdonly_cast(super::super::KERNEL_OBJECT, None).unwrap();
        assert!(calls > 0);
        assert_eq!(marker_calls(&patched), 0);
    }

    #[test]
    fn a_corrupt_object_is_an_error() {
        assert!(with_rdonly_cast(b"not an elf file", Some(1)).is_err());
    }
}
