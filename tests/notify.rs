//! The notify layer against real parts: aiosmtpd over TCP, a directory on disk, and
//! an axum receiver over HTTP. Every test captures its tracing output at TRACE and
//! checks that the session URL never appears in it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reverify::Settings;
use reverify::config::Secret;
use reverify::domain::spec::{Channel, Delivery};
use reverify::domain::{CampaignName, EmailAddress, Region, SessionUrl, UserId};
use reverify::notify::testing::{Fault, LogCapture, ReceivedMail, SmtpServer, free_port};
use reverify::notify::{ChannelKind, DeliveryRetryPolicy, Message, Notifier, NotifyError, Recipient};

const SECRET_PART: &str = "sess-7f3a9c-SECRET";

fn link() -> String {
    format!("https://verify.sandbox.test/s/{SECRET_PART}?sig=ab12&u=1")
}

fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates")
}

fn fast(max_attempts: u32) -> DeliveryRetryPolicy {
    DeliveryRetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        max_elapsed: Duration::from_secs(10),
    }
}

fn expiry() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T15:00:00Z").unwrap().with_timezone(&Utc)
}

fn message(email: &str, step: u32) -> Message {
    Message {
        recipient: Recipient {
            user_id: UserId::parse("6f9619ff-8b86-4011-b42d-00c04fc964ff").unwrap(),
            email: EmailAddress::parse(email).unwrap(),
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            locale: Some(reverify::domain::Locale::parse("en-US").unwrap()),
            time_zone: Some("America/New_York".into()),
            region: Region::Us,
            verification_state: reverify::domain::VerificationState::Unverified,
        },
        bounce_token: None,
        session_url: SessionUrl::new(link()),
        expires_at: expiry(),
        campaign: CampaignName::parse("kyc-refresh-q4").unwrap(),
        step,
        delivery: Delivery {
            channel: Channel::Email,
            template: if step == 0 { "default".into() } else { "reminder".into() },
            from: Some("Compliance <compliance@example.com>".into()),
            reply_to: Some("Support <support@example.com>".into()),
            subject: None,
            webhook_url: None,
            ..Delivery::default()
        },
    }
}

fn settings() -> Settings {
    Settings { templates_dir: templates_dir(), ..Settings::default() }
}

fn smtp_notifier(server_url: &str, retry: DeliveryRetryPolicy) -> Notifier {
    Notifier::from_settings(&Settings { smtp_url: Some(server_url.to_owned()), ..settings() }, retry).unwrap()
}

/// Fails when a captured log line holds any part of the link.
fn assert_no_url(logs: &LogCapture) {
    let text = logs.contents();
    assert!(!text.contains(SECRET_PART) && !text.contains("verify.sandbox.test"), "a log line holds the URL:\n{text}");
}

fn assert_error_clean(e: &NotifyError) {
    for shown in [e.to_string(), format!("{e:?}"), e.reason()] {
        assert!(!shown.contains(SECRET_PART), "an error holds the URL: {shown}");
    }
}

#[tokio::test]
async fn smtp_delivers_text_and_html_with_headers_link_and_local_expiry() {
    let (logs, _guard) = LogCapture::start();
    let server = SmtpServer::start();
    let notifier = smtp_notifier(&server.url(), fast(3));
    let msg = message("ada@example.com", 0);
    notifier.check(&msg.delivery, Some("reminder")).unwrap();

    let d = notifier.send_with_retry(&msg).await.unwrap();
    assert_eq!((d.channel, d.attempts), (ChannelKind::Smtp, 1));
    assert!(d.detail.starts_with("250"), "{}", d.detail);

    let got = server.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.header("From").unwrap(), "Compliance <compliance@example.com>");
    assert_eq!(m.header("To").unwrap(), "\"Ada Lovelace\" <ada@example.com>");
    assert_eq!(m.header("Reply-To").unwrap(), "Support <support@example.com>");
    assert_eq!(m.header("Subject").unwrap(), "Please verify your identity");
    // the campaign's name is internal: no header names it unless the campaign asks
    assert!(m.header("X-Reverify-Campaign").is_none(), "the campaign's name in a header");
    assert_eq!(m.header("X-Reverify-Step").unwrap(), "0");
    let id = d.message_id.clone().unwrap();
    assert!(id.ends_with("@example.com"), "{id}");
    assert_eq!(m.header("Message-ID").unwrap(), format!("<{id}>"));
    let date = m.header("Date").unwrap();
    DateTime::parse_from_rfc2822(&date).unwrap_or_else(|e| panic!("Date {date:?}: {e}"));
    assert!(m.content_type.starts_with("multipart/alternative"), "{}", m.content_type);

    let text = m.text.as_deref().unwrap();
    let html = m.html_unescaped().unwrap();
    for part in [text, html.as_str()] {
        assert!(part.contains(&link()), "link missing:\n{part}");
        // 15:00 UTC is 10:00 in New York in November
        // an en-US reader: the month first and a 12-hour clock
        assert!(part.contains("Friday, November 27, 2026 at 10:00\u{202f}AM EST"), "expiry missing:\n{part}");
        assert!(part.contains("Ada"), "{part}");
        assert!(part.contains("up to 60 minutes"), "US processing time missing:\n{part}");
        assert!(part.contains("passport") && part.contains("selfie"), "documents missing:\n{part}");
    }
    assert!(m.html.as_deref().unwrap().contains("<a href="), "HTML has no link element");
    assert_no_url(&logs);
}

