//! The store, directly: the same assertions on SQLite, PostgreSQL and MySQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Db, TestDb};
use sluice::store::{
    CreateTokenError, LogFilter, NewLog, NewUser, Owner, RedeemError, Store, StoreError, Token,
    UserPatch, now,
};

/// A migrated store on `kind`, with the database to drop afterwards.
async fn open(kind: Db) -> Option<(Store, TestDb, tempfile::TempDir)> {
    let db = TestDb::create(kind).await?;
    let dir = tempfile::tempdir().unwrap();
    let url = match &db.dsn {
        Some(dsn) => dsn.clone(),
        None => format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()),
    };
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    // Migrating twice is a no-op.
    store.migrate().await.unwrap();
    Some((store, db, dir))
}

fn new_user(name: &str, role: i64, group: &str) -> NewUser {
    NewUser {
        username: name.into(),
        password_hash: "hash".into(),
        display_name: name.to_uppercase(),
        role,
        group: group.into(),
        quota: 10,
        access_token_hash: Some(format!("ath-{name}")),
    }
}

fn token(user_id: i64, name: &str, key: &str) -> Token {
    Token {
        id: 0,
        user_id,
        key_hash: format!("hash-{key}"),
        key_cipher: format!("cipher-{key}"),
        status: 1,
        name: name.into(),
        created_time: 1000,
        accessed_time: 1000,
        expired_time: -1,
        remain_quota: 50,
        unlimited_quota: false,
        used_quota: 0,
        request_count: 0,
        model_limits_enabled: true,
        model_limits: "[\"a\", \"b\"]".into(),
        allow_ips: "10.0.0.0/8".into(),
        group: "vip".into(),
        rpm_limit: 7,
        tpm_limit: 9000,
    }
}

