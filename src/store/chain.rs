//! The audit chain: every event carries the hash of the one before it, so that an
//! event changed, removed or inserted behind the log's back is found.
//!
//! Decisions:
//! - **Sealed after the fact, not on insert.** Events are written in the hot path,
//!   per user, inside group-commit transactions of many processes at once; chaining
//!   them on insert would serialise every such transaction behind one lock. Events
//!   are inserted as before, and a *sealer* (one at a time: the head row locked
//!   `FOR UPDATE` on Postgres, the write lock on SQLite) gives each committed
//!   unsealed event its place (`chain_seq`, in sealing order: Postgres commits ids
//!   out of order), the previous event's hash and its own. Every command that writes
//!   events seals at its end, so does every run, the daemon after each run, and
//!   `campaign audit --verify` and `campaign evidence` before they read.
//! - **What a hash covers**: [`event_hash`], SHA-256 over a JSON array of the place,
//!   the previous hash and every stored column, the detail as its stored text.
//! - **Inserted rows**: a row with a seal that does not verify, a place beyond the
//!   head, or no seal although it is dated more than [`SEAL_GRACE`] before the last
//!   seal ran (every legitimate event is committed within moments of its time, and
//!   sealed by the next seal). The sealer never seals such a row, so it stays visible.
//! - **Keyed links** (`audit_key`, [`Sealing::key`]): with a key kept outside the
//!   database, each link is an HMAC-SHA256 of the same array instead of its SHA-256,
//!   stored as `hmac-sha256:` and the hex ([`KEYED`]), so that nobody who can write
//!   the database but lacks the key can recompute a link. Links sealed before the
//!   key was set stay plain; once a link is keyed, every later one must be
//!   ([`ChainProblem::Unkeyed`]), and a process without the key refuses to seal
//!   after a keyed head (the events wait for a process that has it).
//! - **The anchor** (`audit_anchor`, [`super::anchor`]): every seal that moves the
//!   head appends it outside the database before it commits. `--verify` compares
//!   the chain with every head the anchor recorded: a cut tail, a rewound head or
//!   a rebuilt chain no longer matches ([`ChainProblem::Behind`],
//!   [`ChainProblem::AnchorDiffers`]).
//! - **Verify checks before it seals**: [`Store::audit_verify`] reads the chain as
//!   it is, and seals the events waiting only when nothing is wrong, listing what
//!   it sealed so that an event made up a moment ago is seen, not absorbed.
//! - **Limits**: without a key, whoever can write the database can rebuild the whole
//!   chain; without an anchor, they can also cut its tail and set the head back.
//!   With both, they can still append events that the next seal takes in (the
//!   sealer cannot tell a made-up row from a real one written by the same
//!   database role): deploy/README.md says how to keep the application's role from
//!   changing or deleting events, and the list of what a seal took in is shown.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Row};

use super::anchor::{Anchor, AnchoredHead};
use super::group::{Arg, json_args, json_rows};
use super::{Backend, Store, StoreError, from_millis, query_err, to_millis};

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How long before the last seal an event may be dated and still be sealed: the
/// longest a legitimate event takes from its time to its commit (clock skew between
/// workers included). Older unsealed events were inserted behind the log's back.
pub const SEAL_GRACE: chrono::Duration = chrono::Duration::minutes(10);

/// Events sealed per transaction: bounds how long the sealer holds SQLite's write lock
/// (100,000 events seal in about 4 s on Postgres in a debug build), and the memory a
/// seal holds (each event's row, its link and its argument: about 3 KB), which a
/// run's seal every few seconds adds to the users in flight (issue 30: 5,000 a
/// batch took a million-user run's peak RSS from 68 to 75 MB).
const SEAL_BATCH: i64 = 1000;

/// An event's stored columns, as hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChainedEvent {
    pub event_id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub kind: String,
    pub campaign_id: Option<i64>,
    pub user_id: Option<String>,
    /// The stored text, exactly.
    pub detail: Option<String>,
    pub chain_seq: Option<i64>,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// What a keyed link starts with.
