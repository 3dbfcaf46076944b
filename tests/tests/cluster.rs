//! The Redis tier across processes: three `cluster-node`s (`src/bin/cluster-node.rs`) share
//! one Redis and one fake Vista, and are killed, paused, restarted, and left without Redis,
//! while a reader GETs `/sessions` from every node that is up. Each test checks a promise of
//! `cache_worker::redis`'s module docs, and prints one line of figures (`figures <test>: …`)
//! for RELIABILITY.md.
//!
//! The lease is 900 ms (a beat of 300 ms) and the refresh 2 s. The bounds on time are the
//! promises' own (a takeover within the lease and a beat, a change within a refresh period)
//! plus a margin for a busy 2-core machine.

mod common;

use std::time::{Duration, Instant};

use cache_worker::vista::testing::Route;
use common::{BUCKETS, Cluster, Verdict};

/// What a bound on time allows beyond the promise: a debug build on a shared machine.
const MARGIN: Duration = Duration::from_millis(1500);
/// How long nodes that have nothing left to do may take to agree.
const CONVERGE: Duration = Duration::from_secs(6);

/// A few sessions spread over the feed, away from the first (polled on their own most often).
fn sessions(cluster: &Cluster, n: usize) -> Vec<String> {
    let ids = cluster.fake.session_ids();
    assert!(ids.len() > 90 * n, "the fake serves {} sessions", ids.len());
    (0..n).map(|i| ids[30 + 90 * i].clone()).collect()
}

/// Whole refresh periods in `elapsed`.
fn periods(elapsed: Duration, refresh: Duration) -> u64 {
    u64::try_from(elapsed.as_millis() / refresh.as_millis()).expect("a small number")
}

/// The bound on each collection's requests over `elapsed`: one poll a period, two spare (a
/// cycle at each end of the span).
fn at_most(elapsed: Duration, refresh: Duration) -> u64 {
    periods(elapsed, refresh) + 2
}

/// How long a change upstream may take to reach every node: the next refresh period.
fn change_within(cluster: &Cluster) -> Duration {
    cluster.refresh() + MARGIN
}

/// The lease holder of each bucket; panics if one has none.
async fn leaders(cluster: &Cluster) -> Vec<(&'static str, usize)> {
    let mut leaders = Vec::new();
    for bucket in BUCKETS {
        let leader = cluster.leader(bucket).await;
        leaders.push((
            bucket,
            leader.unwrap_or_else(|| panic!("no lease on {bucket}")),
        ));
    }
    leaders
}

/// Makes a change upstream and waits for every node that is up to serve it; `false` if one
/// did not within `within` (a lost change).
async fn change_reaches_all(cluster: &Cluster, session: &str, within: Duration) -> bool {
    let seats = cluster.change_seats(session);
    cluster
        .seen_everywhere(session, seats, within)
        .await
        .is_some()
}

