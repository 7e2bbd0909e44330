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
use tokio_postgres::{Client, Error, Row};

/// A statement's parameters with their types, as `query_typed` takes them.
pub(crate) type Params<'a> = [(&'a (dyn ToSql + Sync), Type)];

/// Runs `statements` on `client` (inside its transaction: a [`tokio_postgres::Transaction`]'s
/// `client()`, or an [`OwnTransaction`]'s) in one round trip and returns each one's rows, in
/// order. After a statement fails the transaction is aborted and the later ones fail too (a
/// `COMMIT` among them rolls back): the first error in order is returned, the one that says what
/// went wrong.
pub(crate) async fn in_one_flight(
    client: &Client,
    statements: &[(&str, &Params<'_>)],
) -> Result<Vec<Vec<Row>>, Error> {
    let mut flight: Vec<_> = statements
        .iter()
        .map(|(sql, params)| Box::pin(maybe_done(client.query_typed(sql, params))))
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

/// A pooled connection inside a transaction that its user begins and ends with statements of its
/// own (`BEGIN` and `COMMIT` sent in a flight with others, so that neither waits a round trip of
/// its own). If it is dropped before [`OwnTransaction::ended`] (the work was cancelled, or a
/// statement failed), the connection is taken out of the pool and closed, which rolls the
/// transaction back: the pool does not check the connections it gets back, and the next user
/// would be left inside this one's transaction.
pub(crate) struct OwnTransaction(Option<deadpool_postgres::Object>);

impl OwnTransaction {
    /// `client`, about to begin a transaction.
    pub(crate) fn new(client: deadpool_postgres::Object) -> OwnTransaction {
        OwnTransaction(Some(client))
    }

    pub(crate) fn client(&self) -> &deadpool_postgres::Object {
        self.0.as_ref().expect("held until ended or dropped")
    }

    /// The transaction is over (committed or rolled back): the connection goes back to the pool.
    pub(crate) fn ended(mut self) {
        drop(self.0.take());
    }
}

impl Drop for OwnTransaction {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}