#[tokio::test]
async fn campaign_subject_overrides_and_reminder_uses_its_template() {
    let (logs, _guard) = LogCapture::start();
    let server = SmtpServer::start();
    let notifier = smtp_notifier(&server.url(), fast(1));
    let mut first = message("ada@example.com", 0);
    first.delivery.subject = Some("Action needed: verify your identity".into());
    notifier.send(&first).await.unwrap();
    let mut reminder = message("ada@example.com", 1);
    reminder.recipient.region = Region::Intl;
    reminder.recipient.time_zone = Some("Europe/London".into());
    reminder.recipient.first_name = None;
    notifier.send(&reminder).await.unwrap();
    // a campaign's subject keeps the reminder's prefix
    let mut reminded = reminder.clone();
    reminded.delivery.subject = first.delivery.subject.clone();
    notifier.send(&reminded).await.unwrap();
    // one per locale: the German line for a German reader, the template's own French
    let mut de = message("de@example.com", 1);
    de.recipient.locale = Some(reverify::domain::Locale::parse("de-DE").unwrap());
    de.delivery.subject = Some(reverify::domain::subject::Subject::PerLocale(
        [("en".to_owned(), "Verify now".to_owned()), ("de".to_owned(), "Jetzt bestätigen".to_owned())].into(),
    ));
    notifier.send(&de).await.unwrap();
    let mut fr = de.clone();
    fr.recipient.locale = Some(reverify::domain::Locale::parse("fr-FR").unwrap());
    notifier.send(&fr).await.unwrap();

    // trace headers, when the campaign asks for them
    let mut traced = message("ada@example.com", 0);
    traced.delivery.trace_headers = true;
    notifier.send(&traced).await.unwrap();

    let got = server.messages();
    assert_eq!(got.len(), 6);
    assert_eq!(got[5].header("X-Reverify-Campaign").unwrap(), "kyc-refresh-q4");
    assert!(got[0].header("X-Reverify-Campaign").is_none());
    assert_eq!(got[0].header("Subject").unwrap(), "Action needed: verify your identity");
    assert_eq!(got[1].header("Subject").unwrap(), "Reminder: please verify your identity");
    assert_eq!(got[2].header("Subject").unwrap(), "Reminder: Action needed: verify your identity");
    assert_eq!(got[3].header("Subject").unwrap(), "Erinnerung: Jetzt bestätigen");
    assert_eq!(got[4].header("Subject").unwrap(), "Rappel : merci de confirmer votre identité");
    let text = got[1].text.as_deref().unwrap();
    assert!(text.starts_with("Hello,"), "{text}");
    // an en-US text for a London reader: CLDR's American English has no short name
    // for London's zone, and ICU4X writes the localized offset
    assert!(text.contains("Friday, November 27, 2026 at 3:00\u{202f}PM GMT+0"), "{text}");
    assert!(text.contains("5 to 30 minutes"), "{text}");
    assert_no_url(&logs);
}

