//! The batching service: the writes of many users in flight share one transaction,
//! and the writes of one kind one statement.
//!
//! A run writes several times per user (the refresh lease and the rotated tokens,
//! the reservation, `issued`, the delivery), and each write must be durable before
//! the next outside step (the token before it is used, the reservation before the
//! API call, `issued` before the message). One commit each makes the database's log
//! flush (about 1-2 ms of fsync here) the bottleneck of the whole run.
//!
//! **How a write opts in.** A statement that is worth batching gets a struct of its
//! arguments implementing [`BatchWrite`]: `run_many` writes any number of them at
//! once (usually one statement over a JSON array of their arguments, see
//! [`json_rows`] and [`json_args`]), and `key` names what must not share a
//! statement (a user's two reservations). The store's function hands it to
//! [`Store::write_batched`] and returns what it answers. Everything else (one-off
//! writes of commands and the dashboard) opens its own transaction
//! (`Store::begin_write`); reads go to the pool and never through here.
//!
//! **How a write finds its batch.** A store made with [`Store::with_group_commit`]
//! sends each write as a job to a few writer tasks. A writer takes every job queued
//! at that moment (at most `max_group`), orders them so that the jobs of one kind
//! are neighbours, round by round of their keys ([`order_for_batches`]), runs each
//! run of one kind as one `run_many` (a key seen twice ends the run), all in one
//! transaction, commits once, and only then answers each caller. A caller still
//! waits for its own write to be durable before it goes on: the order of every
//! user's steps, and so every invariant of the ledger, is unchanged. Under load
//! groups grow by themselves; alone, a write is a batch of one in a transaction of
//! its own (also what a store without a group does).
//!
//! When one job of a group fails (a dropped connection, a deadlock between two
//! workers' groups), the group is rolled back and each of its jobs is run again in a
//! transaction of its own, so that one bad write fails only its own caller.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sqlx::Row;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Store, StoreError, query_err};

/// The transaction a job runs in.
pub(crate) type Tx = sqlx::Transaction<'static, sqlx::Any>;
/// A job's statements, borrowing their arguments and the transaction.
pub(crate) type Step<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Jobs queued per writer before callers wait to queue.
const QUEUE_PER_WRITER: usize = 256;

/// How a store groups its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Writer tasks, each with its own transaction (and connection) at a time.
    pub writers: usize,
    /// Most jobs in one transaction.
    pub max_group: usize,
}

impl GroupCommit {
    /// Postgres: two transactions at once, each one connection of the pool's 16.
    /// With writes batched, fewer and larger groups cost Postgres less per user
    /// (measured: 4 writers of up to 64 jobs, 0.29 ms of backend CPU per user; 2 of
    /// up to 128, 0.23 ms). SQLite: one (it takes one writer at a time, over the
    /// pool's one connection).
    pub fn for_backend(backend: super::Backend) -> Self {
        match backend {
            super::Backend::Postgres => Self { writers: 2, max_group: 128 },
            super::Backend::Sqlite => Self { writers: 1, max_group: 128 },
        }
    }
}

/// A write whose statements can serve many callers at once: a group runs every
/// queued write of one kind as one statement (or a few) over all their arguments,
/// instead of a round trip each. Most of the database's work per write is the
/// statement's own (a round trip, a plan run, an executor started), not the row's.
pub(crate) trait BatchWrite: Send + Sync + Sized + 'static {
    type Out: Send + 'static;
    /// Writes that must not share a statement (two reservations for one user: the
    /// second must see the first) have the same key; the writer runs them in turn.
    fn key(&self) -> Option<&str> {
        None
    }
    /// Runs every write at once; one result per write, in order.
    fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<Self::Out>>;
}

/// The arguments of a batched statement, bound as `$1`: a JSON array of one entry
/// (an array of values) per write.
pub(crate) fn json_rows(rows: impl Iterator<Item = serde_json::Value>) -> String {
    serde_json::Value::Array(rows.collect()).to_string()
}

/// The SQL type of one value of a [`json_rows`] entry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    Text,
    Int,
    Bool,
    /// Bytes, written as hex.
    Hex,
}

