use which::which;

/// Rebuild when bpf-linker changes: the object depends on the linker's LLVM.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // Set by tcptrace's build.rs (the host's architecture), as aya-ebpf
    // expects; the program tests it where the host's memory model matters.
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"aarch64\", \"arm\", \
         \"loongarch64\", \"mips\", \"mips64\", \"powerpc64\", \"riscv64\", \"s390x\", \"x86_64\"))"
    );
}
