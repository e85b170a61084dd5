//! The two migration sets give one schema, and upgrading keeps the data.
//!
//! Parity: a fresh SQLite file and a fresh PostgreSQL database, each
//! migrated by this build, are read back from their catalogs and compared:
//! the same tables; in each, the same columns (names, compatible types,
//! nullability) and primary key; the same indexes (table, columns in order
//! with their direction, uniqueness, partial predicate), names aside (each
//! backend's names follow its own convention). Types are compared by class,
//! as the dialects spell them: SQLite's `integer` is PostgreSQL's `bigint`,
//! `integer`, `smallint` and `boolean` (SQLite has no boolean: 0 and 1);
//! `text` is also `jsonb`; `blob` is `bytea`. Each side's migration
//! bookkeeping (`_sqlx_migrations`, `schema_version`) is left out.
//!
//! Upgrade: a database as the previous build left it, and one as the build
//! before schema parity left it, each holding an account (balances, token
//! epoch, e-mail), a verification and its outbox row, opens under this build
//! with all of it intact: the verification is found by id and by its
//! destination (a validation's wrong-code count reads the destination
//! index), and an outbox row from before SQLite had `outbox.customer_id` is
//! filled (the channel statistics, which read by it, count it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use otpgate_core::CustomerId;
use sqlx::{Connection, Row};

use crate::fixture::{Backend, TestDb};

