//! `scripts/check-layers.py`, the CI check of ARCHITECTURE.md's layers, can fail:
//! on a copy of the tree it passes as is, and fails (naming the line) once a module
//! imports one above it or two files import each other.

use std::path::Path;
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A copy of what the check reads: `src/`, `scripts/` and ARCHITECTURE.md.
fn copy_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .args(["-r", "src", "scripts", "ARCHITECTURE.md"])
        .arg(dir.path())
        .current_dir(ROOT)
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn check(tree: &Path) -> Output {
    Command::new("python3").arg(tree.join("scripts/check-layers.py")).output().expect("python3 runs")
}

fn append(file: &Path, line: &str) {
    let mut text = std::fs::read_to_string(file).unwrap();
    text.push_str(line);
    std::fs::write(file, text).unwrap();
}

#[test]
fn the_tree_keeps_its_layers() {
    let tree = copy_tree();
    let out = check(tree.path());
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_import_of_a_layer_above_fails_the_check() {
    let tree = copy_tree();
    append(&tree.path().join("src/domain/policy.rs"), "\nuse crate::engine::UserOutcome;\n");
    let out = check(tree.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("src/domain/policy.rs:") && said.contains("`domain` imports `engine`"), "{said}");
}

#[test]
fn two_files_importing_each_other_fail_the_check() {
    let tree = copy_tree();
    // sessions.rs imports users.rs already
    append(&tree.path().join("src/store/users.rs"), "\nuse crate::store::sessions::SessionLife;\n");
    let out = check(tree.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("files import each other") && said.contains("src/store/users.rs"), "{said}");
}
