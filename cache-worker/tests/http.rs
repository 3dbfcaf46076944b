//! The HTTP routes (`cache_worker::http::router`) end to end: a real server on loopback, a
//! real client, and a client-side copy of the bucket kept from the JSON as a page keeps it.
#![cfg(feature = "http")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_worker::Worker;
use common::http::{JsonCopy, Served, Sse, SseReader, bucket_as_json, get_json};
use common::{Nothing, Rng, Upstream, key, started, started_with};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A cinema session: what a page shows, and the seat count that changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Session {
    film: String,
    cinema: String,
    seats_available: u32,
    note: Option<String>,
}

type Sessions = Nothing<String, Session>;

fn session(film: &str, seats: u32) -> Session {
    Session {
        film: film.to_owned(),
        cinema: "Kino am Ufer".to_owned(),
        seats_available: seats,
        note: None,
    }
}

async fn sessions() -> Worker<Sessions> {
    started(&Sessions::default(), "sessions").await
}

fn as_json(session: &Session) -> Value {
    serde_json::to_value(session).expect("a session as JSON")
}

/// The copy a client gets from `GET /`.
async fn copy_of(served: &Served) -> JsonCopy {
    let (status, _, body) = get_json(&served.url("")).await;
    assert_eq!(status, 200);
    let mut copy = JsonCopy::default();
    copy.apply_body(&body).expect("a full");
    copy
}

fn assert_copy_is_the_bucket(copy: &JsonCopy, worker: &Worker<Sessions>) {
    let (version, entries) = bucket_as_json(worker);
    assert_eq!(copy.version, Some(version), "the copy's version");
    assert_eq!(copy.entries, entries, "the copy's entries");
}

// ---------------------------------------------------------------------------------------------
// GET / and GET /?since=V
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_is_the_whole_bucket_as_json() {
    let w = sessions().await;
    w.insert(key("s1"), session("Alien", 80));
    w.insert(key("s2"), session("Heat", 120));
    let served = Served::start(&w).await;

    let (status, headers, body) = get_json(&served.url("")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["kind"], "full");
    assert_eq!(body["version"], json!(w.version()));
    let mut entries = body["entries"].as_array().expect("entries").clone();
    entries.sort_by_key(|e| e["key"].as_str().map(str::to_owned));
    assert_eq!(
        entries,
        [
            json!({"key": "s1", "value": as_json(&session("Alien", 80))}),
            json!({"key": "s2", "value": as_json(&session("Heat", 120))}),
        ]
    );
}

#[tokio::test]
async fn a_delta_holds_each_changed_key_once_in_the_order_of_its_last_change() {
    let w = sessions().await;
    w.insert(key("s1"), session("Alien", 80));
    w.insert(key("d"), session("Dune", 50));
    let served = Served::start(&w).await;
    let mut copy = copy_of(&served).await;
    let v0 = w.version();

    w.insert(key("s1"), session("Alien", 79));
    w.insert(key("s1"), session("Alien", 78)); // changed twice: one change
    w.insert(key("b"), session("Brazil", 10));
    w.invalidate("b"); // inserted then removed: nothing
    w.invalidate("d");
    w.insert(key("c"), session("Casablanca", 30));

    let (status, _, body) = get_json(&served.url(&format!("?since={v0}"))).await;
    assert_eq!(status, 200);
    assert_eq!(body["kind"], "delta");
    assert_eq!(body["from"], json!(v0));
    assert_eq!(body["version"], json!(w.version()));
    assert_eq!(w.version(), v0 + 6);
    assert_eq!(
        body["changes"],
        json!([
            {"key": "s1", "patch": {"seats_available": 78}},
            {"key": "d", "removed": true},
            {"key": "c", "value": as_json(&session("Casablanca", 30))},
        ])
    );
    copy.apply_body(&body).expect("the delta applies");
    assert_copy_is_the_bucket(&copy, &w);
}

#[tokio::test]
async fn since_the_current_version_is_no_change() {
    let w = sessions().await;
    w.insert(key("s1"), session("Alien", 80));
    let served = Served::start(&w).await;
    let (status, headers, body) = get_json(&served.url(&format!("?since={}", w.version()))).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, json!({"kind": "no_change", "version": w.version()}));
}

