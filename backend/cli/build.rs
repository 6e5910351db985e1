//! Records the commit the binary is built from (`UNIKE_COMMIT`: `git rev-parse --short=7 HEAD`, `unknown` outside a
//! git checkout), which `unike reproduce` writes into its manifest.

use std::path::Path;
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=7", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=UNIKE_COMMIT={commit}");
    // Rebuilt when HEAD moves (a checkout, or a commit on the current branch).
    let git = root.join(".git");
    for f in ["HEAD", "logs/HEAD"] {
        if git.join(f).exists() {
            println!("cargo:rerun-if-changed={}", git.join(f).display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
