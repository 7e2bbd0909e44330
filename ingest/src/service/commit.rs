//! The committer: writes a batch with retry and backoff (splitting one the database refuses for
//! good), then acknowledges each message on the connection it arrived on.

use super::prepare::Prepared;
use super::shared::{AbortOnDrop, Ack, AckQueue, Generation};
use crate::config::IngestConfig;
use crate::message::STORAGE_REFUSED;
use crate::metrics::Metrics;
use bytes::Bytes;
use chrono::Utc;
use rumqttc::QoS;
use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidemark_store::readings::{Batch, MessageRef, Refusal, WriteOutcome};
use tidemark_store::Store;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Second stage: commits each prepared batch, then acknowledges its messages.
pub(crate) struct Committer {
    pub(crate) store: Store,
    pub(crate) acks: Acknowledger,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: IngestConfig,
}

/// How many batches commit at once, each on a connection of its own. One batch at a time leaves
/// the database waiting on ingest between transactions; two keep it busy while acknowledgements
/// still leave in the order the messages came.
pub(crate) const COMMITS_AT_ONCE: usize = 2;

/// How long a batch's commit waits for the batch before it to finish. The wait holds the batch's
/// transaction open; should the batch before be waiting on this one's rows (a message redelivered
/// into both), the wait ends here and the two commit out of order, as they could without it.
pub(crate) const TURN_WAIT: Duration = Duration::from_secs(1);

/// The order batches commit in, though written at once: each batch's commit waits its turn, after
/// the batch before it, so that their commit notifications come in the order the readings did
/// and analytics never sees a station's later readings without the earlier ones.
#[derive(Default)]
pub(crate) struct CommitOrder {
    last: Mutex<Option<watch::Receiver<bool>>>,
}

impl CommitOrder {
    /// The next batch's turn (after the batch handed the last turn), and what ends it.
    pub(crate) fn next(&self) -> (Turn, Finished) {
        let (finished, done) = watch::channel(false);
        let before = self
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(done);
        (Turn(before), Finished(finished))
    }
}

/// A batch's wait for the batch before it.
pub(crate) struct Turn(Option<watch::Receiver<bool>>);

impl Turn {
    /// Until the batch before has finished (committed, refused, stopped or aborted), or for
    /// [`TURN_WAIT`]; after that, never again.
    pub(crate) async fn wait(&mut self) {
        if let Some(before) = &mut self.0 {
            let _ = tokio::time::timeout(TURN_WAIT, before.wait_for(|done| *done)).await;
        }
        self.0 = None;
    }
}