/// With `delivery.return_path` and a VERP token, the SMTP envelope sender is the
/// return path with the token (what a bounce is sent to), and the Message-ID carries
/// the token too; the From header stays the campaign's.
#[tokio::test]
async fn smtp_envelope_sender_and_message_id_carry_the_verp_token() {
    let server = SmtpServer::start();
    let notifier = smtp_notifier(&server.url(), fast(1));
    let key = reverify::domain::bounce::VerpKey::derive(b"a token key");
    let token = key.token(reverify::domain::bounce::MessageRef::Session(4242));
    let mut msg = message("ada@example.com", 0);
    msg.bounce_token = Some(token.clone());
    msg.delivery.return_path = Some("bounces+{token}@example.com".into());
    let d = notifier.send_with_retry(&msg).await.unwrap();

    let got = server.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    // aiosmtpd records the envelope: MAIL FROM as X-MailFrom
    assert_eq!(m.header("X-MailFrom").unwrap(), format!("bounces+{token}@example.com"));
    assert_eq!(m.header("From").unwrap(), "Compliance <compliance@example.com>");
    let id = d.message_id.unwrap();
    assert_eq!(m.header("Message-ID").unwrap(), format!("<{id}>"));
    let carried = reverify::domain::bounce::token_in_plus_address(&id).unwrap();
    assert_eq!(key.open(carried), Some(reverify::domain::bounce::MessageRef::Session(4242)));

    // without a return path the envelope sender is the From address
    let mut plain = message("ada@example.com", 1);
    plain.bounce_token = Some(token);
    notifier.send_with_retry(&plain).await.unwrap();
    assert_eq!(server.messages()[1].header("X-MailFrom").unwrap(), "compliance@example.com");
}

#[tokio::test]
async fn smtp_4xx_is_retried_until_it_is_accepted() {
    let (logs, _guard) = LogCapture::start();
    let server = SmtpServer::start_with(&[Fault::reply("busy", 450, Some(2))]);
    let notifier = smtp_notifier(&server.url(), fast(5));
    let d = notifier.send_with_retry(&message("busy@example.com", 0)).await.unwrap();
    assert_eq!(d.attempts, 3);
    assert_eq!(server.messages().len(), 1);
    assert!(logs.contents().contains("retrying"), "retries are logged");
    assert_no_url(&logs);
}

#[tokio::test]
async fn smtp_4xx_gives_up_after_the_attempts_and_stays_transient() {
    let (logs, _guard) = LogCapture::start();
    let server = SmtpServer::start_with(&[Fault::reply("busy", 451, None)]);
    let notifier = smtp_notifier(&server.url(), fast(3));
    let e = notifier.send_with_retry(&message("busy@example.com", 0)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.reason().contains("451"), "{}", e.reason());
    assert!(server.messages().is_empty());
    assert_error_clean(&e);
    assert_no_url(&logs);
}

#[tokio::test]
async fn smtp_5xx_is_permanent_and_not_retried() {
    let (logs, _guard) = LogCapture::start();
    // the fault fires once: a retry would have been accepted and delivered
    let server = SmtpServer::start_with(&[Fault::reply("gone", 550, Some(1))]);
    let notifier = smtp_notifier(&server.url(), fast(5));
    let e = notifier.send_with_retry(&message("gone@example.com", 0)).await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(matches!(e, NotifyError::Permanent { .. }));
    assert!(e.reason().contains("550") && e.reason().contains("Mailbox unavailable"), "{}", e.reason());
    assert!(server.messages().is_empty(), "a permanent failure was retried");
    // other recipients on the same server are unaffected
    notifier.send(&message("ada@example.com", 0)).await.unwrap();
    assert_eq!(server.messages().len(), 1);
    assert_error_clean(&e);
    assert_no_url(&logs);
}

