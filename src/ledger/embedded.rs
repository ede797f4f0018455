//! The single-node ledger: an embedded redb file, so dedupe survives restarts without Redis.
//!
//! redb is synchronous and fsyncs on commit, so every call runs on tokio's blocking pool; its
//! single-writer transactions make each compare-and-set atomic, and reads use read transactions
//! so polling never queues behind claims.
//!
//! redb lets one process at a time open the file. A graceful upgrade needs two: the old process
//! still settles its last notifications while the new one already accepts. So the store has two
//! modes. *Exclusive*: the file stays open (the normal case). *Shared*: each call takes a lock
//! file, opens the database, runs, and closes it again. The old process turns shared when it
//! receives SIGQUIT ([`Ledger::hand_over`]); a process started with `--upgrade` starts shared and
//! turns exclusive as soon as it holds the instance lock, i.e. once the old process has exited.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, TryLockError};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{
    bounded, millis, now_ms, Claim, ClaimRequest, Index, Lease, Ledger, LedgerError, OrderRecord, OrderState, Owned, PaymentId,
    QuarantineInfo, Registered, Registration, Retention,
};

const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
/// The indexes, ordered: `{index}\0{account}\0{score}\0{key}` (score as sortable digits).
const INDEX_ORDER: TableDefinition<&str, ()> = TableDefinition::new("index_order");
/// The indexes' scores: `{index}\0{account}\0{key}` → score, to move or remove an entry.
const INDEX_SCORE: TableDefinition<&str, i64> = TableDefinition::new("index_score");
/// Expired records and data are swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How often a process sharing the store during an upgrade tries to own it.
const OWN_RETRY: Duration = Duration::from_millis(100);
/// Records the sweep examines per write transaction.
const SWEEP_BATCH: usize = 512;
/// Pause between attempts to get the file in shared mode.
const SHARED_RETRY: Duration = Duration::from_millis(2);
/// The longest a process keeps the file in shared mode while the other may be waiting.
const SHARED_TURN: Duration = Duration::from_millis(50);

/// After a turn, how long a process leaves the lock to the other one before it takes it again
/// (the other process polls every [`SHARED_RETRY`]).
const SHARED_YIELD: Duration = Duration::from_millis(8);

/// The file opened for a run of calls in shared mode.
struct Turn {
    db: Database,
    since: Instant,
}

#[derive(Default)]
struct TurnState {
    open: Option<Turn>,
    closed_at: Option<Instant>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    record: OrderRecord,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    data_expires_at_ms: i64,
    token: Option<String>,
    lease_until_ms: i64,
    expires_at_ms: i64,
    /// An operator's `resolve forward`: until the order is done, every claim skips the
    /// registration checks and owns it under the recorded type.
    #[serde(default)]
    forced: bool,
}

impl Stored {
    fn new(now: i64) -> Stored {
        Stored {
            record: OrderRecord {
                state: OrderState::None,
                order_type: None,
                total_fee: None,
                notify_mode: None,
                attempts: 0,
                last_failure: None,
                first_seen_ms: Some(now),
                done_at_ms: None,
                replays: 0,
                last_replay: None,
                registered: false,
                account: None,
                expires_at_ms: None,
                fields: None,
                checks: 0,
                quarantine: None,
                order_data: None,
            },
            data: None,
            data_expires_at_ms: 0,
            token: None,
            lease_until_ms: 0,
            expires_at_ms: 0,
            forced: false,
        }
    }

    fn into_record(self, now: i64) -> OrderRecord {
        let mut record = self.record;
        record.order_data = self.data.filter(|_| self.data_expires_at_ms > now);
        record
    }
}

pub struct EmbeddedLedger {
    path: PathBuf,
    /// Open in exclusive mode; `None` in shared mode.
    db: ArcSwapOption<Database>,
    /// Serialises the processes' turns in shared mode (a lock file beside the store).
    op_lock: File,
    /// This process's turn in shared mode.
    turn: Mutex<TurnState>,
    /// Calls of this process waiting for a turn.
    waiting: AtomicUsize,
    /// Held for the process's life once it owns the store; free only when no payhook has it.
    instance: Mutex<Option<File>>,
    /// Where the instance lock lives.
    instance_lock: PathBuf,
    retention: Retention,
    timeout: Duration,
    /// How long a call waits for the file while another process holds it (an upgrade).
    open_wait: Duration,
    last_sweep_ms: AtomicI64,
    /// Each account's provider queries in the last second (the sweep's rate slots).
    rates: Mutex<HashMap<String, VecDeque<i64>>>,
}

fn err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn open_lock_file(path: &Path) -> Result<File, LedgerError> {
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(err)
}

