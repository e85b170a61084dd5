//! The send checks' SQL (`CHECKS`, through `read_checks`) against a plain Rust statement of the
//! rules, on a throwaway PostgreSQL: the per-number and wrong-code limits
//! moved into one query, and the cases the contract suite does not reach
//! (send times that tie, a budget reached inside a tie) are checked here.
//! The reference is the core's `send::wrong_code_block`, which SQLite runs.

use otpgate_core::send::wrong_code_block;
use sqlx::Row;

use super::send::{CheckParams, read_checks};
use super::{PgOptions, PostgresStore};
use crate::testkit::{TempPostgres, require_services};

/// A small deterministic generator, so a failure replays.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_query_blocks_where_the_rules_say_even_with_ties() {
    let pg = match tokio::task::spawn_blocking(TempPostgres::shared)
        .await
        .unwrap()
    {
        Ok(pg) => pg,
        Err(e) if e.is_missing() && !require_services() => {
            println!("SKIPPED the_checks_query_blocks_where_the_rules_say_even_with_ties: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let url = tokio::task::spawn_blocking(|| pg.fresh_database())
        .await
        .unwrap();
    let store = PostgresStore::connect(&url, PgOptions::default())
        .await
        .unwrap();
    sqlx::query(
        "insert into accounts (customer_id, password_hash, credits, test_credits, created_at)
         values ('c1', 'x', 0, 0, 0)",
    )
    .execute(&store.pool)
    .await
    .unwrap();

    const NOW: i64 = 1_000_000;
    const WINDOW: i64 = 10_000;
    let mut rng = Lcg(7);
    let mut next_id = 1i64;
    for round in 0..40 {
        sqlx::query("delete from verifications")
            .execute(&store.pool)
            .await
            .unwrap();
        // A handful of sends to the destination on a coarse clock, so send
        // times tie; some with no wrong codes, some just outside the window,
        // and some to another number, which must not count.
        let mut ours = Vec::new();
        let mut all = Vec::new();
        for _ in 0..rng.below(9) {
            let at = NOW - WINDOW + 1_000 * i64::try_from(rng.below(12)).unwrap() - 1_000;
            let wrong = i32::try_from(rng.below(4)).unwrap();
            let destination = if rng.below(5) == 0 { "4400" } else { "4411" };
            sqlx::query(
                "insert into verifications (
                     id, customer_id, country_code, national, destination, flow_type,
                     code_hash, otp_length, state, wrong_attempts, max_attempts, created_at,
                     expires_at, transaction_id, cost, cost_test, delivery
                 ) values ($1, 'c1', 44, '11', $2, 'SMS', '\\x00', 4, 'failed', $3, 5, $4,
                           $4, '', 0, 0, 'failed')",
            )
            .bind(next_id)
            .bind(destination)
            .bind(wrong)
            .bind(at)
            .execute(&store.pool)
            .await
            .unwrap();
            next_id += 1;
            all.push(at);
            if destination == "4411" && at > NOW - WINDOW {
                ours.push((at, wrong));
            }
        }
        ours.sort_by_key(|v| std::cmp::Reverse(v.0));
        let with_wrong: Vec<(i64, i64)> = ours
            .iter()
            .filter(|&&(_, w)| w > 0)
            .map(|&(at, w)| (at, i64::from(w)))
            .collect();
        let total: i64 = ours.iter().map(|&(_, w)| i64::from(w)).sum();
        let sends = u32::try_from(ours.len()).unwrap();

        // Sends of the account (to any number) in the last second.
        let recent = i64::try_from(all.iter().filter(|&&at| at > NOW - 1000).count()).unwrap();

        for max in 1..=u32::try_from(total).unwrap().max(sends) + 1 {
            let mut answers = Vec::new();
            for counting in [false, true] {
                // The fraud facts' switches off: this is about the limits.
                let params = CheckParams {
                    customer: "c1",
                    destination: "4411".into(),
                    now: NOW,
                    number_from: NOW - WINDOW,
                    number_offset: i64::from(max) - 1,
                    wrong_from: NOW - WINDOW,
                    wrong_max: i64::from(max),
                    second_from: counting.then_some(NOW - 1000),
                    country: 44,
                    hour_from: NOW - 3_600_000,
                    day_from: NOW - 86_400_000,
                    prefix: "4411",
                    country_key: "c1:44".into(),
                    prefix_from: NOW - WINDOW,
                    country_from: NOW - WINDOW,
                    caps: false,
                    dest_cap: false,
                    guard: false,
                };
                // Twice in one statement, as a group reads them: each row
                // is the same send's, from the same snapshot.
                let mut conn = store.pool.acquire().await.unwrap();
                let twice = [params.clone(), params];
                let rows = read_checks(&mut conn, &twice).await.unwrap();
                assert_eq!(rows.len(), 2);
                let row = &rows[0];
                for col in ["id", "recent", "number_block_at", "wrong_block_at"] {
                    let a: Option<i64> = rows[0].get(col);
                    let b: Option<i64> = rows[1].get(col);
                    assert_eq!(a, b, "{col}");
                }
                let pending: Option<i64> = row.get("id");
                assert_eq!(pending, None);
                let counted: Option<i64> = row.get("recent");
                assert_eq!(counted, counting.then_some(recent), "round {round}");
                let number: Option<i64> = row.get("number_block_at");
                let wrong: Option<i64> = row.get("wrong_block_at");
                answers.push((number, wrong));
            }
            let (number, wrong) = answers[0];
            assert_eq!(answers[1], answers[0], "round {round}, max {max}");
            let nth_newest = ours.get(usize::try_from(max).unwrap() - 1).map(|v| v.0);
            assert_eq!(number, nth_newest, "round {round}, per-number max {max}");
            assert_eq!(
                wrong,
                wrong_code_block(&with_wrong, max),
                "round {round}, wrong-code max {max}: {ours:?}"
            );
        }
    }
    store.close().await;
}
