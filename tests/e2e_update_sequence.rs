//! An update-sequence fuzz of the control plane, in the shape of Envoy's `xds_fuzz`: a seeded
//! random sequence of config file edits (listeners added, removed, modified in place, moved to
//! another address, and files that do not validate), applied to the real binary through its file
//! watch. After every step, read through the admin API:
//!
//! - versions only increase, and a rejected file changes nothing;
//! - a listener whose address did not change keeps its socket, and the connection held open
//!   through it still echoes;
//! - a removed (or moved) listener drains: its held connection keeps working, and the listener
//!   leaves `/listeners` once that connection closes;
//! - at the end, with everything closed, the process's open file descriptors are back to what
//!   they were after start-up.
//!
//! A second test drives discovered endpoints (added to and removed from the sandbox's API)
//! interleaved with file edits, with the same invariants.
//!
//! `BINDGATE_UPDATE_SEED=N` replays one sequence; `BINDGATE_UPDATE_STEPS` sets its length.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::{EchoStream, Proc, admin_json, write};
use rand::{Rng, SeedableRng};

const SLOTS: usize = 4;

/// One listener slot's config: which loopback address, and an idle timeout (changing it keeps
/// the socket; changing the address does not).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Slot {
    ip: u8,
    idle_s: u32,
}

fn config(slots: &[Option<Slot>], echo: SocketAddr) -> String {
    let mut listeners = String::new();
    for (i, s) in slots.iter().enumerate() {
        if let Some(s) = s {
            listeners.push_str(&format!(
                "    - {{ name: l{i}, address: \"127.0.0.{}:0\", idle_timeout: {}s, drain_timeout: 60s, routes: [ {{ cluster: c }} ] }}\n",
                s.ip, s.idle_s
            ));
        }
    }
    if listeners.is_empty() {
        listeners.push_str("    []\n");
    }
    format!(
        "version: 1\nadmin: {{ address: 127.0.0.1:0 }}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n    - {{ name: c, type: static, endpoints: [ \"{echo}\" ] }}\n"
    )
}

fn save(dir: &std::path::Path, path: &str, text: &str) {
    let tmp = write(dir, ".bindgate.yaml.tmp", text);
    std::fs::rename(&tmp, path).unwrap();
}

/// `/listeners` rows: (name, state, bound address). A moved listener has two rows for a while:
/// the new socket (`active`) and the old one (`draining`).
async fn listeners(admin: SocketAddr) -> Vec<(String, String, Option<SocketAddr>)> {
    let rows = admin_json(admin, "/listeners").await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
                r["bound_address"].as_str().and_then(|a| a.parse().ok()),
            )
        })
        .collect()
}

/// The bound address of the active listener `name`.
fn active(rows: &[(String, String, Option<SocketAddr>)], name: &str) -> Option<SocketAddr> {
    rows.iter()
        .find(|(n, state, _)| n == name && state == "active")
        .and_then(|r| r.2)
}

async fn control(admin: SocketAddr) -> (u64, u64, u64) {
    let dump = admin_json(admin, "/config_dump").await;
    let c = &dump["control"];
    (
        dump["version_info"].as_str().unwrap().parse().unwrap(),
        c["applied_updates"].as_u64().unwrap(),
        c["rejected_updates"].as_u64().unwrap(),
    )
}

/// Polls until `done` holds for the admin state (panics after the guard).
async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + common::GUARD;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn open_fds(admin: SocketAddr) -> f64 {
    common::metric(&common::scrape(admin).await, "process_open_fds", &[])
}