impl EmbeddedLedger {
    /// Opens the store. With `take_over` (a graceful upgrade) a store still held by the old
    /// process is opened in shared mode instead of refused.
    pub fn open(path: &Path, retention: Retention, timeout: Duration, open_wait: Duration, take_over: bool) -> Result<Self, LedgerError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let ledger = EmbeddedLedger {
            path: path.to_path_buf(),
            db: ArcSwapOption::empty(),
            op_lock: open_lock_file(&sibling(path, ".lock"))?,
            turn: Mutex::new(TurnState::default()),
            waiting: AtomicUsize::new(0),
            instance: Mutex::new(None),
            instance_lock: sibling(path, ".instance"),
            retention,
            timeout,
            open_wait,
            last_sweep_ms: AtomicI64::new(now_ms()),
            rates: Mutex::new(HashMap::new()),
        };
        if !ledger.try_own()? {
            if !take_over {
                return Err(LedgerError::Unavailable(format!("{} is held by another payhook process", path.display())));
            }
            tracing::info!(path = %path.display(), "ledger held by the previous process; sharing it until that process exits");
        }
        Ok(ledger)
    }

    /// Takes the instance lock and opens the file for good, if no other process holds it.
    fn try_own(&self) -> Result<bool, LedgerError> {
        let mut instance = self.instance.lock().expect("instance lock poisoned");
        if instance.is_some() {
            return Ok(self.db.load().is_some());
        }
        let file = open_lock_file(&self.instance_lock)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Error(e)) => return Err(err(e)),
        }
        // Under the op lock, so the other process is not inside one of its shared turns.
        self.op_lock.lock().map_err(err)?;
        let opened = open_database(&self.path);
        let _ = self.op_lock.unlock();
        match opened {
            Ok(db) => {
                self.db.store(Some(Arc::new(db)));
                *instance = Some(file);
                Ok(true)
            }
            // The previous process is still closing its last shared call: next time.
            Err(OpenError::AlreadyOpen) => Ok(false),
            Err(OpenError::Other(e)) => Err(e),
        }
    }

    /// Runs `op` with the database: the open one, or (shared mode) during a turn.
    fn with_db<T>(&self, op: impl Fn(&Database) -> Result<T, LedgerError>) -> Result<T, LedgerError> {
        if let Some(db) = self.db.load_full() {
            return op(&db);
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut turn = self.turn.lock().expect("turn lock poisoned");
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let deadline = Instant::now() + self.open_wait;
        loop {
            if let Some(db) = self.db.load_full() {
                return op(&db);
            }
            let yielding = turn.closed_at.is_some_and(|at| at.elapsed() < SHARED_YIELD);
            if turn.open.is_none() && !yielding {
                if self.own_if_gone()? {
                    continue;
                }
                turn.open = self.open_turn()?;
            }
            if let Some(open) = turn.open.as_ref() {
                let out = op(&open.db);
                // Closing costs tens of ms: keep the file while this process has calls queued,
                // but never longer than one turn, so the other process gets its own.
                if self.waiting.load(Ordering::SeqCst) == 0 || open.since.elapsed() >= SHARED_TURN {
                    turn.open = None;
                    turn.closed_at = Some(Instant::now());
                    let _ = self.op_lock.unlock();
                }
                return out;
            }
            if Instant::now() >= deadline {
                return Err(LedgerError::Unavailable("ledger file held by another process".into()));
            }
            std::thread::sleep(SHARED_RETRY);
        }
    }

    /// With no turn open (so this process does not hold the op lock): owns the store for good
    /// if the other process has exited. False after this process handed the store over.
    fn own_if_gone(&self) -> Result<bool, LedgerError> {
        let owned_by_us = self.instance.lock().expect("instance lock poisoned").is_some();
        if owned_by_us || !self.try_own()? {
            return Ok(false);
        }
        tracing::info!(path = %self.path.display(), "previous process has exited; ledger is exclusive again");
        Ok(true)
    }

    /// The owner thread's attempt: between this process's turns. True once there is nothing
    /// left to take (owned, or handed over to the next process).
    fn own_between_turns(&self) -> Result<bool, LedgerError> {
        let turn = self.turn.lock().expect("turn lock poisoned");
        if turn.open.is_none() {
            self.own_if_gone()?;
        }
        drop(turn);
        Ok(self.instance.lock().expect("instance lock poisoned").is_some())
    }

    /// Takes the op lock and opens the file, if the other process lets go of both.
    fn open_turn(&self) -> Result<Option<Turn>, LedgerError> {
        match self.op_lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(err(e)),
        }
        match Database::create(&self.path) {
            Ok(db) => Ok(Some(Turn { db, since: Instant::now() })),
            Err(e) => {
                let _ = self.op_lock.unlock();
                match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => Ok(None),
                    e => Err(err(e)),
                }
            }
        }
    }

    /// Runs `f` on tokio's blocking pool: first waiting for the file, then bounded by `timeout`.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&EmbeddedLedger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let me = self.clone();
        let limit = if me.db.load().is_some() { me.timeout } else { me.timeout + me.open_wait };
        bounded(limit, async move { tokio::task::spawn_blocking(move || f(&me)).await.map_err(err)? }).await
    }

    /// Runs `f` in one write transaction, committed when it returns Ok.
    fn write<T>(&self, f: impl Fn(&redb::WriteTransaction) -> Result<T, LedgerError>) -> Result<T, LedgerError> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            let out = f(&tx)?;
            tx.commit().map_err(err)?;
            Ok(out)
        })
    }

    /// Runs `change` on the live (unexpired) record of `key` inside one write transaction.
    fn update<T>(&self, key: &str, change: impl Fn(Option<Stored>, i64) -> (Option<Stored>, T)) -> Result<T, LedgerError> {
        self.with_db(|db| {
            let now = now_ms();
            let tx = db.begin_write().map_err(err)?;
            let out = {
                let mut table = tx.open_table(ORDERS).map_err(err)?;
                let current = match table.get(key).map_err(err)? {
                    Some(v) => Some(decode(key, v.value())?).filter(|s| s.expires_at_ms > now),
                    None => None,
                };
                let (next, out) = change(current, now);
                if let Some(next) = next {
                    let bytes = serde_json::to_vec(&next).map_err(err)?;
                    table.insert(key, bytes.as_slice()).map_err(err)?;
                }
                out
            };
            tx.commit().map_err(err)?;
            Ok(out)
        })
    }

    fn read(&self, key: &str) -> Result<Option<OrderRecord>, LedgerError> {
        self.with_db(|db| {
            let now = now_ms();
            let tx = db.begin_read().map_err(err)?;
            let table = match tx.open_table(ORDERS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(err(e)),
            };
            let Some(v) = table.get(key).map_err(err)? else { return Ok(None) };
            Ok(Some(decode(key, v.value())?).filter(|s| s.expires_at_ms > now).map(|s| s.into_record(now)))
        })
    }

    /// Drops records past the horizon and order data past `done_ttl`, `SWEEP_BATCH` records per
    /// write transaction: a claim waiting for the one writer (or the other process's turn during
    /// an upgrade) waits for one batch, not for a scan of the whole store.
    fn sweep(&self) -> Result<(), LedgerError> {
        let mut after: Option<String> = None;
        loop {
            let last = self.with_db(|db| {
                let now = now_ms();
                let tx = db.begin_write().map_err(err)?;
                let last = {
                    let mut table = tx.open_table(ORDERS).map_err(err)?;
                    let (mut expired, mut stripped, mut last) = (Vec::new(), Vec::new(), None);
                    let batch = match &after {
                        Some(key) => table.range::<&str>((Bound::Excluded(key.as_str()), Bound::Unbounded)),
                        None => table.range::<&str>(..),
                    }
                    .map_err(err)?;
                    for entry in batch.take(SWEEP_BATCH) {
                        let (key, value) = entry.map_err(err)?;
                        let key = key.value().to_string();
                        // Unreadable (another version's format): kept, as every call on it fails closed.
                        match serde_json::from_slice::<Stored>(value.value()) {
                            Ok(s) if s.expires_at_ms <= now => expired.push(key.clone()),
                            Ok(mut s) if s.data.is_some() && s.data_expires_at_ms <= now => {
                                s.data = None;
                                stripped.push((key.clone(), s));
                            }
                            _ => {}
                        }
                        last = Some(key);
                    }
                    for key in &expired {
                        table.remove(key.as_str()).map_err(err)?;
                    }
                    for (key, s) in &stripped {
                        table.insert(key.as_str(), serde_json::to_vec(s).map_err(err)?.as_slice()).map_err(err)?;
                    }
                    last
                };
                tx.commit().map_err(err)?;
                Ok(last)
            })?;
            match last {
                Some(key) => after = Some(key),
                None => return Ok(()),
            }
        }
    }

    fn maybe_sweep(self: &Arc<Self>) {
        let now = now_ms();
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now - last < millis(SWEEP_EVERY) || self.last_sweep_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = me.sweep() {
                tracing::warn!(error = %e, "ledger sweep failed");
            }
        });
    }
}

