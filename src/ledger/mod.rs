//! The ledger (SPEC §8): log rows and the balance changes they imply, written
//! by one batch writer.
//!
//! Calls put their row on a bounded queue and go on; the writer commits a
//! batch (every [`LedgerConfig::window`] or [`LedgerConfig::max_batch`] rows) in
//! ONE transaction that inserts the rows and moves `tokens`, `users` and
//! `channels` balances by the same sums — so the ledger and the balances can
//! never disagree. A full queue makes callers wait (backpressure), it never
//! drops. If the database fails, the writer keeps the batch and retries.
//!
//! Durability: on SIGTERM the queue is drained and committed before exit. On
//! SIGKILL (or power loss) what is lost is what was queued or in the batch
//! being written: `window` of traffic (50 ms by default) plus what arrived
//! while the database committed the batch before (a few ms normally, more
//! when it is slow), rows and balances alike, never one without the other.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::billing::bank::{Committed, Hold, QuotaBank};
use crate::store::{Dialect, LedgerPool, LedgerRows, NewLog, SqliteWriter, Store, StoreError};
use crate::util::FastMap;

/// A settled call: its row and who pays.
#[derive(Debug, Clone)]
pub struct Charge {
    pub log: NewLog,
    pub token_id: i64,
    /// Whether the token's `remain_quota` moves (false for unlimited tokens).
    pub token_limited: bool,
    pub user_id: i64,
    pub channel_id: i64,
    pub quota: i64,
    /// What the reservation was made in (Redis bank).
    pub token_hold: Hold,
    pub user_hold: Hold,
}

/// What the writer is asked to do.
#[derive(Debug)]
pub enum Entry {
    /// A billed call.
    Charge(Box<Charge>),
    /// A row with no balance effect (errors, system notes).
    Log(Box<NewLog>),
    /// A system status change of a token (expired → 3).
    TokenStatus { id: i64, status: i64 },
    /// Commit everything queued so far, then answer.
    Flush(oneshot::Sender<()>),
}

impl Entry {
    /// The log row this entry writes, if any.
    fn row(&self) -> Option<&NewLog> {
        match self {
            Entry::Charge(c) => Some(&c.log),
            Entry::Log(l) => Some(l),
            Entry::TokenStatus { .. } | Entry::Flush(_) => None,
        }
    }
}

/// Most rows one batch commits, unless configured (400: under load a
/// commit every ~9 ms at 45 k calls/s; larger batches cost the calls' tail,
/// smaller ones more commits; docs/performance.md item 23).
pub const DEFAULT_MAX_BATCH: usize = 400;

/// How long the writer gathers rows before a commit, unless configured
/// (what a SIGKILL can lose, besides the commit in flight).
pub const DEFAULT_WINDOW_MS: u64 = 50;

/// Writer tuning.
#[derive(Debug, Clone, Copy)]
pub struct LedgerConfig {
    pub queue: usize,
    pub max_batch: usize,
    pub window: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            queue: 20_000,
            max_batch: DEFAULT_MAX_BATCH,
            window: Duration::from_millis(DEFAULT_WINDOW_MS),
        }
    }
}

/// Handle to the ledger queue.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Entry>,
    wake: Arc<Wake>,
    max_batch: usize,
}

