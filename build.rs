//! Records the git revision for `--version` and `build_info`. `EXPORTER_REVISION` in the build
//! environment wins (container builds have no .git).
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=EXPORTER_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let revision = std::env::var("EXPORTER_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
        });
    println!(
        "cargo:rustc-env=EXPORTER_REVISION={}",
        revision.unwrap_or_else(|| "unknown".into())
    );
}