/// Waits until Redis holds every bucket as the nodes serve it: as many entries in
/// `cw:{b}:entries` as every node that is up has, and their version in `cw:{b}:version`;
/// the time that took, or what differs after `within`.
async fn redis_holds_the_buckets(cluster: &Cluster, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let mut differs = Vec::new();
        for node in cluster.up() {
            let status = cluster.status(node).await;
            for bucket in BUCKETS {
                let entries = Cluster::redis_key(bucket, "entries");
                let version = Cluster::redis_key(bucket, "version");
                let hlen = cluster.redis.cli(&["HLEN", &entries]).await;
                let at = cluster.redis.cli(&["GET", &version]).await;
                let ours = status.bucket(bucket);
                if hlen != ours.entries.to_string() || at != ours.version.to_string() {
                    differs.push(format!(
                        "{bucket}: Redis has {hlen} entries at version {at}, {} {} at {}",
                        status.node, ours.entries, ours.version
                    ));
                }
            }
        }
        if differs.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(format!(
                "Redis does not hold the buckets within {within:?}: {}",
                differs.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The version of `bucket` in Redis.
async fn redis_version(cluster: &Cluster, bucket: &str) -> u64 {
    let reply = cluster
        .redis
        .cli(&["GET", &Cluster::redis_key(bucket, "version")])
        .await;
    reply
        .parse()
        .unwrap_or_else(|_| panic!("a version of {bucket} in Redis: {reply}"))
}

/// Checks that every node's reads were served.
fn all_reads_served(verdict: &mut Verdict, cluster: &Cluster) {
    let reads = cluster.reads();
    verdict.check(reads.failed == 0, || {
        format!(
            "{} of {} reads failed: {:?}",
            reads.failed,
            reads.served + reads.failed,
            cluster.read_failures()
        )
    });
}

/// Checks that no collection was polled more than once a period over `elapsed`.
fn one_poll_a_period(verdict: &mut Verdict, cluster: &Cluster, elapsed: Duration) {
    let bound = at_most(elapsed, cluster.refresh());
    for route in [Route::Cinemas, Route::Films] {
        let polls = cluster.fake.requests(route);
        verdict.check(polls <= bound, || {
            format!(
                "{route:?} was polled {polls} times in {elapsed:?} (at most {bound}): \
                 more than one node polled in a period"
            )
        });
    }
}

/// One node polls upstream: over 8 s the fake sees each of Cinemas and Films about once a
/// refresh period, not once per node; the followers never load them, and every node serves
/// the same buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_polls_upstream() {
    let cluster = Cluster::builder().start().await;
    cluster.converged(CONVERGE).await;
    let mut verdict = Verdict::new();
    let before = leaders(&cluster).await;
    cluster.fake.reset_requests();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (cinemas, films) = (
        cluster.fake.requests(Route::Cinemas),
        cluster.fake.requests(Route::Films),
    );
    let elapsed = start.elapsed();
    let versions = verdict.ok(cluster.try_converged(CONVERGE).await);
    let after = leaders(&cluster).await;
    let mut follower_loads = Vec::new();
    for &(bucket, leader) in after.iter().filter(|(b, _)| *b != "sessions") {
        for node in (0..cluster.len()).filter(|&n| n != leader) {
            let status = cluster.status(node).await;
            follower_loads.push((bucket, node, status.bucket(bucket).loads));
        }
    }
    let periods = periods(elapsed, cluster.refresh());
    eprintln!(
        "{}",
        cluster
            .figures(
                "one_node_polls_upstream",
                0,
                0,
                &format!(
                    "periods={periods} cinemas_polls={cinemas} films_polls={films} \
                 leaders={after:?} versions={versions:?} follower_loads={follower_loads:?}"
                )
            )
            .await
    );
    verdict.check(before == after, || {
        format!("the leaders changed without a fault: {before:?} → {after:?}")
    });
    let least = periods.saturating_sub(2).max(1);
    for (route, polls) in [("Cinemas", cinemas), ("Films", films)] {
        verdict.check(polls >= least, || {
            format!("{route} was polled {polls} times in {elapsed:?}: at least {least}")
        });
    }
    one_poll_a_period(&mut verdict, &cluster, elapsed);
    for (bucket, node, loads) in follower_loads {
        verdict.check(loads == 0, || {
            format!("follower n{node} loaded {bucket} {loads} times")
        });
    }
    all_reads_served(&mut verdict, &cluster);
    verdict.finish();
}

/// A follower sees the leader's change: a session's seats changed upstream are served by
/// every node, at one version, within the next refresh period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_the_leaders_change() {
    let cluster = Cluster::builder().start().await;
    cluster.converged(CONVERGE).await;
    let mut verdict = Verdict::new();
    let (mut changes, mut lost, mut slowest) = (0, 0, Duration::ZERO);
    for session in sessions(&cluster, 3) {
        changes += 1;
        let seats = cluster.change_seats(&session);
        match cluster
            .seen_everywhere(&session, seats, change_within(&cluster))
            .await
        {
            Some(took) => slowest = slowest.max(took),
            None => lost += 1,
        }
    }
    let versions = verdict.ok(cluster.try_converged(CONVERGE).await);
    eprintln!(
        "{}",
        cluster
            .figures(
                "a_follower_sees_the_leaders_change",
                changes,
                lost,
                &format!(
                    "slowest_change_ms={} versions={versions:?}",
                    slowest.as_millis()
                )
            )
            .await
    );
    verdict.check(lost == 0, || {
        format!("{lost} of {changes} changes not on every node within a refresh period")
    });
    all_reads_served(&mut verdict, &cluster);
    verdict.finish();
}

/// The leader SIGKILLed: another node holds the lease within the lease and a beat, no
/// collection is polled more than once a period over the whole test, and a change made right
/// after the kill reaches every node left; the killed node, restarted, catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced() {
    let mut cluster = Cluster::builder().start().await;
    cluster.converged(CONVERGE).await;
    let mut verdict = Verdict::new();
    cluster.fake.reset_requests();
    let start = Instant::now();
    let within = change_within(&cluster);
    let picked = sessions(&cluster, 3);
    let (mut changes, mut lost) = (0, 0);

    let leader = cluster.leader("sessions").await.expect("a leader");
    changes += 1;
    lost += u32::from(!change_reaches_all(&cluster, &picked[0], within).await);

    cluster.kill(leader).await;
    // Made while no node leads: the next leader's first cycle brings it.
    changes += 1;
    let seats = cluster.change_seats(&picked[1]);
    let takeover_within = cluster.lease() + cluster.beat() + MARGIN;
    let takeover = cluster
        .leader_other_than("sessions", leader, takeover_within)
        .await;
    let seen = cluster
        .seen_everywhere(&picked[1], seats, takeover_within + within)
        .await;
    lost += u32::from(seen.is_none());
    changes += 1;
    lost += u32::from(!change_reaches_all(&cluster, &picked[2], within).await);
    let survivors = verdict.ok(cluster.try_converged(CONVERGE).await);

    cluster.restart(leader).await;
    let all = verdict.ok(cluster.try_converged(CONVERGE).await);
    let stored = verdict.ok(redis_holds_the_buckets(&cluster, CONVERGE).await);
    let elapsed = start.elapsed();
    let after = leaders(&cluster).await;
    eprintln!(
        "{}",
        cluster
            .figures(
                "a_killed_leader_is_replaced",
                changes,
                lost,
                &format!(
                    "takeover_ms={:?} periods={} cinemas_polls={} films_polls={} \
                 leaders_after={after:?} survivors={survivors:?} after_restart={all:?} \
                 redis_holds={}",
                    takeover.map(|(_, t)| t.as_millis()),
                    periods(elapsed, cluster.refresh()),
                    cluster.fake.requests(Route::Cinemas),
                    cluster.fake.requests(Route::Films),
                    stored.is_some(),
                )
            )
            .await
    );
    verdict.check(takeover.is_some(), || {
        format!("no other node holds the lease within {takeover_within:?} of the kill")
    });
    verdict.check(lost == 0, || {
        format!("{lost} of {changes} changes lost across the kill")
    });
    one_poll_a_period(&mut verdict, &cluster, elapsed);
    all_reads_served(&mut verdict, &cluster);
    verdict.finish();
}

