//! Imports of good and bad files, on both engines.

use super::*;
use crate::both_engines;
use crate::config::Secret;
use crate::domain::{UserId, VerificationState};
use crate::store::testing::TestDb;
use crate::store::users::UserFilter;
use chrono::TimeZone;
use sqlx::Row;

const HEADER: &str = "user_id,email,first_name,last_name,locale,timezone,region,country,verification_state,rejected_at,refresh_token,tags\n";

fn uid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn good_row(n: u32, token: &str) -> String {
    format!("{},u{n}@example.com,Ann,Lee,en-GB,Europe/London,intl,GB,UNVERIFIED,,{token},vip;beta\n", uid(n))
}

fn cipher() -> Arc<TokenCipher> {
    Arc::new(TokenCipher::from_secrets(Some(&Secret::new(TokenCipher::generate_key())), None).unwrap())
}

fn opts(strict: bool, cipher: Option<Arc<TokenCipher>>) -> ImportOptions {
    ImportOptions {
        format: None,
        strict,
        cipher,
        actor: "cli:test@host".into(),
        now: Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap(),
    }
}

fn write(dir: &tempfile::TempDir, name: &str, body: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// A file with good rows and one of each kind of bad row, on known lines.
fn mixed_csv() -> String {
    let mut s = String::from(HEADER);
    s += &good_row(1, "rt_one"); // line 2
    s += &format!("{},not-an-email,,,,,intl,,UNVERIFIED,,,\n", uid(2)); // 3
    s += &format!("{},u3@example.com,,,,,mars,,UNVERIFIED,,,\n", uid(3)); // 4
    s += &format!("{},u4@example.com,,,,,us,,DONE,,,\n", uid(4)); // 5
    s += &format!("{},u5@example.com,,,,,us,,REJECTED,last tuesday,,\n", uid(5)); // 6
    s += ",nobody@example.com,,,,,us,,UNVERIFIED,,,\n"; // 7
    s += &good_row(6, ""); // 8
    s += &good_row(1, "rt_dup"); // 9: duplicate of line 2
    s += &format!("{},u7@example.com,\"=cmd|' /C calc'!A0\",,,,us,,REJECTED,2026-02-01T10:00:00Z,,\n", uid(7)); // 10
    s += "too,few,fields\n"; // 11
    s
}

both_engines!(partial_import_reports_lines_and_reasons, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "users.csv", mixed_csv().as_bytes());
    let report = import_file(&db.store, &path, &opts(false, Some(cipher()))).await.unwrap();
    assert_eq!((report.rows, report.imported, report.bad), (10, 2, 8));
    let lines: Vec<u64> = report.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 7, 9, 11]);
    let reason = |l: u64| report.problems.iter().find(|p| p.line == l).unwrap().reason.clone();
    assert_eq!(reason(2), format!("user_id: {} also appears on line 9", uid(1)));
    assert_eq!(reason(9), format!("user_id: {} also appears on line 2", uid(1)));
    assert_eq!(reason(3), "email: \"not-an-email\" is not an email address: no '@'");
    assert_eq!(reason(4), "region: \"mars\" is not one of intl, us");
    assert_eq!(reason(5), "verification_state: \"DONE\" is not one of UNVERIFIED, PENDING, VERIFIED, REJECTED");
    assert_eq!(reason(6), "rejected_at: \"last tuesday\" is not an RFC 3339 time like 2026-01-31T09:00:00Z");
    assert_eq!(reason(7), "user_id: missing");
    assert_eq!(reason(11), "has 3 fields, the header has 12");
    for p in &report.problems {
        assert!(!p.reason.contains("rt_"), "a token leaked into {p:?}");
    }

    let s = &db.store;
    assert_eq!(s.user_count(&UserFilter::default()).await.unwrap(), 2);
    assert!(s.user_get(&UserId::parse(&uid(1)).unwrap()).await.unwrap().is_none(), "both duplicates left out");
    let u7 = s.user_get(&UserId::parse(&uid(7)).unwrap()).await.unwrap().unwrap();
    assert_eq!(u7.first_name.as_deref(), Some("=cmd|' /C calc'!A0"), "stored as plain text");
    assert_eq!(u7.verification_state, VerificationState::Rejected);
    assert_eq!(u7.rejected_at, Some(Utc.with_ymd_and_hms(2026, 2, 1, 10, 0, 0).unwrap()));
    let u6 = s.user_get(&UserId::parse(&uid(6)).unwrap()).await.unwrap().unwrap();
    assert_eq!(u6.tags, ["vip", "beta"]);
    assert_eq!(u6.locale.as_deref(), Some("en-GB"));
    assert!(!u6.has_token);

    let events = s
        .event_list(
            &crate::store::events::EventFilter { kind: Some("users.imported".into()), ..Default::default() },
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].detail.as_ref().unwrap()["bad"], 8);
    assert_eq!(events[0].actor, "cli:test@host");
});