/// A stored record. One this binary cannot read (another version's format, a damaged value)
/// fails the call: taken as absent, a done or held order would be claimed and forwarded again.
fn decode(key: &str, bytes: &[u8]) -> Result<Stored, LedgerError> {
    serde_json::from_slice::<Stored>(bytes).map_err(|e| LedgerError::Unavailable(format!("record {key} is unreadable: {e}")))
}

enum OpenError {
    AlreadyOpen,
    Other(LedgerError),
}

fn open_database(path: &Path) -> Result<Database, OpenError> {
    let db = Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::AlreadyOpen,
        e => OpenError::Other(err(e)),
    })?;
    let create_table = || -> Result<(), LedgerError> {
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(ORDERS).map_err(err)?;
        tx.commit().map_err(err)
    };
    create_table().map_err(OpenError::Other)?;
    Ok(db)
}

/// Index keys sort by score: offset to unsigned, fixed width.
fn sortable(score: i64) -> String {
    format!("{:020}", (score as i128 - i64::MIN as i128) as u64)
}

fn index_prefix(index: Index, account: &str) -> String {
    format!("{}\0{account}\0", index.name())
}

/// (score, key) of an `INDEX_ORDER` key under `prefix`.
fn parse_order_key(prefix: &str, key: &str) -> (i64, PaymentId) {
    let rest = &key[prefix.len()..];
    let (score, id) = rest.split_once('\0').unwrap_or((rest, ""));
    let score = score.parse::<u64>().map(|s| (s as i128 + i64::MIN as i128) as i64).unwrap_or(0);
    (score, PaymentId::from_key(id.to_string()))
}