/// A column's type as both dialects can hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Integer,
    Text,
    Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Column {
    name: String,
    class: Class,
    not_null: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Index {
    table: String,
    /// Column names, `… desc` where descending.
    columns: Vec<String>,
    unique: bool,
    /// Normalised (see [`normalise`]).
    predicate: Option<String>,
}

#[derive(Debug, Default)]
struct Schema {
    /// Table → its columns, by name; and its primary key's columns.
    tables: BTreeMap<String, (BTreeSet<Column>, Vec<String>)>,
    indexes: BTreeSet<Index>,
}

fn sqlite_class(t: &str) -> Class {
    match t.to_ascii_lowercase().as_str() {
        "integer" => Class::Integer,
        "text" => Class::Text,
        "blob" => Class::Bytes,
        other => panic!("SQLite type {other:?} has no class here: add it"),
    }
}

fn postgres_class(t: &str) -> Class {
    match t {
        "bigint" | "integer" | "smallint" | "boolean" => Class::Integer,
        "text" | "jsonb" => Class::Text,
        "bytea" => Class::Bytes,
        other => panic!("PostgreSQL type {other:?} has no class here: add it"),
    }
}

/// A partial index's predicate as both dialects print it: lower case,
/// without PostgreSQL's casts and parentheses, blanks collapsed.
fn normalise(predicate: &str) -> String {
    predicate
        .to_ascii_lowercase()
        .replace("::text", "")
        .replace(['(', ')'], "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The rows of `sql` (a pragma query taking one name) for `name`.
async fn pragma(
    conn: &mut sqlx::SqliteConnection,
    sql: &'static str,
    name: &str,
) -> Vec<sqlx::sqlite::SqliteRow> {
    sqlx::query(sql).bind(name).fetch_all(conn).await.unwrap()
}

async fn sqlite_schema(url: &str) -> Schema {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "select name from sqlite_schema
          where type = 'table' and name not like 'sqlite_%' and name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut schema = Schema::default();
    for table in tables {
        let cols = pragma(
            &mut conn,
            "select name, type, \"notnull\", pk from pragma_table_info(?1) order by cid",
            &table,
        )
        .await;
        let mut columns = BTreeSet::new();
        let mut pk: Vec<(i64, String)> = Vec::new();
        for c in &cols {
            let name: String = c.get("name");
            let pk_pos: i64 = c.get("pk");
            if pk_pos > 0 {
                pk.push((pk_pos, name.clone()));
            }
            columns.insert(Column {
                class: sqlite_class(c.get("type")),
                // A primary key never holds null (SQLite's `integer primary
                // key` is the rowid), whatever the pragma says.
                not_null: c.get::<i64, _>("notnull") == 1 || pk_pos > 0,
                name,
            });
        }
        pk.sort();
        let pk = pk.into_iter().map(|(_, n)| n).collect();
        let indexes = pragma(
            &mut conn,
            "select l.name, l.\"unique\", l.origin, s.sql
               from pragma_index_list(?1) l left join sqlite_schema s on s.name = l.name
              where l.origin <> 'pk'",
            &table,
        )
        .await;
        for i in &indexes {
            let name: String = i.get("name");
            let sql: Option<String> = i.get("sql");
            let keys = pragma(
                &mut conn,
                "select name, \"desc\" from pragma_index_xinfo(?1) where key = 1 order by seqno",
                &name,
            )
            .await;
            let columns = keys
                .iter()
                .map(|k| {
                    let n: String = k.get("name");
                    if k.get::<i64, _>("desc") == 1 {
                        format!("{n} desc")
                    } else {
                        n
                    }
                })
                .collect();
            let predicate = sql.as_deref().and_then(|s| {
                let lower = s.to_ascii_lowercase();
                lower.rfind(" where ").map(|at| normalise(&lower[at + 7..]))
            });
            schema.indexes.insert(Index {
                table: table.clone(),
                columns,
                unique: i.get::<i64, _>("unique") == 1,
                predicate,
            });
        }
        schema.tables.insert(table, (columns, pk));
    }
    conn.close().await.unwrap();
    schema
}

async fn postgres_schema(url: &str) -> Schema {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let cols: Vec<(String, String, String, String)> = sqlx::query_as(
        "select c.table_name::text, c.column_name::text, c.data_type::text, c.is_nullable::text
           from information_schema.columns c
           join information_schema.tables t
             on t.table_schema = c.table_schema and t.table_name = c.table_name
          where c.table_schema = 'public' and t.table_type = 'BASE TABLE'
            and c.table_name <> 'schema_version'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut schema = Schema::default();
    for (table, name, data_type, nullable) in cols {
        schema.tables.entry(table).or_default().0.insert(Column {
            name,
            class: postgres_class(&data_type),
            not_null: nullable == "NO",
        });
    }
    // (table, unique, primary, predicate, columns)
    type IndexRow = (String, bool, bool, Option<String>, Vec<String>);
    let indexes: Vec<IndexRow> = sqlx::query_as(
        "select t.relname::text, ix.indisunique, ix.indisprimary,
                pg_get_expr(ix.indpred, ix.indrelid),
                array(select pg_get_indexdef(ix.indexrelid, k, true)
                             || case when ix.indoption[k - 1] & 1 = 1 then ' desc' else '' end
                        from generate_series(1, ix.indnkeyatts) k order by k)
           from pg_index ix
           join pg_class t on t.oid = ix.indrelid
           join pg_namespace n on n.oid = t.relnamespace
          where n.nspname = 'public' and t.relname <> 'schema_version'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for (table, unique, primary, predicate, columns) in indexes {
        if primary {
            schema.tables.entry(table).or_default().1 = columns;
        } else {
            schema.indexes.insert(Index {
                table,
                columns,
                unique,
                predicate: predicate.as_deref().map(normalise),
            });
        }
    }
    conn.close().await.unwrap();
    schema
}

/// What differs between the two, one line each; empty when they agree.
fn differences(sqlite: &Schema, postgres: &Schema) -> String {
    let mut out = String::new();
    let names: BTreeSet<&String> = sqlite.tables.keys().chain(postgres.tables.keys()).collect();
    for table in names {
        let (Some((sc, spk)), Some((pc, ppk))) =
            (sqlite.tables.get(table), postgres.tables.get(table))
        else {
            let side = if sqlite.tables.contains_key(table) {
                "SQLite"
            } else {
                "PostgreSQL"
            };
            let _ = writeln!(out, "table {table}: only on {side}");
            continue;
        };
        for c in sc.symmetric_difference(pc) {
            let side = if sc.contains(c) {
                "SQLite"
            } else {
                "PostgreSQL"
            };
            let _ = writeln!(out, "{table}.{}: {c:?} only on {side}", c.name);
        }
        if spk != ppk {
            let _ = writeln!(
                out,
                "{table}: primary key {spk:?} on SQLite, {ppk:?} on PostgreSQL"
            );
        }
    }
    for i in sqlite.indexes.symmetric_difference(&postgres.indexes) {
        let side = if sqlite.indexes.contains(i) {
            "SQLite"
        } else {
            "PostgreSQL"
        };
        let _ = writeln!(out, "index {i:?} only on {side}");
    }
    out
}

#[tokio::test]
async fn both_migration_sets_give_the_same_tables_columns_and_indexes() {
    let test = "schema::both_migration_sets_give_the_same_tables_columns_and_indexes";
    let Some(pg) = TestDb::postgres(test).await else {
        return;
    };
    let lite = TestDb::fresh(Backend::Sqlite, test).await.unwrap();
    lite.open().await.close().await;
    pg.open().await.close().await;
    let (sqlite, postgres) = (
        sqlite_schema(&lite.sql_url()).await,
        postgres_schema(&pg.sql_url()).await,
    );
    // Not vacuous: both catalogs were read, and they hold the tables the
    // store writes.
    for t in ["accounts", "verifications", "outbox", "inbox", "events"] {
        assert!(sqlite.tables.contains_key(t), "SQLite has no {t}");
        assert!(postgres.tables.contains_key(t), "PostgreSQL has no {t}");
    }
    assert!(sqlite.indexes.len() > 10, "{:?}", sqlite.indexes);
    let diff = differences(&sqlite, &postgres);
    assert!(diff.is_empty(), "the schemas differ:\n{diff}");
}

#[test]
fn the_comparison_sees_a_missing_column_a_nullability_and_an_index_direction() {
    let table = |cols: &[(&str, Class, bool)]| {
        let cols = cols
            .iter()
            .map(|&(name, class, not_null)| Column {
                name: name.into(),
                class,
                not_null,
            })
            .collect();
        (cols, vec!["id".to_owned()])
    };
    let index = |desc: bool| Index {
        table: "t".into(),
        columns: vec![if desc { "a desc".into() } else { "a".into() }],
        unique: false,
        predicate: Some(normalise("(status = 'queued'::text)")),
    };
    let mut a = Schema::default();
    a.tables.insert(
        "t".into(),
        table(&[("id", Class::Integer, true), ("a", Class::Text, true)]),
    );
    a.indexes.insert(index(false));
    let mut b = Schema::default();
    b.tables.insert(
        "t".into(),
        table(&[("id", Class::Integer, true), ("a", Class::Text, true)]),
    );
    b.indexes.insert(index(false));
    assert_eq!(differences(&a, &b), "");
    assert_eq!(
        index(false).predicate.as_deref(),
        Some("status = 'queued'"),
        "PostgreSQL's printed predicate reads as SQLite's"
    );
    b.tables.insert(
        "t".into(),
        table(&[("id", Class::Integer, true), ("a", Class::Text, false)]),
    );
    b.indexes = [index(true)].into();
    b.tables.insert("u".into(), table(&[]));
    let diff = differences(&a, &b);
    assert!(diff.contains("t.a:"), "{diff}");
    assert!(diff.contains("table u: only on PostgreSQL"), "{diff}");
    assert!(diff.contains("a desc"), "{diff}");
}

/// The rows of an earlier build, in SQL both dialects take but for the code
/// hash's literal (`blob`).
fn old_rows(blob: &str) -> String {
    format!(
        "
    insert into accounts (customer_id, password_hash, email, email_key, credits, test_credits,
                          token_epoch, created_at)
        values ('C-000000000000007', 'hash-7', 'A@Example.com', 'a@example.com', 40, 3, 2,
                1764100000000);
    insert into verifications
        (id, customer_id, country_code, national, destination, flow_type, code_hash,
         otp_length, state, wrong_attempts, max_attempts, created_at, expires_at,
         transaction_id, cost, cost_test, delivery, channel, gateway_id)
        values (77, 'C-000000000000007', 91, '9876500077', '919876500077', 'SMS', {blob}, 4,
                'pending', 1, 5, 1764100000000, 4102444800000, 'tx-77', 2, 1, 'sent', 'http',
                'gw-77');"
    )
}

/// The schema just before the schema-parity migration (SQLite's 7,
/// PostgreSQL's 6): the last one whose SQLite outbox had no `customer_id`.
fn before_parity(backend: Backend) -> i64 {
    match backend {
        Backend::Sqlite => 6,
        Backend::Postgres => 5,
    }
}

/// One upgrade from schema `from`; false when the backend is missing and
/// the test was skipped (said by `test`, its name).
async fn upgrade_keeps_everything(test: &str, backend: Backend, from: i64) -> bool {
    let Some(db) = TestDb::fresh(backend, test).await else {
        return false;
    };
    db.make_at_schema(from).await;
    // A code hash is 32 bytes.
    let hash = "07".repeat(32);
    db.execute(&old_rows(&match backend {
        Backend::Sqlite => format!("x'{hash}'"),
        Backend::Postgres => format!("'\\x{hash}'::bytea"),
    }))
    .await;
    let outbox_row = match backend {
        // Before schema parity SQLite's outbox had no customer_id.
        Backend::Sqlite if from <= before_parity(backend) => {
            "insert into outbox (verification_id, step, status, attempts, next_attempt_at,
                                 channel, gateway_id, created_at, updated_at)
                 values (77, 0, 'sent', 1, 1764100000000, 'http', 'gw-77', 1764100000000,
                         1764100000000)"
        }
        Backend::Sqlite | Backend::Postgres => {
            "insert into outbox (verification_id, customer_id, step, status, attempts,
                                 next_attempt_at, channel, gateway_id, created_at, updated_at)
                 values (77, 'C-000000000000007', 0, 'sent', 1, 1764100000000, 'http', 'gw-77',
                         1764100000000, 1764100000000)"
        }
    };
    db.execute(outbox_row).await;

    let store = db.open().await;
    assert_eq!(store.schema_version().await, backend.schema_version());
    let c = CustomerId::parse("C-000000000000007").unwrap();
    let a = store.account_get(&c).await.unwrap().expect("the account");
    assert_eq!(
        (
            a.credits,
            a.test_credits,
            a.token_epoch,
            a.password_hash.as_str()
        ),
        (40, 3, 2, "hash-7")
    );
    assert_eq!(
        store
            .account_by_email("a@EXAMPLE.com")
            .await
            .unwrap()
            .map(|a| a.customer_id),
        Some(c.clone())
    );
    let id = otpgate_core::VerificationId::new(77).unwrap();
    let v = store
        .verification_get(&c, id)
        .await
        .unwrap()
        .expect("the verification");
    assert_eq!(
        (
            v.state,
            v.wrong_attempts,
            v.cost,
            v.cost_test,
            v.destination.e164_digits()
        ),
        (
            otpgate_core::VerificationState::Pending,
            1,
            2,
            1,
            "919876500077".to_owned()
        )
    );
    assert_eq!(v.code_hash.0, [7; 32]);
    // Its one wrong code counts for its number, read through the index on
    // (destination, customer_id, created_at) that replaced two.
    let (_, wrong) = store
        .verification_to_validate(&c, id, 1764100000000)
        .await
        .unwrap()
        .expect("the verification, to validate");
    assert_eq!(wrong, 1);
    let m = store
        .outbox_for_verification(id)
        .await
        .unwrap()
        .expect("the outbox row");
    assert_eq!(m.verification_id, id);
    // The old row is the account's: counted by the statistics that read
    // outbox rows by their customer_id.
    let stats = store
        .channel_stats(&c, 1764100000000, 1764100000001)
        .await
        .unwrap();
    assert_eq!(
        stats
            .iter()
            .map(|s| (s.channel.as_str(), s.attempted, s.succeeded))
            .collect::<Vec<_>>(),
        [("http", 1, 1)]
    );
    store.close().await;
    true
}

/// From the previous build's schema and from the one before schema parity.
async fn an_upgrade_keeps_accounts_balances_tokens_and_verifications(test: &str, b: Backend) {
    for from in [b.schema_version() - 1, before_parity(b)] {
        if !upgrade_keeps_everything(test, b, from).await {
            return;
        }
    }
}

#[tokio::test]
async fn an_upgrade_keeps_accounts_balances_tokens_and_verifications_on_sqlite() {
    an_upgrade_keeps_accounts_balances_tokens_and_verifications(
        "schema::an_upgrade_keeps_accounts_balances_tokens_and_verifications_on_sqlite",
        Backend::Sqlite,
    )
    .await;
}

#[tokio::test]
async fn an_upgrade_keeps_accounts_balances_tokens_and_verifications_on_postgres() {
    an_upgrade_keeps_accounts_balances_tokens_and_verifications(
        "schema::an_upgrade_keeps_accounts_balances_tokens_and_verifications_on_postgres",
        Backend::Postgres,
    )
    .await;
}