async fn users(s: &Store) {
    let a = s
        .create_user(&new_user("alice", 1, "default"))
        .await
        .unwrap();
    let b = s.create_user(&new_user("bob", 10, "vip")).await.unwrap();
    let c = s
        .create_user(&new_user("carol", 100, "default"))
        .await
        .unwrap();
    assert!(a < b && b < c);
    assert_eq!(s.count_users().await.unwrap(), 3);
    match s.create_user(&new_user("alice", 1, "x")).await {
        Err(StoreError::Unique(_)) => {}
        other => panic!("duplicate username: {other:?}"),
    }
    let u = s.user_by_id(a).await.unwrap();
    assert_eq!(
        (
            u.username.as_str(),
            u.display_name.as_str(),
            u.role,
            u.status,
            u.group.as_str(),
            u.quota
        ),
        ("alice", "ALICE", 1, 1, "default", 10)
    );
    assert_eq!(s.user_by_username("bob").await.unwrap().id, b);
    assert_eq!(
        s.user_by_access_token_hash("ath-carol").await.unwrap().id,
        c
    );
    assert!(matches!(
        s.user_by_id(9999).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.user_by_username("nobody").await,
        Err(StoreError::NotFound)
    ));

    // List: newest first, paged; keyword over name / display name / id; group;
    // roles below a bound.
    let (page, total) = s.list_users(None, None, None, 0, 2).await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(page.iter().map(|u| u.id).collect::<Vec<_>>(), [c, b]);
    let (page, _) = s.list_users(None, None, None, 2, 2).await.unwrap();
    assert_eq!(page.iter().map(|u| u.id).collect::<Vec<_>>(), [a]);
    let (page, total) = s.list_users(Some("AR"), None, None, 0, 10).await.unwrap();
    assert_eq!((total, page[0].id), (1, c), "case-insensitive substring");
    let (_, total) = s
        .list_users(Some(&b.to_string()), None, None, 0, 10)
        .await
        .unwrap();
    assert!(total >= 1);
    let (page, _) = s.list_users(None, Some("vip"), None, 0, 10).await.unwrap();
    assert_eq!(page.iter().map(|u| u.id).collect::<Vec<_>>(), [b]);
    let (page, total) = s.list_users(None, None, Some(10), 0, 10).await.unwrap();
    assert_eq!(
        (total, page.iter().map(|u| u.id).collect::<Vec<_>>()),
        (1, vec![a])
    );
    let (_, total) = s.list_users(Some("%"), None, None, 0, 10).await.unwrap();
    assert_eq!(total, 0, "LIKE wildcards are escaped");

    // Patch: only given fields change; password/role/status bump the version.
    let v0 = s.user_by_id(a).await.unwrap().auth_version;
    s.update_user(
        a,
        &UserPatch {
            display_name: Some("Al".into()),
            quota: Some(77),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let u = s.user_by_id(a).await.unwrap();
    assert_eq!(
        (u.display_name.as_str(), u.quota, u.username.as_str()),
        ("Al", 77, "alice")
    );
    assert_eq!(u.auth_version, v0);
    s.update_user(
        a,
        &UserPatch {
            quota: Some(77),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.update_user(
        a,
        &UserPatch {
            status: Some(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let u = s.user_by_id(a).await.unwrap();
    assert_eq!((u.status, u.auth_version), (2, v0 + 1));
    match s
        .update_user(
            a,
            &UserPatch {
                username: Some("bob".into()),
                ..Default::default()
            },
        )
        .await
    {
        Err(StoreError::Unique(_)) => {}
        other => panic!("rename onto bob: {other:?}"),
    }
    assert!(matches!(
        s.update_user(
            9999,
            &UserPatch {
                quota: Some(1),
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::NotFound)
    ));
    s.set_access_token_hash(a, "ath-new").await.unwrap();
    assert!(matches!(
        s.user_by_access_token_hash("ath-alice").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.user_by_access_token_hash("ath-new").await.unwrap().id, a);
    s.bump_auth_version(a).await.unwrap();
    assert_eq!(s.user_by_id(a).await.unwrap().auth_version, v0 + 2);

    // Delete takes the user's tokens along.
    s.create_token(&token(a, "t", "del"), 10).await.unwrap();
    s.delete_user(a).await.unwrap();
    assert!(matches!(s.user_by_id(a).await, Err(StoreError::NotFound)));
    assert!(matches!(
        s.token_by_key_hash("hash-del").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(s.delete_user(a).await, Err(StoreError::NotFound)));
    assert_eq!(s.count_users().await.unwrap(), 2);
}

async fn tokens(s: &Store) {
    let a = s
        .create_user(&new_user("tok-a", 1, "default"))
        .await
        .unwrap();
    let b = s
        .create_user(&new_user("tok-b", 1, "default"))
        .await
        .unwrap();
    let t1 = s.create_token(&token(a, "Alpha", "k1"), 3).await.unwrap();
    let t2 = s.create_token(&token(a, "beta", "k2"), 3).await.unwrap();
    let t3 = s
        .create_token(&token(a, "alphabet", "k3"), 3)
        .await
        .unwrap();
    let tb = s.create_token(&token(b, "alpha-b", "kb"), 3).await.unwrap();
    assert!(matches!(
        s.create_token(&token(a, "four", "k4"), 3).await,
        Err(CreateTokenError::LimitReached(3))
    ));
    assert!(matches!(
        s.create_token(&token(424242, "ghost", "kg"), 3).await,
        Err(CreateTokenError::NoUser)
    ));
    // A duplicate key hash is refused by the unique index.
    assert!(matches!(
        s.create_token(&token(b, "dup", "k1"), 10).await,
        Err(CreateTokenError::Store(StoreError::Unique(_)))
    ));

    let t = s.token_by_id(t1, Owner::User(a)).await.unwrap();
    let want = Token {
        id: t1,
        ..token(a, "Alpha", "k1")
    };
    assert_eq!(t, want, "every field round-trips");
    assert!(matches!(
        s.token_by_id(t1, Owner::User(b)).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.token_by_id(t1, Owner::Any).await.unwrap().id, t1);
    assert_eq!(s.token_by_key_hash("hash-k2").await.unwrap().id, t2);

    let (page, total) = s.list_tokens(Owner::User(a), None, 0, 2).await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(page.iter().map(|t| t.id).collect::<Vec<_>>(), [t3, t2]);
    let (page, total) = s
        .list_tokens(Owner::User(a), Some("ALPHA"), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        (total, page.iter().map(|t| t.id).collect::<Vec<_>>()),
        (2, vec![t3, t1])
    );
    let (_, total) = s
        .list_tokens(Owner::Any, Some("alpha"), 0, 10)
        .await
        .unwrap();
    assert_eq!(total, 3);
    let (_, total) = s
        .list_tokens(Owner::User(a), Some("_"), 0, 10)
        .await
        .unwrap();
    assert_eq!(total, 0, "LIKE wildcards are escaped");
    assert_eq!(s.all_tokens(Owner::User(b), None).await.unwrap().len(), 1);
    let got = s
        .tokens_by_ids(&[t1, tb, t2, 999], Owner::User(a))
        .await
        .unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), [t1, t2]);

    let mut u = s.token_by_id(t2, Owner::Any).await.unwrap();
    u.name = "beta-2".into();
    u.status = 2;
    u.remain_quota = 5;
    u.unlimited_quota = true;
    u.model_limits = "x,y".into();
    u.model_limits_enabled = false;
    u.allow_ips = String::new();
    u.group = "default".into();
    u.expired_time = now() + 50;
    u.rpm_limit = 0;
    u.tpm_limit = 12;
    s.update_token(&u, true).await.unwrap();
    assert_eq!(s.token_by_id(t2, Owner::Any).await.unwrap(), u);
    // Writing the same values again is not "not found" (MySQL counts
    // changed rows unless told otherwise).
    s.update_token(&u, true).await.unwrap();
    let mut ghost = u.clone();
    ghost.id = 999_999;
    assert!(matches!(
        s.update_token(&ghost, true).await,
        Err(StoreError::NotFound)
    ));
    s.set_token_status(t2, 4).await.unwrap();
    assert_eq!(s.token_by_id(t2, Owner::Any).await.unwrap().status, 4);
    assert_eq!(s.token_remain(t2).await.unwrap(), 5);
    // An update that does not set remain_quota leaves it alone: charges the
    // ledger committed after the caller read the token are not undone.
    let stale = s.token_by_id(t2, Owner::Any).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(s.dialect().sql(
        "UPDATE tokens SET remain_quota = remain_quota - 3 WHERE id = ?",
    )))
    .bind(t2)
    .execute(s.pool())
    .await
    .unwrap();
    let mut renamed = stale.clone();
    renamed.name = "beta-3".into();
    s.update_token(&renamed, false).await.unwrap();
    assert_eq!(s.token_remain(t2).await.unwrap(), 2);
    assert_eq!(s.token_by_id(t2, Owner::Any).await.unwrap().name, "beta-3");
    s.update_token(&renamed, true).await.unwrap();
    assert_eq!(s.token_remain(t2).await.unwrap(), 5);

    // Delete is owner-scoped and answers what it removed.
    let gone = s.delete_tokens(&[t1, tb], Owner::User(a)).await.unwrap();
    assert_eq!(gone.iter().map(|t| t.id).collect::<Vec<_>>(), [t1]);
    assert!(s.token_by_id(tb, Owner::Any).await.is_ok());
    let gone = s.delete_tokens(&[tb, t3], Owner::Any).await.unwrap();
    assert_eq!(gone.len(), 2);
    assert_eq!(
        s.list_tokens(Owner::User(a), None, 0, 10).await.unwrap().1,
        1
    );
}

async fn options(s: &Store) {
    assert!(s.load_options().await.unwrap().is_empty());
    s.put_option("RetryTimes", "2").await.unwrap();
    s.put_option("ModelRatio", r#"{"m":1.5}"#).await.unwrap();
    s.put_option("RetryTimes", "3").await.unwrap();
    let o = s.load_options().await.unwrap();
    assert_eq!(o.len(), 2);
    assert_eq!(o["RetryTimes"], "3");
    assert_eq!(o["ModelRatio"], r#"{"m":1.5}"#);
}

async fn redemptions(s: &Store) {
    let u = s
        .create_user(&new_user("redeemer", 1, "default"))
        .await
        .unwrap();
    let codes: Vec<String> = ["c-one", "c-two", "c-three"].map(String::from).into();
    s.create_redemptions(1, "spring", 300, 0, &codes)
        .await
        .unwrap();
    s.create_redemptions(1, "later", 5, now() + 100, &["c-late".to_string()])
        .await
        .unwrap();
    // A batch with a duplicate code writes none of its codes.
    assert!(matches!(
        s.create_redemptions(1, "dup", 1, 0, &["c-new".to_string(), "c-one".to_string()])
            .await,
        Err(StoreError::Unique(_))
    ));
    let (items, total) = s.list_redemptions(None, 0, 10).await.unwrap();
    assert_eq!(total, 4, "the failed batch left nothing behind");
    assert_eq!(items[0].code, "c-late", "newest first");
    let (items, total) = s.list_redemptions(Some("SPR"), 0, 2).await.unwrap();
    assert_eq!((total, items.len()), (3, 2));
    let id = items[0].id;
    let (items, _) = s
        .list_redemptions(Some(&id.to_string()), 0, 10)
        .await
        .unwrap();
    assert!(items.iter().any(|r| r.id == id));

    let mut r = s.redemption_by_id(id).await.unwrap();
    assert_eq!(
        (r.name.as_str(), r.quota, r.status, r.user_id),
        ("spring", 300, 1, 1)
    );
    r.status = 2;
    r.name = "off".into();
    s.update_redemption(&r).await.unwrap();
    assert_eq!(s.redemption_by_id(id).await.unwrap(), r);
    s.update_redemption(&r).await.unwrap();
    assert!(matches!(
        s.redeem(&r.code, u, |_| NewLog::default()).await,
        Err(RedeemError::Disabled)
    ));

    let log = |r: &sluice::store::Redemption| NewLog {
        created_at: now(),
        log_type: 1,
        user_id: u,
        username: "redeemer".into(),
        quota: r.quota,
        content: format!("code {}", r.id),
        ..Default::default()
    };
    let (all, _) = s.list_redemptions(Some("spring"), 0, 10).await.unwrap();
    let live = all.iter().find(|x| x.status == 1).unwrap().clone();
    assert_eq!(s.redeem(&live.code, u, log).await.unwrap(), 300);
    assert!(matches!(
        s.redeem(&live.code, u, log).await,
        Err(RedeemError::Used)
    ));
    assert!(matches!(
        s.redeem("nope", u, log).await,
        Err(RedeemError::Invalid)
    ));
    let used = s.redemption_by_id(live.id).await.unwrap();
    assert_eq!((used.status, used.used_user_id), (3, u));
    assert!(used.redeemed_time > 0);
    assert_eq!(s.user_by_id(u).await.unwrap().quota, 310);
    let f = LogFilter {
        user_id: Some(u),
        log_type: Some(1),
        ..Default::default()
    };
    assert_eq!(s.list_logs(&f, 0, 10).await.unwrap().1, 1, "the top-up row");

    // Used and disabled codes are invalid; one enabled spring code and the
    // unexpired late one stay.
    assert_eq!(s.delete_invalid_redemptions().await.unwrap(), 2);
    assert_eq!(s.list_redemptions(None, 0, 10).await.unwrap().1, 2);
    s.delete_redemption(id).await.unwrap_err();
    let (left, _) = s.list_redemptions(None, 0, 10).await.unwrap();
    s.delete_redemption(left[0].id).await.unwrap();
    assert!(matches!(
        s.redemption_by_id(left[0].id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete_redemption(left[0].id).await,
        Err(StoreError::NotFound)
    ));
}

async fn logs(s: &Store) {
    let t0 = now();
    let mk = |user_id: i64, log_type: i64, model: &str, quota: i64, at: i64, tokens: (i64, i64)| {
        NewLog {
            created_at: at,
            log_type,
            user_id,
            username: format!("u{user_id}"),
            token_name: "tk".into(),
            model_name: model.into(),
            quota,
            prompt_tokens: tokens.0,
            completion_tokens: tokens.1,
            request_id: format!("req-{user_id}-{quota}"),
            other: "{}".into(),
            ..Default::default()
        }
    };
    let rows = [
        mk(7, 2, "m1", 100, t0 - 10, (10, 5)),
        mk(7, 2, "m2", 250, t0 - 5, (20, 10)),
        mk(7, 2, "m1", 40, t0 - 3 * 86_400, (1, 1)),
        mk(8, 2, "m1", 1000, t0 - 1, (100, 100)),
        mk(7, 3, "", 0, t0, (0, 0)),
    ];
    for r in &rows {
        s.insert_log(r).await.unwrap();
    }
    let (all, total) = s.list_logs(&LogFilter::default(), 0, 100).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(all[0].log, rows[4], "newest first, every field round-trips");
    assert_eq!(all[4].log, rows[0]);

    let f = LogFilter {
        user_id: Some(7),
        log_type: Some(2),
        ..Default::default()
    };
    let (mine, total) = s.list_logs(&f, 0, 2).await.unwrap();
    assert_eq!((total, mine.len()), (3, 2));
    let stat = s.log_stat(&f, t0).await.unwrap();
    assert_eq!(stat.quota, 390, "sum over the filter");
    assert_eq!(stat.rpm, 2, "calls in the last minute");
    assert_eq!(stat.tpm, 45, "tokens in the last minute");
    let (list, _) = s.list_logs(&f, 0, 100).await.unwrap();
    assert_eq!(
        list.iter().map(|l| l.log.quota).sum::<i64>(),
        stat.quota,
        "rows reconcile with stat"
    );

    let f1 = LogFilter {
        model_name: Some("m1".into()),
        start: Some(t0 - 86_400),
        ..Default::default()
    };
    assert_eq!(s.log_stat(&f1, t0).await.unwrap().quota, 1100);
    let f2 = LogFilter {
        request_id: Some("req-8-1000".into()),
        ..Default::default()
    };
    assert_eq!(s.list_logs(&f2, 0, 10).await.unwrap().1, 1);
    let empty = LogFilter {
        user_id: Some(4242),
        ..Default::default()
    };
    assert_eq!(
        s.log_stat(&empty, t0).await.unwrap().quota,
        0,
        "no rows sum to 0"
    );

    let buckets = s.usage_buckets(&f).await.unwrap();
    assert_eq!(buckets.iter().map(|b| b.quota).sum::<i64>(), 390);
    assert_eq!(buckets.iter().map(|b| b.count).sum::<i64>(), 3);
    assert!(buckets.iter().all(|b| b.created_at % 86_400 == 0));

    assert_eq!(s.purge_logs(t0 - 86_400).await.unwrap(), 1);
    assert_eq!(
        s.list_logs(&LogFilter::default(), 0, 100).await.unwrap().1,
        4
    );
}

async fn suite(kind: Db) {
    let Some((store, db, _dir)) = open(kind).await else {
        return;
    };
    users(&store).await;
    tokens(&store).await;
    options(&store).await;
    logs(&store).await;
    redemptions(&store).await;
    store.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn store_sqlite() {
    suite(Db::Sqlite).await;
}

#[tokio::test]
async fn store_postgres() {
    suite(Db::Postgres).await;
}

#[tokio::test]
async fn store_mysql() {
    suite(Db::Mysql).await;
}

/// A new SQLite file gets 8 KiB pages (the ledger's rows fit twice as many
/// to a page); a file made before keeps its own size, which WAL mode fixes.
#[tokio::test]
async fn a_new_sqlite_file_has_8_kib_pages_and_an_old_one_keeps_its_own() {
    use sqlx::Row;
    let page_size = |s: Store| async move {
        let n: i64 = sqlx::query("PRAGMA page_size")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        s.close().await;
        n
    };
    let dir = tempfile::tempdir().unwrap();
    let fresh = format!("sqlite://{}?mode=rwc", dir.path().join("new.db").display());
    let s = Store::connect(&fresh, 2).await.unwrap();
    s.migrate().await.unwrap();
    assert_eq!(page_size(s).await, 8192);

    let old = dir.path().join("old.db");
    {
        let c = rusqlite::Connection::open(&old).unwrap();
        c.pragma_update(None, "page_size", 4096).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    }
    let s = Store::connect(&format!("sqlite://{}", old.display()), 2)
        .await
        .unwrap();
    s.migrate().await.unwrap();
    assert_eq!(page_size(s).await, 4096);
}