pub const KEYED: &str = "hmac-sha256:";

/// The shortest `audit_key` accepted: an HMAC-SHA256 key shorter than the hash
/// gives away strength.
pub const MIN_AUDIT_KEY_BYTES: usize = 32;

/// `audit_key`: the bytes links are keyed with. `Debug` shows nothing of them.
#[derive(Clone)]
pub struct AuditKey(zeroize::Zeroizing<Vec<u8>>);

impl AuditKey {
    /// The key's bytes (the secret file's contents, trimmed).
    ///
    /// # Errors
    /// A message when it is shorter than [`MIN_AUDIT_KEY_BYTES`].
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < MIN_AUDIT_KEY_BYTES {
            return Err(format!(
                "is {} bytes; an audit key needs at least {MIN_AUDIT_KEY_BYTES} (reverify keygen prints one)",
                bytes.len()
            ));
        }
        Ok(Self(zeroize::Zeroizing::new(bytes.to_vec())))
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([REDACTED])")
    }
}

/// How this process seals: the key its links are made with, and where each new
/// head goes. The default (neither) seals plain SHA-256 links and anchors nothing.
#[derive(Debug, Clone, Default)]
pub struct Sealing {
    pub key: Option<AuditKey>,
    pub anchor: Option<Anchor>,
}

fn canonical(seq: i64, prev_hash: &str, e: &ChainedEvent) -> String {
    serde_json::json!([seq, prev_hash, e.event_id, e.at_ms, e.actor, e.kind, e.campaign_id, e.user_id, e.detail])
        .to_string()
}

/// The plain link of the event at place `seq` after `prev_hash`: lower-case hex
/// SHA-256 of the JSON array `[seq, prev_hash, event_id, at_ms, actor, kind,
/// campaign_id, user_id, detail]` (`null` for a missing value; the detail as
/// stored text).
pub fn event_hash(seq: i64, prev_hash: &str, e: &ChainedEvent) -> String {
    hex::encode(Sha256::digest(canonical(seq, prev_hash, e).as_bytes()))
}

/// The keyed link: [`KEYED`] and the hex HMAC-SHA256 of the same array.
pub fn keyed_hash(key: &AuditKey, seq: i64, prev_hash: &str, e: &ChainedEvent) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes a key of any length");
    mac.update(canonical(seq, prev_hash, e).as_bytes());
    format!("{KEYED}{}", hex::encode(mac.finalize().into_bytes()))
}

/// The link a sealer with `key` (or none) makes.
pub fn link_hash(key: Option<&AuditKey>, seq: i64, prev_hash: &str, e: &ChainedEvent) -> String {
    match key {
        Some(k) => keyed_hash(k, seq, prev_hash, e),
        None => event_hash(seq, prev_hash, e),
    }
}

/// Whether a stored link was made with a key.
pub fn is_keyed(hash: &str) -> bool {
    hash.starts_with(KEYED)
}

/// Whether `hash` is the right link for `e` at `seq` after `prev`: a plain link
/// recomputed, a keyed one with `key`. `None` when it is keyed and there is no key.
fn link_holds(key: Option<&AuditKey>, seq: i64, prev: &str, e: &ChainedEvent, hash: &str) -> Option<bool> {
    if is_keyed(hash) {
        let key = key?;
        let want = keyed_hash(key, seq, prev, e);
        Some(subtle::ConstantTimeEq::ct_eq(want.as_bytes(), hash.as_bytes()).into())
    } else {
        Some(event_hash(seq, prev, e) == hash)
    }
}

/// The chain's head: the last sealed place and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
    pub sealed_at: Option<DateTime<Utc>>,
}