/// Moves `key` in `index` of `account` to `score` (`None`: out of the index).
fn index_move(tx: &redb::WriteTransaction, index: Index, account: &str, key: &str, score: Option<i64>) -> Result<(), LedgerError> {
    let mut scores = tx.open_table(INDEX_SCORE).map_err(err)?;
    let mut order = tx.open_table(INDEX_ORDER).map_err(err)?;
    let prefix = index_prefix(index, account);
    let score_key = format!("{prefix}{key}");
    if let Some(old) = scores.remove(score_key.as_str()).map_err(err)?.map(|v| v.value()) {
        order.remove(format!("{prefix}{}\0{key}", sortable(old)).as_str()).map_err(err)?;
    }
    if let Some(score) = score {
        scores.insert(score_key.as_str(), score).map_err(err)?;
        order.insert(format!("{prefix}{}\0{key}", sortable(score)).as_str(), ()).map_err(err)?;
    }
    Ok(())
}

/// The [`Ledger`] over an [`EmbeddedLedger`]; an `Arc` so calls can move to the blocking pool.
pub struct Embedded(Arc<EmbeddedLedger>);

impl Embedded {
    /// One read-modify-write of `key`'s live record on the blocking pool ([`EmbeddedLedger::update`]).
    async fn update<T: Send + 'static>(
        &self,
        key: &PaymentId,
        change: impl Fn(Option<Stored>, i64) -> (Option<Stored>, T) + Send + 'static,
    ) -> Result<T, LedgerError> {
        let key = key.to_string();
        self.0.blocking(move |l| l.update(&key, change)).await
    }

    pub fn open(path: &Path, retention: Retention, timeout: Duration, open_wait: Duration, take_over: bool) -> Result<Self, LedgerError> {
        let ledger = Arc::new(EmbeddedLedger::open(path, retention, timeout, open_wait, take_over)?);
        if ledger.db.load().is_none() {
            // Shared with the previous process: own the store as soon as it exits, not at this
            // process's next call. An idle process would otherwise leave the store unowned, and
            // the next upgrade's process would open it for good and lock this one out.
            let weak = Arc::downgrade(&ledger);
            std::thread::Builder::new()
                .name("ledger-owner".into())
                .spawn(move || loop {
                    std::thread::sleep(OWN_RETRY);
                    let Some(ledger) = weak.upgrade() else { return };
                    match ledger.own_between_turns() {
                        Ok(true) => return,
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot take over the ledger file yet"),
                    }
                })
                .map_err(err)?;
        }
        Ok(Embedded(ledger))
    }
}

#[async_trait]
impl Ledger for Embedded {
    async fn claim(&self, key: &PaymentId, request: ClaimRequest<'_>) -> Result<Claim, LedgerError> {
        self.0.maybe_sweep();
        let horizon = millis(self.0.retention.dedupe_horizon);
        let lease_ms = millis(request.lease_for);
        let want = request.order_type.map(str::to_string);
        let (total_fee, mode, strict) = (request.total_fee, request.mode, request.require_registration);
        self.update(key, move |current, now| {
            let mut stored = current.unwrap_or_else(|| Stored::new(now));
            let r = &stored.record;
            let want = if stored.forced && r.order_type.is_some() { r.order_type.clone() } else { want.clone() };
            // The same decisions, in the same order, as the Redis ledger's claim script.
            match r.state {
                OrderState::Dismissed => return (None, Claim::Dismissed),
                OrderState::Quarantined => {
                    let reason = r.quarantine.as_ref().map(|q| q.reason.clone()).unwrap_or_default();
                    return (None, Claim::Quarantined { reason });
                }
                OrderState::Done => {
                    return match (&want, &r.order_type) {
                        (Some(w), Some(t)) if w != t => (None, Claim::TypeMismatch { recorded: t.clone() }),
                        _ => (None, Claim::Done),
                    }
                }
                _ => {}
            }
            if !stored.forced {
                let quarantine = |reason| Claim::Quarantine { reason, registered_type: r.order_type.clone(), registered_total_fee: r.total_fee };
                if r.registered {
                    if want.as_ref().is_some_and(|w| Some(w) != r.order_type.as_ref()) {
                        return (None, quarantine("type_mismatch"));
                    }
                    if r.total_fee != Some(total_fee) {
                        return (None, quarantine("amount_mismatch"));
                    }
                } else if want.is_none() || strict {
                    return (None, Claim::Quarantine { reason: "unregistered", registered_type: None, registered_total_fee: None });
                } else if let (Some(w), Some(t)) = (&want, &r.order_type) {
                    if w != t {
                        return (None, Claim::TypeMismatch { recorded: t.clone() });
                    }
                }
            }
            if r.state == OrderState::InFlight && stored.lease_until_ms > now {
                return (None, Claim::InFlight);
            }
            let order_type = want.clone().or_else(|| r.order_type.clone()).unwrap_or_default();
            let lease = Lease::new();
            let owned = Owned { lease: lease.clone(), order_type: order_type.clone(), fields: r.fields.clone(), registered: r.registered };
            stored.record.state = OrderState::InFlight;
            stored.record.order_type = Some(order_type);
            stored.record.total_fee.get_or_insert(total_fee);
            stored.record.attempts += 1;
            stored.record.notify_mode = Some(mode as u8);
            stored.token = Some(lease.token);
            stored.lease_until_ms = now + lease_ms;
            stored.expires_at_ms = now.saturating_add(horizon);
            (Some(stored), Claim::Owned(owned))
        }).await
    }