#[tokio::test]
async fn since_ahead_of_the_bucket_is_the_whole_bucket() {
    let w = sessions().await;
    w.insert(key("s1"), session("Alien", 80));
    let served = Served::start(&w).await;
    let (_, _, body) = get_json(&served.url(&format!("?since={}", w.version() + 1000))).await;
    assert_eq!(body["kind"], "full");
    assert_eq!(body["version"], json!(w.version()));
    assert_eq!(body["entries"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn since_older_than_what_is_retained_is_the_whole_bucket() {
    let w = started_with(&Sessions::default(), "sessions", |b| b.delta_threshold(3)).await;
    let served = Served::start(&w).await;
    let v0 = w.version();
    for seats in 1..=4 {
        w.insert(key("s1"), session("Alien", seats));
    }

    let (_, _, body) = get_json(&served.url(&format!("?since={v0}"))).await;
    assert_eq!(body["kind"], "full", "four changes, three retained");
    assert_eq!(body["version"], json!(v0 + 4));
    let (_, _, body) = get_json(&served.url(&format!("?since={}", v0 + 1))).await;
    assert_eq!(body["kind"], "delta", "the last three are retained");
    assert_eq!(body["changes"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_bad_since_is_a_400_with_a_json_error() {
    let w = sessions().await;
    let served = Served::start(&w).await;
    for query in [
        "?since=abc",
        "?since=-1",
        "?since=",
        "?since=1.5",
        "?since=18446744073709551616",
        "?since=1&since=2",
    ] {
        for route in ["", "/events"] {
            let (status, headers, body) = get_json(&served.url(&format!("{route}{query}"))).await;
            assert_eq!(status, 400, "{route}{query}");
            assert_eq!(headers["content-type"], "application/json");
            let error = body["error"].as_str().expect("an error message");
            assert!(error.contains("since"), "{route}{query}: {error}");
        }
    }
    let response = common::http::client()
        .get(served.url("/events"))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("Last-Event-ID"),
        "{body}"
    );
}

#[tokio::test]
async fn a_one_field_change_is_a_merge_patch_that_gives_the_new_value() {
    let w = sessions().await;
    let old = Session {
        note: Some("original version with subtitles".into()),
        ..session("Once Upon a Time in the West", 80)
    };
    w.insert(key("s1"), old.clone());
    let served = Served::start(&w).await;
    let v0 = w.version();
    let new = Session {
        seats_available: 79,
        ..old.clone()
    };
    w.insert(key("s1"), new.clone());

    let (_, _, body) = get_json(&served.url(&format!("?since={v0}"))).await;
    let change = &body["changes"][0];
    assert_eq!(
        change,
        &json!({"key": "s1", "patch": {"seats_available": 79}})
    );
    let mut patched = as_json(&old);
    json_patch::merge(&mut patched, &change["patch"]);
    assert_eq!(patched, as_json(&new));
}

#[tokio::test]
async fn a_change_a_patch_cannot_express_or_not_shorten_is_sent_whole() {
    let w = sessions().await;
    let with_note = Session {
        note: Some("3D".into()),
        ..session("Avatar: The Way of Water", 200)
    };
    w.insert(key("null"), with_note.clone());
    w.insert(key("all"), session("Up", 1));
    let served = Served::start(&w).await;
    let v0 = w.version();
    // A member set to null: a merge patch's null would remove it.
    let without_note = Session {
        note: None,
        ..with_note
    };
    w.insert(key("null"), without_note.clone());
    // Every member changed: the patch is no shorter than the value.
    let changed = Session {
        film: "Ran".into(),
        cinema: "Odeon".into(),
        seats_available: 2,
        note: Some("x".into()),
    };
    w.insert(key("all"), changed.clone());

    let (_, _, body) = get_json(&served.url(&format!("?since={v0}"))).await;
    assert_eq!(
        body["changes"],
        json!([
            {"key": "null", "value": as_json(&without_note)},
            {"key": "all", "value": as_json(&changed)},
        ])
    );
    assert_eq!(body["changes"][0]["value"]["note"], Value::Null);
}

#[tokio::test]
async fn a_client_polling_get_since_keeps_an_exact_copy() {
    let w = sessions().await;
    let served = Served::start(&w).await;
    let mut copy = copy_of(&served).await;
    let mut rng = Rng::new(13);
    for _round in 0..20 {
        for _ in 0..rng.below(12) {
            random_change(&w, &mut rng);
        }
        let since = copy.version.expect("a version");
        let (status, _, body) = get_json(&served.url(&format!("?since={since}"))).await;
        assert_eq!(status, 200);
        copy.apply_body(&body)
            .unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_copy_is_the_bucket(&copy, &w);
    }
    assert!(copy.patches > 0, "some changes went as patches");
}

/// One random change of a few sessions: an insert, a seat sold, a note set or cleared, a
/// removal.
fn random_change(w: &Worker<Sessions>, rng: &mut Rng) {
    let k = format!("s{}", rng.below(8));
    let current = w.peek(k.as_str()).map(|s| (*s).clone());
    match (rng.below(10), current) {
        (0, Some(_)) => {
            w.invalidate(k.as_str());
        }
        (1..=5, Some(s)) => w.insert(
            k,
            Session {
                seats_available: s.seats_available.saturating_sub(1 + rng.below(3) as u32),
                ..s
            },
        ),
        (6 | 7, Some(s)) => w.insert(
            k,
            Session {
                note: if s.note.is_some() {
                    None
                } else {
                    Some(format!("note {}", rng.below(100)))
                },
                ..s
            },
        ),
        _ => w.insert(k, session(&format!("Film number {}", rng.below(1000)), 100)),
    }
}

// ---------------------------------------------------------------------------------------------
// GET /events
// ---------------------------------------------------------------------------------------------

fn change(message: &Sse) -> Value {
    let (event, data) = message.json();
    assert_eq!(event, "change", "{message:?}");
    data
}

#[tokio::test]
async fn events_start_with_the_whole_bucket_then_each_change_with_its_version() {
    let w = sessions().await;
    w.insert(key("s1"), session("The Third Man With A Long Title", 80));
    let served = Served::start(&w).await;
    let mut events = SseReader::open(&served.url("/events"), None).await;

    let first = events.event().await;
    assert_eq!(first.json().0, "full");
    assert_eq!(first.version(), w.version());
    let mut copy = JsonCopy::default();
    copy.apply_sse(&first).expect("a full");
    assert_copy_is_the_bucket(&copy, &w);

    w.insert(key("s2"), session("Heat", 120));
    let inserted = events.event().await;
    assert_eq!(inserted.version(), w.version());
    assert_eq!(
        change(&inserted),
        json!({"key": "s2", "value": as_json(&session("Heat", 120))})
    );

    w.insert(key("s1"), session("The Third Man With A Long Title", 79));
    let updated = events.event().await;
    assert_eq!(updated.version(), inserted.version() + 1);
    assert_eq!(
        change(&updated),
        json!({"key": "s1", "patch": {"seats_available": 79}})
    );

    w.invalidate("s2");
    let removed = events.event().await;
    assert_eq!(removed.version(), updated.version() + 1);
    assert_eq!(change(&removed), json!({"key": "s2", "removed": true}));

    for message in [&inserted, &updated, &removed] {
        copy.apply_sse(message).expect("applies");
    }
    assert_copy_is_the_bucket(&copy, &w);
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_exactly_what_it_missed_then_live_changes() {
    let w = sessions().await;
    w.insert(key("s1"), session("Alien", 80));
    w.insert(key("s2"), session("Heat", 120));
    let served = Served::start(&w).await;
    let mut copy = JsonCopy::default();
    let mut events = SseReader::open(&served.url("/events"), None).await;
    copy.apply_sse(&events.event().await).expect("full");
    w.insert(key("s3"), session("Ran", 60));
    let seen = events.event().await;
    copy.apply_sse(&seen).expect("change");
    drop(events);

    w.insert(key("s1"), session("Alien", 79));
    w.insert(key("s1"), session("Alien", 78));
    w.insert(key("gone"), session("Brazil", 1));
    w.invalidate("gone");
    w.invalidate("s2");
    w.insert(key("s9"), session("Vertigo", 90));
    let missed_up_to = w.version();

    // `?since=` is older than the header: the header, as a browser sends it, wins.
    let url = served.url(&format!("/events?since={}", seen.version() - 1));
    let mut events = SseReader::open(&url, Some(seen.version())).await;
    let missed = [
        events.event().await,
        events.event().await,
        events.event().await,
    ];
    assert_eq!(
        missed.iter().map(change).collect::<Vec<_>>(),
        [
            json!({"key": "s1", "value": as_json(&session("Alien", 78))}),
            json!({"key": "s2", "removed": true}),
            json!({"key": "s9", "value": as_json(&session("Vertigo", 90))}),
        ],
        "merged, in version order, whole values"
    );
    assert_eq!(missed[2].version(), missed_up_to);
    w.insert(key("s9"), session("Vertigo", 89));
    let live = events.event().await;
    assert_eq!(live.version(), missed_up_to + 1);
    for message in missed.iter().chain([&live]) {
        copy.apply_sse(message).expect("applies");
    }
    assert_copy_is_the_bucket(&copy, &w);

    // The same from `?since=` alone.
    let mut events = SseReader::open(
        &served.url(&format!("/events?since={}", seen.version())),
        None,
    )
    .await;
    let first = events.event().await;
    assert_eq!(first.json().1["key"], "s1");
}

#[tokio::test]
async fn a_reconnect_from_any_id_of_a_catch_up_gets_the_rest_of_it() {
    let w = sessions().await;
    for k in ["a", "b", "c", "d"] {
        w.insert(key(k), session(k, 10));
    }
    let served = Served::start(&w).await;
    let start = copy_of(&served).await;
    let v0 = w.version();
    w.insert(key("a"), session("a", 9));
    w.insert(key("b"), session("b", 9));
    w.insert(key("a"), session("a", 8));
    w.invalidate("c");
    w.insert(key("e"), session("e", 1));
    w.insert(key("b"), session("b", 8));
    w.insert(key("d"), session("d", 9));
    let now = w.version();

    let catch_up = read_catch_up(&served, Some(v0), now).await;
    assert_eq!(catch_up.len(), 5, "a, c, e, b, d: {catch_up:?}");
    let ids: Vec<u64> = catch_up.iter().map(Sse::version).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "rising ids {ids:?}");
    for message in &catch_up {
        assert!(
            change(message).get("patch").is_none(),
            "no patch in a catch-up"
        );
    }

    for (i, message) in catch_up.iter().enumerate().take(catch_up.len() - 1) {
        let rest = read_catch_up(&served, Some(message.version()), now).await;
        assert_eq!(rest, catch_up[i + 1..], "after the id of change {i}");
        // A client that had applied up to there and then the rest holds the bucket.
        let mut copy = JsonCopy {
            entries: start.entries.clone(),
            version: start.version,
            patches: 0,
        };
        for message in catch_up[..=i].iter().chain(&rest) {
            copy.apply_sse(message).expect("applies");
        }
        assert_copy_is_the_bucket(&copy, &w);
    }
}

/// The events of `GET /events` with `Last-Event-ID: since`, up to the one with id `until`.
async fn read_catch_up(served: &Served, since: Option<u64>, until: u64) -> Vec<Sse> {
    let mut events = SseReader::open(&served.url("/events"), since).await;
    let mut read = Vec::new();
    loop {
        let message = events.event().await;
        let done = message.version() >= until;
        read.push(message);
        if done {
            return read;
        }
    }
}

#[tokio::test]
async fn a_reconnect_from_a_version_no_longer_retained_gets_the_whole_bucket() {
    let w = started_with(&Sessions::default(), "sessions", |b| b.delta_threshold(3)).await;
    w.insert(key("s1"), session("Alien", 80));
    let served = Served::start(&w).await;
    let mut events = SseReader::open(&served.url("/events"), None).await;
    let full = events.event().await;
    drop(events);
    for seats in 1..=5 {
        w.insert(key("s2"), session("Heat", seats));
    }

    let mut events = SseReader::open(&served.url("/events"), Some(full.version())).await;
    let again = events.event().await;
    let (event, data) = again.json();
    assert_eq!(event, "full");
    assert_eq!(again.version(), w.version());
    let mut copy = JsonCopy::default();
    copy.apply_body(&data).expect("a full");
    assert_copy_is_the_bucket(&copy, &w);
}

#[tokio::test]
async fn a_reconnect_at_the_current_version_gets_only_live_changes() {
    let w = sessions().await;
    w.insert(key("s1"), session("Alien", 80));
    let served = Served::start(&w).await;
    let mut events = SseReader::open(&served.url("/events"), Some(w.version())).await;
    w.insert(key("s2"), session("Heat", 1));
    let first = events.event().await;
    assert_eq!(first.version(), w.version());
    assert_eq!(change(&first)["key"], "s2");
}

#[tokio::test]
async fn a_bulk_reload_sends_its_changes_and_nothing_for_the_reload_itself() {
    let up = Upstream::new();
    up.set_collection(&[("a", 1), ("b", 2)]);
    let w = started(&up, "numbers").await;
    w.refresh_all().await.expect("a cycle");
    let served = Served::start(&w).await;
    let mut events = SseReader::open(&served.url("/events"), None).await;
    assert_eq!(events.event().await.json().0, "full");

    up.set_collection(&[("a", 10), ("c", 3)]);
    w.refresh_all().await.expect("a cycle");
    w.insert(key("marker"), 0);
    let mut changes = Vec::new();
    loop {
        let message = events.message().await.expect("the stream goes on");
        if let Sse::Event { .. } = message {
            let data = change(&message);
            if data["key"] == "marker" {
                break;
            }
            changes.push(data);
        } else {
            panic!("no comment expected here: {message:?}");
        }
    }
    changes.sort_by_key(|c| c["key"].as_str().map(str::to_owned));
    assert_eq!(
        changes,
        [
            json!({"key": "a", "value": 10}),
            json!({"key": "b", "removed": true}),
            json!({"key": "c", "value": 3}),
        ]
    );
}

#[tokio::test]
async fn the_stream_ends_when_the_worker_shuts_down() {
    let w = sessions().await;
    let served = Served::start(&w).await;
    let mut events = SseReader::open(&served.url("/events"), None).await;
    assert_eq!(events.event().await.json().0, "full");
    w.shutdown().await.expect("shutdown");
    assert_eq!(events.message().await, None, "the stream ended");

    let (status, _, body) = get_json(&served.url("/events")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].is_string());
    let (status, _, body) = get_json(&served.url("")).await;
    assert_eq!(
        (status, &body["kind"]),
        (200, &json!("full")),
        "reads go on"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_gets_a_keep_alive_comment_every_15_seconds() {
    let w = sessions().await;
    let served = Served::start(&w).await;
    let mut events = SseReader::open(&served.url("/events"), None).await;
    assert_eq!(events.event().await.json().0, "full");
    let began = tokio::time::Instant::now();
    let comment = tokio::time::timeout(Duration::from_secs(60), events.next())
        .await
        .expect("a message within a minute");
    assert_eq!(comment, Some(Sse::Comment("keep-alive".into())));
    let waited = began.elapsed();
    assert!(
        (Duration::from_secs(14)..=Duration::from_secs(16)).contains(&waited),
        "after {waited:?} of the paused clock"
    );
}

/// A session whose title is `size` bytes: a few hundred of them are more than the socket
/// buffers between a server and a client that does not read.
fn big_session(n: u64, size: usize) -> Session {
    Session {
        film: format!("{n:08}{}", "x".repeat(size)),
        ..session("", 100)
    }
}

/// A client that stops reading while `changes` big changes are made: its stream falls more
/// than `event_capacity` behind; it says so, and catches the client up.
async fn lagging_client(delta_threshold: usize) -> (Vec<Sse>, JsonCopy, Worker<Sessions>) {
    let w = started_with(&Sessions::default(), "sessions", |b| {
        b.event_capacity(2).delta_threshold(delta_threshold)
    })
    .await;
    w.insert(key("s0"), session("Alien", 80));
    let served = Served::start(&w).await;
    let mut events = SseReader::open(&served.url("/events"), None).await;
    let mut copy = JsonCopy::default();
    copy.apply_sse(&events.event().await).expect("full");

    // 384 changes of 128 KiB: 48 MiB while the client reads nothing, more than the socket
    // buffers between them hold.
    for n in 0..384 {
        w.insert(format!("s{}", n % 4), big_session(n, 128 * 1024));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.insert(key("s0"), session("Alien", 79));
    let last = w.version();

    let mut seen = Vec::new();
    loop {
        let message = events.message().await.expect("the stream goes on");
        if !message.is_comment() {
            copy.apply_sse(&message).unwrap_or_else(|e| panic!("{e}"));
        }
        let done = !message.is_comment() && message.version() == last;
        seen.push(message);
        if done {
            break;
        }
    }
    // Live again: a seat sold after the catch-up is one patch.
    w.insert(key("s0"), session("Alien", 78));
    let live = events.event().await;
    assert_eq!(live.version(), last + 1);
    assert_eq!(
        change(&live),
        json!({"key": "s0", "patch": {"seats_available": 78}})
    );
    copy.apply_sse(&live).expect("applies");
    seen.push(live);
    (seen, copy, w)
}

/// The messages after the first comment that says the stream lagged.
fn after_the_lag(seen: &[Sse]) -> &[Sse] {
    let lag = seen
        .iter()
        .position(|m| matches!(m, Sse::Comment(text) if text.starts_with("lagged")))
        .unwrap_or_else(|| panic!("no lag reported in {} messages", seen.len()));
    &seen[lag + 1..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_client_gets_the_whole_bucket_then_live_changes() {
    // The first time the stream lags, it has sent every change up to some version and
    // dropped at least the next one, which `event_capacity` (2) newer changes followed: more
    // than the two retained.
    let (seen, copy, w) = lagging_client(2).await;
    let after = after_the_lag(&seen);
    assert_eq!(
        after[0].json().0,
        "full",
        "its changes are no longer retained"
    );
    assert_copy_is_the_bucket(&copy, &w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_client_whose_changes_are_retained_gets_them_merged() {
    let (seen, copy, w) = lagging_client(10_000).await;
    let after = after_the_lag(&seen);
    assert!(
        after
            .iter()
            .all(|m| m.is_comment() || m.json().0 == "change"),
        "no full: {:?}",
        after
            .iter()
            .map(|m| m.json().0.to_owned())
            .collect::<Vec<_>>()
    );
    let changes = seen.iter().filter(|m| !m.is_comment()).count();
    assert!(changes < 384, "merged: {changes} events for 386 changes");
    assert_copy_is_the_bucket(&copy, &w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_fed_by_the_stream_across_reconnects_is_the_bucket() {
    let w = sessions().await;
    for n in 0..8 {
        w.insert(format!("s{n}"), session(&format!("Film number {n}"), 100));
    }
    let served = Served::start(&w).await;
    // The writer goes on past its 600 changes until the client has reconnected four times, so
    // that reconnects happen while it writes however slow the machine is (a client that falls
    // behind gets merged catch-ups, and catches up in fewer connections).
    let reconnected = Arc::new(AtomicUsize::new(0));
    let writer = {
        let w = w.clone();
        let reconnected = reconnected.clone();
        tokio::spawn(async move {
            let mut rng = Rng::new(7);
            let mut changes = 0;
            while changes < 600 || (reconnected.load(Ordering::SeqCst) < 4 && changes < 60_000) {
                random_change(&w, &mut rng);
                changes += 1;
                if rng.below(8) == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };

    let mut copy = JsonCopy::default();
    let mut applied = 0;
    let mut reconnects = 0;
    let mut last_id = None;
    let mut rng = Rng::new(8);
    let caught_up = |last_id: Option<u64>| writer.is_finished() && last_id == Some(w.version());
    'connections: loop {
        let mut events = SseReader::open(&served.url("/events"), last_id).await;
        // Reads a random number of events, then drops the connection, as a flaky network does.
        for _ in 0..20 + rng.below(60) {
            let message = loop {
                if caught_up(last_id) {
                    break 'connections;
                }
                if let Some(message) = events.try_event(Duration::from_millis(100)).await {
                    break message;
                }
            };
            copy.apply_sse(&message)
                .unwrap_or_else(|e| panic!("after {applied} events: {e}"));
            applied += 1;
            last_id = Some(message.version());
        }
        reconnects += 1;
        reconnected.fetch_add(1, Ordering::SeqCst);
    }
    writer.await.expect("the writer");
    assert!(reconnects > 3, "{reconnects} reconnects");
    assert_copy_is_the_bucket(&copy, &w);
    assert!(copy.patches > 0, "live changes went as patches");
}
