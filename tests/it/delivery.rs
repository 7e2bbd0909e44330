//! Warning delivery against the real database, a private Mosquitto and real HTTP receivers:
//! signed webhooks with retries and dead letters, Server-Sent Events with resumption, retained
//! MQTT alerts, CAP 1.2 and the Atom feed, acknowledgement and the API keys that guard it.

use crate::support::*;
use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, TimeZone, Utc};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark::config::Config;
use tidemark_delivery::webhook::{verify, VerifyError};
use tidemark_delivery::{mqtt::AlertPublisher, Dispatcher, Metrics};
use tidemark_store::flood::NewEvent;
use tidemark_store::keys::Role;
use tidemark_testkit::peers::{MqttSubscriber, SseClient, WebhookReceiver};

const AREA: &str = "flensburg-fjord";
/// Aabenraa, which the Flensburg area's warnings go to.
const AABENRAA: &str = "0580";
const AARHUS: &str = "0751";

static ALERT_CLIENTS: AtomicU32 = AtomicU32::new(0);

fn dispatcher(harness: &Harness, config: &Config, api: &Api) -> (Dispatcher, Arc<Metrics>) {
    dispatcher_to(&harness.broker_config(), harness, config, api)
}

/// A dispatcher whose MQTT alerts go to `broker`.
fn dispatcher_to(
    broker: &tidemark_model::broker::BrokerConfig,
    harness: &Harness,
    config: &Config,
    api: &Api,
) -> (Dispatcher, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    let alerts = AlertPublisher::start(
        broker,
        &format!("alerts-{}", ALERT_CLIENTS.fetch_add(1, Ordering::SeqCst)),
        Duration::from_secs(5),
        api.shutdown.clone(),
    );
    let dispatcher = Dispatcher::new(
        harness.store.clone(),
        config.delivery.clone(),
        alerts,
        "tidemark/v1",
        &api.base,
        metrics.clone(),
    )
    .unwrap();
    (dispatcher, metrics)
}

/// Records one event on the Flensburg area as analytics would, with MQTT deliveries if asked.
async fn record(harness: &Harness, kind: &'static str, severity: Option<i16>, mqtt: bool) -> i64 {
    let deliveries = if mqtt {
        vec![format!("tidemark/v1/alerts/{AABENRAA}/{AREA}")]
    } else {
        Vec::new()
    };
    let event = NewEvent {
        kind: tidemark_model::warning::EventKind::parse(kind).unwrap(),
        severity: severity.and_then(tidemark_model::warning::Severity::from_level),
        warning_kind: tidemark_model::warning::WarningKind::Observed,
        at: Utc::now(),
        message_en: format!("Flensburg {kind} at severity {severity:?}."),
        message_da: format!("Flensborg {kind} på niveau {severity:?}."),
        trigger: serde_json::json!({ "sensor": "flensburg.sea_level", "value": 1.8 }),
    };
    harness
        .store
        .record_area_events(AREA, &[AABENRAA.to_owned()], &[event], &deliveries, &[])
        .await
        .unwrap()[0]
}

/// A second from now, to the microsecond (what PostgreSQL keeps): an instant for the dispatcher's
/// clock at which everything queued so far is due.
fn soon() -> DateTime<Utc> {
    (Utc::now() + ChronoDuration::seconds(1)).trunc_subsecs(6)
}