/// Ends a batch's turn when dropped, however its commit ended.
pub(crate) struct Finished(watch::Sender<bool>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Committer {
    pub(crate) async fn run(self, prepared: mpsc::Receiver<Prepared>, shutdown: CancellationToken) {
        let committer = Arc::new(self);
        let order = CommitOrder::default();
        let commit = {
            let committer = committer.clone();
            move |batch: Prepared| {
                let (committer, shutdown) = (committer.clone(), shutdown.clone());
                let (mut turn, finished) = order.next();
                async move {
                    let committed = committer.commit(&batch, &mut turn, &shutdown).await;
                    drop(finished);
                    committed.then_some(batch)
                }
            }
        };
        in_order(prepared, COMMITS_AT_ONCE, commit, |batch| {
            committer.acknowledge(committer.settle(batch))
        })
        .await;
    }

    /// A committed batch: its payloads and their share of the buffer go now, before the
    /// acknowledgements, which may wait for the session task to take them.
    fn settle(&self, batch: Prepared) -> Vec<Ack> {
        batch
            .messages
            .into_iter()
            .map(|m| {
                self.metrics.buffered_bytes.dec_by(m.buffered as i64);
                m.ack
            })
            .collect()
    }

    /// Commits the batch, splitting it around any message the database refuses for good.
    /// Returns false if shut down first.
    pub(crate) async fn commit(
        &self,
        batch: &Prepared,
        turn: &mut Turn,
        shutdown: &CancellationToken,
    ) -> bool {
        let messages = batch.message_refs();
        let mut parts: VecDeque<Range<usize>> = VecDeque::new();
        parts.push_back(0..batch.messages.len());
        while let Some(part) = parts.pop_front() {
            let rows = batch.part(&messages, &part);
            match self.write(rows, turn, shutdown).await {
                Attempt::Committed(outcome) => self.count(rows, outcome),
                Attempt::Stopped => return false,
                Attempt::Refused(error) if part.len() > 1 => {
                    let middle = part.start + part.len() / 2;
                    tracing::warn!(
                        stage = "ingest",
                        %error,
                        messages = part.len(),
                        "the database refused a batch; writing its halves apart"
                    );
                    parts.push_front(middle..part.end);
                    parts.push_front(part.start..middle);
                }
                Attempt::Refused(error) => {
                    if !self
                        .refuse(&messages, part.start, &error, turn, shutdown)
                        .await
                    {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Keeps a message whose rows the database refused for good as a rejection of its own.
    /// Returns false if shut down first.
    pub(crate) async fn refuse(
        &self,
        messages: &[MessageRef<'_>],
        index: usize,
        error: &tidemark_store::Error,
        turn: &mut Turn,
        shutdown: &CancellationToken,
    ) -> bool {
        let refusal = [Refusal {
            message: index as u32,
            entry: None,
            reason_code: STORAGE_REFUSED,
            reason: format!(
                "the database refused this message's rows ({}): {error}",
                error.sqlstate().unwrap_or("-")
            ),
        }];
        let rows = Batch {
            messages,
            readings: &[],
            origins: &[],
            refusals: &refusal,
            forecasts: &[],
            forecast_messages: &[],
        };
        match self.write(rows, turn, shutdown).await {
            Attempt::Committed(outcome) => {
                self.count(rows, outcome);
                true
            }
            Attempt::Stopped => false,
            Attempt::Refused(again) => {
                // Not even its rejection can be stored: keeping it would stall every device behind
                // it, so it is acknowledged, counted and logged in full.
                self.metrics.rejections_unstored.inc();
                tracing::error!(
                    stage = "ingest",
                    topic = %messages[index].topic.escape_debug(),
                    payload_bytes = messages[index].payload.len(),
                    error = %again,
                    "a refused message could not be kept as a rejection; acknowledging it"
                );
                true
            }
        }
    }

    /// Writes rows, retrying with backoff until they commit, the database refuses them for good,
    /// or ingest shuts down.
    pub(crate) async fn write(
        &self,
        rows: Batch<'_>,
        turn: &mut Turn,
        shutdown: &CancellationToken,
    ) -> Attempt {
        let mut backoff = self.config.retry_initial;
        loop {
            let started = Instant::now();
            match self
                .store
                .write_in_turn(rows, Utc::now(), turn.wait())
                .await
            {
                Ok(outcome) => {
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.batches.inc();
                    return Attempt::Committed(outcome);
                }
                Err(error) if error.is_permanent() => return Attempt::Refused(error),
                Err(error) => {
                    self.metrics.write_retries.inc();
                    tracing::warn!(stage = "ingest", %error, retry_in = ?backoff, "batch write failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Attempt::Stopped,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    /// Counts what a committed write stored and refused, and logs each refused message once.
    pub(crate) fn count(&self, rows: Batch<'_>, outcome: WriteOutcome) {
        self.metrics.readings_stored.inc_by(outcome.stored);
        self.metrics.readings_duplicate.inc_by(outcome.duplicates);
        self.metrics
            .forecasts_stored
            .inc_by(outcome.forecasts_stored);
        self.metrics
            .forecasts_duplicate
            .inc_by(outcome.forecasts_duplicate);
        if outcome.forecasts_conflict > 0 {
            self.metrics
                .rejected
                .get_or_create(&vec![("reason", tidemark_store::readings::CONFLICT)])
                .inc_by(outcome.forecasts_conflict);
        }
        if outcome.conflicts > 0 {
            self.metrics
                .rejected
                .get_or_create(&vec![("reason", tidemark_store::readings::CONFLICT)])
                .inc_by(outcome.conflicts);
            tracing::warn!(
                stage = "ingest",
                readings = outcome.conflicts,
                "readings conflict with stored values of the same sensor and time"
            );
        }
        let mut last = None;
        for refusal in rows.refusals {
            self.metrics
                .rejected
                .get_or_create(&vec![("reason", refusal.reason_code)])
                .inc();
            if last == Some(refusal.message) {
                continue;
            }
            last = Some(refusal.message);
            let message = &rows.messages[refusal.message as usize];
            tracing::warn!(
                stage = "ingest",
                device = message.device.unwrap_or("-"),
                topic = %message.topic.escape_debug(),
                reason = %refusal.reason,
                "rejected payload"
            );
        }
    }

    pub(crate) async fn acknowledge(&self, messages: Vec<Ack>) {
        match &self.acks {
            Acknowledger::Mqtt {
                queue, connection, ..
            } => {
                let generation = connection.0.read().unwrap_or_else(|e| e.into_inner());
                // A message from an earlier connection will be (or has been) redelivered with the
                // same packet id; acking the old copy could acknowledge another message. The read
                // lock is held while queuing, so the generation cannot move meanwhile.
                queue.push(messages.into_iter().filter_map(|message| match message {
                    Ack::Mqtt {
                        pkid,
                        qos,
                        connection: arrived_on,
                    } if arrived_on == *generation && qos != QoS::AtMostOnce => Some((pkid, qos)),
                    _ => None,
                }));
            }
            Acknowledger::Nats { client, in_hand } => {
                for message in messages {
                    let Ack::Nats { reply } = message else {
                        continue;
                    };
                    in_hand.remove(&reply);
                    // An acknowledgement that is lost (the connection drops before it leaves)
                    // only means a redelivery after the ack wait, which the unique key absorbs.
                    if let Err(error) = client.publish(reply, Bytes::new()).await {
                        tracing::warn!(%error, "cannot send a JetStream acknowledgement");
                    }
                }
            }
        }
    }
}

/// Where acknowledgements go.
#[derive(Clone)]
pub(crate) enum Acknowledger {
    /// To the MQTT session, which writes them on the connection each message arrived on. The
    /// client is for the disconnect at the end.
    Mqtt {
        client: rumqttc::AsyncClient,
        queue: Arc<AckQueue>,
        connection: Arc<Generation>,
    },
    /// To JetStream, on the NATS connection; an acknowledged message is no longer in hand.
    Nats {
        client: async_nats::Client,
        in_hand: Arc<super::nats::InHand>,
    },
}

/// Runs `commit` on up to `at_once` items at a time, each as a task of its own, and hands each
/// committed item to `settle` in the order the items came: an item whose commit finished early
/// waits for those before it. The first item that did not commit (`commit` returned `None`, or its
/// task failed) ends it: neither it nor any later item is settled.
pub(crate) async fn in_order<T, C, CF, S, SF>(
    mut items: mpsc::Receiver<T>,
    at_once: usize,
    commit: C,
    mut settle: S,
) where
    T: Send + 'static,
    C: Fn(T) -> CF,
    CF: Future<Output = Option<T>> + Send + 'static,
    S: FnMut(T) -> SF,
    SF: Future<Output = ()>,
{
    // The items committing, oldest first.
    let mut committing: VecDeque<AbortOnDrop<Option<T>>> = VecDeque::new();
    loop {
        let room = committing.len() < at_once.max(1);
        let oldest = async {
            match committing.front_mut() {
                Some(task) => (&mut task.0).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            done = oldest => {
                committing.pop_front();
                let Ok(Some(item)) = done else { return };
                settle(item).await;
            }
            item = items.recv(), if room => {
                let Some(item) = item else { break };
                committing.push_back(AbortOnDrop(tokio::spawn(commit(item))));
            }
        }
    }
    // No more items: those still committing finish, in order.
    while let Some(mut task) = committing.pop_front() {
        match (&mut task.0).await {
            Ok(Some(item)) => settle(item).await,
            _ => return,
        }
    }
}

/// How one write of part of a batch ended.
pub(crate) enum Attempt {
    Committed(WriteOutcome),
    /// The database refused it for good: writing it again cannot succeed.
    Refused(tidemark_store::Error),
    /// Shut down before it could commit.
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::in_order;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio::sync::{mpsc, oneshot};

    /// Items whose commits the test finishes by hand: `finish(n, committed)`.
    #[derive(Clone, Default)]
    struct Commits {
        waiting: Arc<Mutex<HashMap<u32, oneshot::Sender<bool>>>>,
    }

    impl Commits {
        fn started(&self) -> Vec<u32> {
            let mut started: Vec<u32> = self.waiting.lock().unwrap().keys().copied().collect();
            started.sort_unstable();
            started
        }

        fn finish(&self, item: u32, committed: bool) {
            let sender = self.waiting.lock().unwrap().remove(&item).unwrap();
            sender.send(committed).unwrap();
        }
    }

    async fn settle_a_moment() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    /// Waits for `in_order` to end, which it must do by itself.
    async fn ended(run: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(std::time::Duration::from_secs(5), run)
            .await
            .expect("in_order ended")
            .unwrap();
    }

    /// Starts `in_order` over items 1..=count, two at a time; returns what was settled.
    fn start(count: u32) -> (Commits, Arc<Mutex<Vec<u32>>>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16);
        for item in 1..=count {
            tx.try_send(item).unwrap();
        }
        drop(tx);
        let commits = Commits::default();
        let settled = Arc::new(Mutex::new(Vec::new()));
        let run = tokio::spawn({
            let (commits, settled) = (commits.clone(), settled.clone());
            in_order(
                rx,
                2,
                move |item| {
                    let (done_tx, done_rx) = oneshot::channel();
                    commits.waiting.lock().unwrap().insert(item, done_tx);
                    async move { done_rx.await.unwrap_or(false).then_some(item) }
                },
                move |item| {
                    settled.lock().unwrap().push(item);
                    std::future::ready(())
                },
            )
        });
        (commits, settled, run)
    }

    #[tokio::test]
    async fn a_later_commit_waits_for_the_ones_before_it() {
        let (commits, settled, run) = start(3);
        settle_a_moment().await;
        // Two at a time: the third has not started.
        assert_eq!(commits.started(), vec![1, 2]);
        commits.finish(2, true);
        settle_a_moment().await;
        assert!(settled.lock().unwrap().is_empty(), "2 settled before 1");
        assert_eq!(commits.started(), vec![1]);
        commits.finish(1, true);
        settle_a_moment().await;
        assert_eq!(*settled.lock().unwrap(), vec![1, 2]);
        assert_eq!(commits.started(), vec![3]);
        commits.finish(3, true);
        ended(run).await;
        assert_eq!(*settled.lock().unwrap(), vec![1, 2, 3]);
    }

    /// Whether `wait` is still waiting after a moment.
    async fn still_waiting(turn: &mut super::Turn) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(100), turn.wait())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn each_turn_comes_once_the_batch_before_has_finished() {
        let order = super::CommitOrder::default();
        let (mut first, first_done) = order.next();
        let (mut second, second_done) = order.next();
        let (mut third, _third_done) = order.next();
        assert!(
            !still_waiting(&mut first).await,
            "the first batch waits for none"
        );
        assert!(still_waiting(&mut second).await);
        assert!(still_waiting(&mut third).await);
        drop(first_done);
        assert!(
            !still_waiting(&mut second).await,
            "its turn after the first"
        );
        assert!(
            still_waiting(&mut third).await,
            "not before the second's end"
        );
        drop(second_done);
        assert!(!still_waiting(&mut third).await);
    }

    #[tokio::test]
    async fn a_turn_is_waited_for_at_most_turn_wait_and_once() {
        let order = super::CommitOrder::default();
        let (_first, _first_done) = order.next();
        let (mut second, _second_done) = order.next();
        let started = std::time::Instant::now();
        tokio::time::timeout(super::TURN_WAIT * 5, second.wait())
            .await
            .expect("the wait ends although the batch before has not");
        assert!(started.elapsed() >= super::TURN_WAIT, "it waited its while");
        assert!(
            !still_waiting(&mut second).await,
            "a retry does not wait again"
        );
    }

    #[tokio::test]
    async fn nothing_after_an_item_that_did_not_commit_is_settled() {
        let (commits, settled, run) = start(3);
        settle_a_moment().await;
        commits.finish(2, true);
        commits.finish(1, false);
        ended(run).await;
        assert!(settled.lock().unwrap().is_empty());
        assert!(commits.started().is_empty(), "no later item started");
    }
}
