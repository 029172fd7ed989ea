//! The seed corpora of the coverage-guided fuzz targets (`fuzz/`): a few valid encodings
//! per target, made with the fixed keys `fuzz/src/lib.rs` trusts. Regenerate with
//! `cargo test --test hostile_bytes -- --ignored write_fuzz_seeds` (files are overwritten
//! in place; nothing else in `fuzz/corpus/` is touched).

use std::io::Write;
use std::path::PathBuf;

use base64::Engine as _;
use droot_fleet::deploy::control::{Action, Control, SignedControl};
use droot_fleet::deploy::controller::core::Persisted;
use droot_fleet::deploy::signed::{
    DeployEvent, MaxParallel, MinHealthy, Options, Rollout, SignedEvent, Targets,
};
use droot_fleet::deploy::status::{NodeOutcome, Result as Res};
use droot_fleet::gossip::cert::{NodeCert, Revocation};
use droot_fleet::gossip::envelope;
use droot_fleet::gossip::message::{
    self, Broadcast, Direct, LeaveNotice, StreamMessage, encode_broadcast, encode_direct,
    encode_stream,
};
use droot_fleet::gossip::pairwise::Auth;
use droot_fleet::gossip::query::{Filter, Query, QueryId};
use droot_fleet::gossip::supersede::{self, Superseding, TAGS_KIND};
use droot_fleet::gossip::{
    CoreConfig, EventId, GossipCore, Key, Keyring, NodeId, QueryResponse, UserEvent,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// `fuzz/src/lib.rs`'s `operator()` and `keyring()`.
fn operator() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

fn keyring() -> Keyring {
    Keyring::new(Key::from_bytes([9; 32]))
}

/// `fuzz/src/lib.rs`'s `WALL`, in milliseconds, less a minute: in time there.
const ISSUED_MS: u64 = 1_700_000_000_000 - 60_000;

fn node(name: &str, i: u8) -> NodeId {
    NodeId::new(name, format!("10.0.0.{i}:7946").parse().unwrap(), 1).unwrap()
}

fn event(app: &str, id: u8, options: Options) -> SignedEvent {
    let ev = DeployEvent {
        app: app.into(),
        version: format!("v{id}"),
        url: "s3://bucket/web.tar.zst".into(),
        sha256: Some([id; 32]),
        targets: Targets {
            nodes: vec!["^fuzz-.*".into(), "a".into()],
            tags: vec![("role".into(), "web|api".into())],
        },
        rollout: Rollout {
            max_parallel: Some(MaxParallel::Percent(50)),
            canary: 1,
        },
        issued_at_ms: ISSUED_MS + u64::from(id),
        id: [id; 16],
        options,
        chunks: (id == 2).then_some([id; 32]),
    };
    SignedEvent::sign(ev, &operator()).unwrap()
}

fn control(action: Action, event: u8, id: u8) -> SignedControl {
    let c = Control {
        app: "web".into(),
        event_id: [event; 16],
        action,
        issued_at_ms: ISSUED_MS + 1_000 + u64::from(id),
        id: [id; 16],
    };
    SignedControl::sign(c, &operator())
}

fn outcome(node: &str) -> NodeOutcome {
    NodeOutcome {
        node: node.into(),
        app: "web".into(),
        event_id: hex::encode([1u8; 16]),
        version: "v1".into(),
        result: Res::RolledBack,
        error: Some("health check failed".into()),
        at: 1_700_000_000,
    }
}

fn slot(kind: &str, key: &str, version: u64, body: Vec<u8>) -> Superseding {
    Superseding {
        kind: kind.into(),
        key: key.into(),
        version,
        origin: "a".into(),
        body,
        sig: None,
    }
}

/// Deploy slots of every kind the controller reads.
fn deploy_slots() -> Vec<Superseding> {
    let desired = event("web", 1, Options::default()).encode().unwrap();
    let order = control(Action::Pause, 1, 2);
    vec![
        slot("deploy.desired", "web", ISSUED_MS, desired),
        slot(
            "deploy.outcome",
            "web@a",
            5,
            postcard::to_allocvec(&outcome("a")).unwrap(),
        ),
        slot(
            "deploy.control",
            "web",
            order.control.slot_version(),
            order.bytes().to_vec(),
        ),
        slot(
            "deploy.apps",
            "b",
            3,
            postcard::to_allocvec(&vec!["web".to_owned()]).unwrap(),
        ),
    ]
}

fn items(slots: &[Superseding], signed: bool) -> Vec<u8> {
    let refs: Vec<&Superseding> = slots.iter().collect();
    supersede::encode_items(&refs, signed)
}

fn user_event(i: u64) -> UserEvent {
    UserEvent::new(EventId(i.into()), "a", i, "deploy", b"web v42".to_vec()).unwrap()
}

fn query() -> Query {
    Query {
        id: QueryId(7),
        ltime: 3,
        origin: node("a", 2),
        name: "status".into(),
        payload: b"web".to_vec(),
        filters: vec![
            Filter::NodeName("^a$".into()),
            Filter::Tag {
                key: "role".into(),
                value: "web".into(),
            },
        ],
        timeout_ms: 500,
    }
}

fn response(sig: Option<[u8; 64]>) -> QueryResponse {
    QueryResponse {
        id: QueryId(7),
        from: node("b", 3),
        payload: b"{\"ok\":true}".to_vec(),
        sig,
    }
}

/// A push/pull state with members, events and slots, at wire `version`.
fn push_pull(version: u16) -> droot_fleet::gossip::PushPullState {
    let mut core = GossipCore::new(
        node("a", 2),
        [("role".to_owned(), "web".to_owned())].into(),
        CoreConfig::default(),
        std::time::Duration::from_secs(1_700_000_000),
    );
    let mut rng = StdRng::seed_from_u64(3);
    for i in 0..3 {
        core.create_event(&mut rng, "deploy", format!("v{i}").into_bytes())
            .unwrap();
    }
    let members = vec![
        foca::Member::alive(node("a", 2)),
        foca::Member::new(node("b", 3), 2, foca::State::Suspect),
        foca::Member::down(node("c", 4)),
        foca::Member::down(node("fuzz-node", 1)),
    ];
    let mut state = core.push_pull_state(members, version);
    let mut slots = deploy_slots();
    slots.push(slot(
        TAGS_KIND,
        "a",
        2,
        postcard::to_allocvec(&state.tags).unwrap(),
    ));
    if let Some(ext) = state.extensions.first_mut() {
        ext.bytes = items(&slots, version >= 3);
    }
    state
}

fn broadcasts() -> Vec<Vec<u8>> {
    let mut signed = slot(TAGS_KIND, "a", 2, vec![0]);
    signed.sig = Some([5; 64]);
    vec![
        encode_broadcast(&Broadcast::Event(user_event(1))).unwrap(),
        encode_broadcast(&Broadcast::Query(query())).unwrap(),
        encode_broadcast(&Broadcast::Superseding(deploy_slots().remove(1))).unwrap(),
        encode_broadcast(&Broadcast::Superseding(signed)).unwrap(),
    ]
}

fn datagrams() -> Vec<Vec<u8>> {
    let auth = Auth {
        tag: [3; droot_fleet::gossip::pairwise::TAG_LEN],
        sent_ms: ISSUED_MS,
    };
    let leave = |sig| {
        Direct::Leave(LeaveNotice {
            id: node("b", 3),
            sig,
        })
    };
    vec![
        message::encode_foca_datagram(b"foca", None),
        message::encode_foca_datagram(b"foca", Some(&auth)),
        encode_direct(&Direct::QueryResponse(response(None))).unwrap(),
        encode_direct(&Direct::QueryResponse(response(Some([4; 64])))).unwrap(),
        encode_direct(&Direct::Event(user_event(2))).unwrap(),
        encode_direct(&leave(None)).unwrap(),
        encode_direct(&leave(Some([6; 64]))).unwrap(),
    ]
}

fn streams() -> Vec<Vec<u8>> {
    vec![
        encode_stream(&StreamMessage::PushPullRequest(push_pull(1))).unwrap(),
        encode_stream(&StreamMessage::PushPullRequest(push_pull(2))).unwrap(),
        encode_stream(&StreamMessage::PushPullReply(push_pull(3))).unwrap(),
        encode_stream(&StreamMessage::QueryResponse(response(Some([4; 64])))).unwrap(),
        encode_stream(&StreamMessage::PushPullRequest(push_pull_digest())).unwrap(),
    ]
}

/// A digest-first push/pull request (wire version 4) asking the answer back.
fn push_pull_digest() -> droot_fleet::gossip::PushPullState {
    let core = GossipCore::new(
        node("a", 2),
        Default::default(),
        CoreConfig::default(),
        std::time::Duration::from_secs(1_700_000_000),
    );
    let members = [
        foca::Member::alive(node("a", 2)),
        foca::Member::down(node("c", 4)),
    ];
    core.push_pull_digest(&members, true)
}

/// A node certificate and its revocation, issued by the operator's key.
fn identity_records() -> Vec<Vec<u8>> {
    let node_key = ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key();
    let cert =
        NodeCert::issue_with_serial(&operator(), "fuzz-node", &node_key, 1, 2_000_000_000, 3)
            .unwrap();
    let revoked = Revocation::issue(&operator(), cert.body(), ISSUED_MS);
    vec![cert.encode(), revoked.encode()]
}

fn signed_events() -> Vec<Vec<u8>> {
    let options = Options {
        ignore_stop_hook_failures: true,
        min_healthy: Some(MinHealthy::Percent(75)),
        progress_deadline_secs: Some(600),
    };
    vec![
        event("web", 1, Options::default()).encode().unwrap(),
        event("web", 2, options).encode().unwrap(),
        control(Action::Pause, 1, 3).bytes().to_vec(),
        control(Action::Cancel, 2, 4).bytes().to_vec(),
    ]
}

fn tars() -> (Vec<u8>, Vec<u8>) {
    let outside = std::env::temp_dir().join("droot-fleet-fuzz-unpack/outside");
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |kind, path: &str, link: Option<&str>, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(0);
        match link {
            Some(l) => b.append_link(&mut h, path, l).unwrap(),
            None => b.append_data(&mut h, path, body).unwrap(),
        }
    };
    add(tar::EntryType::Directory, "d/", None, b"");
    add(tar::EntryType::Regular, "d/f", None, b"alpha");
    add(tar::EntryType::Symlink, "rel", Some("../outside"), b"");
    add(
        tar::EntryType::Symlink,
        "abs",
        Some(outside.to_str().unwrap()),
        b"",
    );
    add(tar::EntryType::Regular, "abs/new", None, b"x");
    add(tar::EntryType::Link, "hard", Some("d/f"), b"");
    add(tar::EntryType::Regular, "hard", None, b"beta");
    let mut tar = b.into_inner().unwrap();
    tar.truncate(tar.len() - 1024);
    tar.extend_from_slice(&crate::common::archive::every_extension());
    (tar, crate::common::archive::every_extension())
}