/// A delivery counter's value for the webhook channel.
fn webhook_count(
    family: &prometheus_client::metrics::family::Family<
        Vec<(&'static str, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
) -> u64 {
    family
        .get_or_create(&vec![("channel", "webhook".to_owned())])
        .get()
}

/// The warning an event belongs to.
async fn warning_of(harness: &Harness, event: i64) -> i64 {
    harness
        .store
        .warning_event(event)
        .await
        .unwrap()
        .expect("the event exists")
        .warning_id
}

/// Waits until every MQTT delivery is confirmed, then subscribes to `topic` as `client` and returns
/// the message the broker retained there.
async fn retained_once_delivered(
    harness: &Harness,
    client: &str,
    topic: &str,
) -> serde_json::Value {
    let delivered = wait_for(Duration::from_secs(30), || async {
        let rows = harness.store.outbox("mqtt").await.unwrap();
        !rows.is_empty() && rows.iter().all(|row| row.delivered_at.is_some())
    })
    .await;
    assert!(delivered, "every MQTT delivery confirmed");
    let mut subscriber = MqttSubscriber::start(&harness.broker_config(), client, topic)
        .await
        .unwrap();
    let (_, state, retained) = subscriber.next(Duration::from_secs(10)).await.unwrap();
    assert!(retained, "{topic} holds a retained message");
    state
}

fn secs(seconds: f64) -> ChronoDuration {
    ChronoDuration::milliseconds((seconds * 1000.0) as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_on_schedule_with_one_id_until_it_succeeds() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let key = api.key(Role::Municipality, Some(AABENRAA)).await;
    let (_, secret) = api.register(&key, &receiver.url, 1).await;
    let event = record(&harness, "raised", Some(1), false).await;
    let (dispatcher, metrics) = dispatcher(&harness, &config, &api);
    receiver.script(&[500, 500, 500, 200]);

    // A controllable clock: each round runs at an instant the test chooses.
    let mut now: DateTime<Utc> = soon();
    let row = |rows: Vec<tidemark_store::outbox::OutboxRow>| rows.into_iter().next().unwrap();
    for (failed, step) in [(1, 2.0), (2, 4.0), (3, 8.0)] {
        assert_eq!(dispatcher.run_once(now).await.unwrap(), 1);
        let outbox = row(harness.store.outbox("webhook").await.unwrap());
        assert_eq!(outbox.attempts, failed);
        assert!(outbox.delivered_at.is_none());
        let wait = outbox.next_attempt_at - now;
        assert!(
            wait >= secs(step / 2.0) && wait <= secs(step),
            "attempt {failed}: retry after {wait}, expected between {} and {step} s",
            step / 2.0
        );
        // Nothing is due just before the retry.
        assert_eq!(
            dispatcher
                .run_once(outbox.next_attempt_at - secs(0.001))
                .await
                .unwrap(),
            0
        );
        now = outbox.next_attempt_at;
    }
    assert_eq!(dispatcher.run_once(now).await.unwrap(), 1);
    let outbox = row(harness.store.outbox("webhook").await.unwrap());
    assert_eq!(outbox.delivered_at, Some(now));
    assert_eq!(dispatcher.run_once(now + secs(3600.0)).await.unwrap(), 0);

    let attempts = harness.store.attempts(outbox.id).await.unwrap();
    let statuses: Vec<Option<i32>> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(500), Some(200)]);
    assert_eq!(attempts.iter().filter(|a| a.ok).count(), 1, "one success");
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 4);
    for delivery in &deliveries {
        assert_eq!(
            delivery.id,
            format!("evt_{event}"),
            "the same id every time"
        );
        assert_eq!(
            delivery.body, deliveries[0].body,
            "the same body every time"
        );
        let at = DateTime::from_timestamp(delivery.timestamp.parse().unwrap(), 0).unwrap();
        verify(
            &secret,
            &delivery.id,
            &delivery.timestamp,
            &delivery.signature,
            &delivery.body,
            at,
            Duration::from_secs(300),
        )
        .expect("signed with the endpoint's secret");
    }
    let body = deliveries[0].json();
    assert_eq!(body["type"], "warning.raised");
    assert_eq!(body["id"], event);
    assert_eq!(body["area"]["key"], AREA);
    assert_eq!(webhook_count(&metrics.failed_attempts), 3);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_fail_for_a_tampered_body_a_stale_timestamp_and_a_rotated_secret() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let key = api.key(Role::Municipality, Some(AABENRAA)).await;
    let (hook, old_secret) = api.register(&key, &receiver.url, 1).await;
    record(&harness, "raised", Some(2), false).await;
    let (dispatcher, _) = dispatcher(&harness, &config, &api);
    let now = soon();
    dispatcher.run_once(now).await.unwrap();
    let delivery = receiver.deliveries().pop().expect("delivered");
    let tolerance = Duration::from_secs(300);
    let check = |secret: &str, body: &[u8], at: DateTime<Utc>| {
        verify(
            secret,
            &delivery.id,
            &delivery.timestamp,
            &delivery.signature,
            body,
            at,
            tolerance,
        )
    };
    assert_eq!(check(&old_secret, &delivery.body, now), Ok(()));
    let mut tampered = delivery.body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    assert_eq!(
        check(&old_secret, &tampered, now),
        Err(VerifyError::NoMatch)
    );
    assert_eq!(
        check(
            &old_secret,
            &delivery.body,
            now + ChronoDuration::minutes(6)
        ),
        Err(VerifyError::OutsideTolerance),
        "a replay six minutes later is stale"
    );

    // Rotation: the new secret is shown once; both sign until the grace period ends.
    let (status, rotated) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/webhooks/{hook}/rotate-secret"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    let (_, listed) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/webhooks/{hook}"),
            Some(&key),
            None,
        )
        .await;
    assert!(
        listed.get("secret").is_none(),
        "secrets are shown only once: {listed}"
    );
    record(&harness, "changed", Some(3), false).await;
    let later = soon();
    dispatcher.run_once(later).await.unwrap();
    let second = receiver.deliveries().pop().unwrap();
    for secret in [&old_secret, &new_secret] {
        assert_eq!(
            verify(
                secret,
                &second.id,
                &second.timestamp,
                &second.signature,
                &second.body,
                later,
                tolerance
            ),
            Ok(())
        );
    }
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_between_send_and_record_resends_with_the_same_id() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let key = api.key(Role::Municipality, Some(AABENRAA)).await;
    api.register(&key, &receiver.url, 1).await;
    let event = record(&harness, "raised", Some(1), false).await;
    let t0 = soon();

    // The receiver has the request; the dispatcher dies before it hears the answer.
    receiver.hold(true);
    let (first, _) = dispatcher(&harness, &config, &api);
    let running = tokio::spawn(async move { first.run_once(t0).await });
    assert!(receiver.wait_for(1, Duration::from_secs(10)).await);
    running.abort();
    let _ = running.await;
    receiver.hold(false);
    receiver.release();
    let outbox = harness.store.outbox("webhook").await.unwrap().remove(0);
    assert!(outbox.delivered_at.is_none(), "nothing was recorded");
    assert!(harness.store.attempts(outbox.id).await.unwrap().is_empty());

    // Restarted: the row stays with the dead dispatcher until its lease ends, then is resent.
    let (second, _) = dispatcher(&harness, &config, &api);
    assert_eq!(second.run_once(t0 + secs(30.0)).await.unwrap(), 0, "leased");
    let after_lease = t0 + secs(61.0);
    assert_eq!(second.run_once(after_lease).await.unwrap(), 1);
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0].id, format!("evt_{event}"));
    assert_eq!(
        deliveries[1].id, deliveries[0].id,
        "the resend carries the same id"
    );
    assert_eq!(deliveries[1].body, deliveries[0].body);
    let outbox = harness.store.outbox("webhook").await.unwrap().remove(0);
    assert_eq!(outbox.delivered_at, Some(after_lease));
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_failing_past_the_horizon_is_dead_lettered_with_an_operator_alert() {
    let harness = Harness::start().await;
    let mut config = config(&harness);
    config.delivery.horizon = Duration::from_secs(1);
    let api = Api::start(&harness, &config).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let key = api.key(Role::Operator, None).await;
    api.register(&key, &receiver.url, 1).await;
    let event = record(&harness, "raised", Some(1), false).await;
    let (dispatcher, metrics) = dispatcher(&harness, &config, &api);
    receiver.script(&[503]);
    let now = soon();
    assert_eq!(dispatcher.run_once(now).await.unwrap(), 1);
    let outbox = harness.store.outbox("webhook").await.unwrap().remove(0);
    assert_eq!(
        outbox.dead_at,
        Some(now),
        "the next try would fall past the horizon"
    );
    assert_eq!(
        outbox.last_error.as_deref(),
        Some("the endpoint answered 503 Service Unavailable")
    );
    assert_eq!(webhook_count(&metrics.dead_letters), 1);
    let warning = warning_of(&harness, event).await;
    let undelivered: Vec<_> = harness
        .store
        .warning_history(warning)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "undelivered")
        .collect();
    assert_eq!(undelivered.len(), 1);
    assert_eq!(undelivered[0].detail["undelivered_event"], event);
    assert_eq!(
        dispatcher.run_once(now + secs(3600.0)).await.unwrap(),
        0,
        "never retried"
    );
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_the_outbox_and_deliver_each_row_once() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let key = api.key(Role::Operator, None).await;
    api.register(&key, &receiver.url, 1).await;
    let mut events = Vec::new();
    for round in 0..20 {
        let kind = if round % 2 == 0 { "raised" } else { "lifted" };
        events.push(record(&harness, kind, (round % 2 == 0).then_some(1), false).await);
    }
    let now = soon();
    let (first, _) = dispatcher(&harness, &config, &api);
    let (second, _) = dispatcher(&harness, &config, &api);
    let (a, b) = tokio::join!(first.run_once(now), second.run_once(now));
    assert_eq!(
        a.unwrap() + b.unwrap(),
        20,
        "every row claimed exactly once"
    );
    let mut ids: Vec<i64> = receiver
        .deliveries()
        .iter()
        .map(|d| d.json()["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, events);
    harness.finish().await;
}

/// Two dispatchers on the wall clock, a short lease and a receiver slow enough that one round over
/// all the rows would outlive its lease: a round gives back what it cannot send within its lease,
/// so no row is ever sent twice, and every request is signed as it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_never_outlives_its_lease_and_signs_each_request_as_it_goes() {
    let harness = Harness::start().await;
    let mut config = config(&harness);
    config.delivery.timeout = Duration::from_secs(1);
    config.delivery.lease = Duration::from_secs(3);
    let api = Api::start(&harness, &config).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    receiver.slow(Duration::from_millis(600));
    let key = api.key(Role::Operator, None).await;
    api.register(&key, &receiver.url, 1).await;
    let mut events = Vec::new();
    for round in 0..12 {
        let kind = if round % 2 == 0 { "raised" } else { "lifted" };
        events.push(record(&harness, kind, (round % 2 == 0).then_some(1), false).await);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut running = Vec::new();
    let mut all_metrics = Vec::new();
    for _ in 0..2 {
        let (dispatcher, metrics) = dispatcher(&harness, &config, &api);
        all_metrics.push(metrics);
        let stop = stop.clone();
        running.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                dispatcher.run_once(Utc::now()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let delivered = wait_for(Duration::from_secs(60), || async {
        harness
            .store
            .outbox("webhook")
            .await
            .unwrap()
            .iter()
            .all(|row| row.delivered_at.is_some())
    })
    .await;
    stop.cancel();
    for task in running {
        task.await.unwrap();
    }
    assert!(delivered, "every row is delivered");
    let deliveries = receiver.deliveries();
    let mut ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    let mut expected: Vec<String> = events.iter().map(|e| format!("evt_{e}")).collect();
    expected.sort();
    let failed: u64 = all_metrics
        .iter()
        .map(|m| webhook_count(&m.failed_attempts))
        .sum();
    let lost: u64 = all_metrics.iter().map(|m| m.lost_claims.get()).sum();
    let spans: Vec<(String, u128, Option<u128>)> = deliveries
        .iter()
        .map(|d| {
            (
                d.id.clone(),
                d.arrived.duration_since(deliveries[0].arrived).as_millis(),
                d.answered
                    .map(|a| a.duration_since(deliveries[0].arrived).as_millis()),
            )
        })
        .collect();
    assert_eq!(
        ids, expected,
        "each row sent once ({failed} failed, {lost} lost claims): {spans:?}"
    );
    for d in &deliveries {
        let age = d.arrived_unix - d.timestamp.parse::<i64>().unwrap();
        assert!(
            (0..=2).contains(&age),
            "{} arrived {age} s after its signature's timestamp",
            d.id
        );
    }
    assert_eq!(lost, 0, "no attempt outlived its claim");
    harness.finish().await;
}

/// An attempt is recorded only while its claim holds: once another dispatcher has claimed the row
/// after the lease ended, the first one's outcome is refused and the second one's stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_is_recorded_only_under_the_claim_that_made_it() {
    use tidemark_store::outbox::{Attempt, AttemptNext};
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let key = api.key(Role::Operator, None).await;
    api.register(&key, &receiver.url, 1).await;
    record(&harness, "raised", Some(1), false).await;
    let t0 = soon();
    let lease = Duration::from_secs(60);
    let first = harness.store.claim_deliveries(t0, lease, 10).await.unwrap();
    let second = harness
        .store
        .claim_deliveries(t0 + secs(61.0), lease, 10)
        .await
        .unwrap();
    assert_eq!(
        (first.len(), second.len()),
        (1, 1),
        "claimed again after the lease"
    );
    let outcome = |claim: &tidemark_store::outbox::Claimed, at| Attempt {
        outbox_id: claim.outbox_id,
        attempt: claim.attempt,
        started_at: at,
        latency: Duration::from_millis(5),
        status: Some(200),
        error: None,
        next: AttemptNext::Delivered(at),
    };
    let stale = harness
        .store
        .record_attempt(&outcome(&first[0], t0))
        .await
        .unwrap();
    assert!(!stale, "the first claim was taken over");
    let current = harness
        .store
        .record_attempt(&outcome(&second[0], t0 + secs(62.0)))
        .await
        .unwrap();
    assert!(current);
    let row = harness.store.outbox("webhook").await.unwrap().remove(0);
    assert_eq!(row.delivered_at, Some(t0 + secs(62.0)));
    assert_eq!(harness.store.attempts(row.id).await.unwrap().len(), 1);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_and_internal_addresses_are_refused() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let key = api.key(Role::Utility, None).await;
    let (hook, _) = api.register(&key, &receiver.url, 1).await;
    let event = record(&harness, "raised", Some(1), false).await;
    let (dispatcher, metrics) = dispatcher(&harness, &config, &api);
    receiver.script(&[410]);
    let now = soon();
    dispatcher.run_once(now).await.unwrap();
    let (_, shown) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/webhooks/{hook}"),
            Some(&key),
            None,
        )
        .await;
    assert!(shown["disabled_at"].is_string(), "{shown}");
    let outbox = harness.store.outbox("webhook").await.unwrap().remove(0);
    assert_eq!(outbox.dead_at, Some(now));
    assert_eq!(webhook_count(&metrics.dead_letters), 1);
    let warning = warning_of(&harness, event).await;
    let history = harness.store.warning_history(warning).await.unwrap();
    assert!(
        history.iter().any(|e| e.kind == "undelivered"),
        "the operator alert is an event on the warning"
    );
    // A disabled endpoint gets nothing more.
    record(&harness, "changed", Some(2), false).await;
    dispatcher.run_once(soon()).await.unwrap();
    assert_eq!(receiver.deliveries().len(), 1);

    // Loopback is allowed by this test's configuration; metadata and private networks are not,
    // and the refusal comes before any connection (these addresses are never contacted).
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/hook",
        "http://[fd00::1]/hook",
        "http://192.168.1.10:8080/hook",
        "file:///etc/passwd",
    ] {
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                "/api/v1/webhooks",
                Some(&key),
                Some(serde_json::json!({ "url": url })),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["parameter"], "url", "{body}");
    }
    harness.finish().await;
}

