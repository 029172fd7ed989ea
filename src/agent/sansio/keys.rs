//! Key dispatch on the origin: a key request becomes the internal key query's payload,
//! and the nodes' answers fan in to one [`KeysResponse`] (like `serf keys`). Also how a
//! user query's result becomes its API answer.

use super::key_command::KeyCommand;
use crate::agent::key_auth::KeyAuth;
use crate::agent::{AgentError, KeyOp};
use crate::gossip::{Key, QueryResult};
use crate::wire::{KeysResponse, NodeKeyResult, QueryAnswer, QueryResponse};

/// The payload of the key query for `op` (`key` is required except for `list`, and
/// must be a valid key; `auth` is the operator's signature of a change, checked by each
/// node): refused here, before anything is sent.
pub fn key_request(
    op: KeyOp,
    key: Option<String>,
    auth: Option<KeyAuth>,
) -> Result<Vec<u8>, AgentError> {
    if op != KeyOp::List {
        match key.as_deref().map(Key::from_base64) {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(AgentError::BadRequest(e.to_string())),
            None => return Err(AgentError::BadRequest("a key is required".into())),
        }
    }
    let cmd = KeyCommand {
        op: op.as_str().to_owned(),
        key,
        auth,
    };
    Ok(serde_json::to_vec(&cmd).unwrap_or_default())
}

/// The nodes' answers to a key query, counted: which keys are installed, which are
/// primary, and on how many nodes. An unreadable answer counts as a failed node.
pub fn keys_fan_in(result: QueryResult) -> KeysResponse {
    let mut out = KeysResponse {
        missing: result.missing.into_iter().map(|n| n.name).collect(),
        ..Default::default()
    };
    for (n, payload) in result.answers {
        let mut r = serde_json::from_slice(&payload).unwrap_or_else(|e| NodeKeyResult {
            node: n.name.clone(),
            ok: false,
            error: Some(format!("unreadable answer: {e}")),
            keys: Vec::new(),
        });
        // Listed under the member that answered, not the name its answer claims.
        r.node = n.name;
        for k in &r.keys {
            *out.keys.entry(k.clone()).or_default() += 1;
        }
        if let Some(p) = r.keys.first() {
            *out.primary.entry(p.clone()).or_default() += 1;
        }
        out.results.push(r);
    }
    out.results.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// A user query's result as the API answers it (payloads as text).
pub fn query_answer(result: QueryResult) -> QueryResponse {
    QueryResponse {
        answers: result
            .answers
            .into_iter()
            .map(|(n, payload)| QueryAnswer {
                node: n.name,
                payload: String::from_utf8_lossy(&payload).into_owned(),
            })
            .collect(),
        missing: result.missing.into_iter().map(|n| n.name).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::keys::insecure_keyring;
    use crate::agent::sansio::key_command;
    use crate::gossip::NodeId;

    fn node(name: &str, port: u16) -> NodeId {
        NodeId::new(name, format!("127.0.0.1:{port}").parse().unwrap(), 0).unwrap()
    }

    #[test]
    fn requests_are_checked_before_sending() {
        let k = Key::from_bytes([3; 32]).to_base64();
        let list = key_request(KeyOp::List, None, None).unwrap();
        assert_eq!(
            serde_json::from_slice::<KeyCommand>(&list).unwrap().op,
            "list"
        );
        let install = key_request(KeyOp::Install, Some(k.clone()), None).unwrap();
        let cmd: KeyCommand = serde_json::from_slice(&install).unwrap();
        assert_eq!((cmd.op.as_str(), cmd.key), ("install", Some(k)));
        let e = key_request(KeyOp::Use, None, None).unwrap_err();
        assert!(e.to_string().contains("a key is required"), "{e}");
        let e = key_request(KeyOp::Remove, Some("not base64!".into()), None).unwrap_err();
        assert!(matches!(e, AgentError::BadRequest(_)), "{e}");
    }

    #[test]
    fn answers_fan_in_counted_sorted_and_unreadable_ones_fail() {
        // Two nodes answer a rotation step as they would (key_command::apply), one garbles it.
        let new = Key::from_bytes([9; 32]).to_base64();
        let install = key_request(KeyOp::Install, Some(new.clone()), None).unwrap();
        let mut answers = Vec::new();
        for (name, port) in [("b", 2), ("a", 1)] {
            let mut ring = insecure_keyring();
            let mut dev = crate::agent::key_auth::KeyAuthority::without_keys(true);
            let (r, changed) = key_command::apply(name, &mut ring, &install, &mut dev, 0);
            assert!(changed);
            answers.push((node(name, port), serde_json::to_vec(&r).unwrap()));
        }
        answers.push((node("c", 3), b"{oops".to_vec()));
        let out = keys_fan_in(QueryResult {
            answers,
            missing: vec![node("d", 4)],
        });
        let names: Vec<_> = out.results.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(out.keys[&new], 2);
        assert_eq!(out.primary.values().sum::<usize>(), 2);
        assert!(
            !out.results[2].ok
                && out.results[2]
                    .error
                    .as_deref()
                    .unwrap()
                    .contains("unreadable")
        );
        assert_eq!(out.missing, ["d"]);
        assert!(!out.all_ok());
    }

    #[test]
    fn user_answers_are_text() {
        let out = query_answer(QueryResult {
            answers: vec![(node("a", 1), vec![b'h', b'i', 0xff])],
            missing: vec![node("b", 2)],
        });
        assert_eq!(out.answers[0].node, "a");
        assert_eq!(out.answers[0].payload, "hi\u{fffd}");
        assert_eq!(out.missing, ["b"]);
    }

    /// An answer is counted for the member that sent it, whatever name it claims.
    #[test]
    fn an_answer_is_listed_under_its_sender() {
        let claim = NodeKeyResult {
            node: "someone-else".into(),
            ok: true,
            error: None,
            keys: vec!["k".into()],
        };
        let out = keys_fan_in(QueryResult {
            answers: vec![(node("b", 2), serde_json::to_vec(&claim).unwrap())],
            missing: Vec::new(),
        });
        assert_eq!(out.results[0].node, "b");
    }
}