/// A `SELECT` of `$1` (see [`json_rows`]) as one row per write, its values as the
/// columns `cols` in order, plus `n`, the write's place in the batch (to order by).
/// Postgres reads the array with `json_array_elements`, SQLite with `json_each`.
pub(crate) fn json_args(backend: super::Backend, cols: &[(&str, Arg)]) -> String {
    let columns: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, (name, arg))| match backend {
            super::Backend::Postgres => match arg {
                Arg::Text => format!("j.e->>{i} AS {name}"),
                Arg::Int => format!("(j.e->>{i})::bigint AS {name}"),
                Arg::Bool => format!("(j.e->>{i})::boolean AS {name}"),
                Arg::Hex => format!("decode(j.e->>{i}, 'hex') AS {name}"),
            },
            super::Backend::Sqlite => match arg {
                Arg::Hex => format!("unhex(value->>{i}) AS {name}"),
                _ => format!("value->>{i} AS {name}"),
            },
        })
        .collect();
    match backend {
        super::Backend::Postgres => {
            format!("SELECT j.n, {} FROM json_array_elements($1::json) WITH ORDINALITY AS j(e, n)", columns.join(", "))
        }
        super::Backend::Sqlite => format!("SELECT key AS n, {} FROM json_each($1)", columns.join(", ")),
    }
}

/// The `user_id` column of the rows a statement returns.
pub(crate) async fn returned_user_ids(
    q: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    tx: &mut Tx,
    op: &'static str,
) -> Result<HashSet<String>, StoreError> {
    q.fetch_all(&mut **tx)
        .await
        .map_err(query_err(op))?
        .iter()
        .map(|r| r.try_get::<String, _>("user_id"))
        .collect::<Result<_, _>>()
        .map_err(query_err(op))
}

/// Runs a batch of jobs that all share one [`Job::batch`] kind.
type BatchRunner = for<'a> fn(&'a mut [Box<dyn Job>], &'a mut Tx) -> Step<'a, ()>;

/// One write waiting in a group, its type erased (a group holds writes of many
/// kinds).
trait Job: Send + Any {
    /// Answers the caller: the kept result once committed, or the error.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
    /// Its kind, the runner of a batch of that kind, and its key.
    fn batch(&self) -> (TypeId, BatchRunner, Option<&str>);
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Answers a job's caller: its kept result once committed, or the error.
fn answer<T>(reply: oneshot::Sender<Result<T, StoreError>>, committed: Result<(), StoreError>, out: Option<T>) {
    let answer = match (committed, out) {
        (Ok(()), Some(v)) => Ok(v),
        (Ok(()), None) => Err(StoreError::Conflict("a grouped write finished without a result".into())),
        (Err(e), _) => Err(e),
    };
    // the caller may have gone away (its run stopped): nothing to answer then
    let _ = reply.send(answer);
}

/// A [`BatchWrite`] waiting in a group.
struct Batched<A: BatchWrite> {
    args: A,
    out: Option<A::Out>,
    reply: oneshot::Sender<Result<A::Out, StoreError>>,
}

impl<A: BatchWrite> Job for Batched<A> {
    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        answer(self.reply, committed, self.out);
    }

