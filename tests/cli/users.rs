//! `reverify users …` through the real binary, on SQLite and on Postgres.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use reverify::both_engines;
use reverify::domain::UserId;
use reverify::store::testing::TestDb;
use reverify::store::users::UserFilter;

const HEADER: &str = "user_id,email,first_name,last_name,locale,timezone,region,country,verification_state,rejected_at,refresh_token,tags\n";
const TOKEN_A: &str = "rt_PLAINTEXT_TOKEN_alpha_7f3a9c";
const TOKEN_B: &str = "rt_PLAINTEXT_TOKEN_bravo_18be44";

fn uid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// The binary, in a directory of its own, with only the settings given here.
fn reverify(db: &TestDb, dir: &Path, key: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reverify"));
    cmd.current_dir(dir).env_clear().env("USER", "tester").env("REVERIFY_DATABASE_URL", &db.url);
    if let Some(k) = key {
        cmd.env("REVERIFY_TOKEN_KEY", k);
    }
    cmd
}

fn keygen() -> String {
    reverify::crypto::TokenCipher::generate_key()
}

fn mixed_file(dir: &Path) -> std::path::PathBuf {
    let body = format!(
        "{HEADER}\
         {a},ann@example.com,Ann,Lee,en-GB,Europe/London,intl,GB,UNVERIFIED,,{TOKEN_A},vip\n\
         {b},not-an-email,,,,,us,,UNVERIFIED,,,\n\
         {c},cy@example.com,=HYPERLINK(\"x\"),,,,us,US,REJECTED,2026-02-01T10:00:00Z,{TOKEN_B},\n\
         {a},dup@example.com,,,,,intl,,UNVERIFIED,,,\n\
         {d},dee@example.com,,,,,eu,,UNVERIFIED,,,\n",
        a = uid(1),
        b = uid(2),
        c = uid(3),
        d = uid(4),
    );
    let p = dir.join("users.csv");
    std::fs::write(&p, body).unwrap();
    p
}

both_engines!(partial_import_exits_3_with_line_numbers, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    mixed_file(dir.path());
    let key = keygen();
    reverify(&db, dir.path(), Some(&key))
        .args(["users", "import", "users.csv"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("users.csv: imported 1 of 5 rows (1 with a refresh token); 4 bad"))
        .stderr(predicate::str::contains(format!("users.csv:2: user_id: {} also appears on line 5", uid(1))))
        .stderr(predicate::str::contains("users.csv:3: email: \"not-an-email\" is not an email address"))
        .stderr(predicate::str::contains(format!("users.csv:5: user_id: {} also appears on line 2", uid(1))))
        .stderr(predicate::str::contains("users.csv:6: region: \"eu\" is not one of intl, us"))
        .stderr(predicate::str::contains("rt_PLAINTEXT").not());
    let c = UserId::parse(&uid(3)).unwrap();
    let u = db.store.user_get(&c).await.unwrap().unwrap();
    assert_eq!(u.first_name.as_deref(), Some("=HYPERLINK(\"x\")"));
    assert_eq!(db.store.user_count(&UserFilter::default()).await.unwrap(), 1);

    // neither list nor show prints a token; show says one is on file
    let list = reverify(&db, dir.path(), None).args(["users", "list", "--json"]).assert().success();
    let out = String::from_utf8(list.get_output().stdout.clone()).unwrap();
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains("\"has_token\":true") && !out.contains("rt_"), "{out}");
    reverify(&db, dir.path(), None)
        .args(["users", "show", &uid(3)])
        .assert()
        .success()
        .stdout(predicate::str::contains("refresh_token:        on file (encrypted, key "))
        .stdout(predicate::str::contains("rt_").not());
    reverify(&db, dir.path(), None)
        .args(["users", "show", &uid(9)])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!("user {} not found", uid(9))));
});

both_engines!(strict_import_exits_1_and_imports_nothing, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    mixed_file(dir.path());
    reverify(&db, dir.path(), Some(&keygen()))
        .args(["users", "import", "--strict", "users.csv"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("users.csv: nothing imported: 4 of 5 rows are bad (--strict)"))
        .stderr(predicate::str::contains("users.csv:6: region"));
    assert_eq!(db.store.user_count(&UserFilter::default()).await.unwrap(), 0);
});

both_engines!(tokens_without_a_key_are_refused, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    mixed_file(dir.path());
    reverify(&db, dir.path(), None)
        .args(["users", "import", "users.csv"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("users.csv:2: the row carries a refresh_token, but token_key is not set"));
    assert_eq!(db.store.user_count(&UserFilter::default()).await.unwrap(), 0);
});

