//! Where Postgres's time goes (issue 30): snapshots of the bench database's
//! counters (`pg_stat_database`: buffer hits and reads, commits) and, where the
//! cluster loads `pg_stat_statements` (`scripts/bench-postgres.sh` starts one that
//! does), of every top-level statement's calls, time and buffers. Two snapshots
//! make a window; divided by the users notified in it, a window is the cost per
//! user, statement by statement. Evidence beside the figures, never figures.

use std::collections::HashMap;
use std::fmt::Write as _;

use sqlx::{Connection as _, Row as _};

/// One statement's counters, as `pg_stat_statements` keeps them.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    pub query: String,
    pub calls: i64,
    pub ms: f64,
    pub hits: i64,
    pub reads: i64,
}

/// The bench database's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct PgCounters {
    pub hits: i64,
    pub reads: i64,
    /// Transactions committed (`xact_commit`): each a WAL flush with
    /// `synchronous_commit = on`, so per user what the pipeline's commits cost.
    pub commits: i64,
    /// By `queryid`; `None` where `pg_stat_statements` is not loaded.
    pub statements: Option<HashMap<i64, Statement>>,
}

/// Reads the counters of `database` through the admin URL; `None` when the
/// database cannot be reached.
pub async fn snapshot(admin_url: &str, database: &str) -> Option<PgCounters> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await.ok()?;
    // the counters a backend holds are flushed to the shared ones at most once a second
    let db = sqlx::query("SELECT blks_hit, blks_read, xact_commit FROM pg_stat_database WHERE datname = $1")
        .bind(database)
        .fetch_optional(&mut conn)
        .await
        .ok()??;
    let mut counters = PgCounters {
        hits: db.try_get("blks_hit").ok()?,
        reads: db.try_get("blks_read").ok()?,
        commits: db.try_get("xact_commit").ok()?,
        statements: None,
    };
    // fails (and is left out) where the extension is not created or not preloaded
    let rows = sqlx::query(
        "SELECT s.queryid, s.query, s.calls, s.total_exec_time, s.shared_blks_hit, s.shared_blks_read \
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
         WHERE d.datname = $1 AND s.toplevel AND s.queryid IS NOT NULL",
    )
    .bind(database)
    .fetch_all(&mut conn)
    .await;
    if let Ok(rows) = rows {
        let mut map = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get("queryid").ok()?;
            map.insert(
                id,
                Statement {
                    query: r.try_get("query").ok()?,
                    calls: r.try_get("calls").ok()?,
                    ms: r.try_get("total_exec_time").ok()?,
                    hits: r.try_get("shared_blks_hit").ok()?,
                    reads: r.try_get("shared_blks_read").ok()?,
                },
            );
        }
        counters.statements = Some(map);
    }
    let _ = conn.close().await;
    Some(counters)
}

/// `users 1039 MB (heap 800 + indexes 239), …`: the hot tables' sizes in the bench
/// database at `db_url`, indexes and TOAST included, for the 10M estimate.
pub async fn table_sizes(db_url: &str) -> Option<String> {
    let mut conn = sqlx::PgConnection::connect(db_url).await.ok()?;
    let rows = sqlx::query(
        "SELECT c.relname::text AS name, pg_total_relation_size(c.oid) AS total, pg_relation_size(c.oid) AS heap \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind = 'r' ORDER BY 2 DESC LIMIT 6",
    )
    .fetch_all(&mut conn)
    .await
    .ok()?;
    let _ = conn.close().await;
    let mb = |b: i64| b as f64 / 1_048_576.0;
    let parts: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let (name, total, heap): (String, i64, i64) =
                (r.try_get("name").ok()?, r.try_get("total").ok()?, r.try_get("heap").ok()?);
            Some(format!(
                "{name} {:.0} MB (heap {:.0} + indexes and TOAST {:.0})",
                mb(total),
                mb(heap),
                mb(total - heap)
            ))
        })
        .collect();
    Some(parts.join(", "))
}

/// How many statements a breakdown names; the rest are summed as "others".
const TOP: usize = 8;