#[tokio::test]
async fn refused_connection_is_transient() {
    let (logs, _guard) = LogCapture::start();
    let url = format!("smtp://127.0.0.1:{}?tls=none&timeout_ms=2000", free_port());
    let notifier = smtp_notifier(&url, fast(2));
    let e = notifier.send_with_retry(&message("ada@example.com", 0)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_error_clean(&e);

    // a server that goes away between two messages: the pooled connection is dead
    let mut server = SmtpServer::start();
    let notifier = smtp_notifier(&server.url(), fast(2));
    notifier.send(&message("ada@example.com", 0)).await.unwrap();
    server.stop();
    let e = notifier.send_with_retry(&message("ada@example.com", 1)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_no_url(&logs);
}

#[tokio::test]
async fn dropped_connection_is_transient_and_retried() {
    let (logs, _guard) = LogCapture::start();
    let server = SmtpServer::start_with(&[Fault::drop_connection("flaky", Some(1))]);
    let notifier = smtp_notifier(&server.url(), fast(3));
    let d = notifier.send_with_retry(&message("flaky@example.com", 0)).await.unwrap();
    assert_eq!(d.attempts, 2);
    assert_eq!(server.messages().len(), 1);
    assert_no_url(&logs);
}

#[tokio::test]
async fn outbox_writes_one_private_parseable_eml_per_message() {
    use std::os::unix::fs::PermissionsExt;
    let (logs, _guard) = LogCapture::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    let notifier = Notifier::from_settings(&Settings { outbox_dir: Some(dir.clone()), ..settings() }, fast(1)).unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);

    let mut names = Vec::new();
    for (email, step) in [("ada@example.com", 0), ("ada@example.com", 1), ("bob@example.com", 0)] {
        let mut m = message(email, step);
        if email.starts_with("bob") {
            m.recipient.user_id = UserId::parse("11111111-2222-4333-8444-555555555555").unwrap();
        }
        let d = notifier.send_with_retry(&m).await.unwrap();
        assert_eq!(d.channel, ChannelKind::Outbox);
        names.push(d.detail);
    }
    let mut files: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(files, expected, "exactly one file per message, no temporary files left");
    assert!(names[0].contains("_kyc-refresh-q4_6f9619ff-8b86-4011-b42d-00c04fc964ff_s0"), "{}", names[0]);
    assert!(names[1].ends_with("_s1.eml"), "{}", names[1]);

    for name in &names {
        let path = dir.join(name);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "{name}");
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(raw.contains("\r\n"), "RFC 5322 lines end in CRLF");
        let m = ReceivedMail::parse(&raw);
        assert!(m.header("X-Reverify-Campaign").is_none());
        assert!(m.header("Message-ID").is_some() && m.header("Date").is_some());
        assert!(m.text.as_deref().unwrap().contains(&link()));
        assert!(m.html_unescaped().unwrap().contains(&link()));
    }
    assert_no_url(&logs);
}

/// What the test receiver saw, and what it answers next.
#[derive(Default)]
struct Receiver {
    seen: Vec<(HashMap<String, String>, Vec<u8>)>,
    /// Statuses to answer, in order; then 200.
    script: Vec<u16>,
}

async fn start_receiver(script: Vec<u16>) -> (String, Arc<Mutex<Receiver>>) {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};

    let state = Arc::new(Mutex::new(Receiver { seen: vec![], script }));
    async fn hook(State(s): State<Arc<Mutex<Receiver>>>, headers: HeaderMap, body: Bytes) -> (StatusCode, HeaderMap) {
        let mut s = s.lock().unwrap();
        let h = headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
        s.seen.push((h, body.to_vec()));
        let code = if s.script.is_empty() { 200 } else { s.script.remove(0) };
        let mut out = HeaderMap::new();
        if code == 429 {
            out.insert("retry-after", "0".parse().unwrap());
        }
        (StatusCode::from_u16(code).unwrap(), out)
    }
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

const HOOK_KEY: &str = "whk-test-key-0123456789";

fn webhook_notifier(retry: DeliveryRetryPolicy) -> Notifier {
    Notifier::from_settings(&Settings { notify_webhook_key: Some(Secret::new(HOOK_KEY)), ..settings() }, retry).unwrap()
}

fn webhook_message(url: &str) -> Message {
    let mut m = message("ada@example.com", 0);
    m.delivery.channel = Channel::Webhook;
    m.delivery.webhook_url = Some(url.to_owned());
    m
}