/// The leader SIGSTOPped past its lease, in the middle of a full reload that brings a change:
/// another node leads and serves that change and one made meanwhile; SIGCONT: the old
/// leader's late write (the reload it was waiting for) is refused, it steps down, the lease
/// stays with the new leader, and Redis and every node end on the new leader's line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced() {
    // No show within the hour: the Sessions route sees the full reloads alone.
    let mut cluster = Cluster::builder()
        .first_show_in(Duration::from_secs(2 * 3600))
        .start()
        .await;
    cluster.converged(CONVERGE).await;
    let mut verdict = Verdict::new();
    let within = change_within(&cluster);
    let picked = sessions(&cluster, 2);
    let (mut changes, mut lost) = (0, 0);

    // The leader's next reload of the sessions waits a second in the fake, and brings this.
    let old = cluster.leader("sessions").await.expect("a leader");
    let latency = Duration::from_secs(1);
    cluster.fake.set_latency(latency);
    changes += 1;
    let late = cluster.change_seats(&picked[0]);
    let reloads = cluster.fake.requests(Route::Sessions);
    let asked = Instant::now();
    while cluster.fake.requests(Route::Sessions) == reloads {
        assert!(
            asked.elapsed() < within,
            "the leader did not reload the sessions within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cluster.pause(old);
    let paused = Instant::now();
    let takeover_within = cluster.lease() + cluster.beat() + MARGIN;
    let (new, takeover) = cluster
        .leader_other_than("sessions", old, takeover_within)
        .await
        .unwrap_or_else(|| panic!("no node took the lease of the paused leader"));
    let seen = cluster
        .seen_everywhere(&picked[0], late, within + latency)
        .await;
    lost += u32::from(seen.is_none());
    cluster.fake.set_latency(Duration::ZERO);
    changes += 1;
    lost += u32::from(!change_reaches_all(&cluster, &picked[1], within).await);
    let past = 2 * cluster.lease() + Duration::from_millis(300);
    tokio::time::sleep(past.saturating_sub(paused.elapsed())).await;

    let before = redis_version(&cluster, "sessions").await;
    let paused_for = paused.elapsed();
    cluster.resume(old);
    tokio::time::sleep(cluster.lease()).await;
    let holder = cluster.leader("sessions").await;
    let versions = verdict.ok(cluster.try_converged(CONVERGE).await);
    let in_redis = redis_version(&cluster, "sessions").await;
    let leading = cluster.status(new).await.bucket("sessions").version;
    let resumed = cluster.status(old).await.bucket("sessions").version;
    let log = cluster.log(old);
    let (fenced, stepped_down) = (log.contains("fenced:"), log.contains("no longer leading"));
    eprintln!(
        "{}",
        cluster
            .figures(
                "a_paused_leader_is_fenced",
                changes,
                lost,
                &format!(
                    "paused_ms={} takeover_ms={} redis_version_before_resume={before} \
                 redis_version={in_redis} new_leader_version={leading} \
                 old_leader_version={resumed} late_write_fenced={fenced} \
                 old_leader_stepped_down={stepped_down} versions={versions:?} \
                 leaders_after={:?}",
                    paused_for.as_millis(),
                    takeover.as_millis(),
                    leaders(&cluster).await,
                )
            )
            .await
    );
    verdict.check(holder == Some(new), || {
        format!("the lease left the new leader after SIGCONT: {holder:?}")
    });
    verdict.check(lost == 0, || {
        format!("{lost} of {changes} changes lost across the pause")
    });
    verdict.check(stepped_down, || {
        format!("{} never logged that it stepped down", cluster.name(old))
    });
    verdict.check(leading == in_redis && resumed == in_redis, || {
        format!(
            "sessions: Redis at {in_redis}, the new leader at {leading}, the old one at {resumed}"
        )
    });
    verdict.check(in_redis >= before, || {
        format!("Redis's version went back: {before} → {in_redis}")
    });
    all_reads_served(&mut verdict, &cluster);
    verdict.finish();
}

/// Redis SIGKILLed for 3 s and restarted, empty or with its data: every node serves every
/// read meanwhile, then all converge on one version, Redis holds every bucket again, and a
/// change made during the outage reaches every node.
async fn redis_outage(persistent: bool, test: &str) {
    let builder = Cluster::builder();
    let builder = if persistent {
        builder.persistent()
    } else {
        builder
    };
    let mut cluster = builder.start().await;
    cluster.converged(CONVERGE).await;
    let mut verdict = Verdict::new();
    let picked = sessions(&cluster, 2);
    let (mut changes, mut lost) = (0, 0);

    cluster.kill_redis();
    let down = Instant::now();
    tokio::time::sleep(cluster.lease()).await;
    changes += 1;
    let seats = cluster.change_seats(&picked[0]);
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down.elapsed())).await;
    let during = cluster.reads();
    cluster.restart_redis().await;
    let outage = down.elapsed();
    let back = Instant::now();

    let versions = verdict.ok(cluster.try_converged(CONVERGE).await);
    let converged_in = back.elapsed();
    let stored_in = verdict.ok(redis_holds_the_buckets(&cluster, CONVERGE).await);
    // The refresh that brings it runs once a leader is elected again.
    let seen = cluster
        .seen_everywhere(&picked[0], seats, cluster.lease() + change_within(&cluster))
        .await;
    lost += u32::from(seen.is_none());
    changes += 1;
    lost += u32::from(!change_reaches_all(&cluster, &picked[1], change_within(&cluster)).await);
    let final_versions = verdict.ok(cluster.try_converged(CONVERGE).await);
    let stored_at_end = verdict.ok(redis_holds_the_buckets(&cluster, CONVERGE).await);
    eprintln!(
        "{}",
        cluster
            .figures(
                test,
                changes,
                lost,
                &format!(
                    "outage_ms={} reads_during_outage={during:?} converged_ms={:?} \
                 redis_holds_ms={:?} outage_change_seen_ms={:?} leaders_after={:?} \
                 versions={versions:?} final={final_versions:?} redis_holds_at_end={}",
                    outage.as_millis(),
                    versions.as_ref().map(|_| converged_in.as_millis()),
                    stored_in.map(|t| t.as_millis()),
                    seen.map(|t| t.as_millis()),
                    leaders(&cluster).await,
                    stored_at_end.is_some(),
                )
            )
            .await
    );
    verdict.check(during.served > 0, || "no read during the outage".to_owned());
    verdict.check(lost == 0, || {
        format!("{lost} of {changes} changes lost across the outage")
    });
    all_reads_served(&mut verdict, &cluster);
    verdict.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty() {
    redis_outage(false, "redis_restarted_empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_its_data() {
    redis_outage(true, "redis_restarted_with_its_data").await;
}

/// A node started while Redis is down starts warm from its dump, serves at once, and
/// converges with the others once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_without_redis_starts_from_its_dump() {
    let mut cluster = Cluster::builder().start().await;
    cluster.converged(CONVERGE).await;
    let mut verdict = Verdict::new();
    let picked = sessions(&cluster, 1);
    let leader = cluster.leader("sessions").await.expect("a leader");
    let node = (leader + 1) % cluster.len();

    // Its final dumps written, its copy is the cluster's.
    cluster.terminate(node).await;
    cluster.kill_redis();
    cluster.restart(node).await;
    let status = cluster.status(node).await;
    let started: Vec<(&str, bool, String)> = BUCKETS
        .iter()
        .map(|&b| (b, status.bucket(b).warm, status.bucket(b).started.clone()))
        .collect();
    let changes = 1;
    let seats = cluster.change_seats(&picked[0]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = cluster.reads();
    cluster.restart_redis().await;
    let back = Instant::now();
    let versions = verdict.ok(cluster.try_converged(CONVERGE).await);
    let converged_in = back.elapsed();
    let stored = verdict.ok(redis_holds_the_buckets(&cluster, CONVERGE).await);
    let seen = cluster
        .seen_everywhere(&picked[0], seats, cluster.lease() + change_within(&cluster))
        .await;
    let lost = u32::from(seen.is_none());
    eprintln!(
        "{}",
        cluster
            .figures(
                "a_node_started_without_redis_starts_from_its_dump",
                changes,
                lost,
                &format!(
                    "started={started:?} reads_during_outage={during:?} converged_ms={:?} \
                 redis_holds_ms={:?} leaders_after={:?} versions={versions:?}",
                    versions.as_ref().map(|_| converged_in.as_millis()),
                    stored.map(|t| t.as_millis()),
                    leaders(&cluster).await,
                )
            )
            .await
    );
    for (bucket, warm, started) in started {
        verdict.check(warm, || {
            format!("{bucket} of the node started without Redis is cold: {started}")
        });
    }
    verdict.check(lost == 0, || {
        "the change made during the outage was lost".to_owned()
    });
    all_reads_served(&mut verdict, &cluster);
    verdict.finish();
}