/// The first thing wrong with the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ChainProblem {
    /// The event's columns or seal no longer hash to what was sealed.
    #[error("event {event_id} (chain place {seq}) was changed: its contents no longer match its hash")]
    Changed { event_id: i64, seq: i64 },
    /// The event before this one is not the one that was sealed there.
    #[error(
        "event {event_id} (chain place {seq}) no longer follows the event before it: event {before} was changed or replaced"
    )]
    Relinked { event_id: i64, seq: i64, before: i64 },
    /// A place in the chain is empty.
    #[error("the event at chain place {seq} was removed (it came after event {after})")]
    Removed { seq: i64, after: i64 },
    /// The last places of the chain are empty.
    #[error("the events at chain places {from} to {to} were removed (the head is at {to})")]
    TailRemoved { from: i64, to: i64 },
    /// A row that was never sealed, or sealed with a made-up place.
    #[error("event {event_id} was inserted behind the audit trail's back: {why}")]
    Inserted { event_id: i64, why: String },
    /// The head row does not match the last sealed event.
    #[error("the chain's head (place {seq}) does not match the last sealed event")]
    Head { seq: i64 },
    /// A keyed link, and no key to check it with.
    #[error(
        "event {event_id} (chain place {seq}) is linked with audit_key, which is not set here: \
         set audit_key (REVERIFY_AUDIT_KEY_FILE) to check the chain"
    )]
    NeedsKey { event_id: i64, seq: i64 },
    /// A plain link after keyed ones.
    #[error(
        "event {event_id} (chain place {seq}) is not linked with audit_key although the links before it are: \
         the chain was rebuilt from here by someone without the key, or sealed by a process without it"
    )]
    Unkeyed { event_id: i64, seq: i64 },
    /// The chain ends before a head the anchor recorded.
    #[error(
        "the chain's head is at place {head}, but the anchor recorded place {anchored} (sealed {anchored_at}): \
         the tail was cut or the head set back; the first event missing is the one at chain place {first}{}",
        next_event.map(|id| format!(" (event {id} is still stored there, past the head)")).unwrap_or_default()
    )]
    Behind { head: i64, anchored: i64, anchored_at: String, first: i64, next_event: Option<i64> },
    /// An anchored place holds another link than the anchor recorded.
    #[error(
        "event {event_id} at chain place {seq} is not the one the anchor recorded there (sealed {anchored_at}): \
         the chain was rebuilt; it matches the anchor up to place {matched}, so the first event that differs \
         is at a place from {} to {seq}",
        matched + 1
    )]
    AnchorDiffers { event_id: i64, seq: i64, anchored_at: String, matched: i64 },
}

/// What `campaign audit --verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Sealed events checked.
    pub checked: u64,
    /// Of those, how many links are keyed with `audit_key`.
    pub keyed: u64,
    /// Events left unsealed: written too recently to be sealed (a run in
    /// progress), or waiting because the check found a problem.
    pub unsealed: u64,
    /// The head checked (before the seal that follows a clean check).
    pub head: ChainHead,
    pub problem: Option<ChainProblem>,
    /// What the anchor said, when one is set.
    pub anchor: Option<AnchorReport>,
    /// The events the seal after a clean check took in, oldest first (at most
    /// [`LISTED_AFTER_CHECK`]): checked by nobody yet, so shown.
    pub sealed_after_check: Vec<ChainedEvent>,
    /// The head after that seal.
    pub head_after: Option<ChainHead>,
}

/// The anchor's side of a verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchorReport {
    pub anchor: String,
    /// Heads it recorded; `None` when it cannot be read back (syslog).
    pub heads: Option<u64>,
    /// The last head it recorded, matched against the chain.
    pub last: Option<AnchoredHead>,
}

/// The most newly sealed events a verify lists.
pub const LISTED_AFTER_CHECK: u32 = 50;

const COLUMNS: &str = "event_id, at, actor, kind, campaign_id, user_id, detail, chain_seq, prev_hash, hash";

