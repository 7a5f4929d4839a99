//! `reverify ui hash-password`, and the dashboard's settings checked before
//! anything listens: a malformed users file, no way in, the listener kept apart.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

fn reverify(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_reverify"));
    c.args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REVERIFY_DATABASE_URL", format!("sqlite://{}", dir.path().join("db.sqlite").display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn hash_password_reads_standard_input_and_makes_an_argon2id_hash() {
    let o = reverify(&["ui", "hash-password"], &[], "correct horse battery\n");
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let hash = String::from_utf8(o.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(reverify::ui::auth::verify_password(hash, "correct horse battery"), "the line end is not part of it");
    assert!(!reverify::ui::auth::verify_password(hash, "correct horse battery\n"));
    assert!(!hash.contains("correct"), "{hash}");

    let o = reverify(&["ui", "hash-password"], &[], "");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no password on standard input"));
    // never on the command line
    let o = reverify(&["ui", "hash-password", "secret"], &[], "");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_malformed_users_file_stops_serve_naming_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ui-users");
    let hash = reverify::ui::auth::hash_password("pw").unwrap();
    std::fs::write(&file, format!("# people\nalice:operator:{hash}\nbob:admin:{hash}\n")).unwrap();
    let path = file.display().to_string();
    let env = [("REVERIFY_UI_LISTEN", "127.0.0.1:0"), ("REVERIFY_UI_USERS_FILE", path.as_str())];
    let o = reverify(&["serve"], &env, "");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("ui_users_file {path}, line 3: role")) && err.contains("\"admin\""), "{err}");

    std::fs::write(&file, "carol:viewer:hunter2\n").unwrap();
    let o = reverify(&["daemon"], &env, "");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 1: hash") && !err.contains("hunter2"), "{err}");

    let o = reverify(&["serve"], &[("REVERIFY_UI_LISTEN", "127.0.0.1:0")], "");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nobody can log in") && err.contains("REVERIFY_UI_USERS_FILE"), "{err}");
}