    async fn complete(&self, key: &PaymentId, lease: &Lease, order_data: &str) -> Result<bool, LedgerError> {
        let Retention { done_ttl, dedupe_horizon } = self.0.retention;
        let (token, data) = (lease.token.clone(), order_data.to_string());
        self.update(key, move |current, now| match current {
            Some(mut s) if s.token.as_deref() == Some(token.as_str()) => {
                s.record.state = OrderState::Done;
                s.record.done_at_ms = Some(now);
                s.record.last_failure = None;
                s.record.fields = None;
                s.forced = false;
                if let Some(q) = s.record.quarantine.as_mut() {
                    q.order_data.clear();
                }
                s.data = Some(data.clone());
                s.data_expires_at_ms = now.saturating_add(millis(done_ttl));
                s.token = None;
                s.expires_at_ms = now.saturating_add(millis(dedupe_horizon));
                (Some(s), true)
            }
            _ => (None, false),
        }).await
    }

    async fn release(&self, key: &PaymentId, lease: &Lease, reason: &str) -> Result<bool, LedgerError> {
        let (token, reason) = (lease.token.clone(), reason.to_string());
        self.update(key, move |current, _| match current {
            Some(mut s) if s.token.as_deref() == Some(token.as_str()) => {
                s.record.state = OrderState::None;
                s.record.last_failure = Some(reason.clone());
                s.token = None;
                (Some(s), true)
            }
            _ => (None, false),
        }).await
    }

    async fn record(&self, key: &PaymentId) -> Result<Option<OrderRecord>, LedgerError> {
        let key = key.to_string();
        self.0.blocking(move |l| l.read(&key)).await
    }

    async fn note_replay(&self, key: &PaymentId, result: &str) -> Result<(), LedgerError> {
        let result = result.to_string();
        self.update(key, move |current, _| match current {
            Some(mut s) => {
                s.record.replays += 1;
                s.record.last_replay = Some(result.clone());
                (Some(s), ())
            }
            None => (None, ()),
        }).await
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        self.0.blocking(|l| l.with_db(|db| db.begin_read().map(|_| ()).map_err(err))).await
    }

    async fn register(&self, key: &PaymentId, reg: &Registration) -> Result<Registered, LedgerError> {
        let (reg, horizon) = (reg.clone(), millis(self.0.retention.dedupe_horizon));
        self.update(key, move |current, now| {
            let mut s = current.unwrap_or_else(|| Stored::new(now));
            let r = &s.record;
            let same_order = r.order_type.as_deref().is_none_or(|t| t == reg.order_type) && r.total_fee.is_none_or(|f| f == reg.total_fee);
            if r.registered {
                let same = same_order && (r.state == OrderState::Done || r.fields == reg.fields);
                return (None, if same { Registered::Same } else { Registered::Conflict });
            }
            if !same_order {
                return (None, Registered::Conflict);
            }
            if r.state != OrderState::Done {
                s.record.fields = reg.fields.clone();
            }
            s.record.registered = true;
            s.record.account = Some(reg.account.clone());
            s.record.order_type = Some(reg.order_type.clone());
            s.record.total_fee = Some(reg.total_fee);
            s.record.expires_at_ms = Some(reg.expires_at_ms);
            s.expires_at_ms = now.saturating_add(horizon);
            (Some(s), Registered::Created)
        }).await
    }

    async fn quarantine(&self, key: &PaymentId, info: &QuarantineInfo) -> Result<bool, LedgerError> {
        let (info, horizon) = (info.clone(), millis(self.0.retention.dedupe_horizon));
        self.update(key, move |current, now| {
            let mut s = current.unwrap_or_else(|| Stored::new(now));
            if matches!(s.record.state, OrderState::InFlight | OrderState::Done | OrderState::Quarantined | OrderState::Dismissed) {
                return (None, false);
            }
            s.record.state = OrderState::Quarantined;
            s.record.quarantine = Some(info.clone());
            s.expires_at_ms = now.saturating_add(horizon);
            (Some(s), true)
        }).await
    }

    async fn resolve(&self, key: &PaymentId, forward_as: Option<&str>) -> Result<Option<String>, LedgerError> {
        let forward_as = forward_as.map(str::to_string);
        self.update(key, move |current, _| match current {
            Some(mut s) if s.record.state == OrderState::Quarantined => {
                let data = match &forward_as {
                    Some(as_type) => {
                        s.record.state = OrderState::None;
                        s.forced = true;
                        if !as_type.is_empty() {
                            s.record.order_type = Some(as_type.clone());
                        }
                        s.record.quarantine.as_ref().map(|q| q.order_data.clone()).unwrap_or_default()
                    }
                    None => {
                        s.record.state = OrderState::Dismissed;
                        String::new()
                    }
                };
                (Some(s), Some(data))
            }
            _ => (None, None),
        }).await
    }