/// The receiver's check, written independently of the sender's code.
fn verify_signature(headers: &HashMap<String, String>, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let ts = &headers["x-reverify-timestamp"];
    let sig = hex::decode(&headers["x-reverify-signature"]).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HOOK_KEY.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[tokio::test]
async fn webhook_posts_signed_json() {
    let (logs, _guard) = LogCapture::start();
    let (url, state) = start_receiver(vec![]).await;
    let notifier = webhook_notifier(fast(1));
    let msg = webhook_message(&url);
    notifier.check(&msg.delivery, None).unwrap();
    let d = notifier.send_with_retry(&msg).await.unwrap();
    assert_eq!((d.channel, d.detail.as_str()), (ChannelKind::Webhook, "HTTP 200"));

    let s = state.lock().unwrap();
    assert_eq!(s.seen.len(), 1);
    let (headers, body) = &s.seen[0];
    assert_eq!(headers["content-type"], "application/json");
    assert!(verify_signature(headers, body), "signature does not verify");
    let ts: i64 = headers["x-reverify-timestamp"].parse().unwrap();
    assert!((Utc::now().timestamp() - ts).abs() < 60);
    let mut tampered = body.clone();
    tampered[0] = b' ';
    assert!(!verify_signature(headers, &tampered), "a changed body must not verify");

    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json["campaign"], "kyc-refresh-q4");
    assert_eq!(json["step"], 0);
    assert_eq!(json["user_id"], "6f9619ff-8b86-4011-b42d-00c04fc964ff");
    assert_eq!(json["email"], "ada@example.com");
    assert_eq!(json["first_name"], "Ada");
    assert_eq!(json["last_name"], "Lovelace");
    assert_eq!(json["locale"], "en-US");
    assert_eq!(json["session_url"], link());
    assert_eq!(json["expires_at"], "2026-11-27T15:00:00Z");
    assert_no_url(&logs);
}

#[tokio::test]
async fn webhook_classifies_statuses() {
    let (logs, _guard) = LogCapture::start();
    // 503 then 429 (Retry-After: 0) then 200: two transient failures, then success,
    // with one delivery id on every attempt
    let (url, state) = start_receiver(vec![503, 429]).await;
    let d = webhook_notifier(fast(4)).send_with_retry(&webhook_message(&url)).await.unwrap();
    assert_eq!(d.attempts, 3);
    {
        let s = state.lock().unwrap();
        let ids: Vec<&String> = s.seen.iter().map(|(h, _)| &h["x-reverify-delivery-id"]).collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    }

    // 404 is permanent: no retry even with attempts to spare
    let (url, state) = start_receiver(vec![404]).await;
    let e = webhook_notifier(fast(4)).send_with_retry(&webhook_message(&url)).await.unwrap_err();
    assert!(!e.is_transient() && e.reason().contains("404"), "{e}");
    assert_eq!(state.lock().unwrap().seen.len(), 1);
    assert_error_clean(&e);

    // 408 and 5xx until the attempts run out: transient
    let (url, state) = start_receiver(vec![408, 500, 502]).await;
    let e = webhook_notifier(fast(3)).send_with_retry(&webhook_message(&url)).await.unwrap_err();
    assert!(e.is_transient() && e.reason().contains("502"), "{e}");
    assert_eq!(state.lock().unwrap().seen.len(), 3);

    // a redirect is not followed
    let (url, _state) = start_receiver(vec![307]).await;
    let e = webhook_notifier(fast(3)).send_with_retry(&webhook_message(&url)).await.unwrap_err();
    assert!(!e.is_transient() && e.reason().contains("307"), "{e}");

    // nobody listening: transient
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let e = webhook_notifier(fast(2)).send_with_retry(&webhook_message(&dead)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_error_clean(&e);
    assert_no_url(&logs);
}

fn template_dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = tmp.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    tmp
}