/// The sequence's random source and length: `BINDGATE_UPDATE_SEED` (else a fresh seed, printed
/// for replay) and `BINDGATE_UPDATE_STEPS` (else 30).
fn sequence(label: &str) -> (rand::rngs::StdRng, usize) {
    let seed = std::env::var("BINDGATE_UPDATE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let steps: usize = std::env::var("BINDGATE_UPDATE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    eprintln!("{label}: BINDGATE_UPDATE_SEED={seed} BINDGATE_UPDATE_STEPS={steps}");
    (rand::rngs::StdRng::seed_from_u64(seed), steps)
}

/// Closes the oldest connection held through a draining listener (checking every byte came
/// back); once no connection holds a draining listener of that name, its row must leave
/// `/listeners`.
async fn close_one_draining(admin: SocketAddr, draining: &mut Vec<(String, EchoStream)>) {
    if draining.is_empty() {
        return;
    }
    let (n, s) = draining.remove(0);
    s.finish().await;
    if !draining.iter().any(|(m, _)| *m == n) {
        until("a drained listener leaves /listeners", || async {
            !listeners(admin)
                .await
                .iter()
                .any(|(m, state, _)| *m == n && state == "draining")
        })
        .await;
    }
}

#[tokio::test]
async fn random_update_sequences_keep_the_invariants() {
    let (mut rng, steps) = sequence("update sequence");

    let echo = common::echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut slots: Vec<Option<Slot>> = vec![None; SLOTS];
    slots[0] = Some(Slot { ip: 1, idle_s: 60 });
    let path = write(dir.path(), "bindgate.yaml", &config(&slots, echo));
    let proxy = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = proxy.admin();
    let baseline_fds = open_fds(admin).await;

    // One connection held open through each listener, by name; and the ones whose listener
    // went away (draining), with that listener's name.
    let mut held: BTreeMap<String, EchoStream> = BTreeMap::new();
    let mut draining: Vec<(String, EchoStream)> = Vec::new();
    let mut bound: BTreeMap<String, SocketAddr> = BTreeMap::new();
    let l0 = active(&listeners(admin).await, "l0").unwrap();
    bound.insert("l0".into(), l0);
    let mut s = EchoStream::open(l0, 64).await;
    s.send(1).await;
    held.insert("l0".into(), s);

    for step in 0..steps {
        let (version, applied, rejected) = control(admin).await;
        let i = rng.random_range(0..SLOTS);
        let name = format!("l{i}");
        let op = rng.random_range(0..6u8);
        let mut next = slots.clone();
        let bad = match (op, slots[i]) {
            (0 | 1, None) => {
                next[i] = Some(Slot {
                    ip: rng.random_range(1..=3),
                    idle_s: 60,
                });
                false
            }
            (0, Some(_)) | (1, Some(_)) => {
                next[i] = None;
                false
            }
            (2, Some(s)) => {
                next[i] = Some(Slot {
                    idle_s: s.idle_s + 1,
                    ..s
                });
                false
            }
            (3, Some(s)) => {
                next[i] = Some(Slot {
                    ip: s.ip % 3 + 1,
                    ..s
                });
                false
            }
            (4, _) => true,
            _ => {
                // Nothing for this slot: touch another field of the file instead.
                false
            }
        };
        eprintln!(
            "step {step}: op {op} on {name}: {:?} -> {:?} bad={bad}",
            slots[i], next[i]
        );
        if bad {
            save(
                dir.path(),
                &path,
                &format!("{}no_such_field_{step}: 1\n", config(&next, echo)),
            );
            until("the bad file is rejected", || async {
                control(admin).await.2 == rejected + 1
            })
            .await;
            let (v, a, _) = control(admin).await;
            assert_eq!(
                (v, a),
                (version, applied),
                "a rejected file changed nothing"
            );
        } else if next == slots {
            continue;
        } else {
            save(dir.path(), &path, &config(&next, echo));
            until("the edit is applied", || async {
                control(admin).await.1 > applied
            })
            .await;
            let (v, _, _) = control(admin).await;
            assert!(v > version, "versions only increase: {version} -> {v}");
        }
        // The listener table now matches the config: wait for the reconcile.
        let expected: Vec<String> = next
            .iter()
            .enumerate()
            .filter_map(|(k, s)| s.map(|_| format!("l{k}")))
            .collect();
        until("active listeners match the config", || async {
            let now = listeners(admin).await;
            expected.iter().all(|n| active(&now, n).is_some())
        })
        .await;
        let now = listeners(admin).await;
        for (k, (old, new)) in slots.iter().zip(&next).enumerate() {
            let n = format!("l{k}");
            match (old, new) {
                (Some(o), Some(nw)) if o.ip == nw.ip => {
                    assert_eq!(
                        active(&now, &n),
                        bound.get(&n).copied(),
                        "{n} kept its socket"
                    );
                }
                (Some(_), _) => {
                    // Removed or moved: the old socket's held connection drains.
                    if let Some(s) = held.remove(&n) {
                        draining.push((n.clone(), s));
                    }
                    bound.remove(&n);
                }
                _ => {}
            }
            if new.is_some() && !bound.contains_key(&n) {
                let addr = active(&now, &n).unwrap();
                bound.insert(n.clone(), addr);
                let mut s = EchoStream::open(addr, 64).await;
                s.send(1).await;
                held.insert(n.clone(), s);
            }
        }
        slots = next;
        // Every held connection, draining or not, still carries bytes.
        for s in held.values_mut().chain(draining.iter_mut().map(|(_, s)| s)) {
            s.send(1).await;
            s.echoed_all().await;
        }
        // Close one draining connection now and then: once no connection holds a draining
        // listener of that name, its row leaves the table.
        if rng.random_bool(0.5) {
            close_one_draining(admin, &mut draining).await;
        }
    }

    // Close everything and remove every listener: the process is back to its start-up fds.
    for (_, s) in draining {
        s.finish().await;
    }
    for (_, s) in held {
        s.finish().await;
    }
    let (_, applied, _) = control(admin).await;
    let mut last = vec![None; SLOTS];
    last[0] = Some(Slot { ip: 1, idle_s: 60 });
    if last != slots {
        save(dir.path(), &path, &config(&last, echo));
        until("the final edit is applied", || async {
            control(admin).await.1 > applied
        })
        .await;
    }
    until("only l0 is listed", || async {
        let rows = listeners(admin).await;
        rows.len() == 1 && active(&rows, "l0").is_some()
    })
    .await;
    common::wait_for_metric(admin, "bindgate_connections_active", &[], 0.0).await;
    until("open fds back to the start-up count", || async {
        open_fds(admin).await <= baseline_fds
    })
    .await;
}

/// The discovered endpoints `/endpoints` lists: url → (listener name, state, address).
async fn endpoints(admin: SocketAddr) -> BTreeMap<String, (String, String, Option<SocketAddr>)> {
    let rows = admin_json(admin, "/endpoints").await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["endpoint"].as_str().unwrap().to_owned(),
                (
                    r["listener"].as_str().unwrap().to_owned(),
                    r["state"].as_str().unwrap_or("").to_owned(),
                    r["address"].as_str().and_then(|a| a.parse().ok()),
                ),
            )
        })
        .collect()
}