fn chained_from_row(r: &sqlx::any::AnyRow) -> Result<ChainedEvent, sqlx::Error> {
    Ok(ChainedEvent {
        event_id: r.try_get("event_id")?,
        at_ms: r.try_get("at")?,
        actor: r.try_get("actor")?,
        kind: r.try_get("kind")?,
        campaign_id: r.try_get("campaign_id")?,
        user_id: r.try_get("user_id")?,
        detail: r.try_get("detail")?,
        chain_seq: r.try_get("chain_seq")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

async fn head_in(conn: &mut sqlx::AnyConnection, lock: &str) -> Result<ChainHead, StoreError> {
    let sql = format!("SELECT seq, hash, sealed_at FROM audit_chain WHERE id = 1{lock}");
    let r = sqlx::query(AssertSqlSafe(sql)).fetch_one(conn).await.map_err(query_err("audit_chain head"))?;
    Ok(ChainHead {
        seq: r.try_get("seq").map_err(query_err("audit_chain head"))?,
        hash: r.try_get("hash").map_err(query_err("audit_chain head"))?,
        sealed_at: r.try_get::<Option<i64>, _>("sealed_at").map_err(query_err("audit_chain head"))?.map(from_millis),
    })
}

impl Store {
    /// The chain's head as stored.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(query_err("audit_chain head"))?;
        head_in(&mut conn, "").await
    }

    /// The chain place of the campaign's first sealed event, if it has one.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn audit_campaign_first(&self, campaign_id: i64) -> Result<Option<i64>, StoreError> {
        sqlx::query("SELECT MIN(chain_seq) AS s FROM events WHERE campaign_id = $1")
            .bind(campaign_id)
            .fetch_one(self.pool())
            .await
            .and_then(|r| r.try_get::<Option<i64>, _>("s"))
            .map_err(query_err("audit_campaign_first"))
    }

    /// Up to `limit` sealed events with a chain place above `after` and at most
    /// `to`, in chain order, as stored: a segment of the chain.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn audit_segment_page(&self, after: i64, to: i64, limit: u32) -> Result<Vec<ChainedEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE chain_seq > $1 AND chain_seq <= $2 ORDER BY chain_seq LIMIT {limit}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(after)
            .bind(to)
            .fetch_all(self.pool())
            .await
            .map_err(query_err("audit_segment_page"))?;
        rows.iter().map(chained_from_row).collect::<Result<_, _>>().map_err(query_err("audit_segment_page"))
    }

    /// [`Store::audit_seal`] at the end of a command or an action, where a failure
    /// is only a warning: the events are kept, and the next seal takes them.
    pub async fn audit_seal_or_warn(&self, now: DateTime<Utc>) {
        if let Err(e) = self.audit_seal(now).await {
            tracing::warn!(error = %e, "could not seal the audit events; the next command that writes events will");
        }
    }

    /// This store with `sealing`: the key its seals link with, the anchor they
    /// write to.
    #[must_use]
    pub fn with_sealing(mut self, sealing: Sealing) -> Self {
        self.sealing = std::sync::Arc::new(sealing);
        self
    }

    /// How this store seals.
    pub fn sealing(&self) -> &Sealing {
        &self.sealing
    }

    /// Seals every committed unsealed event (see the module docs), a batch per
    /// transaction, and returns how many and the head. Each batch's head goes to
    /// the anchor before the batch commits. Safe to run from any number of
    /// processes at once: sealers take turns.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a row already holds a place beyond the head (a
    /// made-up seal: `--verify` names it), when the head is keyed and this store
    /// has no key, or when the anchor cannot be written; [`StoreError::Query`].
    pub async fn audit_seal(&self, now: DateTime<Utc>) -> Result<(u64, ChainHead), StoreError> {
        let lock = if self.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
        let key = self.sealing.key.as_ref();
        let mut sealed = 0u64;
        // decided once per seal: the previous seal's time, less the grace
        let mut oldest: Option<i64> = None;
        let mut first = true;
        loop {
            // a batch transaction: the update joins its arguments to events by key,
            // never by a scan of the table (see Store::begin_batch)
            let mut tx = self.begin_batch().await?;
            let head = head_in(&mut tx, lock).await?;
            if first {
                oldest = head.sealed_at.map(|t| to_millis(t - SEAL_GRACE));
                first = false;
            }
            let beyond = sqlx::query("SELECT event_id FROM events WHERE chain_seq > $1 ORDER BY chain_seq LIMIT 1")
                .bind(head.seq)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_err("audit_seal beyond"))?;
            if let Some(r) = beyond {
                let id: i64 = r.try_get("event_id").map_err(query_err("audit_seal beyond"))?;
                return Err(StoreError::Conflict(format!(
                    "event {id} holds a chain place beyond the head ({}): it was not sealed here; \
                     run `reverify campaign audit NAME --verify`",
                    head.seq
                )));
            }
            let sql = format!(
                "SELECT {COLUMNS} FROM events WHERE chain_seq IS NULL AND at >= $1 ORDER BY event_id LIMIT {SEAL_BATCH}"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(oldest.unwrap_or(i64::MIN))
                .fetch_all(&mut *tx)
                .await
                .map_err(query_err("audit_seal select"))?;
            let events = rows
                .iter()
                .map(chained_from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(query_err("audit_seal select"))?;
            if !events.is_empty() && key.is_none() && is_keyed(&head.hash) {
                return Err(StoreError::Conflict(
                    "the audit chain is keyed with audit_key, which is not set for this process: \
                     its events stay unsealed until a process with the key seals them"
                        .into(),
                ));
            }
            let (mut seq, mut prev) = (head.seq, head.hash.clone());
            let mut seals = Vec::with_capacity(events.len());
            for e in &events {
                seq += 1;
                let hash = link_hash(key, seq, &prev, e);
                seals.push(serde_json::json!([e.event_id, seq, prev, hash]));
                prev = hash;
            }
            if !seals.is_empty() {
                let sql = format!(
                    "UPDATE events SET chain_seq = x.s, prev_hash = x.p, hash = x.h FROM ({}) AS x \
                     WHERE events.event_id = x.id",
                    json_args(self.backend(), &[("id", Arg::Int), ("s", Arg::Int), ("p", Arg::Text), ("h", Arg::Text)])
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(json_rows(seals.into_iter()))
                    .execute(&mut *tx)
                    .await
                    .map_err(query_err("audit_seal update"))?;
            }
            sqlx::query("UPDATE audit_chain SET seq = $1, hash = $2, sealed_at = $3 WHERE id = 1")
                .bind(seq)
                .bind(prev.as_str())
                .bind(to_millis(now))
                .execute(&mut *tx)
                .await
                .map_err(query_err("audit_seal head"))?;
            // the anchor hears of the head before it commits, in chain order (the
            // head is locked): no committed head is missing from it
            if let (Some(anchor), Some(last)) = (&self.sealing.anchor, events.last()) {
                let line = AnchoredHead {
                    seq,
                    hash: prev.clone(),
                    at: now,
                    event_id: last.event_id,
                    sealed: events.len() as u64,
                };
                let anchor = anchor.clone();
                tokio::task::spawn_blocking(move || anchor.append(&line))
                    .await
                    .map_err(|e| StoreError::Conflict(format!("audit anchor: {e}")))?
                    .map_err(|e| StoreError::Conflict(format!("the seal was not committed: {e}")))?;
            }
            tx.commit().await.map_err(query_err("audit_seal commit"))?;
            sealed += events.len() as u64;
            if (events.len() as i64) < SEAL_BATCH {
                return Ok((sealed, ChainHead { seq, hash: prev, sealed_at: Some(now) }));
            }
        }
    }

    /// Checks the whole chain as stored, from its first place to the head, against
    /// the anchor's heads when an anchor is set; then, only when nothing is wrong,
    /// seals what waits and lists it. Returns the first problem.
    ///
    /// # Errors
    /// [`StoreError::Query`]; [`StoreError::Conflict`] when the anchor cannot be
    /// read.
    pub async fn audit_verify(&self, now: DateTime<Utc>) -> Result<ChainReport, StoreError> {
        let key = self.sealing.key.as_ref();
        let head = self.audit_head().await?;
        let mut report = ChainReport {
            checked: 0,
            keyed: 0,
            unsealed: 0,
            head: head.clone(),
            problem: None,
            anchor: None,
            sealed_after_check: Vec::new(),
            head_after: None,
        };
        // the anchor's heads by place (the last line for a place wins)
        let mut anchored = std::collections::BTreeMap::new();
        if let Some(anchor) = &self.sealing.anchor {
            let a = anchor.clone();
            let heads = tokio::task::spawn_blocking(move || a.read())
                .await
                .map_err(|e| StoreError::Conflict(format!("audit anchor: {e}")))?
                .map_err(|e| StoreError::Conflict(e.to_string()))?;
            report.anchor = Some(AnchorReport {
                anchor: anchor.shown(),
                heads: heads.as_ref().map(|h| h.len() as u64),
                last: heads.as_ref().and_then(|h| h.iter().max_by_key(|h| h.seq).cloned()),
            });
            for h in heads.into_iter().flatten().filter(|h| h.seq > 0) {
                anchored.insert(h.seq, h);
            }
        }
        let anchored_max = anchored.last_key_value().map(|(_, h)| h.clone());
        let behind = |head_seq: i64, next_event: Option<i64>| {
            anchored_max.as_ref().filter(|a| a.seq > head_seq).map(|a| ChainProblem::Behind {
                head: head_seq,
                anchored: a.seq,
                anchored_at: a.at.to_rfc3339(),
                first: head_seq + 1,
                next_event,
            })
        };
        let (mut expect, mut prev, mut prev_id) = (1i64, GENESIS.to_owned(), 0i64);
        let mut matched = 0i64;
        let mut seen_keyed = false;
        let mut after = i64::MIN;
        'pages: loop {
            let sql = format!(
                "SELECT {COLUMNS} FROM events WHERE chain_seq > $1 AND chain_seq <= $2 ORDER BY chain_seq LIMIT 5000"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(after)
                .bind(head.seq)
                .fetch_all(self.pool())
                .await
                .map_err(query_err("audit_verify"))?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let e = chained_from_row(r).map_err(query_err("audit_verify"))?;
                let seq = e.chain_seq.unwrap_or_default();
                after = seq;
                let stored = e.hash.as_deref().unwrap_or("");
                let problem = if seq < expect {
                    Some(ChainProblem::Inserted {
                        event_id: e.event_id,
                        why: format!("it holds chain place {seq}, which the sealer never gave out"),
                    })
                } else if seq > expect {
                    Some(ChainProblem::Removed { seq: expect, after: prev_id })
                } else {
                    match link_holds(key, seq, e.prev_hash.as_deref().unwrap_or(""), &e, stored) {
                        None => Some(ChainProblem::NeedsKey { event_id: e.event_id, seq }),
                        Some(false) => Some(ChainProblem::Changed { event_id: e.event_id, seq }),
                        Some(true) if e.prev_hash.as_deref() != Some(prev.as_str()) => {
                            Some(ChainProblem::Relinked { event_id: e.event_id, seq, before: prev_id })
                        }
                        Some(true) if seen_keyed && !is_keyed(stored) => {
                            Some(ChainProblem::Unkeyed { event_id: e.event_id, seq })
                        }
                        Some(true) => match anchored.get(&seq) {
                            Some(a) if a.hash != stored => Some(ChainProblem::AnchorDiffers {
                                event_id: e.event_id,
                                seq,
                                anchored_at: a.at.to_rfc3339(),
                                matched,
                            }),
                            Some(_) => {
                                matched = seq;
                                None
                            }
                            None => None,
                        },
                    }
                };
                if problem.is_some() {
                    report.problem = problem;
                    break 'pages;
                }
                report.checked += 1;
                if is_keyed(stored) {
                    seen_keyed = true;
                    report.keyed += 1;
                }
                expect += 1;
                prev = e.hash.unwrap_or_default();
                prev_id = e.event_id;
            }
        }
        if report.problem.is_none() {
            if expect <= head.seq {
                report.problem = Some(ChainProblem::TailRemoved { from: expect, to: head.seq });
            } else if prev != head.hash {
                report.problem = Some(ChainProblem::Head { seq: head.seq });
            }
        }
        // a row beyond the head: a seal that committed since the head was read, a
        // head set back (the anchor knows), or a made-up seal
        if report.problem.is_none()
            && let Some((id, seq)) = self.first_beyond(head.seq).await?
        {
            let now_head = self.audit_head().await?;
            let beyond = if seq <= now_head.seq { self.first_beyond(now_head.seq).await? } else { Some((id, seq)) };
            if let Some((id, seq)) = beyond {
                report.problem = behind(head.seq, Some(id)).or(Some(ChainProblem::Inserted {
                    event_id: id,
                    why: format!("it holds chain place {seq}, which the sealer never gave out"),
                }));
            }
        }
        if report.problem.is_none() {
            report.problem = behind(head.seq, None);
        }
        // unsealed rows: too recent to seal, or dated before the last seal's grace
        let oldest = head.sealed_at.map_or(i64::MIN, |t| to_millis(t - SEAL_GRACE));
        let stale =
            sqlx::query("SELECT event_id FROM events WHERE chain_seq IS NULL AND at < $1 ORDER BY event_id LIMIT 1")
                .bind(oldest)
                .fetch_optional(self.pool())
                .await
                .map_err(query_err("audit_verify unsealed"))?;
        if let (None, Some(r)) = (&report.problem, stale) {
            let id: i64 = r.try_get("event_id").map_err(query_err("audit_verify unsealed"))?;
            report.problem = Some(ChainProblem::Inserted {
                event_id: id,
                why: "it was never sealed, and is dated before the last seal".into(),
            });
        }
        // checked and clean: now seal what waits, and show it
        if report.problem.is_none() {
            match self.audit_seal(now).await {
                Ok((n, after_head)) => {
                    if n > 0 {
                        let sql = format!(
                            "SELECT {COLUMNS} FROM events WHERE chain_seq > $1 AND chain_seq <= $2 \
                             ORDER BY chain_seq LIMIT {LISTED_AFTER_CHECK}"
                        );
                        let rows = sqlx::query(AssertSqlSafe(sql))
                            .bind(head.seq)
                            .bind(after_head.seq)
                            .fetch_all(self.pool())
                            .await
                            .map_err(query_err("audit_verify sealed"))?;
                        report.sealed_after_check = rows
                            .iter()
                            .map(chained_from_row)
                            .collect::<Result<_, _>>()
                            .map_err(query_err("audit_verify sealed"))?;
                    }
                    report.head_after = Some(after_head);
                }
                Err(StoreError::Conflict(why)) => {
                    tracing::warn!(%why, "the chain checked clean, but the events waiting were not sealed")
                }
                Err(e) => return Err(e),
            }
        }
        let n = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE chain_seq IS NULL")
            .fetch_one(self.pool())
            .await
            .and_then(|r| r.try_get::<i64, _>("n"))
            .map_err(query_err("audit_verify unsealed"))?;
        report.unsealed = u64::try_from(n).unwrap_or(0);
        Ok(report)
    }

    /// The first event holding a place beyond `seq`: its id and place.
    async fn first_beyond(&self, seq: i64) -> Result<Option<(i64, i64)>, StoreError> {
        let r = sqlx::query("SELECT event_id, chain_seq FROM events WHERE chain_seq > $1 ORDER BY chain_seq LIMIT 1")
            .bind(seq)
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("audit_verify beyond"))?;
        r.map(|r| Ok((r.try_get("event_id")?, r.try_get("chain_seq")?)))
            .transpose()
            .map_err(query_err("audit_verify beyond"))
    }
}

#[cfg(test)]
mod tests;