#[tokio::test]
async fn broken_or_missing_templates_fail_at_start_naming_the_file() {
    let load = |dir: &Path| {
        Notifier::from_settings(&Settings { templates_dir: dir.to_path_buf(), ..Settings::default() }, fast(1))
            .unwrap_err()
            .to_string()
    };
    let tmp = template_dir_with(&[("t/subject.txt", "Hi"), ("t/body.txt", "{{ link }}")]);
    let e = load(tmp.path());
    assert!(e.contains("t/body.html") && e.contains("missing"), "{e}");

    let tmp = template_dir_with(&[
        ("t/subject.txt", "Hi"),
        ("t/body.txt", "Hello\n{% for x in %}\n"),
        ("t/body.html", "<p>{{ link }}</p>"),
    ]);
    let e = load(tmp.path());
    assert!(e.contains("t/body.txt:2: syntax error"), "{e}");

    let tmp = template_dir_with(&[
        ("t/subject.txt", "Hi"),
        ("t/body.txt", "{{ link }}"),
        ("t/body.html", "<p>\n{{ expiry_time }}</p>"),
    ]);
    let e = load(tmp.path());
    assert!(e.contains("t/body.html:2: undefined value"), "{e}");

    let e = load(&tmp.path().join("nowhere"));
    assert!(e.contains("nowhere") && e.contains("cannot read the templates directory"), "{e}");

    // a campaign naming a template that does not exist, or a channel not configured
    let n = Notifier::from_settings(&settings(), fast(1)).unwrap();
    let mut d = message("ada@example.com", 0).delivery;
    d.template = "welcome".into();
    let e = n.check(&d, None).unwrap_err().to_string();
    assert!(e.contains("\"welcome\"") && e.contains("default") && e.contains("reminder"), "{e}");
    d.template = "default".into();
    let e = n.check(&Delivery { from: None, ..d.clone() }, None).unwrap_err().to_string();
    assert!(e.starts_with("delivery.from:"), "{e}");
    let e = n.check(&d, None).unwrap_err().to_string();
    assert!(e.starts_with("smtp_url:"), "{e}");
    d.channel = Channel::Webhook;
    d.webhook_url = Some("http://127.0.0.1:9/hook".into());
    let e = n.check(&d, None).unwrap_err().to_string();
    assert!(e.starts_with("notify_webhook_key:"), "{e}");
}