    async fn close(&self, key: &PaymentId) -> Result<bool, LedgerError> {
        self.update(key, move |current, _| match current {
            Some(mut s) if s.record.registered && s.record.state == OrderState::None => {
                s.record.state = OrderState::Closed;
                (Some(s), true)
            }
            _ => (None, false),
        }).await
    }

    async fn note_check(&self, key: &PaymentId) -> Result<u64, LedgerError> {
        self.update(key, move |current, _| match current {
            Some(mut s) => {
                s.record.checks += 1;
                let n = s.record.checks;
                (Some(s), n)
            }
            None => (None, 0),
        }).await
    }

    async fn index_put(&self, index: Index, account: &str, key: &PaymentId, score_ms: i64) -> Result<(), LedgerError> {
        let (account, key) = (account.to_string(), key.to_string());
        self.0.blocking(move |l| l.write(|tx| index_move(tx, index, &account, &key, Some(score_ms)))).await
    }

    async fn index_add(&self, index: Index, account: &str, key: &PaymentId, score_ms: i64) -> Result<(), LedgerError> {
        let (account, key) = (account.to_string(), key.to_string());
        self.0
            .blocking(move |l| {
                l.write(|tx| {
                    let listed = tx.open_table(INDEX_SCORE).map_err(err)?.get(format!("{}{key}", index_prefix(index, &account)).as_str()).map_err(err)?.is_some();
                    if listed {
                        return Ok(());
                    }
                    index_move(tx, index, &account, &key, Some(score_ms))
                })
            })
            .await
    }

    async fn index_remove(&self, index: Index, account: &str, key: &PaymentId) -> Result<(), LedgerError> {
        let (account, key) = (account.to_string(), key.to_string());
        self.0.blocking(move |l| l.write(|tx| index_move(tx, index, &account, &key, None))).await
    }

    async fn index_page(&self, index: Index, account: &str, after: Option<(i64, String)>, limit: usize) -> Result<Vec<(i64, PaymentId)>, LedgerError> {
        let account = account.to_string();
        self.0
            .blocking(move |l| {
                l.with_db(|db| {
                    let tx = db.begin_read().map_err(err)?;
                    let table = match tx.open_table(INDEX_ORDER) {
                        Ok(t) => t,
                        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                        Err(e) => return Err(err(e)),
                    };
                    let prefix = index_prefix(index, &account);
                    let upper = match &after {
                        Some((score, key)) => format!("{prefix}{}\0{key}", sortable(*score)),
                        None => format!("{prefix}\u{10FFFF}"),
                    };
                    let mut out = Vec::new();
                    for entry in table.range(prefix.as_str()..upper.as_str()).map_err(err)?.rev() {
                        let (k, _) = entry.map_err(err)?;
                        out.push(parse_order_key(&prefix, k.value()));
                        if out.len() == limit {
                            break;
                        }
                    }
                    Ok(out)
                })
            })
            .await
    }