fn endpoint_url(k: usize) -> String {
    format!("tcp://svc{k}.seq:7000")
}

/// The same shape for the control plane's other source: endpoints appear in and vanish from
/// the sandbox's API (discovered by polling) while a static listener's file is edited, and
/// files that do not validate arrive. After every step: `/endpoints` lists exactly the
/// sandbox's endpoints, active; an endpoint that stayed keeps its address and its held
/// connection; a removed one's connection keeps flowing and its listener leaves `/listeners`
/// once that connection closes; the static listener keeps its socket; versions only increase.
/// At the end, fds are back to the start-up count.
#[tokio::test]
async fn random_endpoint_and_file_sequences_keep_the_invariants() {
    const ENDPOINTS: usize = 4;
    let (mut rng, steps) = sequence("endpoint sequence");

    let echo = common::echo_server().await;
    let sb = common::start_sandbox_api(common::SANDBOX_API, "").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = common::port_range(12);
    let file = |idle_s: u32, bad: Option<usize>| {
        let statics = format!(
            "static_resources:\n  listeners:\n    - {{ name: s0, address: \"127.0.0.1:0\", idle_timeout: {idle_s}s, routes: [ {{ cluster: c }} ] }}\n  clusters:\n    - {{ name: c, type: static, endpoints: [ \"{echo}\" ] }}\n"
        );
        let bad = bad
            .map(|b| format!("no_such_field_{b}: 1\n"))
            .unwrap_or_default();
        sb.discovery_config(
            &dir.path().join("state"),
            "k-e2e",
            &format!(
                "      mode: port_range\n      address: {}\n      ports: \"{}\"\n",
                ports.0, ports.1
            ),
            "60s",
            &format!("{statics}{bad}"),
        )
    };
    let mut idle_s = 60;
    let path = write(dir.path(), "bindgate.yaml", &file(idle_s, None));
    let proxy = Proc::start(&["run", "-c", &path], &[]).await;
    let admin = proxy.admin();
    // The sandbox's own endpoints are there from the start; ours come and go.
    let fixed: Vec<String> = {
        let now = until_endpoints(admin, |e| !e.is_empty()).await;
        now.keys().cloned().collect()
    };
    let s0 = active(&listeners(admin).await, "s0").unwrap();
    let mut s0_stream = EchoStream::open(s0, 64).await;
    s0_stream.send(1).await;
    s0_stream.echoed_all().await;
    let baseline_fds = open_fds(admin).await;

    let mut present = [false; ENDPOINTS];
    let mut addresses: BTreeMap<String, SocketAddr> = BTreeMap::new();
    let mut held: BTreeMap<String, EchoStream> = BTreeMap::new();
    // (listener name, connection) of removed endpoints.
    let mut draining: Vec<(String, EchoStream)> = Vec::new();
    let mut listener_of: BTreeMap<String, String> = BTreeMap::new();

    for step in 0..steps {
        let (version, applied, rejected) = control(admin).await;
        let k = rng.random_range(0..ENDPOINTS);
        let url = endpoint_url(k);
        let op = rng.random_range(0..4u8);
        eprintln!("step {step}: op {op} on {url} (present: {})", present[k]);
        match (op, present[k]) {
            (0 | 1, false) => {
                sb.add_endpoint(&url, "echo").await;
                present[k] = true;
            }
            (0 | 1, true) => {
                let (code, body) = sb
                    .control(
                        reqwest::Method::DELETE,
                        &format!("endpoints?url={url}"),
                        None,
                    )
                    .await;
                assert_eq!(code, 204, "{body}");
                present[k] = false;
            }
            (2, _) => {
                idle_s += 1;
                let text = file(idle_s, None);
                let tmp = write(dir.path(), ".bindgate.yaml.tmp", &text);
                std::fs::rename(&tmp, &path).unwrap();
                until("the edit is applied", || async {
                    control(admin).await.1 > applied
                })
                .await;
            }
            _ => {
                let text = file(idle_s, Some(step));
                let tmp = write(dir.path(), ".bindgate.yaml.tmp", &text);
                std::fs::rename(&tmp, &path).unwrap();
                until("the bad file is rejected", || async {
                    control(admin).await.2 == rejected + 1
                })
                .await;
            }
        }
        // Discovery catches up: exactly the sandbox's endpoints, all active.
        let mut want: Vec<String> = fixed.clone();
        want.extend((0..ENDPOINTS).filter(|&j| present[j]).map(endpoint_url));
        want.sort();
        let now = until_endpoints(admin, |e| {
            e.keys().cloned().collect::<Vec<_>>() == want
                && e.values().all(|(_, state, _)| state == "active")
        })
        .await;
        let (v, _, _) = control(admin).await;
        assert!(v >= version, "versions only increase: {version} -> {v}");
        assert_eq!(
            active(&listeners(admin).await, "s0"),
            Some(s0),
            "the static listener kept its socket"
        );
        for (j, &is_present) in present.iter().enumerate() {
            let u = endpoint_url(j);
            match (is_present, addresses.get(&u).copied()) {
                (true, Some(addr)) => {
                    assert_eq!(now[&u].2, Some(addr), "{u} kept its address");
                }
                (true, None) => {
                    let addr = now[&u].2.expect("exposed");
                    addresses.insert(u.clone(), addr);
                    listener_of.insert(u.clone(), now[&u].0.clone());
                    let mut s = EchoStream::open(addr, 64).await;
                    s.send(1).await;
                    held.insert(u.clone(), s);
                }
                (false, Some(_)) => {
                    addresses.remove(&u);
                    let name = listener_of.remove(&u).unwrap();
                    if let Some(s) = held.remove(&u) {
                        draining.push((name, s));
                    }
                }
                (false, None) => {}
            }
        }
        for s in held
            .values_mut()
            .chain(draining.iter_mut().map(|(_, s)| s))
            .chain(std::iter::once(&mut s0_stream))
        {
            s.send(1).await;
            s.echoed_all().await;
        }
        if rng.random_bool(0.5) {
            close_one_draining(admin, &mut draining).await;
        }
    }

    for (_, s) in draining {
        s.finish().await;
    }
    for (_, s) in held {
        s.finish().await;
    }
    for (j, p) in present.iter().enumerate() {
        if *p {
            let (code, _) = sb
                .control(
                    reqwest::Method::DELETE,
                    &format!("endpoints?url={}", endpoint_url(j)),
                    None,
                )
                .await;
            assert_eq!(code, 204);
        }
    }
    until_endpoints(admin, |e| e.len() == fixed.len()).await;
    until(
        "only s0 and the fixed endpoints' listeners are listed",
        || async { listeners(admin).await.len() == 1 + fixed.len() },
    )
    .await;
    s0_stream.finish().await;
    common::wait_for_metric(admin, "bindgate_connections_active", &[], 0.0).await;
    until("open fds back to the start-up count", || async {
        // The held s0 connection was open at the baseline: 2 fds (client side, upstream).
        open_fds(admin).await <= baseline_fds - 2.0
    })
    .await;
}

/// Polls `/endpoints` until `done` holds; returns that answer.
async fn until_endpoints(
    admin: SocketAddr,
    mut done: impl FnMut(&BTreeMap<String, (String, String, Option<SocketAddr>)>) -> bool,
) -> BTreeMap<String, (String, String, Option<SocketAddr>)> {
    let deadline = tokio::time::Instant::now() + common::GUARD;
    loop {
        let now = endpoints(admin).await;
        if done(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/endpoints never matched: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