/// The `# ` lines of a window between two snapshots: buffers per user, and where
/// `pg_stat_statements` is there, the statements by time per user.
pub fn window_lines(label: &str, before: &PgCounters, after: &PgCounters, users: u64) -> Vec<String> {
    let per = |v: f64| v / users.max(1) as f64;
    let mut lines = vec![format!(
        "# postgres {label}: {users} users; shared buffers hit {:.1} and read {:.2} per user (pg_stat_database)",
        per((after.hits - before.hits) as f64),
        per((after.reads - before.reads) as f64),
    )];
    let (Some(b), Some(a)) = (&before.statements, &after.statements) else {
        lines.push(format!(
            "# postgres {label}: no per-statement figures (pg_stat_statements is not loaded; \
             scripts/bench-postgres.sh starts a cluster that loads it)"
        ));
        return lines;
    };
    let mut diffs: Vec<Statement> = a
        .iter()
        .map(|(id, s)| {
            let z = Statement::default();
            let o = b.get(id).unwrap_or(&z);
            Statement {
                query: s.query.clone(),
                calls: s.calls - o.calls,
                ms: s.ms - o.ms,
                hits: s.hits - o.hits,
                reads: s.reads - o.reads,
            }
        })
        .filter(|s| s.calls > 0)
        .collect();
    diffs.sort_by(|x, y| y.ms.total_cmp(&x.ms));
    let total_ms: f64 = diffs.iter().map(|s| s.ms).sum();
    lines.push(format!("# postgres {label}: statements' execution time {:.3} ms per user", per(total_ms)));
    let mut others = Statement::default();
    for (i, s) in diffs.iter().enumerate() {
        if i < TOP {
            lines.push(statement_line(label, s, users));
        } else {
            others.calls += s.calls;
            others.ms += s.ms;
            others.hits += s.hits;
            others.reads += s.reads;
        }
    }
    if diffs.len() > TOP {
        others.query = format!("({} other statements)", diffs.len() - TOP);
        lines.push(statement_line(label, &others, users));
    }
    lines
}

fn statement_line(label: &str, s: &Statement, users: u64) -> String {
    let per = |v: f64| v / users.max(1) as f64;
    let mut line = format!(
        "#   {label}: {:.4} ms/user, {:.3} calls/user, {:.1} hits/user, {:.2} reads/user: ",
        per(s.ms),
        per(s.calls as f64),
        per(s.hits as f64),
        per(s.reads as f64),
    );
    let _ = write!(line, "{}", shorten(&s.query, 160));
    line
}

/// The statement's text on one line, cut at `max` characters.
fn shorten(query: &str, max: usize) -> String {
    let one: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max { one } else { format!("{}…", one.chars().take(max).collect::<String>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(q: &str, calls: i64, ms: f64) -> Statement {
        Statement { query: q.to_owned(), calls, ms, hits: calls * 10, reads: calls }
    }

    #[test]
    fn a_window_is_the_difference_per_user_slowest_first() {
        let before = PgCounters {
            hits: 100,
            reads: 10,
            commits: 0,
            statements: Some(HashMap::from([(1, stmt("SELECT 1", 10, 5.0)), (2, stmt("UPDATE t", 0, 0.0))])),
        };
        let after = PgCounters {
            hits: 2_100,
            reads: 210,
            commits: 0,
            statements: Some(HashMap::from([
                (1, stmt("SELECT 1", 110, 15.0)),
                (2, stmt("UPDATE  t\n SET", 100, 50.0)),
            ])),
        };
        let lines = window_lines("w", &before, &after, 100);
        assert!(lines[0].contains("hit 20.0 and read 2.00 per user"), "{lines:?}");
        assert!(lines[1].contains("0.600 ms per user"), "{lines:?}");
        assert!(lines[2].contains("0.5000 ms/user") && lines[2].ends_with("UPDATE t SET"), "{lines:?}");
        assert!(lines[3].contains("0.1000 ms/user, 1.000 calls/user"), "{lines:?}");
    }

    #[test]
    fn without_the_extension_it_says_so() {
        let c = PgCounters::default();
        let lines = window_lines("w", &c, &c, 0);
        assert!(lines[1].contains("pg_stat_statements is not loaded"), "{lines:?}");
    }
}