    async fn index_stats(&self, index: Index, account: &str) -> Result<(u64, Option<i64>), LedgerError> {
        let account = account.to_string();
        self.0
            .blocking(move |l| {
                l.with_db(|db| {
                    let tx = db.begin_read().map_err(err)?;
                    let table = match tx.open_table(INDEX_ORDER) {
                        Ok(t) => t,
                        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, None)),
                        Err(e) => return Err(err(e)),
                    };
                    let prefix = index_prefix(index, &account);
                    let upper = format!("{prefix}\u{10FFFF}");
                    let mut count = 0;
                    let mut lowest = None;
                    for entry in table.range(prefix.as_str()..upper.as_str()).map_err(err)? {
                        let (k, _) = entry.map_err(err)?;
                        if lowest.is_none() {
                            lowest = Some(parse_order_key(&prefix, k.value()).0);
                        }
                        count += 1;
                    }
                    Ok((count, lowest))
                })
            })
            .await
    }

    async fn claim_due(&self, account: &str, limit: usize, hold: Duration) -> Result<Vec<PaymentId>, LedgerError> {
        let account = account.to_string();
        self.0
            .blocking(move |l| {
                l.write(|tx| {
                    let now = now_ms();
                    let prefix = index_prefix(Index::Due, &account);
                    let upper = format!("{prefix}{}\0\u{10FFFF}", sortable(now));
                    let due: Vec<PaymentId> = {
                        let table = tx.open_table(INDEX_ORDER).map_err(err)?;
                        let mut due = Vec::new();
                        for entry in table.range(prefix.as_str()..upper.as_str()).map_err(err)?.take(limit) {
                            let (k, _) = entry.map_err(err)?;
                            due.push(parse_order_key(&prefix, k.value()).1);
                        }
                        due
                    };
                    for key in &due {
                        index_move(tx, Index::Due, &account, key.as_str(), Some(now + millis(hold)))?;
                    }
                    Ok(due)
                })
            })
            .await
    }

    async fn rate_slot(&self, account: &str, per_second: u32) -> Result<bool, LedgerError> {
        // One process owns the embedded ledger, so its own memory is the shared window.
        let now = now_ms();
        let mut windows = self.0.rates.lock().expect("rate lock poisoned");
        let window = windows.entry(account.to_string()).or_default();
        while window.front().is_some_and(|t| *t <= now - 1000) {
            window.pop_front();
        }
        if window.len() >= per_second as usize {
            return Ok(false);
        }
        window.push_back(now);
        Ok(true)
    }

    fn hand_over(&self) {
        // Under the op lock, so the new process's first turn waits for this close. Calls of
        // this process still holding the database finish first; the new process retries until then.
        if self.0.op_lock.lock().is_ok() {
            self.0.db.store(None);
            let _ = self.0.op_lock.unlock();
            tracing::info!(path = %self.0.path.display(), "graceful upgrade: ledger now shared with the new process");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::NotifyMode;

    const WAIT: Duration = Duration::from_secs(2);

    /// The store at `path` with the contract's retention and a 5 s call bound, as a process
    /// that waits `open_wait` for the file (`take_over`: a graceful upgrade's new process).
    fn open_at(path: &Path, open_wait: Duration, take_over: bool) -> Result<Embedded, LedgerError> {
        Embedded::open(path, super::super::contract::RETENTION, Duration::from_secs(5), open_wait, take_over)
    }

    #[tokio::test]
    async fn keeps_the_ledger_contract() {
        let dir = tempfile::tempdir().unwrap();
        // A generous bound: fifty fsynced claims in a row on a busy disk are slow, not wrong.
        let ledger = Embedded::open(&dir.path().join("ledger.redb"), super::super::contract::RETENTION, Duration::from_secs(30), WAIT, false).unwrap();
        let ledger: Arc<dyn Ledger> = Arc::new(ledger);
        super::super::contract::run(ledger.clone()).await;
        super::super::contract::run_registration(ledger, "acct").await;
    }

    fn req() -> ClaimRequest<'static> {
        ClaimRequest {
            order_type: Some("goods"),
            total_fee: 1,
            lease_for: Duration::from_secs(5),
            mode: NotifyMode::Notification,
            require_registration: false,
        }
    }

    /// Regression: a record this binary cannot read (here a later version's state) was taken as
    /// absent, so a done order was claimed and forwarded again, and the sweep deleted it.
    #[tokio::test]
    async fn an_unreadable_record_fails_closed_and_survives_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let l = open_at(&dir.path().join("ledger.redb"), WAIT, false).unwrap();
        let id = PaymentId::new("wechat", "m", "from-the-future");
        let Claim::Owned(owned) = l.claim(&id, req()).await.unwrap() else { panic!("owned") };
        assert!(l.complete(&id, &owned.lease, "{}").await.unwrap());
        l.0.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            {
                let mut table = tx.open_table(ORDERS).map_err(err)?;
                let stored = String::from_utf8(table.get(id.as_str()).map_err(err)?.expect("stored").value().to_vec()).unwrap();
                let later = stored.replace("\"state\":\"done\"", "\"state\":\"archived\"");
                assert_ne!(later, stored);
                table.insert(id.as_str(), later.as_bytes()).map_err(err)?;
            }
            tx.commit().map_err(err)
        })
        .unwrap();
        let unreadable = |result: Result<Claim, LedgerError>| matches!(result, Err(LedgerError::Unavailable(ref m)) if m.contains("unreadable"));
        assert!(unreadable(l.claim(&id, req()).await), "fails closed, never owned");
        assert!(l.record(&id).await.is_err());
        l.0.sweep().unwrap();
        assert!(unreadable(l.claim(&id, req()).await), "the sweep kept it");
    }

    /// The sweep works in batches: over several of them it drops every expired record and
    /// every expired order data, and keeps the rest.
    #[tokio::test]
    async fn the_sweep_covers_the_whole_store_batch_by_batch() {
        let dir = tempfile::tempdir().unwrap();
        let l = open_at(&dir.path().join("ledger.redb"), WAIT, false).unwrap();
        let total = SWEEP_BATCH * 2 + 7;
        let now = now_ms();
        l.0.with_db(|db| {
            let tx = db.begin_write().map_err(err)?;
            {
                let mut table = tx.open_table(ORDERS).map_err(err)?;
                for i in 0..total {
                    let mut s = Stored::new(now);
                    // Every third record expired, every third one's order data expired, the rest live.
                    s.expires_at_ms = if i % 3 == 0 { now - 1 } else { now + 60_000 };
                    s.data = Some(format!("data-{i}"));
                    s.data_expires_at_ms = if i % 3 == 1 { now - 1 } else { now + 60_000 };
                    table.insert(format!("k{i:05}").as_str(), serde_json::to_vec(&s).unwrap().as_slice()).map_err(err)?;
                }
            }
            tx.commit().map_err(err)
        })
        .unwrap();
        l.0.sweep().unwrap();
        let (mut kept, mut with_data) = (0, 0);
        for i in 0..total {
            let stored = l.0.with_db(|db| {
                let tx = db.begin_read().map_err(err)?;
                let table = tx.open_table(ORDERS).map_err(err)?;
                Ok(table.get(format!("k{i:05}").as_str()).map_err(err)?.map(|v| serde_json::from_slice::<Stored>(v.value()).unwrap()))
            });
            match (i % 3, stored.unwrap()) {
                (0, None) => {}
                (1, Some(s)) if s.data.is_none() => kept += 1,
                (2, Some(s)) if s.data.as_deref() == Some(format!("data-{i}").as_str()) => (kept, with_data) = (kept + 1, with_data + 1),
                (kind, s) => panic!("record {i} (kind {kind}) after the sweep: {:?}", s.map(|s| (s.expires_at_ms, s.data))),
            }
        }
        assert_eq!((kept, with_data), ((0..total).filter(|i| i % 3 != 0).count(), (0..total).filter(|i| i % 3 == 2).count()));
    }

    #[tokio::test]
    async fn done_survives_a_restart_and_expires_after_the_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let short = Retention { done_ttl: Duration::from_millis(100), dedupe_horizon: Duration::from_millis(400) };
        let id = PaymentId::new("wechat", "m", "1");
        {
            let l = Embedded::open(&path, short, Duration::from_secs(5), WAIT, false).unwrap();
            let Claim::Owned(owned) = l.claim(&id, req()).await.unwrap() else { panic!() };
            assert!(l.complete(&id, &owned.lease, "{}").await.unwrap());
        }
        let l = Embedded::open(&path, short, Duration::from_secs(5), WAIT, false).unwrap();
        assert_eq!(l.claim(&id, req()).await.unwrap(), Claim::Done);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(l.claim(&id, req()).await.unwrap(), Claim::Owned(_)));
    }

    /// A graceful upgrade: the new process shares the file while the old one settles, then owns it.
    #[tokio::test]
    async fn an_upgrade_shares_the_file_then_takes_it_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let old = open_at(&path, WAIT, false).unwrap();
        assert!(open_at(&path, WAIT, false).is_err(), "a second plain start is refused");
        let new = open_at(&path, Duration::from_millis(300), true).unwrap();
        let (a, b) = (PaymentId::new("wechat", "m", "a"), PaymentId::new("wechat", "m", "b"));
        let Claim::Owned(Owned { lease, .. }) = old.claim(&a, req()).await.unwrap() else { panic!() };
        // While the old process keeps the file open, the new one waits and then fails closed.
        assert!(new.claim(&b, req()).await.is_err());
        old.hand_over();
        // Both now take turns; the old one settles what it claimed, the new one sees it.
        let Claim::Owned(Owned { lease: lease_b, .. }) = new.claim(&b, req()).await.unwrap() else { panic!() };
        assert!(old.complete(&a, &lease, "{}").await.unwrap());
        assert_eq!(new.claim(&a, req()).await.unwrap(), Claim::Done);
        assert!(new.0.db.load().is_none(), "still shared while the old process lives");
        drop(old);
        assert!(new.complete(&b, &lease_b, "{}").await.unwrap());
        assert!(new.0.db.load().is_some(), "exclusive once the old process is gone");
    }

    /// Regression: a process that shared the store during an upgrade took it over only at its
    /// next call. Idle when the old process exited, it left the store unowned, and the next
    /// upgrade's process opened it for good and locked it out.
    #[tokio::test]
    async fn an_idle_process_owns_the_store_once_the_old_one_exits_ready_for_the_next_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let first = open_at(&path, WAIT, false).unwrap();
        let second = open_at(&path, WAIT, true).unwrap();
        first.hand_over();
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(3);
        while second.0.db.load().is_none() {
            assert!(Instant::now() < deadline, "the second process never owned the store");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let third = open_at(&path, Duration::from_millis(300), true).unwrap();
        assert!(third.0.db.load().is_none(), "the next upgrade's process shares, never owns, while the second lives");
        let id = PaymentId::new("wechat", "m", "after-two-upgrades");
        assert!(matches!(second.claim(&id, req()).await.unwrap(), Claim::Owned(_)), "the running process still serves");
    }

    /// Both processes of an upgrade, four busy callers each, all served well within a reply budget.
    #[tokio::test(flavor = "multi_thread")]
    async fn shared_mode_serves_both_processes_within_a_reply_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let old = Arc::new(open_at(&path, Duration::from_secs(3), false).unwrap());
        let new = Arc::new(open_at(&path, Duration::from_secs(3), true).unwrap());
        old.hand_over();
        let mut tasks = vec![];
        for worker in 0..8 {
            let ledger = if worker % 2 == 0 { old.clone() } else { new.clone() };
            tasks.push(tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                for i in 0..25 {
                    let started = Instant::now();
                    let id = PaymentId::new("wechat", "m", &format!("s{worker}-{i}"));
                    assert!(matches!(ledger.claim(&id, req()).await.unwrap(), Claim::Owned(_)));
                    worst = worst.max(started.elapsed());
                }
                worst
            }));
        }
        let mut worst = Duration::ZERO;
        for t in tasks {
            worst = worst.max(t.await.unwrap());
        }
        assert!(worst < Duration::from_secs(2), "slowest shared call took {worst:?}");
    }
}
