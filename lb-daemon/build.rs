//! Builds the XDP object with aya-build (as aya-template does) so the daemon embeds it.
//! If bpf-linker is missing, runs the project's setup script first: a newcomer never
//! has to run `cargo xtask setup` by hand.

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

const DEFAULT_TOOLCHAIN: &str = "nightly-2026-10-29";

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().context("workspace root")?;
    println!("cargo::rerun-if-env-changed=AYA_EBPF_TOOLCHAIN");
    println!("cargo::rerun-if-env-changed=LB_TOOLCHAIN_DIR");
    let toolchain = env::var("AYA_EBPF_TOOLCHAIN").unwrap_or_else(|_| DEFAULT_TOOLCHAIN.into());
    let prefix = env::var_os("LB_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/lb-toolchain")
        });
    let linker = prefix.join("bin/bpf-linker");
    if !linker.exists() || env::var_os("AYA_BUILD_SKIP").is_none() && !runs(&linker) {
        let script = root.join("xtask/setup.sh");
        let status = Command::new("bash")
            .arg(&script)
            .env("AYA_EBPF_TOOLCHAIN", &toolchain)
            .env("LB_TOOLCHAIN_DIR", &prefix)
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!(
                "{} failed ({status}); run `cargo xtask setup` to see why",
                script.display()
            );
        }
    }
    println!("cargo::rerun-if-changed={}", linker.display());
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![prefix.join("bin")];
    paths.extend(env::split_paths(&path));
    // SAFETY: build scripts are single-threaded here; aya-build's child cargo inherits PATH.
    unsafe { env::set_var("PATH", env::join_paths(paths)?) };

    let ebpf = root.join("lb-ebpf");
    let ebpf = ebpf.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: ebpf,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}

fn runs(linker: &std::path::Path) -> bool {
    Command::new(linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