both_engines!(strict_imports_nothing_when_a_row_is_bad, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "users.csv", mixed_csv().as_bytes());
    let report = import_file(&db.store, &path, &opts(true, Some(cipher()))).await.unwrap();
    assert!(report.strict_refused);
    assert_eq!((report.imported, report.bad), (0, 8));
    assert_eq!(db.store.user_count(&UserFilter::default()).await.unwrap(), 0);
    // and a clean file imports in full under --strict
    let clean: String = [HEADER.to_owned(), good_row(1, ""), good_row(2, "")].concat();
    let path = write(&dir, "clean.csv", clean.as_bytes());
    let report = import_file(&db.store, &path, &opts(true, None)).await.unwrap();
    assert_eq!((report.imported, report.bad, report.strict_refused), (2, 0, false));
});

both_engines!(tokens_are_sealed_kept_and_need_a_key, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let c = cipher();
    let with_token: String = [HEADER.to_owned(), good_row(1, "rt_first_token_value"), good_row(2, "")].concat();
    let path = write(&dir, "t.csv", with_token.as_bytes());
    let err = import_file(&db.store, &path, &opts(false, None)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2: the row carries a refresh_token, but token_key is not set: set REVERIFY_TOKEN_KEY or REVERIFY_TOKEN_KEY_FILE (nothing was imported)",
            path.display()
        )
    );
    assert_eq!(db.store.user_count(&UserFilter::default()).await.unwrap(), 0);

    let report = import_file(&db.store, &path, &opts(false, Some(c.clone()))).await.unwrap();
    assert_eq!((report.imported, report.tokens), (2, 1));
    let id1 = UserId::parse(&uid(1)).unwrap();
    let sealed = db.store.user_token_load(&id1).await.unwrap().unwrap();
    assert_eq!(sealed.key_id, c.key_id());
    assert_eq!(c.open(id1.as_str(), &sealed.key_id, &sealed.ciphertext).unwrap().as_str(), "rt_first_token_value");

    // a file without tokens keeps them, and needs no key
    let without: String = [HEADER.to_owned(), good_row(1, "")].concat();
    let path = write(&dir, "n.csv", without.as_bytes());
    import_file(&db.store, &path, &opts(false, None)).await.unwrap();
    assert_eq!(db.store.user_token_load(&id1).await.unwrap(), Some(sealed));
});