#[tokio::test]
async fn a_render_error_at_send_time_keeps_the_url_out() {
    let (logs, _guard) = LogCapture::start();
    // fine for the sample steps checked at load; broken from step 5 on
    let tmp = template_dir_with(&[
        ("t/subject.txt", "Hi"),
        ("t/body.txt", "{% if step > 4 %}{{ link ~ nothing }}{% endif %}{{ link }}"),
        ("t/body.html", "<p>{{ link }}</p>"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let n = Notifier::from_settings(
        &Settings {
            templates_dir: tmp.path().to_path_buf(),
            outbox_dir: Some(out.path().join("o")),
            ..Settings::default()
        },
        fast(3),
    )
    .unwrap();
    let mut m = message("ada@example.com", 5);
    m.delivery.template = "t".into();
    let e = n.send_with_retry(&m).await.unwrap_err();
    assert!(matches!(e, NotifyError::Template(_)), "{e:?}");
    assert!(e.to_string().contains("t/body.txt:1: undefined value"), "{e}");
    assert_error_clean(&e);
    assert_no_url(&logs);
}

#[tokio::test]
async fn smtp_over_starttls_and_implicit_tls() {
    use reverify::notify::testing::TestTls;
    let (logs, _guard) = LogCapture::start();
    for mode in [TestTls::Starttls, TestTls::Implicit] {
        let server = SmtpServer::start_tls(mode);
        let notifier = smtp_notifier(&server.url(), fast(1));
        let d = notifier.send(&message("ada@example.com", 0)).await.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(d.detail.starts_with("250"), "{mode:?}: {}", d.detail);
        let got = server.messages();
        assert_eq!(got.len(), 1, "{mode:?}");
        assert!(got[0].text.as_deref().unwrap().contains(&link()));
    }
    assert_no_url(&logs);
}

#[tokio::test]
async fn tls_problems_are_setup_errors_and_send_nothing() {
    use reverify::notify::testing::TestTls;
    let (logs, _guard) = LogCapture::start();
    // STARTTLS is required: a server that does not offer it gets nothing
    let plain = SmtpServer::start();
    let url = format!("smtp://127.0.0.1:{}?timeout_ms=5000", plain.port());
    let e = smtp_notifier(&url, fast(3)).send_with_retry(&message("ada@example.com", 0)).await.unwrap_err();
    assert!(e.is_setup() && e.to_string().starts_with("smtp_url:"), "{e}");
    assert!(plain.messages().is_empty());

    // a certificate nobody vouches for
    let server = SmtpServer::start_tls(TestTls::Implicit);
    let url = format!("smtps://127.0.0.1:{}?timeout_ms=5000", server.port());
    let e = smtp_notifier(&url, fast(3)).send_with_retry(&message("ada@example.com", 0)).await.unwrap_err();
    assert!(e.is_setup() && e.to_string().contains("certificate"), "{e}");
    assert!(server.messages().is_empty());
    assert_no_url(&logs);
}

#[tokio::test]
async fn smtp_pool_sends_many_at_once() {
    let (logs, _guard) = LogCapture::start();
    let server = SmtpServer::start();
    let notifier = smtp_notifier(&server.url(), fast(3));
    let n = 60;
    let msgs: Vec<Message> = (0..n).map(|i| message(&format!("user{i}@example.com"), 0)).collect();
    let started = std::time::Instant::now();
    let results = futures::future::join_all(msgs.iter().map(|m| notifier.send_with_retry(m))).await;
    let elapsed = started.elapsed();
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let got = server.messages();
    assert_eq!(got.len(), n);
    let mut to: Vec<String> = got.iter().map(|m| m.header("To").unwrap()).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), n, "every recipient exactly once");
    eprintln!("{n} messages over SMTP in {elapsed:?} ({:.0}/s)", n as f64 / elapsed.as_secs_f64());
    assert_no_url(&logs);
}

#[tokio::test]
async fn smtp_connection_lost_after_the_data_is_ambiguous_and_never_resent() {
    let (logs, _guard) = LogCapture::start();
    // the server keeps the message, then drops the connection before its reply: every
    // time, so that a resend would show as a second stored message
    let server = SmtpServer::start_with(&[Fault::accept_then_drop("lost", None)]);
    let notifier = smtp_notifier(&server.url(), fast(5));
    let e = notifier.send_with_retry(&message("lost@example.com", 0)).await.unwrap_err();
    assert!(e.is_ambiguous(), "{e:?}");
    assert!(!e.is_transient() && !e.is_setup(), "{e:?}");
    assert!(e.reason().contains("may have been delivered"), "{}", e.reason());
    assert_eq!(server.messages().len(), 1, "one attempt, and the message arrived");
    assert!(!logs.contents().contains("retrying"), "an ambiguous failure is not retried");
    // the lost connection is not reused: the next message goes out on a new one
    let d = notifier.send_with_retry(&message("ada@example.com", 0)).await.unwrap();
    assert_eq!(d.attempts, 1);
    assert_eq!(server.messages().len(), 2);
    assert_error_clean(&e);
    assert_no_url(&logs);
}

#[tokio::test]
async fn smtp_4xx_after_the_data_is_retried_with_the_same_message_id() {
    let (logs, _guard) = LogCapture::start();
    // a definite answer to the data: 451 once, then accepted
    let server = SmtpServer::start_with(&[Fault::reply_after_data("busy", 451, Some(1))]);
    let notifier = smtp_notifier(&server.url(), fast(5));
    let d = notifier.send_with_retry(&message("busy@example.com", 0)).await.unwrap();
    assert_eq!(d.attempts, 2);
    let got = server.messages();
    assert_eq!(got.len(), 1, "delivered once");
    let refused = server.refused_message_ids();
    assert_eq!(refused.len(), 1, "the first attempt reached the end of the data: {refused:?}");
    let delivered = got[0].header("Message-ID").unwrap();
    assert_eq!(refused[0], delivered, "both attempts carry one Message-ID");
    assert_eq!(d.message_id.as_deref(), Some(delivered.trim_matches(['<', '>'])));
    assert_no_url(&logs);
}

#[tokio::test]
async fn smtp_5xx_after_the_data_is_permanent() {
    let (logs, _guard) = LogCapture::start();
    let server = SmtpServer::start_with(&[Fault::reply_after_data("spam", 554, Some(1))]);
    let notifier = smtp_notifier(&server.url(), fast(5));
    let e = notifier.send_with_retry(&message("spam@example.com", 0)).await.unwrap_err();
    assert!(matches!(e, NotifyError::Permanent { .. }), "{e:?}");
    assert!(e.reason().contains("554"), "{}", e.reason());
    assert_eq!(server.refused_message_ids().len(), 1, "not retried");
    assert!(server.messages().is_empty());
    assert_no_url(&logs);
}
