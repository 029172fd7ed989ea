//! Every gossip wire decoder: broadcast items (events, queries, superseding slots),
//! datagrams (foca, query answers, pushed events, leave notices), stream messages
//! (push/pull states, large answers), the slot lists push/pull extensions carry, the
//! anti-entropy digest, and node certificates and revocations.
//! What decodes must encode back to bytes that decode to the same value.
#![no_main]

use droot_fleet::gossip::cert::{NodeCert, Revocation};
use droot_fleet::gossip::digest::Digest;
use droot_fleet::gossip::message::{self, Datagram};
use droot_fleet::gossip::supersede;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = message::decode_broadcast(data) {
        // Decoded items were validated, so they are within their channel's bounds.
        if let Ok(bytes) = message::encode_broadcast(&b) {
            assert_eq!(message::decode_broadcast(&bytes).as_ref(), Ok(&b));
        }
    }
    if let Ok(Datagram::Direct(d)) = message::decode_datagram(data) {
        if let Ok(bytes) = message::encode_direct(&d) {
            assert_eq!(
                message::decode_datagram(&bytes),
                Ok(Datagram::Direct(d.clone()))
            );
        }
    }
    if let Ok(s) = message::decode_stream(data) {
        if let Ok(bytes) = message::encode_stream(&s) {
            assert_eq!(message::decode_stream(&bytes).as_ref(), Ok(&s));
        }
    }
    for signed in [false, true] {
        if let Ok(items) = supersede::decode_items(data, signed) {
            let refs: Vec<_> = items.iter().collect();
            let bytes = supersede::encode_items(&refs, signed);
            assert_eq!(supersede::decode_items(&bytes, signed).ok(), Some(items));
        }
    }
    if let Ok(d) = Digest::decode(data) {
        assert_eq!(Digest::decode(&d.encode()).as_ref(), Ok(&d));
    }
    if let Ok(c) = NodeCert::decode(data) {
        assert_eq!(NodeCert::decode(&c.encode()).ok().as_ref(), Some(&c));
    }
    if let Ok(r) = Revocation::decode(data) {
        assert_eq!(Revocation::decode(&r.encode()).ok().as_ref(), Some(&r));
    }
});