impl Ledger {
    /// Starts the writer on `tracker`; it drains and stops when `stop` fires.
    pub fn start(
        store: Store,
        bank: Arc<QuotaBank>,
        metrics: crate::telemetry::Metrics,
        cfg: LedgerConfig,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Ledger {
        let cfg = LedgerConfig {
            max_batch: cfg.max_batch.max(1),
            ..cfg
        };
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let wake = Arc::new(Wake::default());
        tracker.spawn(writer(store, bank, metrics, cfg, rx, wake.clone(), stop));
        Ledger {
            tx,
            wake,
            max_batch: cfg.max_batch,
        }
    }

    /// Queues an entry, waiting if the queue is full.
    pub async fn record(&self, e: Entry) {
        if self.tx.send(e).await.is_err() {
            tracing::error!("ledger writer has stopped; entry lost");
            return;
        }
        // The writer may hold one entry besides the queue. A wake it does
        // not need (a permit left from an earlier row) only makes it look.
        if self.queued() + 1 >= self.max_batch {
            self.wake.full.notify_one();
        }
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.record(Entry::Flush(tx)).await;
        self.wake.urgent.notify_one();
        let _ = rx.await;
    }

    /// Entries waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// What ends the writer's window early.
#[derive(Default)]
struct Wake {
    /// A flush is queued.
    urgent: Notify,
    /// A full batch may be queued (the writer checks).
    full: Notify,
}

async fn writer(
    store: Store,
    bank: Arc<QuotaBank>,
    metrics: crate::telemetry::Metrics,
    cfg: LedgerConfig,
    mut rx: mpsc::Receiver<Entry>,
    wake: Arc<Wake>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Entry> = Vec::with_capacity(cfg.max_batch);
    let mut stopping = false;
    loop {
        if batch.is_empty() {
            let first = tokio::select! {
                e = rx.recv() => e,
                _ = stop.cancelled(), if !stopping => {
                    // Refuse new entries, then drain what is queued.
                    stopping = true;
                    rx.close();
                    continue;
                }
            };
            match first {
                Some(e) => batch.push(e),
                None => break,
            }
        }
        // Gather the window's rows. The writer does not wake for each row
        // (calls are served on other threads, and a wake-up per row cost more
        // than the row): it sleeps out the window, then takes what has
        // queued. A flush or a stop ends the window at once (shutdown must
        // not wait out a long window before the queue is drained), and so
        // does a full batch, queued before or during the window (under load
        // the window shrinks, and batches are exactly `max_batch` rows).
        if !matches!(batch.last(), Some(Entry::Flush(_)))
            && !stopping
            && batch.len() + rx.len() < cfg.max_batch
        {
            let deadline = tokio::time::Instant::now() + cfg.window;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = wake.urgent.notified() => break,
                    _ = wake.full.notified() => {
                        if batch.len() + rx.len() >= cfg.max_batch {
                            break;
                        }
                    }
                    _ = stop.cancelled() => {
                        stopping = true;
                        rx.close();
                        break;
                    }
                }
            }
        }
        while batch.len() < cfg.max_batch && !matches!(batch.last(), Some(Entry::Flush(_))) {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        metrics.ledger_queue.set(rx.len() as f64);
        commit_with_retry(&store, &bank, &metrics, &mut batch, &stop).await;
        batch.clear();
    }
    tracing::info!("ledger writer drained and stopped");
}

async fn commit_with_retry(
    store: &Store,
    bank: &QuotaBank,
    metrics: &crate::telemetry::Metrics,
    batch: &mut Vec<Entry>,
    stop: &CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    let mut attempts_after_stop = 0;
    loop {
        match commit(store, bank, batch).await {
            Ok(()) => {
                let rows = batch
                    .iter()
                    .filter(|e| matches!(e, Entry::Charge(_) | Entry::Log(_)))
                    .count();
                metrics.ledger_rows.increment(rows as u64);
                break;
            }
            Err(e) => {
                if stop.is_cancelled() {
                    attempts_after_stop += 1;
                    // Shutting down with the database gone: give it ~30 s.
                    if attempts_after_stop > 60 {
                        let rows = batch
                            .iter()
                            .filter(|e| matches!(e, Entry::Charge(_) | Entry::Log(_)))
                            .count();
                        tracing::error!(error = %e, rows, "ledger batch lost at shutdown: database unreachable");
                        break;
                    }
                }
                metrics.ledger_retries.increment(1);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "ledger commit failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                if stop.is_cancelled() {
                    delay = Duration::from_millis(500);
                }
            }
        }
    }
    for e in batch.drain(..) {
        if let Entry::Flush(tx) = e {
            let _ = tx.send(());
        }
    }
}

