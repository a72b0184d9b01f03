//! What the kernel will run: the built kernel object must not call aya's
//! fallback `memset`/`memcpy`/`memmove` (and `memcmp`/`bcmp`). The BPF backend
//! has no inline version of them for unaligned or merged accesses, and the
//! fallbacks are byte-by-byte loops: zeroing or copying a struct that way
//! costs more than the event itself.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

const BYTE_LOOPS: &[&str] = &["memset", "memcpy", "memmove", "memcmp", "bcmp"];

#[test]
fn no_program_calls_a_byte_loop_builtin() {
    let bytes = tcptrace::loader::kernel_object();
    assert!(
        !bytes.is_empty(),
        "tcptrace was built without its kernel program (AYA_BUILD_SKIP): build it with `cargo xtask build`"
    );
    let elf = object::File::parse(bytes).expect("the kernel object is an ELF file");
    let mut programs = 0;
    let mut calls = Vec::new();
    for section in elf.sections() {
        let name = section.name().unwrap_or("?").to_owned();
        let is_program = name.starts_with("raw_tp/") || name.starts_with("tracepoint");
        // .text holds the functions programs call (the rare paths' logger).
        if is_program {
            programs += 1;
        } else if name != ".text" {
            continue;
        }
        for (offset, reloc) in section.relocations() {
            let RelocationTarget::Symbol(index) = reloc.target() else {
                continue;
            };
            let symbol = elf.symbol_by_index(index).expect("a relocation's symbol");
            let target = symbol.name().unwrap_or("?");
            if BYTE_LOOPS.contains(&target) {
                calls.push(format!("{name} at byte {offset:#x} calls {target}"));
            }
        }
    }
    assert!(programs >= 8, "only {programs} program sections found");
    assert!(
        calls.is_empty(),
        "the kernel program calls byte-loop builtins (write fields in place, \
         copy in 8-byte words, zero with volatile stores):\n  {}",
        calls.join("\n  ")
    );
}
