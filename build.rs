//! Records the git commit the binary is built from, for `tidewater --version`. Outside a
//! git checkout (a source tarball, a container build without `.git`) the commit is
//! `unknown` unless the environment variable `TIDEWATER_GIT_COMMIT` gives it; the build
//! never fails for lack of git.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    // A build without `.git` (the Dockerfile's) can pass the commit in.
    println!("cargo:rerun-if-env-changed=TIDEWATER_GIT_COMMIT");
    let given = std::env::var("TIDEWATER_GIT_COMMIT").ok().filter(|c| !c.trim().is_empty());
    let commit = given.or_else(|| git(&["rev-parse", "--short=12", "HEAD"])).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TIDEWATER_GIT_COMMIT={commit}");
    // Rebuild the line when HEAD moves (works in worktrees: git names the paths).
    for path in ["HEAD", "index"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &head_ref]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
