//! Validation's conditional write: it applies only on the attempt count the
//! caller read, so of any number of racing completions, on any number of
//! nodes, exactly one wins.

use otpgate_core::VerificationState;
use otpgate_store::ValidationAction;

use crate::fixture::TestDb;
use crate::helpers::*;

both_backends!(
    apply_writes_only_on_the_expected_attempt_count,
    of_many_concurrent_completions_across_many_nodes_exactly_one_wins,
);

async fn apply_writes_only_on_the_expected_attempt_count(db: TestDb) {
    let (store, c) = db.open_with_account(5, 0).await;
    let v = created(&store, send(42, &c, &phone(1), T0)).await;
    let apply = |n, action| store.verification_apply(&c, v.id, n, action, T0 + 5_000);
    assert!(apply(0, ValidationAction::Wrong).await.unwrap());
    // A validation that read 0 wrong attempts lost the race.
    assert!(!apply(0, ValidationAction::Wrong).await.unwrap());
    assert!(!apply(0, ValidationAction::Complete).await.unwrap());
    assert!(apply(1, ValidationAction::Complete).await.unwrap());
    assert!(!apply(1, ValidationAction::Complete).await.unwrap());
    assert!(!apply(1, ValidationAction::Wrong).await.unwrap());
    let done = verification(&store, &c, v.id).await;
    assert_eq!(done.state, VerificationState::Completed);
    assert_eq!(
        (done.wrong_attempts, done.completed_at),
        (1, Some(T0 + 5_000))
    );
}

async fn of_many_concurrent_completions_across_many_nodes_exactly_one_wins(db: TestDb) {
    let (nodes, c) = db.nodes_with_account(20, 100, 0).await;
    for round in 0..5u64 {
        let at = T0 + 70_000 * i64::try_from(round).unwrap();
        let v = created(&nodes[0], send(100 + round, &c, &phone(1), at)).await;
        // Two validations per node, released together.
        let won = at_once(&nodes, 2 * nodes.len(), |node, _| {
            let c = c.clone();
            async move {
                node.verification_apply(&c, v.id, 0, ValidationAction::Complete, at + 5)
                    .await
                    .unwrap()
            }
        })
        .await
        .into_iter()
        .filter(|w| *w)
        .count();
        assert_eq!(won, 1, "round {round}: exactly one completion must apply");
        let done = verification(&nodes[0], &c, v.id).await;
        assert_eq!(
            (done.state, done.completed_at),
            (VerificationState::Completed, Some(at + 5))
        );
        // And a wrong code can no longer count against it.
        assert!(
            !nodes[1]
                .verification_apply(&c, v.id, 0, ValidationAction::Wrong, at + 6)
                .await
                .unwrap()
        );
    }
}