    fn batch(&self) -> (TypeId, BatchRunner, Option<&str>) {
        (TypeId::of::<A>(), run_batch::<A>, self.args.key())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Runs `jobs` (every one a `Batched<A>`) as one [`BatchWrite::run_many`].
fn run_batch<'a, A: BatchWrite>(jobs: &'a mut [Box<dyn Job>], tx: &'a mut Tx) -> Step<'a, ()> {
    Box::pin(async move {
        let outs = {
            let args: Vec<&A> =
                jobs.iter().filter_map(|j| j.as_any().downcast_ref::<Batched<A>>().map(|b| &b.args)).collect();
            if args.len() != jobs.len() {
                return Err(StoreError::Conflict("a batch of grouped writes mixed two kinds".into()));
            }
            A::run_many(&args, tx).await?
        };
        if outs.len() != jobs.len() {
            return Err(StoreError::Conflict("a batched write answered for the wrong number of writes".into()));
        }
        for (job, out) in jobs.iter_mut().zip(outs) {
            if let Some(b) = job.as_any_mut().downcast_mut::<Batched<A>>() {
                b.out = Some(out);
            }
        }
        Ok(())
    })
}

/// The sending side, held by a store made with [`Store::with_group_commit`].
#[derive(Clone)]
pub(crate) struct Group {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

impl Group {
    /// Starts the writers over `store` (a store without a group). They stop when
    /// the last sender is dropped.
    fn start(store: Store, cfg: GroupCommit) -> Self {
        let writers = cfg.writers.max(1);
        let (jobs, rx) = mpsc::channel::<Box<dyn Job>>(QUEUE_PER_WRITER * writers);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers {
            tokio::spawn(writer(store.clone(), rx.clone(), cfg.max_group.max(1)));
        }
        Self { jobs }
    }
}

/// One writer: takes what is queued (at least one job, at most `max`), runs it as
/// one transaction, answers, and goes back for more.
async fn writer(store: Store, rx: Arc<Mutex<mpsc::Receiver<Box<dyn Job>>>>, max: usize) {
    loop {
        let mut group: Vec<Box<dyn Job>> = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            group.push(first);
            while group.len() < max {
                match rx.try_recv() {
                    Ok(j) => group.push(j),
                    Err(_) => break,
                }
            }
        }
        run_group(&store, group).await;
    }
}

async fn run_group(store: &Store, mut group: Vec<Box<dyn Job>>) {
    match run_together(store, &mut group).await {
        Ok(()) => group.into_iter().for_each(|j| j.finish(Ok(()))),
        // alone, the first job's error is its own
        Err(e) if group.len() == 1 => {
            if let Some(job) = group.pop() {
                job.finish(Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, jobs = group.len(), "a grouped write failed; running the group's writes one by one");
            for job in group {
                let mut one = vec![job];
                let alone = run_together(store, &mut one).await;
                if let Some(job) = one.pop() {
                    job.finish(alone);
                }
            }
        }
    }
}

/// Runs `jobs` in one transaction and commits it, the writes of one kind together
/// (see [`order_for_batches`]).
async fn run_together(store: &Store, jobs: &mut Vec<Box<dyn Job>>) -> Result<(), StoreError> {
    let mut tx = store.begin_batch().await?;
    order_for_batches(jobs);
    let mut at = 0;
    while at < jobs.len() {
        // an error rolls the transaction back as it is dropped
        let (kind, runner, key) = jobs[at].batch();
        // the batch: the neighbours of the same kind, up to a key seen already
        let mut keys: HashSet<&str> = key.into_iter().collect();
        let mut end = at + 1;
        while let Some((k, _, key)) = jobs.get(end).map(|j| j.batch()) {
            if k != kind || key.is_some_and(|key| !keys.insert(key)) {
                break;
            }
            end += 1;
        }
        drop(keys);
        runner(&mut jobs[at..end], &mut tx).await?;
        at = end;
    }
    tx.commit().await.map_err(query_err("group commit"))
}

/// Orders a group so that the writes of one kind are neighbours: round by round
/// (round n holds the n-th write of a key), kind by kind in the order kinds first
/// came. The order
/// between different users' writes does not matter (a run has at most one write per
/// user in flight), and writes of one key keep their order.
fn order_for_batches(jobs: &mut Vec<Box<dyn Job>>) {
    if jobs.len() < 2 {
        return;
    }
    let mut kinds: Vec<TypeId> = Vec::new();
    let mut seen: HashMap<(TypeId, String), usize> = HashMap::new();
    let ranks: Vec<(usize, usize)> = jobs
        .iter()
        .map(|job| {
            let (k, _, key) = job.batch();
            let kind = match kinds.iter().position(|x| *x == k) {
                Some(p) => p,
                None => {
                    kinds.push(k);
                    kinds.len() - 1
                }
            };
            let round = key.map_or(0, |key| {
                let n = seen.entry((k, key.to_owned())).or_insert(0);
                *n += 1;
                *n - 1
            });
            (round, kind)
        })
        .collect();
    let mut ranked: Vec<((usize, usize), Box<dyn Job>)> = ranks.into_iter().zip(jobs.drain(..)).collect();
    // stable: equal ranks keep their order
    ranked.sort_by_key(|(rank, _)| *rank);
    jobs.extend(ranked.into_iter().map(|(_, job)| job));
}

impl Store {
    /// This store, with its writes grouped into shared transactions (see the module
    /// documentation). For a run's many users in flight; reads are unchanged.
    /// Needs a Tokio runtime (the writers are tasks).
    pub fn with_group_commit(&self, cfg: GroupCommit) -> Store {
        let plain = Store { group: None, ..self.clone() };
        Store { group: Some(Group::start(plain.clone(), cfg)), ..plain }
    }

    /// The one way into the batching service: runs a [`BatchWrite`] in a group,
    /// batched with the other writes of its kind queued at that moment, when this
    /// store has one; otherwise alone in a transaction of its own. Returns once the
    /// write is committed.
    pub(crate) async fn write_batched<A: BatchWrite>(&self, args: A) -> Result<A::Out, StoreError> {
        let Some(group) = &self.group else {
            let mut tx = self.begin_batch().await?;
            let out = A::run_many(&[&args], &mut tx).await?.pop();
            tx.commit().await.map_err(query_err("commit"))?;
            return out.ok_or_else(|| StoreError::Conflict("a write finished without a result".into()));
        };
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Batched { args, out: None, reply });
        group.jobs.send(job).await.map_err(|_| StoreError::Conflict("the group commit writers have stopped".into()))?;
        answer.await.map_err(|_| StoreError::Conflict("a group commit writer stopped mid-write".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::both_engines;
    use crate::store::testing::TestDb;
    use sqlx::Row;

    /// A write that inserts a probe event at `n` and answers `2 n`; with `fail`, a
    /// statement after the insert fails.
    struct Probe {
        n: i64,
        fail: bool,
    }

    impl BatchWrite for Probe {
        type Out = i64;

        fn run_many<'a>(writes: &'a [&'a Self], tx: &'a mut Tx) -> Step<'a, Vec<i64>> {
            Box::pin(async move {
                let mut out = Vec::with_capacity(writes.len());
                for w in writes {
                    sqlx::query(
                        "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) VALUES ($1, 'test', 'probe', NULL, NULL, NULL)",
                    )
                    .bind(w.n)
                    .execute(&mut **tx)
                    .await
                    .map_err(query_err("probe"))?;
                    if w.fail {
                        sqlx::query("SELECT no_such_column FROM events")
                            .execute(&mut **tx)
                            .await
                            .map_err(query_err("bad"))?;
                    }
                    out.push(w.n * 2);
                }
                Ok(out)
            })
        }
    }

    fn insert_probe(n: i64) -> Probe {
        Probe { n, fail: false }
    }

    fn insert_then_fail(n: i64) -> Probe {
        Probe { n, fail: true }
    }

    async fn probes(store: &Store) -> Vec<i64> {
        sqlx::query("SELECT at FROM events WHERE kind = 'probe' ORDER BY at")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<i64, _>("at").unwrap())
            .collect()
    }

    both_engines!(grouped_writes_all_commit_and_answer_their_own_caller, |db: TestDb| async move {
        let store = db.store.with_group_commit(GroupCommit { writers: 2, max_group: 16 });
        let mut tasks = tokio::task::JoinSet::new();
        for n in 1..=200i64 {
            let s = store.clone();
            tasks.spawn(async move { (n, s.write_batched(insert_probe(n)).await.unwrap()) });
        }
        while let Some(r) = tasks.join_next().await {
            let (n, doubled) = r.unwrap();
            assert_eq!(doubled, 2 * n);
        }
        assert_eq!(probes(&db.store).await, (1..=200).collect::<Vec<_>>());
    });

    both_engines!(a_failing_write_fails_alone_and_leaves_nothing, |db: TestDb| async move {
        // one writer and a group of up to 64: the failing job shares its group
        let store = db.store.with_group_commit(GroupCommit { writers: 1, max_group: 64 });
        let mut tasks = tokio::task::JoinSet::new();
        for n in 1..=40i64 {
            let s = store.clone();
            tasks.spawn(async move {
                let r = if n == 20 {
                    s.write_batched(insert_then_fail(n)).await
                } else {
                    s.write_batched(insert_probe(n)).await
                };
                (n, r)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (n, r) = r.unwrap();
            if n == 20 {
                let e = r.unwrap_err().to_string();
                assert!(e.contains("bad"), "{e}");
            } else {
                assert_eq!(r.unwrap(), 2 * n);
            }
        }
        let expected: Vec<i64> = (1..=40).filter(|n| *n != 20).collect();
        assert_eq!(probes(&db.store).await, expected, "the failed write's own insert is rolled back");
    });

    /// Each batch that ran, as its writes' (key, sequence number).
    type BatchLog = Arc<std::sync::Mutex<Vec<Vec<(String, usize)>>>>;

    /// A batchable write that records the batches it ran in.
    struct Keyed {
        key: String,
        seq: usize,
        log: BatchLog,
    }

    impl BatchWrite for Keyed {
        type Out = usize;

        fn key(&self) -> Option<&str> {
            Some(&self.key)
        }

        fn run_many<'a>(writes: &'a [&'a Self], _tx: &'a mut Tx) -> Step<'a, Vec<usize>> {
            Box::pin(async move {
                if let Some(first) = writes.first() {
                    let batch = writes.iter().map(|w| (w.key.clone(), w.seq)).collect();
                    first.log.lock().unwrap().push(batch);
                }
                Ok(writes.iter().map(|w| w.seq).collect())
            })
        }
    }

    /// A write that says it has started (`.0`) and waits to be released (`.1`).
    struct Hold(Arc<(tokio::sync::Notify, tokio::sync::Notify)>);

    impl BatchWrite for Hold {
        type Out = ();

        fn run_many<'a>(writes: &'a [&'a Self], _tx: &'a mut Tx) -> Step<'a, Vec<()>> {
            Box::pin(async move {
                for w in writes {
                    w.0.0.notify_one();
                    w.0.1.notified().await;
                }
                Ok(vec![(); writes.len()])
            })
        }
    }

    both_engines!(writes_of_one_key_never_share_a_batch_and_keep_their_order, |db: TestDb| async move {
        // one writer: everything queued while it starts lands in one group
        let store = db.store.with_group_commit(GroupCommit { writers: 1, max_group: 64 });
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keys = ["a", "a", "b", "a", "c", "b", "d"];
        // The one writer is kept busy by a write that waits for a signal, so that
        // all seven queue before it takes any: the test does not depend on how the
        // threads happen to be scheduled.
        let gate = Arc::new((tokio::sync::Notify::new(), tokio::sync::Notify::new()));
        let busy = tokio::spawn({
            let (s, gate) = (store.clone(), gate.clone());
            async move { s.write_batched(Hold(gate)).await.unwrap() }
        });
        gate.0.notified().await;
        // polled in order, so that they queue in order
        let writes = keys.iter().enumerate().map(|(seq, key)| {
            let w = Keyed { key: (*key).to_owned(), seq, log: log.clone() };
            let s = store.clone();
            async move { (seq, s.write_batched(w).await.unwrap()) }
        });
        let writes = tokio::spawn(futures::future::join_all(writes));
        let jobs = store.group.as_ref().map(|g| g.jobs.clone()).unwrap();
        while jobs.max_capacity() - jobs.capacity() < keys.len() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        gate.1.notify_one();
        busy.await.unwrap();
        for (seq, out) in writes.await.unwrap() {
            assert_eq!(seq, out, "each write gets its own answer");
        }
        let batches = log.lock().unwrap().clone();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), keys.len(), "{batches:?}");
        assert!(batches.len() < keys.len(), "the writes were batched: {batches:?}");
        let mut last_seq: HashMap<String, usize> = HashMap::new();
        for batch in &batches {
            let mut seen = HashSet::new();
            for (key, seq) in batch {
                assert!(seen.insert(key.clone()), "key {key} twice in one batch: {batches:?}");
                if let Some(before) = last_seq.insert(key.clone(), *seq) {
                    assert!(before < *seq, "key {key} out of order: {batches:?}");
                }
            }
        }
    });

    both_engines!(a_store_without_a_group_writes_alone, |db: TestDb| async move {
        assert_eq!(db.store.write_batched(insert_probe(7)).await.unwrap(), 14);
        assert!(db.store.write_batched(insert_then_fail(8)).await.is_err());
        assert_eq!(probes(&db.store).await, vec![7]);
    });
}