fn requests() -> Vec<Vec<u8>> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let post = |path: &str, body: String| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    let event = b64(&signed_events()[0]);
    let order = b64(&signed_events()[2]);
    let reqs = [
        get("/v1/members?status=f%61iled&x=1"),
        get("/v1/info"),
        post("/v1/event", r#"{"name":"deploy","payload":"web"}"#.into()),
        post(
            "/v1/query",
            r#"{"name":"ping","nodes":["a"],"tags":{"role":"web"},"timeout_ms":10}"#.into(),
        ),
        get("/v1/keys"),
        post(
            "/v1/keys/install",
            format!(r#"{{"key":"{}"}}"#, b64(&[1; 32])),
        ),
        post("/v1/force-leave", r#"{"node":"b"}"#.into()),
        post("/v1/deploy", format!(r#"{{"event":"{event}"}}"#)),
        get(&format!(
            "/v1/deploy/progress?event={}",
            hex::encode([1u8; 16])
        )),
        post("/v1/rollout", format!(r#"{{"control":"{order}"}}"#)),
        post("/v1/revoke", format!(r#"{{"revocation":"{}"}}"#, b64(b"r"))),
        get("/v1/metrics"),
        get("/v1/monitor"),
        post("/v1/leave", String::new()),
        format!("{}{}", get("/v1/info"), get("/v1/keys")),
    ];
    let mut out: Vec<Vec<u8>> = reqs.iter().map(|r| [&[0], r.as_bytes()].concat()).collect();
    // Over TCP, with the token.
    let authed = get("/v1/info").replace(
        "host: x\r\n",
        "host: x\r\nauthorization: Bearer fuzz-token\r\n",
    );
    out.push([&[1], authed.as_bytes()].concat());
    out
}

fn write(target: &str, seeds: &[Vec<u8>]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
    }
}

#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand after a wire format changes"]
fn write_fuzz_seeds() {
    let ring = keyring();
    let mut rng = StdRng::seed_from_u64(9);
    let plain = &broadcasts()[0];
    let frames = [
        envelope::encode_frame(&ring, plain, &mut rng).unwrap(),
        envelope::encode_frame(&ring, &streams()[2], &mut rng).unwrap(),
    ]
    .concat();
    write(
        "envelope_open",
        &[
            envelope::seal_datagram(&ring, plain, &mut rng).unwrap(),
            [&[64], frames.as_slice()].concat(),
            [&[1], frames.as_slice()].concat(),
        ],
    );
    let mut gossip = broadcasts();
    gossip.extend(datagrams());
    gossip.extend(streams());
    gossip.push(items(&deploy_slots(), false));
    gossip.push(items(&deploy_slots(), true));
    gossip.extend(identity_records());
    write("gossip_message", &gossip);
    let mut deploy = signed_events();
    deploy.push(postcard::to_allocvec(&outcome("a")).unwrap());
    deploy.push(items(&deploy_slots(), false));
    deploy.push(
        Persisted {
            outcomes: vec![outcome("fuzz-node")],
            ..Persisted::default()
        }
        .encode(),
    );
    write("deploy_message", &deploy);
    write("signed_verify", &signed_events());
    let mut pushpull = streams();
    pushpull.remove(3); // the query response: not a push/pull state
    write("pushpull_merge", &pushpull);
    let (tar, every) = tars();
    write("tar_reader", &[tar.clone(), every]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = crate::common::archive::zstd(&tar);
    let mut members =
        droot_fleet::artifact::gzip_members::writer(Vec::new(), flate2::Compression::fast())
            .unwrap();
    members.write_all(&tar).unwrap();
    let members = members.finish().unwrap();
    let mut frames = droot_fleet::artifact::zstd_frames::writer(Vec::new(), 3).unwrap();
    frames.write_all(&tar).unwrap();
    let frames = frames.finish().unwrap();
    write("unpack", &[tar, gz, zst, members, frames]);
    write("api_request", &requests());
}
