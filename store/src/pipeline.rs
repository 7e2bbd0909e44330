//! A transaction's independent statements sent in one flight.
//!
//! Under load every round trip waits for the database backend, and then the client, to be
//! scheduled again: on a busy machine a few milliseconds each, so that a transaction of a dozen
//! statements spent most of its time between them. Statements that do not need each other's
//! answers are sent together instead: each request is queued on the connection before the next,
//! the server runs them in that order, exactly as if they had been sent one after another, and
//! their answers are awaited together.

use futures_util::future::{join_all, maybe_done};
use std::future::Future;
use std::task::Poll;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, Row, Transaction};

/// A statement's parameters with their types, as `query_typed` takes them.
pub(crate) type Params<'a> = [(&'a (dyn ToSql + Sync), Type)];

/// Runs `statements` in `tx` in one round trip and returns each one's rows, in order. After a
/// statement fails the transaction is aborted and the later ones fail too: the first error in
/// order is returned, the one that says what went wrong.
pub(crate) async fn in_one_flight(
    tx: &Transaction<'_>,
    statements: &[(&str, &Params<'_>)],
) -> Result<Vec<Vec<Row>>, Error> {
    let mut flight: Vec<_> = statements
        .iter()
        .map(|(sql, params)| Box::pin(maybe_done(tx.query_typed(sql, params))))
        .collect();
    // A statement's request is queued on the connection when its future is first polled: once
    // each, in order, so that the server receives them in the order given.
    std::future::poll_fn(|cx| {
        for statement in &mut flight {
            let _ = statement.as_mut().poll(cx);
        }
        Poll::Ready(())
    })
    .await;
    join_all(flight.iter_mut().map(|s| s.as_mut())).await;
    flight
        .iter_mut()
        .map(|s| {
            s.as_mut()
                .take_output()
                .expect("every statement of the flight has been answered")
        })
        .collect()
}