/// The address guard holds where it matters: a redirect is never followed (even to an allowed
/// address), and a host name is checked by what it resolves to, at registration and again at
/// every delivery: `localhost` resolves to loopback, which this dispatcher does not allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_host_names_are_checked_by_their_addresses() {
    use tidemark_model::network::{TargetError, TargetPolicy};
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let key = api.key(Role::Operator, None).await;
    // A receiver that redirects to another; loopback is allowed here, so only the redirect rule
    // keeps the second one out.
    let target = WebhookReceiver::start().await.unwrap();
    let redirecting = WebhookReceiver::start().await.unwrap();
    redirecting.redirect_to(&target.url);
    api.register(&key, &redirecting.url, 1).await;
    record(&harness, "raised", Some(1), false).await;
    let (dispatcher, metrics) = dispatcher(&harness, &config, &api);
    dispatcher.run_once(soon()).await.unwrap();
    assert_eq!(redirecting.deliveries().len(), 1);
    assert!(
        target.deliveries().is_empty(),
        "the redirect was not followed"
    );
    assert_eq!(webhook_count(&metrics.failed_attempts), 1);
    let row = harness.store.outbox("webhook").await.unwrap().remove(0);
    assert!(
        row.last_error.as_deref().unwrap_or("").contains("307"),
        "{:?}",
        row.last_error
    );

    // A policy without loopback: `localhost` is refused by its resolved address at registration,
    // and the deliveries' client (the dispatcher's, with its guarded resolver) never connects to it.
    let strict = std::sync::Arc::new(TargetPolicy::default());
    let listener = WebhookReceiver::start().await.unwrap();
    let port = listener
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/hook");
    let by_name = format!("http://localhost:{port}/hook");
    match tidemark_api::webhooks::check_registration(&strict, &by_name).await {
        Err(TargetError::Internal(ip)) => assert!(ip.is_loopback(), "{ip}"),
        other => panic!("localhost accepted: {other:?}"),
    }
    let client = tidemark_delivery::webhook::client(strict, Duration::from_secs(2)).unwrap();
    let refused = client.post(&by_name).body("{}").send().await;
    assert!(
        refused.is_err(),
        "the guarded client connected: {refused:?}"
    );
    assert!(
        listener.deliveries().is_empty(),
        "nothing reached the receiver"
    );
    harness.finish().await;
}

