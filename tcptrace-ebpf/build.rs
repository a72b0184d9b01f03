use which::which;

/// Rebuild when bpf-linker changes: the object depends on the linker's LLVM.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
