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

#[test]
fn a_write_outside_the_tables_owners_fails_the_check() {
    let tree = copy_tree();
    // feeds.rs owns state_feeds only; a statement over two lines, as most are
    append(
        &tree.path().join("src/store/feeds.rs"),
        "\npub const X: &str = \"DELETE FROM users \\\n   WHERE user_id = $1\";\n",
    );
    let out = check(tree.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("src/store/feeds.rs:") && said.contains("`DELETE FROM users` outside the table's owners"),
        "{said}"
    );
}

#[test]
fn a_composer_writing_sql_of_its_own_fails_the_check() {
    let tree = copy_tree();
    append(
        &tree.path().join("src/store/ledger.rs"),
        "\npub const X: &str = r#\"UPDATE campaign_targets SET status = 'failed'\"#;\n",
    );
    let out = check(tree.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("src/store/ledger.rs:") && said.contains("`UPDATE campaign_targets`"), "{said}");
}

#[test]
fn a_table_name_built_with_format_fails_the_check() {
    let tree = copy_tree();
    append(
        &tree.path().join("src/store/users.rs"),
        "\npub fn x(table: &str) -> String {\n    format!(\"INSERT INTO {table} (a) VALUES (1)\")\n}\n",
    );
    let out = check(tree.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("src/store/users.rs:") && said.contains("a table name the check cannot read"), "{said}");
}

#[test]
fn test_code_and_comments_may_write_any_table() {
    let tree = copy_tree();
    append(
        &tree.path().join("src/store/feeds.rs"),
        "\n// UPDATE users SET x = 1\n#[cfg(test)]\nmod extra {\n    const X: &str = \"INSERT INTO events (a) VALUES (1)\";\n}\n",
    );
    let out = check(tree.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("src/store/feeds.rs"), "{said}");
}