/// Event streams are capped per client address and in all: past the client's cap a 429, past the
/// server's a 503, each with `Retry-After`; a closed stream gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_client_and_in_all() {
    let harness = Harness::start().await;
    let mut settings = config(&harness);
    settings.api.sse_max_streams_per_client = 2;
    settings.api.sse_max_streams = 3;
    settings.api.trusted_proxies = vec!["127.0.0.1".into()];
    let api = Api::start(&harness, &settings).await;
    let open = |from: &'static str| {
        api.http
            .get(api.url("/api/v1/warnings/stream"))
            .header("x-forwarded-for", from)
            .send()
    };
    let first = open("198.51.100.1").await.unwrap();
    let second = open("198.51.100.1").await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open("198.51.100.1").await.unwrap();
    assert_eq!(third.status().as_u16(), 429);
    assert!(third.headers().contains_key("retry-after"));
    assert_eq!(third.headers()["content-type"], "application/problem+json");
    // Another client has places of its own, until the server is full.
    let other = open("198.51.100.2").await.unwrap();
    assert_eq!(other.status().as_u16(), 200);
    let full = open("198.51.100.3").await.unwrap();
    assert_eq!(full.status().as_u16(), 503);
    assert!(full.headers().contains_key("retry-after"));
    assert_eq!(api.state.streams.open(), 3);
    // A stream that closes gives its place back.
    drop(first);
    let freed = wait_for(Duration::from_secs(10), || async {
        api.state.streams.open() == 2
    })
    .await;
    assert!(freed, "{} open", api.state.streams.open());
    let again = open("198.51.100.1").await.unwrap();
    assert_eq!(again.status().as_u16(), 200);
    drop((second, other, again));
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_resumes_from_last_event_id_with_exactly_what_it_missed() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let stream = api.url("/api/v1/warnings/stream");
    let mut client = SseClient::connect(&api.http, &stream, None).await.unwrap();
    let raised = record(&harness, "raised", Some(1), false).await;
    let first = client
        .next(Duration::from_secs(10))
        .await
        .expect("live event");
    assert_eq!(first.id, Some(raised.to_string()));
    assert_eq!(first.event.as_deref(), Some("warning.raised"));
    drop(client);

    let missed = [
        record(&harness, "changed", Some(2), false).await,
        record(&harness, "changed", Some(3), false).await,
        record(&harness, "lifted", None, false).await,
    ];
    let mut client = SseClient::connect(&api.http, &stream, Some(&raised.to_string()))
        .await
        .unwrap();
    for id in missed {
        let event = client
            .next(Duration::from_secs(10))
            .await
            .expect("caught up");
        assert_eq!(event.id, Some(id.to_string()));
    }
    // Then live events follow, and nothing else came in between.
    let next = record(&harness, "raised", Some(1), false).await;
    let event = client
        .next(Duration::from_secs(10))
        .await
        .expect("live again");
    assert_eq!(event.id, Some(next.to_string()));
    let body: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(body["severity_name"], "Flood Alert");

    // Heartbeats keep an idle stream alive (every second in these tests).
    let mut idle = api.http.get(&stream).send().await.unwrap();
    let mut text = String::new();
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(chunk)) = idle.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(":heartbeat") || text.contains(": heartbeat") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(heard, Ok(true), "{text:?}");

    // Filters and bad resumption points.
    let mut aarhus = SseClient::connect(
        &api.http,
        &format!("{stream}?municipality={AARHUS}&last_event_id=0"),
        None,
    )
    .await
    .unwrap();
    assert!(
        aarhus.next(Duration::from_millis(1500)).await.is_none(),
        "no Aarhus events"
    );
    let (status, _, _) = api.text("/api/v1/warnings/stream?min_severity=9").await;
    assert_eq!(status, 400);
    let response = api
        .http
        .get(&stream)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // Clients that go away leave nothing behind, even while no event comes to notice it.
    drop((client, aarhus, idle));
    let released = wait_for(Duration::from_secs(10), || async {
        api.state.hub.clients() == 0
    })
    .await;
    assert!(released, "{} followers left", api.state.hub.clients());
    harness.finish().await;
}