both_engines!(jsonl_rows_and_their_problems, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "\u{feff}{{\"user_id\":\"{}\",\"email\":\"a@example.com\",\"region\":\"us\",\"verification_state\":\"UNVERIFIED\",\"tags\":[\"x\",\"y\"],\"first_name\":null}}\n\
         \n\
         {{\"user_id\":\"{}\",\"email\":\"b@example.com\",\"region\":\"us\",\"verification_state\":\"UNVERIFIED\",\"colour\":\"red\"}}\n\
         [1,2]\n\
         {{\"user_id\":\"{}\",\"email\":\"c@example.com\",\"region\":\"us\",\"verification_state\":3}}\n",
        uid(1),
        uid(2),
        uid(3)
    );
    let mut bytes = body.into_bytes();
    bytes.extend_from_slice(b"{\"user_id\":\"\xff\xfe\"}\n");
    let path = write(&dir, "users.jsonl", &bytes);
    let report = import_file(&db.store, &path, &opts(false, None)).await.unwrap();
    assert_eq!((report.rows, report.imported, report.bad), (5, 1, 4));
    let got: Vec<(u64, &str)> = report.problems.iter().map(|p| (p.line, p.reason.as_str())).collect();
    assert_eq!(got[0].0, 3);
    assert!(got[0].1.starts_with("unknown field(s) \"colour\""), "{}", got[0].1);
    assert_eq!(got[1].0, 4);
    assert!(got[1].1.starts_with("not a JSON object"), "{}", got[1].1);
    assert_eq!(got[2], (5, "verification_state: must be a string or null"));
    assert_eq!(got[3], (6, "not valid UTF-8 (save the file as UTF-8)"));
    let u = db.store.user_get(&UserId::parse(&uid(1)).unwrap()).await.unwrap().unwrap();
    assert_eq!(u.tags, ["x", "y"]);
});

#[tokio::test]
async fn file_level_errors_are_clear() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |p: PathBuf| {
        let store = db.store.clone();
        async move { import_file(&store, &p, &opts(false, None)).await.unwrap_err().to_string() }
    };
    let p = write(&dir, "u.csv", b"user_id,email,region,verification_state,nickname,shoe_size\n");
    let e = run(p.clone()).await;
    assert!(
        e.starts_with(&format!("{}: header row: unknown column(s) \"nickname\", \"shoe_size\"", p.display())),
        "{e}"
    );
    let p = write(&dir, "u.csv", b"user_id,first_name\n");
    assert!(run(p).await.ends_with("missing required column(s) email, region, verification_state"));
    let p = write(&dir, "u.csv", b"");
    assert!(run(p).await.contains("the file is empty"));
    let p = write(&dir, "u.txt", b"x");
    assert!(run(p).await.contains("use --format csv or --format jsonl"));
    let mut huge = HEADER.as_bytes().to_vec();
    huge.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
    let p = write(&dir, "u.csv", &huge);
    let e = run(p).await;
    assert!(e.contains(":2: a line is longer than 64 KiB"), "{e}");
    // a non-UTF-8 field in CSV is a bad row naming the column
    let mut latin1 = HEADER.as_bytes().to_vec();
    latin1.extend_from_slice(format!("{},a@example.com,Jos", uid(1)).as_bytes());
    latin1.extend_from_slice(b"\xe9,,,,intl,,UNVERIFIED,,,\n");
    let p = write(&dir, "l.csv", &latin1);
    let r = import_file(&db.store, &p, &opts(false, None)).await.unwrap();
    assert_eq!(
        r.problems,
        [RowProblem { line: 2, reason: "first_name: not valid UTF-8 (save the file as UTF-8)".into() }]
    );
    // in JSON Lines a 10 MB line is one bad row, skipped without buffering it, and
    // the next line is still read
    let mut jsonl = vec![b'{'; 10 * 1024 * 1024];
    jsonl.push(b'\n');
    jsonl.extend_from_slice(
        format!(
            "{{\"user_id\":\"{}\",\"email\":\"a@example.com\",\"region\":\"us\",\"verification_state\":\"PENDING\"}}\n",
            uid(5)
        )
        .as_bytes(),
    );
    let p = write(&dir, "big.jsonl", &jsonl);
    let r = import_file(&db.store, &p, &opts(false, None)).await.unwrap();
    assert_eq!(r.problems, [RowProblem { line: 1, reason: "longer than 64 KiB".into() }]);
    assert_eq!((r.rows, r.imported), (2, 1));
}

