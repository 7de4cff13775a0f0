//! Rebuild when bpf-linker changes (as in aya-template): it is not tracked by cargo.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