/// `tidemark api` as a process of its own on a free port, against the harness's database and broker.
async fn api_process(harness: &Harness) -> (tokio::process::Child, String) {
    let port = tidemark_testkit::free_port().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("api")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("TIDEMARK_ENV")
        .env_remove("TIDEMARK_CONFIG")
        .env(
            "TIDEMARK__DATABASE__URL",
            &harness.settings(Default::default()).database.url,
        )
        .env("TIDEMARK__MQTT__PORT", harness.broker.port.to_string())
        .env("TIDEMARK__API__LISTEN", format!("127.0.0.1:{port}"))
        .env("TIDEMARK__API__SSE_HEARTBEAT", "1s")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let up = wait_for(Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(up, "tidemark api serves on {base}");
    (child, base)
}

/// Two API processes behind one name: a Server-Sent Events client whose process dies moves to the
/// other with its `Last-Event-ID` and gets every event it missed, in order, then the live ones.
/// Each process follows the events from the database, not from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_moves_to_another_api_process_without_a_gap() {
    let harness = Harness::start().await;
    let config = config(&harness);
    tidemark::app::load_flood(&config).await.unwrap();
    let (mut first, first_base) = api_process(&harness).await;
    let (_second, second_base) = api_process(&harness).await;
    let http = reqwest::Client::new();
    let stream = "/api/v1/warnings/stream";
    let mut client = SseClient::connect(&http, &format!("{first_base}{stream}"), None)
        .await
        .unwrap();
    let raised = record(&harness, "raised", Some(1), false).await;
    let seen = client
        .next(Duration::from_secs(10))
        .await
        .expect("live event");
    assert_eq!(seen.id, Some(raised.to_string()));

    // The first process dies; what happens meanwhile waits in the database.
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let missed = [
        record(&harness, "changed", Some(2), false).await,
        record(&harness, "changed", Some(3), false).await,
    ];
    assert!(
        client.next(Duration::from_secs(3)).await.is_none(),
        "nothing more from a dead process"
    );
    let mut client = SseClient::connect(
        &http,
        &format!("{second_base}{stream}"),
        Some(&raised.to_string()),
    )
    .await
    .unwrap();
    for id in missed {
        let event = client
            .next(Duration::from_secs(10))
            .await
            .expect("caught up from the other process");
        assert_eq!(event.id, Some(id.to_string()));
    }
    let lifted = record(&harness, "lifted", None, false).await;
    let event = client.next(Duration::from_secs(10)).await.expect("live");
    assert_eq!(event.id, Some(lifted.to_string()));
    assert_eq!(event.event.as_deref(), Some("warning.lifted"));
    drop(client);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_mqtt_subscriber_gets_the_retained_state_and_the_lift_survives_a_broker_restart() {
    let mut harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let (dispatcher, _) = dispatcher(&harness, &config, &api);
    let shutdown = api.shutdown.clone();
    let database = config.database.clone();
    tokio::spawn(async move { dispatcher.run(&database, shutdown).await });
    let raised = record(&harness, "raised", Some(2), true).await;
    let delivered = wait_for(Duration::from_secs(20), || async {
        harness.store.outbox("mqtt").await.unwrap()[0]
            .delivered_at
            .is_some()
    })
    .await;
    assert!(delivered);

    let topic = format!("tidemark/v1/alerts/{AABENRAA}/{AREA}");
    let mut late = MqttSubscriber::start(
        &harness.broker_config(),
        "late-siren",
        "tidemark/v1/alerts/#",
    )
    .await
    .unwrap();
    let (got_topic, state, retained) = late.next(Duration::from_secs(10)).await.expect("retained");
    assert_eq!(got_topic, topic);
    assert!(
        retained,
        "a subscriber that connects later gets the current state at once"
    );
    assert_eq!(state["id"], raised);
    assert_eq!(state["in_force"], true);
    assert_eq!(state["severity_name"], "Flood Warning");

    assert_eq!(
        late.next(Duration::from_millis(500)).await,
        None,
        "one retained message, nothing else"
    );

    // The broker restarts (killed); the publisher reconnects and the lift still gets through.
    drop(late);
    harness.broker.restart().await.unwrap();
    record(&harness, "lifted", None, true).await;
    let state = retained_once_delivered(&harness, "later-sign", &topic).await;
    assert_eq!(
        state["in_force"], false,
        "the lift is delivered after the broker restart"
    );
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_retained_on_the_mqtt_listener_of_nats_as_on_mosquitto() {
    let nats = tidemark_testkit::Nats::start().await.unwrap();
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let (dispatcher, _) = dispatcher_to(&nats.mqtt(0), &harness, &config, &api);
    let shutdown = api.shutdown.clone();
    let database = config.database.clone();
    tokio::spawn(async move { dispatcher.run(&database, shutdown).await });
    let topic = format!("tidemark/v1/alerts/{AABENRAA}/{AREA}");
    let raised = record(&harness, "raised", Some(2), true).await;
    let delivered = wait_for(Duration::from_secs(30), || async {
        harness.store.outbox("mqtt").await.unwrap()[0]
            .delivered_at
            .is_some()
    })
    .await;
    assert!(delivered, "nats acknowledged the alert");
    let mut late = MqttSubscriber::start(&nats.mqtt(0), "late-siren", "tidemark/v1/alerts/#")
        .await
        .unwrap();
    let (got_topic, state, retained) = late.next(Duration::from_secs(10)).await.expect("retained");
    assert_eq!(got_topic, topic);
    assert!(retained, "a later subscriber gets the state at once");
    assert_eq!(state["id"], raised);
    assert_eq!(state["in_force"], true);
    drop(late);

    record(&harness, "lifted", None, true).await;
    let all_delivered = wait_for(Duration::from_secs(30), || async {
        let rows = harness.store.outbox("mqtt").await.unwrap();
        rows.len() == 2 && rows.iter().all(|row| row.delivered_at.is_some())
    })
    .await;
    assert!(all_delivered);
    let mut later = MqttSubscriber::start(&nats.mqtt(0), "later-sign", &topic)
        .await
        .unwrap();
    let (_, state, retained) = later.next(Duration::from_secs(10)).await.expect("retained");
    assert!(retained);
    assert_eq!(state["in_force"], false, "the lift replaced the raise");
    assert_eq!(later.next(Duration::from_millis(500)).await, None);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_messages_for_raise_update_and_lift_are_valid_and_linked() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let raised = record(&harness, "raised", Some(1), false).await;
    let (status, content_type, feed) = api.text("/api/v1/warnings.atom").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/atom+xml")
    );
    assert!(
        feed.contains(&format!("/api/v1/warning-events/{raised}.cap")),
        "{feed}"
    );
    let changed = record(&harness, "changed", Some(3), false).await;
    let lifted = record(&harness, "lifted", None, false).await;
    let identifier = |id: i64| format!("tidemark-warning-event-{id}");
    for (id, msg_type, severity) in [
        (raised, "Alert", "Moderate"),
        (changed, "Update", "Extreme"),
        (lifted, "Cancel", "Minor"),
    ] {
        let (status, content_type, xml) =
            api.text(&format!("/api/v1/warning-events/{id}.cap")).await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "application/cap+xml");
        assert_eq!(
            tidemark_testkit::cap::problems(&xml),
            Vec::<String>::new(),
            "{xml}"
        );
        let alert = tidemark_testkit::cap::parse(&xml).unwrap();
        assert_eq!(alert.child("identifier").unwrap().text, identifier(id));
        assert_eq!(alert.child("msgType").unwrap().text, msg_type);
        let info = alert.child("info").unwrap();
        assert_eq!(info.child("severity").unwrap().text, severity);
        let area = info.child("area").unwrap();
        assert!(area.child("areaDesc").unwrap().text.contains("Aabenraa"));
        assert_eq!(
            area.child("geocode").unwrap().child("value").unwrap().text,
            AABENRAA
        );
        if msg_type != "Alert" {
            let references = &alert.child("references").unwrap().text;
            assert!(references.contains(&identifier(raised)), "{references}");
        }
    }
    let warning = warning_of(&harness, raised).await;
    let (_, _, current) = api.text(&format!("/api/v1/warnings/{warning}.cap")).await;
    assert!(
        current.contains(&identifier(lifted)),
        "the warning's CAP is its latest message"
    );
    let (_, _, feed) = api.text("/api/v1/warnings.atom").await;
    assert!(
        !feed.contains("<entry>"),
        "a lifted warning leaves the feed: {feed}"
    );
    let (status, _, _) = api.text("/api/v1/warning-events/999999.cap").await;
    assert_eq!(status, 404);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_municipality_acknowledges_and_every_channel_shows_it() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let aabenraa = api.key(Role::Municipality, Some(AABENRAA)).await;
    let (hook, _) = api.register(&aabenraa, &receiver.url, 1).await;
    let raised = record(&harness, "raised", Some(2), true).await;
    let warning = warning_of(&harness, raised).await;
    let mut stream = SseClient::connect(
        &api.http,
        &api.url(&format!("/api/v1/warnings/stream?last_event_id={raised}")),
        None,
    )
    .await
    .unwrap();
    let ack = format!("/api/v1/warnings/{warning}/ack");

    // Who may not.
    let aarhus = api.key(Role::Municipality, Some(AARHUS)).await;
    let researcher = api.key(Role::Researcher, None).await;
    let (revoked, row) = tidemark_api::auth::create_key(
        &harness.store,
        Role::Municipality,
        Some(AABENRAA.into()),
        String::new(),
        None,
        &tidemark_api::auth::Actor::cli(),
    )
    .await
    .unwrap();
    harness
        .store
        .revoke_api_key(
            &row.prefix,
            Utc::now(),
            &tidemark_api::auth::Actor::cli().audit(
                "key.revoke",
                String::new(),
                serde_json::json!({}),
            ),
        )
        .await
        .unwrap();
    let (expired, _) = tidemark_api::auth::create_key(
        &harness.store,
        Role::Municipality,
        Some(AABENRAA.into()),
        String::new(),
        Some(Utc::now() - ChronoDuration::minutes(1)),
        &tidemark_api::auth::Actor::cli(),
    )
    .await
    .unwrap();
    let tampered = format!("{}x", &aabenraa[..aabenraa.len() - 1]);
    for (key, expected) in [
        (None, 401),
        (Some("not-a-key"), 401),
        (Some(tampered.as_str()), 401),
        (Some(revoked.as_str()), 401),
        (Some(expired.as_str()), 401),
        (Some(researcher.as_str()), 403),
        (Some(aarhus.as_str()), 403),
    ] {
        let (status, body) = api.call(reqwest::Method::POST, &ack, key, None).await;
        assert_eq!(status, expected, "{key:?}: {body}");
        assert!(body["detail"].is_string(), "a problem body: {body}");
    }
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/webhooks/{hook}"),
            Some(&aarhus),
            None,
        )
        .await;
    assert_eq!(status, 404, "another municipality's webhook is not visible");
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/webhooks/{hook}"),
            Some(&aarhus),
            None,
        )
        .await;
    assert_eq!(status, 404, "nor deletable");
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/webhooks/{hook}/rotate-secret"),
            Some(&aarhus),
            None,
        )
        .await;
    assert_eq!(status, 404, "nor can its secret be rotated");
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(&aabenraa),
            Some(serde_json::json!({ "url": receiver.url, "municipalities": [AARHUS] })),
        )
        .await;
    assert_eq!(
        status, 403,
        "a municipality subscribes only to its own warnings"
    );

    // Aabenraa acknowledges, once.
    let note = serde_json::json!({ "note": "Beredskabet er underrettet" });
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            &ack,
            Some(&aabenraa),
            Some(note.clone()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let ack_event = body["event_id"].as_i64().unwrap();
    let (status, again) = api
        .call(reqwest::Method::POST, &ack, Some(&aabenraa), Some(note))
        .await;
    assert_eq!((status, again["new"].as_bool()), (200, Some(false)));
    assert_eq!(again["event_id"], ack_event);

    let (_, shown) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/warnings/{warning}"),
            None,
            None,
        )
        .await;
    assert_eq!(shown["acknowledged_by"], serde_json::json!([AABENRAA]));
    let kinds: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["warning.raised", "warning.acknowledged"]);
    assert_eq!(
        shown["history"][1]["detail"]["note"],
        "Beredskabet er underrettet"
    );
    let event = stream
        .next(Duration::from_secs(10))
        .await
        .expect("on the stream");
    assert_eq!(event.event.as_deref(), Some("warning.acknowledged"));

    let (dispatcher, _) = dispatcher(&harness, &config, &api);
    dispatcher.run_once(soon()).await.unwrap();
    let types: Vec<String> = receiver
        .deliveries()
        .iter()
        .map(|d| d.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["warning.raised", "warning.acknowledged"]);
    let mut siren = MqttSubscriber::start(
        &harness.broker_config(),
        "ack-siren",
        "tidemark/v1/alerts/#",
    )
    .await
    .unwrap();
    let (_, state, _) = siren.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(state["type"], "warning.acknowledged");
    assert_eq!(state["in_force"], true);
    let (_, _, cap) = api
        .text(&format!("/api/v1/warning-events/{ack_event}.cap"))
        .await;
    assert!(cap.contains("<msgType>Update</msgType>"));

    record(&harness, "lifted", None, false).await;
    let (status, _) = api
        .call(reqwest::Method::POST, &ack, Some(&aabenraa), None)
        .await;
    assert_eq!(status, 409, "a lifted warning cannot be acknowledged");
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replayed_baltic_surge_reaches_a_webhook_an_sse_client_and_an_mqtt_subscriber() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let key = api.key(Role::Municipality, Some(AABENRAA)).await;
    let (_, secret) = api.register(&key, &receiver.url, 1).await;
    let mut stream = SseClient::connect(
        &api.http,
        &api.url(&format!("/api/v1/warnings/stream?area={AREA}")),
        None,
    )
    .await
    .unwrap();
    let (dispatcher, _) = dispatcher(&harness, &config, &api);
    let shutdown = api.shutdown.clone();
    let database = config.database.clone();
    tokio::spawn(async move { dispatcher.run(&database, shutdown).await });

    let ingest = harness.ingest_ready("ingest-delivery", None).await;
    let analytics = start_analytics(&config).await;
    replay_all(
        &harness,
        tidemark_sensors_sim::replay::Format::BalticSurge,
        "baltic-surge",
        "tests/fixtures/baltic-surge-2023/sea_level_10min.csv",
    )
    .await;
    // Analytics may lift a warning on part of the data and raise it again on the rest: the
    // events are read once it has settled.
    quiet(&analytics).await;
    let lifted = wait_for(Duration::from_secs(90), || async {
        harness
            .store
            .warning_events(AREA)
            .await
            .unwrap()
            .iter()
            .any(|e| e.kind == "lifted")
    })
    .await;
    assert!(lifted, "Flensburg's warning is raised and lifted");
    let events: Vec<i64> = harness
        .store
        .warning_events(AREA)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();

    // Every Flensburg event reaches the webhook, signed, once each, in order.
    let flensburg = || -> Vec<tidemark_testkit::peers::Delivery> {
        receiver
            .deliveries()
            .into_iter()
            .filter(|d| d.json()["area"]["key"] == AREA)
            .collect()
    };
    let all_arrived = wait_for(Duration::from_secs(30), || async {
        flensburg().len() >= events.len()
    })
    .await;
    assert!(all_arrived);
    let deliveries = flensburg();
    let ids: Vec<i64> = deliveries
        .iter()
        .map(|d| d.json()["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, events);
    for d in &deliveries {
        verify(
            &secret,
            &d.id,
            &d.timestamp,
            &d.signature,
            &d.body,
            Utc::now(),
            Duration::from_secs(300),
        )
        .expect("valid signature");
    }
    // The SSE client saw the same events, in the same order.
    let mut seen = Vec::new();
    while seen.len() < events.len() {
        let event = stream
            .next(Duration::from_secs(20))
            .await
            .expect("streamed");
        seen.push(event.id.unwrap().parse::<i64>().unwrap());
    }
    assert_eq!(seen, events);
    // And a siren that subscribes afterwards learns at once that the warning is over.
    let state = retained_once_delivered(
        &harness,
        "siren-aabenraa",
        &format!("tidemark/v1/alerts/{AABENRAA}/{AREA}"),
    )
    .await;
    assert_eq!(state["type"], "warning.lifted");
    assert_eq!(state["id"].as_i64(), events.last().copied());

    analytics.stop().await;
    ingest.stop().await;
    harness.finish().await;
}

/// Odense, where the district meter of the leak alert test stands.
const ODENSE: &str = "0461";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspected_leak_travels_as_a_utility_alert_and_never_as_a_flood_warning() {
    let harness = Harness::start().await;
    let config = config(&harness);
    let api = Api::start(&harness, &config).await;
    let utility = api.key(Role::Utility, None).await;
    let put = |path: &str, body: serde_json::Value| {
        let (api, key, path) = (&api, utility.clone(), path.to_owned());
        async move {
            let (status, problem) = api
                .call(reqwest::Method::PUT, &path, Some(&key), Some(body))
                .await;
            assert_eq!(status, 204, "{path}: {problem}");
        }
    };
    put(
        "/api/v1/stations/odense-bolbro",
        serde_json::json!({"name": "Bolbro", "kind": "district_meter", "lon": 10.35, "lat": 55.39, "municipality_code": ODENSE}),
    )
    .await;
    put("/api/v1/devices/bolbro", serde_json::json!({})).await;
    put(
        "/api/v1/sensors/bolbro.flow",
        serde_json::json!({"device": "bolbro", "station": "odense-bolbro", "quantity": "water_flow", "expected_interval": "15m"}),
    )
    .await;
    put(
        "/api/v1/utilities/leak-rules/bolbro.flow",
        serde_json::json!({"baseline_nights": 7, "margin": 0.2, "nights": 3}),
    )
    .await;

    // The utility asks for leak alerts; Odense's own endpoint keeps the default, flood warnings.
    let leaks_receiver = WebhookReceiver::start().await.unwrap();
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(&utility),
            Some(serde_json::json!({ "url": leaks_receiver.url, "categories": ["leak"] })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["categories"], serde_json::json!(["leak"]));
    let leak_secret = body["secret"].as_str().unwrap().to_owned();
    let (status, problem) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(&utility),
            Some(serde_json::json!({ "url": leaks_receiver.url, "categories": ["fire"] })),
        )
        .await;
    assert_eq!(
        (status, problem["parameter"].as_str()),
        (400, Some("categories"))
    );
    let odense = api.key(Role::Municipality, Some(ODENSE)).await;
    let flood_receiver = WebhookReceiver::start().await.unwrap();
    let (flood_hook, _) = api.register(&odense, &flood_receiver.url, 1).await;

    let stream = |query: &str| {
        let url = api.url(&format!("/api/v1/warnings/stream{query}"));
        let http = api.http.clone();
        async move { SseClient::connect(&http, &url, None).await.unwrap() }
    };
    let mut leak_stream = stream("?category=leak").await;
    let mut flood_stream = stream("").await;
    let (dispatcher, _) = dispatcher(&harness, &config, &api);
    let shutdown = api.shutdown.clone();
    let database = config.database.clone();
    tokio::spawn(async move { dispatcher.run(&database, shutdown).await });

    // A leak from the night of 20 October until it is mended before the night of 27 October.
    let analytics = start_analytics(&config).await;
    let leak_from = Utc.with_ymd_and_hms(2026, 10, 19, 22, 0, 0).unwrap();
    let mended = Utc.with_ymd_and_hms(2026, 10, 26, 12, 0, 0).unwrap();
    let meter = sensor_id(&harness, "bolbro.flow").await;
    store_readings(
        &harness,
        &crate::utilities::district_flow(meter, 4.0, leak_from..mended),
    )
    .await;
    let ended = wait_for(Duration::from_secs(60), || async {
        harness
            .store
            .leaks(Some("bolbro.flow"))
            .await
            .unwrap()
            .iter()
            .any(|l| l.ended_on.is_some())
    })
    .await;
    assert!(ended, "the leak is found and found to have ended");
    let leaks = harness.store.leaks(Some("bolbro.flow")).await.unwrap();
    assert_eq!(leaks.len(), 1, "{leaks:?}");
    assert_eq!(leaks[0].since.to_string(), "2026-10-20");
    assert_eq!(leaks[0].raised_on.to_string(), "2026-10-22");
    assert_eq!(leaks[0].ended_on.unwrap().to_string(), "2026-10-27");

    // The alert, with its history, over the API; no flood warning anywhere.
    let (_, alerts) = api
        .call(
            reqwest::Method::GET,
            "/api/v1/utilities/alerts?state=all",
            None,
            None,
        )
        .await;
    let alerts = alerts["alerts"].as_array().unwrap().clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert["id"].as_i64(), leaks[0].warning_id);
    assert_eq!(alert["category"], "leak");
    assert_eq!(alert["meter"]["key"], "bolbro.flow");
    assert_eq!(alert["meter"]["name"], "Bolbro");
    assert_eq!(alert["state"], "lifted");
    assert_eq!(alert["municipalities"], serde_json::json!([ODENSE]));
    let (_, in_force) = api
        .call(reqwest::Method::GET, "/api/v1/utilities/alerts", None, None)
        .await;
    assert_eq!(in_force["alerts"], serde_json::json!([]));
    let (_, flood) = api
        .call(
            reqwest::Method::GET,
            "/api/v1/warnings?state=all",
            None,
            None,
        )
        .await;
    assert_eq!(
        flood["warnings"],
        serde_json::json!([]),
        "not a flood warning"
    );
    let id = alert["id"].as_i64().unwrap();
    let (_, one) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/utilities/alerts/{id}"),
            None,
            None,
        )
        .await;
    let history: Vec<&str> = one["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["utility_alert.raised", "utility_alert.lifted"]);
    let events: Vec<i64> = one["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(one["history"][0]["message"]["en"]
        .as_str()
        .unwrap()
        .contains("Suspected leak at district meter Bolbro"));
    assert!(one["history"][0]["message"]["da"]
        .as_str()
        .unwrap()
        .contains("lækage"));
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/warnings/{id}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 404, "the flood warnings API does not know it");
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/warning-events/{}.cap", events[0]),
            None,
            None,
        )
        .await;
    assert_eq!(status, 404, "no CAP flood message is made of it");
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/warnings/{id}/ack"),
            Some(&odense),
            None,
        )
        .await;
    assert_eq!(status, 404, "nor is it acknowledged as one");

    // The utility's webhook receives both events, signed, in order; Odense's flood endpoint
    // was never queued a delivery.
    assert!(leaks_receiver.wait_for(2, Duration::from_secs(30)).await);
    let deliveries = leaks_receiver.deliveries();
    let bodies: Vec<serde_json::Value> = deliveries.iter().map(|d| d.json()).collect();
    assert_eq!(
        bodies
            .iter()
            .map(|b| b["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        events
    );
    assert_eq!(bodies[0]["type"], "utility_alert.raised");
    assert_eq!(bodies[0]["category"], "leak");
    assert_eq!(bodies[0]["meter"]["key"], "bolbro.flow");
    assert!(bodies[0].get("area").is_none() && bodies[0].get("cap").is_none());
    assert_eq!(bodies[1]["type"], "utility_alert.lifted");
    assert_eq!(bodies[1]["in_force"], false);
    for d in &deliveries {
        verify(
            &leak_secret,
            &d.id,
            &d.timestamp,
            &d.signature,
            &d.body,
            Utc::now(),
            Duration::from_secs(300),
        )
        .expect("valid signature");
    }
    let queued_for_flood = harness
        .store
        .outbox("webhook")
        .await
        .unwrap()
        .iter()
        .filter(|row| row.target == flood_hook.to_string())
        .count();
    assert_eq!(queued_for_flood, 0);

    // The leak stream carries both; the default stream skips them: the first event it shows is
    // a flood warning recorded after them.
    for expected in &events {
        let event = leak_stream
            .next(Duration::from_secs(20))
            .await
            .expect("streamed");
        assert_eq!(event.id.unwrap().parse::<i64>().unwrap(), *expected);
    }
    let flood_event = record(&harness, "raised", Some(1), false).await;
    let first = flood_stream
        .next(Duration::from_secs(20))
        .await
        .expect("streamed");
    assert_eq!(first.id.unwrap().parse::<i64>().unwrap(), flood_event);
    assert!(flood_event > *events.last().unwrap());

    // A valve controller subscribing afterwards gets the meter's current state, retained.
    let state = retained_once_delivered(
        &harness,
        "utility-bolbro",
        &format!("tidemark/v1/utility-alerts/{ODENSE}/bolbro.flow"),
    )
    .await;
    assert_eq!(state["type"], "utility_alert.lifted");
    assert_eq!(state["id"].as_i64(), events.last().copied());

    analytics.stop().await;
    harness.finish().await;
}