#[test]
fn spreadsheet_safe_neutralises_formulas() {
    assert_eq!(spreadsheet_safe("=cmd|' /C calc'!A0"), "'=cmd|' /C calc'!A0");
    for lead in ["+1", "-1", "@SUM(A1)", "\tx"] {
        assert!(spreadsheet_safe(lead).starts_with('\''), "{lead}");
    }
    assert_eq!(spreadsheet_safe("Ann"), "Ann");
}

both_engines!(state_as_of_and_access_tokens_are_read_checked_and_sealed, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let header = HEADER.trim_end().to_owned() + ",state_as_of,access_token,access_token_expires_at\n";
    let row = |n: u32, rest: &str| {
        format!("{},u{n}@example.com,Ann,Lee,en-GB,Europe/London,intl,GB,UNVERIFIED,,rt_{n},,{rest}\n", uid(n))
    };
    let mut s = header;
    s += &row(1, "2026-03-01T08:00:00Z,at_one,2026-03-01T14:00:00Z"); // line 2: good
    s += &row(2, "2026-03-01T09:30:00Z,,"); // 3: state_as_of 30 minutes in the future
    s += &row(3, ",at_three,"); // 4: an access token without its expiry
    s += &row(4, ",,2026-03-01T14:00:00Z"); // 5: an expiry without a token
    s += &row(5, ",,"); // 6: good, confirmed at the import
    s += &row(6, "2026-03-01T09:00:30Z,,"); // 7: 30 s ahead: clock skew, taken as now
    let path = write(&dir, "users.csv", s.as_bytes());
    let report = import_file(&db.store, &path, &opts(false, Some(cipher()))).await.unwrap();
    assert_eq!((report.imported, report.bad), (3, 3), "{report:?}");
    let why = |line: u64| report.problems.iter().find(|p| p.line == line).map(|p| p.reason.clone()).unwrap_or_default();
    assert!(why(3).starts_with("state_as_of: 2026-03-01T09:30:00Z is in the future"), "{}", why(3));
    assert!(why(4).starts_with("access_token: has no access_token_expires_at"), "{}", why(4));
    assert!(!why(4).contains("at_three"), "a token is never quoted: {}", why(4));
    assert!(why(5).starts_with("access_token_expires_at: given without an access_token"), "{}", why(5));

    let now = opts(false, None).now;
    let confirmed = |n: u32| {
        let store = db.store.clone();
        async move {
            let r = sqlx::query("SELECT state_confirmed_at, state_source FROM users WHERE user_id = $1")
                .bind(uid(n))
                .fetch_one(store.pool())
                .await
                .unwrap();
            (r.get::<Option<i64>, _>("state_confirmed_at"), r.get::<Option<String>, _>("state_source"))
        }
    };
    let at = |h: u32, m: u32| Some(Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap().timestamp_millis());
    assert_eq!(confirmed(1).await, (at(8, 0), Some("import".into())));
    assert_eq!(confirmed(5).await, (Some(now.timestamp_millis()), Some("import".into())));
    assert_eq!(confirmed(6).await.0, Some(now.timestamp_millis()), "a time a little ahead is now");

    // the access token is sealed (never stored as given) and used until 5 minutes before
    let tokens = db.store.user_token_get(&UserId::parse(&uid(1)).unwrap()).await.unwrap().unwrap();
    let (sealed, until) = tokens.access.expect("an access token");
    assert!(!sealed.ciphertext.windows(6).any(|w| w == b"at_one"));
    assert_eq!(until, Utc.with_ymd_and_hms(2026, 3, 1, 13, 55, 0).unwrap());
    assert!(db.store.user_token_get(&UserId::parse(&uid(5)).unwrap()).await.unwrap().unwrap().access.is_none());
});
