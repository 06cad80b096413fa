//! This repository guards itself: the audit of the whole workspace (its
//! libraries, binaries, template and examples, then its tests and benches)
//! is clean, with the deliberate cases allowed in `pinned-audit.toml`.

use std::path::Path;
use std::process::Command;

fn audit_workspace(extra: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-pinned-audit"))
        .args(["pinned-audit", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .args(extra)
        .current_dir(root)
        .output()
        .expect("the audit binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "fix these findings, or allow them with a reason (audit/README.md):\n{stderr}"
    );
    assert!(stderr.contains("0 finding(s), 0 problem(s)"), "{stderr}");
}

#[test]
fn the_workspace_audits_clean() {
    audit_workspace(&[]);
}

#[test]
fn the_workspace_audits_clean_with_tests_and_benches() {
    audit_workspace(&["--tests"]);
}