/// Every byte the database holds, as the engine itself would hand it to a backup.
fn raw_dump(db: &TestDb) -> Vec<u8> {
    if db.url.starts_with("sqlite://") {
        let file = db.url.trim_start_matches("sqlite://").to_owned();
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-journal"] {
            if let Ok(b) = std::fs::read(format!("{file}{suffix}")) {
                bytes.extend(b);
            }
        }
        bytes
    } else {
        let out = std::process::Command::new("pg_dump")
            .args(["--data-only", "--dbname", &db.url])
            .output()
            .expect("pg_dump is installed (scripts/install-test-deps.sh)");
        assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

both_engines!(a_raw_dump_holds_no_token_in_plain_text, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{HEADER}{},ann@example.com,Ann,,,,intl,,UNVERIFIED,,{TOKEN_A},\n{},cy@example.com,Cy,,,,us,,REJECTED,,{TOKEN_B},\n",
        uid(1),
        uid(2)
    );
    std::fs::write(dir.path().join("clean.csv"), body).unwrap();
    reverify(&db, dir.path(), Some(&keygen()))
        .args(["users", "import", "clean.csv"])
        .assert()
        .success()
        .stdout(predicate::str::contains("imported 2 of 2 rows (2 with a refresh token)"));
    let dump = raw_dump(&db);
    // the dump does hold the imported rows, so a missing token means it is encrypted
    assert!(contains(&dump, "cy@example.com") && contains(&dump, "ann@example.com"), "the dump is empty");
    for token in [TOKEN_A, TOKEN_B, "PLAINTEXT_TOKEN"] {
        assert!(!contains(&dump, token), "{token} is in the raw dump");
        // pg_dump writes bytea as hex: a token stored unencrypted in the blob column
        // would show up so
        assert!(!contains(&dump, &hex::encode(token)), "{token} is in the raw dump as hex");
    }
});

both_engines!(rekey_moves_tokens_and_names_users_it_cannot_open, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    mixed_file(dir.path());
    let (old, new) = (keygen(), keygen());
    reverify(&db, dir.path(), Some(&old)).args(["users", "import", "users.csv"]).assert().code(3);
    reverify(&db, dir.path(), Some(&new))
        .env("REVERIFY_TOKEN_KEYS_PREVIOUS", &old)
        .args(["users", "rekey", "--batch", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("re-encrypted 1 refresh tokens with key"))
        .stdout(predicate::str::contains("0 failed"));
    let c = UserId::parse(&uid(3)).unwrap();
    let sealed = db.store.user_token_load(&c).await.unwrap().unwrap();
    let cipher = reverify::crypto::TokenCipher::from_secrets(Some(&reverify::Secret::new(new.clone())), None).unwrap();
    assert_eq!(sealed.key_id, cipher.key_id());
    assert_eq!(cipher.open(c.as_str(), &sealed.key_id, &sealed.ciphertext).unwrap().as_str(), TOKEN_B);
    // a key that never sealed it: a clear error naming the user, and the token stays
    reverify(&db, dir.path(), Some(&keygen()))
        .args(["users", "rekey"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!("refresh token of user {} was encrypted with key", uid(3))));
    assert_eq!(db.store.user_token_load(&c).await.unwrap(), Some(sealed));
});

#[tokio::test]
async fn list_filters_and_bad_filters() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "user_id,email,region,verification_state,tags\n\
         {},a@example.com,us,REJECTED,vip\n{},b@example.com,intl,UNVERIFIED,\n{},c@example.com,us,UNVERIFIED,vip\n",
        uid(1),
        uid(2),
        uid(3)
    );
    std::fs::write(dir.path().join("u.csv"), body).unwrap();
    reverify(&db, dir.path(), None).args(["users", "import", "u.csv"]).assert().success();
    let ids = |args: &[&str]| {
        let out = reverify(&db, dir.path(), None).args(["users", "list", "--json"]).args(args).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["user_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&["--region", "us"]), [uid(1), uid(3)]);
    assert_eq!(ids(&["--state", "unverified", "--tag", "vip"]), [uid(3)]);
    assert_eq!(ids(&["--limit", "1"]), [uid(1)]);
    reverify(&db, dir.path(), None)
        .args(["users", "list", "--state", "DONE"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("verification state \"DONE\""));
    reverify(&db, dir.path(), None)
        .args(["users", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("(3 shown of 3)"));
}
