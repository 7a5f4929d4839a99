//! Messages in the user's language (issue 17), end to end: the real worker, the
//! sandbox, the outbox; and `campaign preview` through the real binary, compared
//! with the `.eml` the outbox wrote for the same user and step.

use std::collections::HashMap;

use reverify::both_engines;
use reverify::notify::testing::ReceivedMail;
use reverify::store::testing::TestDb;

use crate::common::{Env, campaign_toml};
use crate::outcomes::{reverify, stdout_of};

/// Sets every user's locale round-robin from `locales`; returns email → locale.
async fn set_locales(env: &Env, locales: &[&str]) -> HashMap<String, String> {
    let locale_of = std::sync::Mutex::new(HashMap::new());
    env.upsert_users(|i, u| {
        let locale = locales[i % locales.len()].to_owned();
        locale_of.lock().unwrap().insert(u.email.as_str().to_owned(), locale.clone());
        u.locale = Some(locale);
        u.timezone = Some("Europe/Berlin".into());
    })
    .await;
    locale_of.into_inner().unwrap()
}

fn metric(series: &str) -> f64 {
    let text = reverify::telemetry::global().encode_prometheus();
    text.lines().find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse::<f64>().unwrap_or(0.0))).unwrap_or(0.0)
}

both_engines!(each_user_reads_their_language_and_unknown_ones_fall_back_to_english, |db: TestDb| async move {
    let env = Env::new(db, 30).await;
    let locale_of = set_locales(&env, &["de-DE", "de-CH", "xx-YY", "fr-FR", "pt-BR"]).await;
    // a name of its own: the metrics are the process's, and the other engine's
    // test runs beside this one
    let name = format!("langs-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let c = env.apply(&campaign_toml(&name, "")).await;
    let series = format!("reverify_locale_fallbacks_total{{campaign=\"{name}\",to=\"default\"}}");
    let before = metric(&series);
    let language = format!("reverify_locale_fallbacks_total{{campaign=\"{name}\",to=\"language\"}}");
    let language_before = metric(&language);
    let mut swiss = 0;
    env.run(&c).await;
    let mut english = 0;
    let messages = env.messages();
    assert!(messages.len() >= 10, "the generated mix has users to notify");
    for raw in &messages {
        let m = ReceivedMail::parse(raw);
        let to = m.header("To").unwrap();
        let email = to.rsplit('<').next().unwrap().trim_end_matches('>');
        let subject = m.header("Subject").unwrap();
        let html = m.html.clone().unwrap();
        let text = m.text.clone().unwrap();
        match locale_of[email].as_str() {
            "de-DE" => {
                assert_eq!(subject, "Bitte bestätigen Sie Ihre Identität");
                assert!(html.contains("<html lang=\"de-DE\">"), "{html}");
                // the expiry with German day names, in Berlin time
                let days = ["Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"];
                let flat = text.replace('\n', " ");
                assert!(days.iter().any(|d| flat.contains(&format!("gültig bis {d}, "))), "{text}");
                // German names for Central European time
                assert!(text.contains(" MEZ") || text.contains(" MESZ"), "{text}");
            }
            "de-CH" => {
                swiss += 1;
                assert_eq!(subject, "Bitte bestätigen Sie Ihre Identität");
                assert!(html.contains("<html lang=\"de-CH\">"), "{html}");
            }
            "xx-YY" => {
                english += 1;
                assert_eq!(subject, "Please verify your identity");
                assert!(html.contains("<html lang=\"en\">"), "{html}");
            }
            "fr-FR" => {
                assert_eq!(subject, "Merci de confirmer votre identité");
                assert!(html.contains("<html lang=\"fr-FR\">"), "{html}");
            }
            // Brazilian Portuguese of its own, no fallback
            "pt-BR" => {
                assert_eq!(subject, "Confirme sua identidade");
                assert!(text.contains("você") && !text.contains("telemóvel"), "{text}");
            }
            other => panic!("{other}"),
        }
        // every message is well formed for its readers
        assert_eq!(m.header("Auto-Submitted").as_deref(), Some("auto-generated"));
        assert!(m.header("Date").is_some());
        assert!(m.header("Message-ID").unwrap().ends_with("@example.com>"));
        assert!(text.lines().all(|l| l.chars().count() <= 76 || !l.contains(' ')), "{text}");
        for external in ["src=\"http", "src='http", "<link", "url(", "<img", "<script", "@import"] {
            assert!(!html.contains(external), "{external} in\n{html}");
        }
    }
    assert!(english > 0);
    assert_eq!(metric(&series) - before, f64::from(english), "each fallback to the default locale is counted");
    // de-CH read the German of Germany: a fallback; de-DE and pt-BR got their own
    assert_eq!(metric(&language) - language_before, f64::from(swiss), "only real fallbacks are counted");
});

/// Times (`HH:MM`) masked: a preview's expiry is computed a moment after the run's.
fn mask_times(s: &str) -> String {
    let b: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if i + 5 <= b.len()
            && b[i].is_ascii_digit()
            && b[i + 1].is_ascii_digit()
            && b[i + 2] == ':'
            && b[i + 3].is_ascii_digit()
            && b[i + 4].is_ascii_digit()
        {
            out.push_str("hh:mm");
            i += 5;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

both_engines!(preview_renders_what_the_outbox_writes, |db: TestDb| async move {
    let env = Env::new(db, 12).await;
    set_locales(&env, &["nl-NL", "it-IT"]).await;
    let toml = campaign_toml("preview", "")
        .replace("[delivery]\n", "[delivery]\nreply_to = \"Support <support@example.com>\"\n");
    let c = env.apply(&toml).await;
    env.run(&c).await;
    let file = std::fs::read_dir(&env.outbox)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .find(|n| n.ends_with("_s0.eml"))
        .expect("a message in the outbox");
    let user = file.split('_').rev().nth(1).unwrap().to_owned();
    let sent = ReceivedMail::parse(&std::fs::read_to_string(env.outbox.join(&file)).unwrap());
    let link_line = sent.text.as_deref().unwrap().lines().find(|l| l.contains("/session/")).unwrap().trim().to_owned();

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("preview.eml");
    let templates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates");
    let said = reverify(&env)
        .env("REVERIFY_TEMPLATES_DIR", &templates)
        .args(["campaign", "preview", "preview", "--user", &user, "--format", "eml", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(said.status.success(), "{}", String::from_utf8_lossy(&said.stderr));
    let preview = ReceivedMail::parse(&std::fs::read_to_string(&out).unwrap());
    let fake = "https://preview.invalid/not-a-real-link-PREVIEW-ONLY";
    assert!(preview.text.as_deref().unwrap().contains(fake));

    // the same headers, but Date and Message-ID (and the MIME boundary, which comes
    // from the Message-ID's digest): the link's expiry is part of that digest
    let skip = ["date", "message-id", "content-type"];
    let headers = |m: &ReceivedMail| -> Vec<(String, String)> {
        m.headers.iter().filter(|(k, _)| !skip.contains(&k.to_ascii_lowercase().as_str())).cloned().collect()
    };
    assert_eq!(headers(&preview), headers(&sent));
    assert!(preview.content_type.starts_with("multipart/alternative"));
    // the same text and HTML, links aside
    let norm = |s: &str| mask_times(&s.replace(&link_line, "LINK").replace(fake, "LINK"));
    // links are written as they are in the HTML (`/` unescaped)
    let html_link = link_line.replace('&', "&amp;");
    let norm_html = |s: &str| mask_times(&s.replace(&html_link, "LINK").replace(fake, "LINK"));
    assert!(!sent.html.as_deref().unwrap().contains("&#x2f;"));
    assert_eq!(norm(preview.text.as_deref().unwrap()), norm(sent.text.as_deref().unwrap()));
    assert_eq!(norm_html(preview.html.as_deref().unwrap()), norm_html(sent.html.as_deref().unwrap()));

    // text and html formats print the parts; nothing is sent and no session is made
    let sessions = env.sandbox.stats().await.sessions_issued;
    let text = stdout_of(
        reverify(&env)
            .env("REVERIFY_TEMPLATES_DIR", &templates)
            .args(["campaign", "preview", "preview", "--user", &user, "--locale", "de-AT", "--format", "text"]),
    );
    assert!(text.starts_with("Subject: Bitte bestätigen Sie Ihre Identität\n\n"), "{text}");
    let html = stdout_of(
        reverify(&env)
            .env("REVERIFY_TEMPLATES_DIR", &templates)
            .args(["campaign", "preview", "preview", "--format", "html", "--locale", "es"]),
    );
    assert!(html.contains("<html lang=\"es\">") && html.contains("Verificar mi identidad"), "{html}");
    assert_eq!(env.sandbox.stats().await.sessions_issued, sessions);
    assert_eq!(env.messages().len(), std::fs::read_dir(&env.outbox).unwrap().count());

    // a subject per locale: the preview shows the one that will be sent
    let toml = campaign_toml("subjects", "").replace(
        "[throttle]",
        "[delivery.subject]\nen = \"Check your account\"\nde = \"Prüfen Sie Ihr Konto\"\n[throttle]",
    );
    env.apply(&toml).await;
    let subject_in = |locale: &str| {
        let text = stdout_of(
            reverify(&env)
                .env("REVERIFY_TEMPLATES_DIR", &templates)
                .args(["campaign", "preview", "subjects", "--locale", locale, "--format", "text"]),
        );
        text.lines().next().unwrap().to_owned()
    };
    assert_eq!(subject_in("de"), "Subject: Prüfen Sie Ihr Konto");
    assert_eq!(subject_in("de-AT"), "Subject: Prüfen Sie Ihr Konto");
    assert_eq!(subject_in("en-US"), "Subject: Check your account");
    // no French line: the French template's own, not the English one
    assert_eq!(subject_in("fr"), "Subject: Merci de confirmer votre identité");
    let bad = reverify(&env).args(["campaign", "preview", "preview", "--step", "1"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "a step the campaign does not have is a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--step 1"), "{}", String::from_utf8_lossy(&bad.stderr));
});