#[derive(Default)]
struct Sums {
    quota: i64,
    limited: i64,
    count: i64,
    last: i64,
}

/// What one batch writes: its rows, the balance sums they imply, system
/// status changes, and what the bank must move once they are committed.
#[derive(Default)]
struct Plan<'a> {
    logs: Vec<&'a NewLog>,
    tokens: FastMap<i64, Sums>,
    users: FastMap<i64, Sums>,
    channels: FastMap<i64, Sums>,
    statuses: Vec<(i64, i64)>,
    /// Per account and generation.
    bal_tokens: FastMap<(i64, Hold), i64>,
    bal_users: FastMap<(i64, Hold), i64>,
}

impl<'a> Plan<'a> {
    fn of(batch: &'a [Entry]) -> Plan<'a> {
        let mut p = Plan::default();
        for e in batch {
            match e {
                Entry::Charge(c) => {
                    p.logs.push(&c.log);
                    if c.token_limited {
                        *p.bal_tokens.entry((c.token_id, c.token_hold)).or_default() += c.quota;
                    }
                    *p.bal_users.entry((c.user_id, c.user_hold)).or_default() += c.quota;
                    let t = p.tokens.entry(c.token_id).or_default();
                    t.quota += c.quota;
                    if c.token_limited {
                        t.limited += c.quota;
                    }
                    t.count += 1;
                    t.last = t.last.max(c.log.created_at);
                    let u = p.users.entry(c.user_id).or_default();
                    u.quota += c.quota;
                    u.count += 1;
                    if c.channel_id > 0 {
                        let ch = p.channels.entry(c.channel_id).or_default();
                        ch.quota += c.quota;
                        ch.count += 1;
                    }
                }
                Entry::Log(l) => p.logs.push(l),
                Entry::TokenStatus { id, status } => p.statuses.push((*id, *status)),
                Entry::Flush(_) => {}
            }
        }
        p
    }

    /// The balance and status updates, each statement with its values in
    /// bind order (for every database).
    fn updates(&self) -> impl Iterator<Item = (&'static str, Vec<i64>)> + '_ {
        let tokens = self.tokens.iter().map(|(id, s)| {
            let v = vec![s.limited, s.limited, s.quota, s.count, s.last, *id];
            (SPEND_TOKEN, v)
        });
        let users =
            (self.users.iter()).map(|(id, s)| (SPEND_USER, vec![s.quota, s.quota, s.count, *id]));
        let channels =
            (self.channels.iter()).map(|(id, s)| (SPEND_CHANNEL, vec![s.quota, s.count, *id]));
        let statuses =
            (self.statuses.iter()).map(|(id, status)| (SET_TOKEN_STATUS, vec![*status, *id]));
        tokens.chain(users).chain(channels).chain(statuses)
    }

    fn committed(&self) -> Committed {
        let moves = |m: &FastMap<(i64, Hold), i64>| {
            m.iter()
                .filter(|(_, q)| **q != 0)
                .map(|((id, g), q)| (*id, *g, *q))
                .collect()
        };
        Committed {
            tokens: moves(&self.bal_tokens),
            users: moves(&self.bal_users),
        }
    }
}

/// Moves a token's balance by a batch's sums (values: [`Plan::updates`]).
/// `status` first: MySQL evaluates SET left to right with new values.
const SPEND_TOKEN: &str = "UPDATE tokens SET \
    status = CASE WHEN status = 1 AND unlimited_quota = 0 AND remain_quota - ? <= 0 THEN 4 ELSE status END, \
    remain_quota = remain_quota - ?, used_quota = used_quota + ?, \
    request_count = request_count + ?, accessed_time = ? WHERE id = ?";
/// Moves a user's balance by a batch's sums.
const SPEND_USER: &str = "UPDATE users SET quota = quota - ?, used_quota = used_quota + ?, \
    request_count = request_count + ? WHERE id = ?";
/// Adds a batch's sums to a channel's.
const SPEND_CHANNEL: &str = "UPDATE channels SET used_quota = used_quota + ?, request_count = request_count + ? WHERE id = ?";
/// A system status change of a token still enabled.
const SET_TOKEN_STATUS: &str = "UPDATE tokens SET status = ? WHERE id = ? AND status = 1";

/// Commits one batch in one transaction, then tells the bank. The batch is
/// lent to SQLite's blocking thread and is back in `batch` when this returns.
async fn commit(store: &Store, bank: &QuotaBank, batch: &mut Vec<Entry>) -> Result<(), StoreError> {
    if batch.iter().all(|e| matches!(e, Entry::Flush(_))) {
        return Ok(());
    }
    match store.ledger_pool() {
        LedgerPool::Sqlite(db) => write_sqlite(db, bank, batch).await,
        LedgerPool::Postgres(pool) => write(pool, store.dialect(), bank, &Plan::of(batch)).await,
        LedgerPool::Any(pool) => write(pool, store.dialect(), bank, &Plan::of(batch)).await,
    }
}

/// Writes `plan` in one transaction on `pool`, whichever database it is.
async fn write<DB>(
    pool: &sqlx::Pool<DB>,
    dialect: Dialect,
    bank: &QuotaBank,
    plan: &Plan<'_>,
) -> Result<(), StoreError>
where
    DB: LedgerRows,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let q = |sql: &str| sqlx::query::<DB>(sqlx::AssertSqlSafe(dialect.sql(sql)));
    let mut tx = pool.begin().await?;
    DB::insert_rows(&mut tx, dialect, &plan.logs).await?;
    for (sql, values) in plan.updates() {
        let mut q = q(sql);
        for v in values {
            q = q.bind(v);
        }
        q.execute(&mut *tx).await?;
    }
    // Commit and update the bank as one step for anyone reading balances.
    let _g = bank.commit_guard().await;
    tx.commit().await?;
    bank.committed(&plan.committed()).await;
    Ok(())
}

/// Rows one blocking hand-off inserts at most. Between pieces SQLite's
/// thread leaves the cores to the serving threads: a 1 000-row batch
/// written in one run held a core for ~5 ms, and the calls' p99 showed it.
const PIECE_ROWS: usize = 256;

/// How far a batch's statements have gone.
enum Staged {
    /// This many rows are inserted; more remain.
    Rows(usize),
    /// Every statement ran; what the bank moves once committed.
    All(Committed),
}

/// [`write`] for SQLite, on the writer's rusqlite connection: the batch's
/// statements run on a blocking thread in pieces (the batch goes with each
/// and comes back), then the commit, under the bank's guard.
async fn write_sqlite(
    db: &SqliteWriter,
    bank: &QuotaBank,
    batch: &mut Vec<Entry>,
) -> Result<(), StoreError> {
    let mut done = 0;
    let committed = loop {
        let entries = std::mem::take(batch);
        let (entries, staged) = db
            .run(move |conn| {
                let staged = conn.map_err(StoreError::from).and_then(|conn| {
                    stage_sqlite(conn, &entries, done).map_err(|e| {
                        // The transaction must not stay open for the retry.
                        let _ = conn.execute_batch("ROLLBACK");
                        StoreError::from(e)
                    })
                });
                (entries, staged)
            })
            .await?;
        *batch = entries;
        match staged? {
            Staged::Rows(n) => done = n,
            Staged::All(c) => break c,
        }
    };
    let _g = bank.commit_guard().await;
    db.run(|conn| {
        let conn = conn?;
        conn.execute_batch("COMMIT").inspect_err(|_| {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        })
    })
    .await??;
    bank.committed(&committed).await;
    Ok(())
}

/// The next piece of `batch`'s statements after `done` rows, in a
/// transaction left open (begun with the first piece).
fn stage_sqlite(
    conn: &rusqlite::Connection,
    batch: &[Entry],
    done: usize,
) -> rusqlite::Result<Staged> {
    if done == 0 {
        // IMMEDIATE: the write lock now, waiting out the busy timeout,
        // rather than at the first insert, where SQLite may refuse without
        // waiting.
        conn.execute_batch("BEGIN IMMEDIATE")?;
    }
    let mut rows = batch.iter().filter_map(Entry::row).skip(done);
    let piece: Vec<&NewLog> = rows.by_ref().take(PIECE_ROWS).collect();
    crate::store::insert_rows_sqlite(conn, &piece)?;
    if rows.next().is_some() {
        return Ok(Staged::Rows(done + piece.len()));
    }
    let plan = Plan::of(batch);
    for (sql, values) in plan.updates() {
        conn.prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(values))?;
    }
    Ok(Staged::All(plan.committed()))
}

/// Rows in the ledger (for tests and health checks).
pub async fn count_rows(store: &Store) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT COUNT(*) FROM logs")
        .fetch_one(store.pool())
        .await?
        .try_get(0)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A writer over a fresh SQLite file whose request pool has `pool` connections.
    struct Rig {
        _dir: tempfile::TempDir,
        store: Store,
        ledger: Ledger,
        tracker: TaskTracker,
        stop: CancellationToken,
    }

    async fn rig(pool: u32, cfg: LedgerConfig) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display());
        let store = Store::connect(&url, pool).await.unwrap();
        store.migrate().await.unwrap();
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let ledger = Ledger::start(
            store.clone(),
            Arc::new(QuotaBank::Local(Default::default())),
            crate::telemetry::Metrics::new(),
            cfg,
            &tracker,
            stop.clone(),
        );
        Rig {
            _dir: dir,
            store,
            ledger,
            tracker,
            stop,
        }
    }

    /// A writer with four-row batches and a window no test waits out.
    async fn long_window_rig() -> Rig {
        let cfg = LedgerConfig {
            queue: 64,
            max_batch: 4,
            window: Duration::from_secs(3600),
        };
        rig(2, cfg).await
    }

    fn log_entry(i: usize) -> Entry {
        Entry::Log(Box::new(NewLog {
            request_id: format!("r{i}"),
            ..NewLog::default()
        }))
    }

    /// Whether the store reaches `n` rows within a minute (polled).
    async fn rows_reach(store: &Store, n: i64) -> bool {
        tokio::time::timeout(Duration::from_secs(60), async {
            while count_rows(store).await.unwrap() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok()
    }

    /// Stops the writer (it drains the queue) and waits for it.
    async fn drain(r: &Rig) {
        r.stop.cancel();
        r.tracker.close();
        r.tracker.wait().await;
    }

    /// Under load the window shrinks: once a full batch is queued the writer
    /// commits it without waiting out the window (with a one-hour window and
    /// no flush, the rows still arrive). Without this, throughput was capped
    /// at `max_batch` rows per window.
    #[tokio::test]
    async fn a_full_batch_is_committed_without_waiting_out_the_window() {
        let r = long_window_rig().await;
        // Queued before the writer looks: it finds two full batches waiting.
        for i in 0..9 {
            r.ledger.record(log_entry(i)).await;
        }
        // The two full batches (8 rows) land, the ninth row waits for its
        // window; a stop drains it at once.
        assert!(
            rows_reach(&r.store, 8).await,
            "full batches waited for the window"
        );
        assert_eq!(count_rows(&r.store).await.unwrap(), 8);
        drain(&r).await;
        assert_eq!(count_rows(&r.store).await.unwrap(), 9);
    }

    /// A batch that fills while the writer waits out its window is
    /// committed then, not at the window's end: batches are `max_batch` rows
    /// however fast they fill (the instruction guard relies on it).
    #[tokio::test]
    async fn a_batch_filled_during_the_window_is_committed_at_once() {
        let r = long_window_rig().await;
        r.ledger.record(log_entry(0)).await;
        // One thread: once the writer has taken the row it has also gone on
        // into its window, where the next rows find it.
        while r.ledger.queued() > 0 {
            tokio::task::yield_now().await;
        }
        for i in 1..6 {
            r.ledger.record(log_entry(i)).await;
        }
        assert!(
            rows_reach(&r.store, 4).await,
            "a batch filled during the window waited for it"
        );
        assert_eq!(count_rows(&r.store).await.unwrap(), 4);
        drain(&r).await;
        assert_eq!(count_rows(&r.store).await.unwrap(), 6);
    }

    /// The writer has a connection of its own: with every pooled connection
    /// held by request traffic, a batch still commits at once (through the
    /// shared pool it would wait for the pool's 10 s acquire timeout, then
    /// retry).
    #[tokio::test]
    async fn the_ledger_commits_while_the_pool_is_exhausted() {
        let r = rig(1, LedgerConfig::default()).await;
        let (store, ledger, tracker, stop) = (&r.store, &r.ledger, &r.tracker, &r.stop);
        let held = store.pool().acquire().await.unwrap();
        ledger
            .record(Entry::Log(Box::new(NewLog {
                request_id: "busy".into(),
                ..NewLog::default()
            })))
            .await;
        let flushed = tokio::time::timeout(Duration::from_secs(5), ledger.flush()).await;
        assert!(flushed.is_ok(), "the ledger waited for a pooled connection");
        drop(held);
        assert_eq!(count_rows(store).await.unwrap(), 1);
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// Rows reach SQLite whole and in order through every INSERT size
    /// (297 = 256 + 32 + 8 + 1 rows in one batch).
    #[tokio::test]
    async fn a_batch_of_every_chunk_size_lands_whole_and_in_order() {
        let r = rig(2, LedgerConfig::default()).await;
        let want: Vec<NewLog> = (0..297)
            .map(|i| NewLog {
                created_at: 1_700_000_000 + i,
                log_type: 2,
                content: format!("c{i}"),
                user_id: i % 7,
                username: format!("u{i}"),
                token_id: i % 5,
                token_name: format!("t{i}"),
                model_name: format!("m{i}"),
                channel_id: i % 3,
                prompt_tokens: i,
                completion_tokens: 2 * i,
                quota: 3 * i,
                use_time: i % 11,
                is_stream: i % 2 == 0,
                ip: format!("10.0.0.{}", i % 250),
                group: format!("g{}", i % 4),
                request_id: format!("r{i}"),
                other: format!("{{\"i\":{i}}}"),
            })
            .collect();
        for l in &want {
            r.ledger.record(Entry::Log(Box::new(l.clone()))).await;
        }
        r.ledger.flush().await;
        let (rows, total) = r
            .store
            .list_logs(&Default::default(), 0, 1000)
            .await
            .unwrap();
        assert_eq!(total, 297);
        let got: Vec<NewLog> = rows.into_iter().rev().map(|row| row.log).collect();
        assert_eq!(got, want);
        drain(&r).await;
    }

    /// A batch that fails part-way leaves nothing in the database (its rows
    /// were inserted before the statement that failed) and comes back to
    /// the writer whole; the retry writes it once.
    #[tokio::test]
    async fn a_failed_batch_leaves_nothing_and_is_written_whole_on_retry() {
        let r = rig(2, LedgerConfig::default()).await;
        let bank = QuotaBank::Local(Default::default());
        let pool = r.store.pool().clone();
        let ddl = |sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
        };
        let mut batch = vec![
            log_entry(0),
            log_entry(1),
            Entry::TokenStatus { id: 1, status: 3 },
        ];
        // The status update comes after the inserts, and fails.
        ddl("ALTER TABLE tokens RENAME TO tokens_away").await;
        let e = commit(&r.store, &bank, &mut batch).await;
        assert!(e.is_err(), "{e:?}");
        assert_eq!(batch.len(), 3);
        assert_eq!(count_rows(&r.store).await.unwrap(), 0);
        ddl("ALTER TABLE tokens_away RENAME TO tokens").await;
        commit(&r.store, &bank, &mut batch).await.unwrap();
        assert_eq!(count_rows(&r.store).await.unwrap(), 2);
        drain(&r).await;
    }
}
